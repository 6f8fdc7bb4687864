"""Compressed record batches, as producers in other languages commonly send them: every codec Kafka
defines (gzip, snappy, lz4, zstd) is read by the worker and by the client tools; a batch the worker still
cannot decode (here: lz4 with its codec hidden from the worker) becomes one dead letter per offset and
the partition goes on, instead of the worker stopping at it at every start."""

from __future__ import annotations

import json
import time

import pytest
from kafka import KafkaProducer

from cli.client import publish_catalogue, recommendations
from cli.reembed import read_to_end
from cli.worker_process import WorkerProcess
from models.records import Recommendation
from streams.connection import client_options
from streams.topics import ensure_topics
from streams.user_table import load_user_states
from tests.conftest import SAMPLE
from tests.helpers import (
    dead_letters,
    group_caught_up,
    metric_sum,
    scrape,
    stuck_report,
    wait_until,
)

pytestmark = pytest.mark.e2e

CODECS = ("gzip", "snappy", "lz4", "zstd")
TS = 1_790_000_000.0


def send_compressed(settings, topic: str, records: list[tuple[bytes, bytes]], codec: str) -> None:
    """``records`` in batches compressed with ``codec`` (kafka-python's producer, acks from all replicas)."""
    producer = KafkaProducer(
        **client_options(settings), compression_type=codec, linger_ms=50, acks="all"
    )
    try:
        for key, value in records:
            producer.send(topic, key=key, value=value)
        producer.flush()
    finally:
        producer.close()


def clicks(user: str, items: list[str], tag: str) -> list[tuple[bytes, bytes]]:
    return [
        (
            user.encode(),
            json.dumps(
                {
                    "event_id": f"{tag}-{n}",
                    "user_id": user,
                    "item_id": item,
                    "type": "click",
                    "ts": TS + n,
                }
            ).encode(),
        )
        for n, item in enumerate(items)
    ]


def test_the_worker_and_the_tools_read_every_codec_and_an_undecodable_batch_is_dead_lettered(
    settings, sample_catalogue, tmp_path
):
    items = [i["item_id"] for i in sample_catalogue]
    ensure_topics(settings)
    # The tools read what others wrote: a catalogue and recommendations sent compressed, each codec.
    for codec in CODECS:
        send_compressed(
            settings,
            settings.items_topic,
            [
                (i.encode(), json.dumps({"item_id": i, "text": f"{codec} {i}"}).encode())
                for i in items[:3]
            ],
            codec,
        )
        rec = Recommendation(
            user_id=f"{codec}-reader", items=[], event_id="e", event_time=TS, model_version="m"
        )
        send_compressed(
            settings, settings.recommendations_topic, [(rec.user_id.encode(), rec.to_json())], codec
        )
    assert len(read_to_end(settings, settings.items_topic)) == 3 * len(CODECS)  # `reembed`'s reader
    # `subscribe`'s
    read = {r.user_id for r in recommendations(settings, from_beginning=True, timeout_s=5.0)}
    assert read == {f"{codec}-reader" for codec in CODECS}

    # The worker, with lz4 hidden from its Kafka client: as a worker image without the codec would be.
    hide = tmp_path / "no-lz4"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import aiokafka.codec\naiokafka.codec.has_lz4 = lambda: False\n"
    )
    publish_catalogue(settings, SAMPLE / "catalogue.jsonl", progress=False)
    worker = WorkerProcess(
        settings, tmp_path / "worker.log", environ={"PYTHONPATH": str(hide)}
    ).start()
    try:
        worker.wait_ready(min_items=len(sample_catalogue))
        for n, codec in enumerate(CODECS):
            send_compressed(
                settings,
                settings.clicks_topic,
                clicks(f"{codec}-user", items[10 * n : 10 * n + 5], codec),
                codec,
            )
        send_compressed(
            settings, settings.clicks_topic, clicks("after-user", items[50:52], "after"), "gzip"
        )
        topics = [settings.clicks_topic]
        wait_until(
            lambda: group_caught_up(settings, topics),
            what="every click partition committed to its end",
            explain=lambda: stuck_report(settings, topics, worker),
        )
        metrics = scrape(settings.metrics_port)
        assert worker.alive, worker.log_tail()
        assert (
            metric_sum(metrics, "interest_undecodable_batches_total", topic=settings.clicks_topic)
            >= 1
        )
    finally:
        worker.stop()
    assert worker.exit_code == 0, worker.log_tail()
    letters = [d for d in dead_letters(settings) if d["reason"] == "undecodable_batch"]
    assert all(
        "lz4" in d["detail"] and d["value"] == b"" and d["null-value"] == "true" for d in letters
    ), letters
    # the five lz4 clicks, one dead letter per offset; and the lz4 catalogue records of the tools' part (a
    # producer sends a batch uncompressed where compressing does not make it smaller: a lone small record)
    assert (
        len({d["source"] for d in letters if d["source"].startswith(f"{settings.clicks_topic}:")})
        == 5
    )
    assert {d["source"] for d in letters if d["source"].startswith(f"{settings.items_topic}:")}
    states = load_user_states(settings.data_dir)
    assert {user: s.clicks for user, s in states.items()} == {
        "gzip-user": 5,
        "snappy-user": 5,
        "zstd-user": 5,
        "after-user": 2,
    }


@pytest.mark.apache_kafka("Kafka's console producer comes with its jars")
@pytest.mark.parametrize("codec", CODECS)
def test_events_compressed_by_kafkas_java_producer_are_applied(
    broker, settings, sample_catalogue, tmp_path, codec
):
    from tests.test_kafka_tools import console_produce

    publish_catalogue(settings, SAMPLE / "catalogue.jsonl", progress=False)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        worker.wait_ready(min_items=len(sample_catalogue))
        events = [
            json.loads(value)
            for _, value in clicks("java-user", [i["item_id"] for i in sample_catalogue[:8]], codec)
        ]
        console_produce(
            broker, settings.clicks_topic, [(e["user_id"], e) for e in events], codec=codec
        )
        wait_until(
            lambda: (
                metric_sum(scrape(settings.metrics_port), "interest_events_consumed_total")
                >= len(events)
            ),
            what=f"the {codec} events applied",
            explain=worker.log_tail,
        )
        time.sleep(0.5)
        assert metric_sum(scrape(settings.metrics_port), "interest_events_dead_lettered_total") == 0
    finally:
        worker.stop()
    assert worker.exit_code == 0, worker.log_tail()
