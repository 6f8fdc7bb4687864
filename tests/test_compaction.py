"""Log compaction on a real broker: the compacted topics the product writes (item-vectors, recommendations,
the user table's changelog) keep the latest record of each key once Kafka's log cleaner has run, and drop
the keys whose last record is a null (a retired item, an erased user); a worker rebuilt from the
compacted changelog alone holds exactly the states of the one that wrote it.

Kafka compacts only closed segments, and removes a tombstone only at a cleaning after
``delete.retention.ms``: the test gives the three topics short segments and no retention for tombstones
(as an operator can, with ``kafka-configs``), then keeps writing to other keys (fillers, one per
partition) so that segments roll, until what the cleaner left is what it must be.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import replace

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType
from kafka.partitioner.default import murmur2

from cli.client import delivery, publish_catalogue, request_erasure, send_events
from cli.local_broker import free_port
from cli.worker_process import WorkerProcess
from streams.connection import client_options
from streams.faust_compat import changelog_topic
from streams.topics import admin_client
from streams.user_table import load_user_states
from tests.conftest import SAMPLE
from tests.helpers import wait_until
from tests.test_faults import assert_same_states, click_log, wait_caught_up

pytestmark = [pytest.mark.e2e, pytest.mark.apache_kafka("noida-db and tansu never compact a topic")]

FAST_COMPACTION = {
    "segment.ms": "500",
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": "0",
    "min.compaction.lag.ms": "0",
}
TS = 1_790_000_000.0


def keys_on_each_partition(prefix: str, partitions: int) -> list[str]:
    """One key per partition, as the default partitioner (murmur2, Java's and the clients') places them."""
    found: dict[int, str] = {}
    n = 0
    while len(found) < partitions:
        key = f"{prefix}{n}"
        found.setdefault((murmur2(key.encode()) & 0x7FFFFFFF) % partitions, key)
        n += 1
    return [found[p] for p in range(partitions)]


def log_of(settings, topic: str) -> dict[int, list[tuple[str, bytes | None]]]:
    """Every record of ``topic`` as it is in the log now: partition -> [(key, value)] in offset order."""
    consumer = KafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        out: dict[int, list] = defaultdict(list)
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for tp, records in consumer.poll(timeout_ms=1000).items():
                out[tp.partition] += [
                    (r.key.decode(), r.value) for r in records if r.offset < ends[tp]
                ]
        return out
    finally:
        consumer.close()


def latest(log: dict[int, list]) -> dict[str, bytes | None]:
    return {key: value for records in log.values() for key, value in records}


def compacted(log: dict[int, list], want: dict[str, bytes | None], fillers: set[str]) -> str | None:
    """What still differs from a compacted log holding ``want`` (the latest record per key, None for a
    key whose last record is a null), fillers aside; None once nothing does."""
    records = [(key, value) for part in log.values() for key, value in part if key not in fillers]
    counts: dict[str, int] = defaultdict(int)
    for key, _ in records:
        counts[key] += 1
    repeated = sorted(key for key, n in counts.items() if n > 1)
    deleted = sorted(key for key, value in want.items() if value is None and key in counts)
    wrong = sorted(key for key, value in records if want.get(key, b"") != value)
    missing = sorted(key for key, value in want.items() if value is not None and key not in counts)
    problems = {
        "keys with several records": repeated,
        "deleted keys still there": deleted,
        "other values": wrong,
        "keys lost": missing,
    }
    found = {what: keys for what, keys in problems.items() if keys}
    return None if not found else "; ".join(f"{what}: {keys[:5]}" for what, keys in found.items())


def test_compacted_topics_keep_the_latest_record_per_key_and_a_rebuilt_worker_has_the_same_states(
    settings, sample_catalogue, tmp_path
):
    # a decay pass deletes an erased user's marker: the changelog tombstone
    s = replace(settings, decay_interval_s=1.0)
    publish_catalogue(s, SAMPLE / "catalogue.jsonl", progress=False)
    worker = WorkerProcess(s, tmp_path / "one.log").start()
    changelog = changelog_topic(s.app_id)
    topics = {
        "item-vectors": s.item_vectors_topic,
        "recommendations": s.recommendations_topic,
        "changelog": changelog,
    }
    try:
        worker.wait_ready(min_items=len(sample_catalogue))
        admin = admin_client(s)
        try:
            configs = admin.describe_configs(
                [ConfigResource(ConfigResourceType.TOPIC, t) for t in topics.values()],
                config_filter="all",
            )
            policy = {
                name: config["cleanup.policy"]["value"] for name, config in configs["topic"].items()
            }
            assert policy == {
                s.item_vectors_topic: "compact",
                s.recommendations_topic: "compact,delete",
                changelog: "compact",
            }
            admin.alter_configs(
                [
                    ConfigResource(ConfigResourceType.TOPIC, t, configs=FAST_COMPACTION)
                    for t in topics.values()
                ]
            )
        finally:
            admin.close()

        # Each user's state is written once per micro-batch with their events: rounds make several
        # records a key.
        events = click_log(sample_catalogue, users=12, per_user=12, seed=5)
        for n in range(4):
            send_events(s, events[n::4], progress=False)
            wait_caught_up(s, worker, f"round {n}")
        retired, erased = sample_catalogue[0]["item_id"], events[0]["user_id"]
        with delivery(s, "catalogue deletes") as out:  # a null value on items retires the item
            out.send(s.items_topic, retired.encode(), None, label=retired)
        request_erasure(s, [erased])
        wait_until(
            lambda: (
                latest(log_of(s, changelog)).get(erased, b"") is None
                and latest(log_of(s, s.item_vectors_topic)).get(retired, b"") is None
            ),
            timeout_s=60,
            what="the erased user's changelog tombstone and the retired item's vector tombstone",
            explain=worker.log_tail,
        )

        # the users who had the retired item are refreshed at a decay pass: until then, wait
        def settled() -> dict | None:
            before = {name: latest(log_of(s, topic)) for name, topic in topics.items()}
            time.sleep(2.5)
            return (
                before
                if before == {name: latest(log_of(s, topic)) for name, topic in topics.items()}
                else None
            )

        want = wait_until(settled, timeout_s=60, what="no more writes to the compacted topics")
        assert want["recommendations"][erased] is None and want["changelog"][erased] is None
        assert want["item-vectors"][retired] is None

        # Fillers: new records on every partition of the three topics, so that their segments keep rolling.
        users = keys_on_each_partition("filler-user-", s.partitions)
        items = {
            name: keys_on_each_partition(f"filler-item-{name}-", s.partitions) for name in range(30)
        }
        fillers = set(users) | {i for names in items.values() for i in names}
        texts = {i["item_id"]: i for i in sample_catalogue}
        state = {}
        for n in range(30):
            catalogue = tmp_path / "fillers.jsonl"
            catalogue.write_text(
                "".join(
                    json.dumps({"item_id": i, "text": texts["run-001"]["text"]}) + "\n"
                    for i in items[n]
                )
            )
            publish_catalogue(s, catalogue, progress=False)
            send_events(
                s,
                [
                    {
                        "event_id": f"f{n}-{u}",
                        "user_id": u,
                        "item_id": "run-001",
                        "type": "click",
                        "ts": TS + 1,
                    }
                    for u in users
                ],
                progress=False,
            )
            time.sleep(1.0)
            state = {
                name: compacted(log_of(s, topic), want[name], fillers)
                for name, topic in topics.items()
            }
            if not any(state.values()):
                break
        assert not any(state.values()), state
        wait_caught_up(s, worker, "fillers applied")
    finally:
        worker.stop()
    assert worker.exit_code == 0, worker.log_tail()
    written = load_user_states(s.data_dir)
    assert erased not in written

    # A second worker of the same group, with no local state: its table comes from the compacted
    # changelog alone.
    rebuilt = replace(s, data_dir=tmp_path / "two", web_port=free_port(), metrics_port=free_port())
    worker = WorkerProcess(rebuilt, tmp_path / "two.log").start()
    try:
        worker.wait_ready(min_items=len(sample_catalogue) - 1)
    finally:
        worker.stop()
    assert worker.exit_code == 0, worker.log_tail()
    assert_same_states(load_user_states(rebuilt.data_dir), written)
