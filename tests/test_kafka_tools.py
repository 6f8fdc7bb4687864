"""Apache Kafka's own command-line clients (Java) as independent real clients of a worker: events from
the console producer are applied, the recommendations the console consumer reads parse, and the
consumer-groups tool sees the worker's group with no lag once it has caught up."""

from __future__ import annotations

import json
import re

import pytest
from faust.types.enums import ProcessingGuarantee

from cli.client import publish_catalogue
from cli.worker_process import WorkerProcess
from models.records import Recommendation
from streams.app import build_app
from streams.topics import ensure_topics
from tests.conftest import SAMPLE
from tests.helpers import group_caught_up, metric_sum, scrape, stuck_report, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.apache_kafka("Kafka's command-line clients come with its jars"),
]

PRODUCER = "org.apache.kafka.tools.ConsoleProducer"
CONSUMER = "org.apache.kafka.tools.consumer.ConsoleConsumer"
GROUPS = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"


def console_produce(broker, topic: str, keyed: list[tuple[str, dict]], codec: str = "none") -> None:
    """Send JSON values keyed by ``key`` with Kafka's console producer (acks=all, ``codec`` compression)."""
    lines = "".join(f"{key}|{json.dumps(value)}\n" for key, value in keyed)
    done = broker.tool(
        PRODUCER,
        "--bootstrap-server",
        broker.address,
        "--topic",
        topic,
        "--compression-codec",
        codec,
        "--request-required-acks",
        "-1",
        "--property",
        "parse.key=true",
        "--property",
        "key.separator=|",
        input=lines,
    )
    assert done.returncode == 0, done.stderr


def test_events_from_kafkas_console_producer_are_applied_and_its_tools_read_the_results(
    broker, settings, sample_catalogue, tmp_path
):
    publish_catalogue(settings, SAMPLE / "catalogue.jsonl", progress=False)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready(min_items=len(sample_catalogue))
        items = [i["item_id"] for i in sample_catalogue]
        events = [
            {
                "event_id": f"j{n}",
                "user_id": f"java-{n % 5}",
                "item_id": items[n],
                "type": "click",
                "ts": 1_790_000_000.0 + n,
            }
            for n in range(20)
        ]
        console_produce(broker, settings.clicks_topic, [(e["user_id"], e) for e in events])
        topics = [settings.clicks_topic]
        wait_until(
            lambda: (
                metric_sum(scrape(settings.metrics_port), "interest_events_consumed_total")
                >= len(events)
            ),
            what="the console producer's events applied",
            explain=worker.log_tail,
        )
        wait_until(
            lambda: group_caught_up(settings, topics),
            what="offsets committed",
            explain=lambda: stuck_report(settings, topics, worker),
        )

        read = broker.tool(
            CONSUMER,
            "--bootstrap-server",
            broker.address,
            "--topic",
            settings.recommendations_topic,
            "--from-beginning",
            "--timeout-ms",
            "10000",
            "--property",
            "print.key=true",
            "--property",
            "key.separator=|",
        )
        lines = [line.split("|", 1) for line in read.stdout.splitlines() if "|" in line]
        assert lines, read.stderr
        recs = [Recommendation.from_json(value.encode()) for _, value in lines]
        assert {r.user_id for r in recs} == {e["user_id"] for e in events}
        assert all(key == r.user_id and r.items for (key, _), r in zip(lines, recs))

        groups = broker.tool(
            GROUPS, "--bootstrap-server", broker.address, "--describe", "--group", settings.app_id
        )
        assert groups.returncode == 0, groups.stderr
        header, *rows = [line.split() for line in groups.stdout.splitlines() if line.strip()]
        columns = {name: n for n, name in enumerate(header)}
        clicks = [row for row in rows if row[columns["TOPIC"]] == settings.clicks_topic]
        assert len(clicks) == settings.partitions, groups.stdout
        # A partition none of the five users hashes to has no committed offset ("-") and nothing to read.
        committed = {
            int(row[columns["PARTITION"]]): row[columns["CURRENT-OFFSET"]] for row in clicks
        }
        ends = {
            int(row[columns["PARTITION"]]): int(row[columns["LOG-END-OFFSET"]]) for row in clicks
        }
        assert sum(ends.values()) == len(events)
        assert {
            p: int(offset) if offset != "-" else 0 for p, offset in committed.items()
        } == ends, groups.stdout
    finally:
        worker.stop()
    assert worker.exit_code == 0, worker.log_tail()


DUMP_LOG = "kafka.tools.DumpLogSegments"


def test_the_tools_write_with_an_idempotent_producer_and_the_worker_waits_for_all_replicas(
    broker, settings
):
    """What the documented guarantees rest on, on the producers' side (docs/guarantees.md): the tools'
    producer is idempotent (each record batch on the log carries its producer id; a non-idempotent
    producer writes -1), not transactional; faust's producer in the worker waits for all in-sync
    replicas (acks=all) and stays at-least-once (the exactly-once effect is the states' offsets)."""
    ensure_topics(settings)
    publish_catalogue(settings, SAMPLE / "catalogue.jsonl", progress=False)
    segments = sorted((broker.data_dir / "log").glob(f"{settings.items_topic}-*/*.log"))
    dump = broker.tool(DUMP_LOG, "--files", ",".join(map(str, segments)))
    assert dump.returncode == 0, dump.stderr
    batches = [line for line in dump.stdout.splitlines() if line.startswith("baseOffset:")]
    assert batches, dump.stdout
    producer_ids = {int(re.search(r"producerId: (-?\d+)", b).group(1)) for b in batches}
    assert len(producer_ids) == 1 and min(producer_ids) >= 0, producer_ids
    assert all("isTransactional: false" in b for b in batches)

    conf = build_app(settings).app.conf
    assert conf.producer_acks == -1
    assert conf.processing_guarantee == ProcessingGuarantee.AT_LEAST_ONCE
