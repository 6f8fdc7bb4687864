"""Test helpers that talk to the real broker and the worker's endpoints."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from kafka import KafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from models.records import Recommendation
from streams.connection import client_options
from streams.settings import Settings, topic_settings

if TYPE_CHECKING:
    from cli.worker_process import WorkerProcess


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    """Prometheus samples as {(name, sorted label items): value}."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def metric_sum(samples: dict, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, lab), v in samples.items()
        if n == name and all((k, v2) in lab for k, v2 in labels.items())
    )


def wait_until(
    predicate,
    timeout_s: float = 120.0,
    what: str = "condition",
    interval: float = 0.25,
    explain=None,
):
    """Poll ``predicate`` until truthy; on timeout, ``explain()`` (e.g. a worker's state) goes in
    the error."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout_s:.0f}s waiting for {what}"
        + (f"\n{explain()}" if explain else "")
    )


def consume_all(settings: Settings, topic: str, idle_s: float = 3.0) -> list:
    """Every message on ``topic`` from the beginning until none arrives for ``idle_s``."""
    consumer = KafkaConsumer(
        topic,
        **client_options(settings),
        group_id=None,
        auto_offset_reset="earliest",
        consumer_timeout_ms=int(idle_s * 1000),
    )
    try:
        return list(consumer)
    finally:
        consumer.close()


def latest_recommendations(settings: Settings) -> dict[str, Recommendation]:
    latest = {}
    for message in consume_all(settings, settings.recommendations_topic):
        if message.value is None:  # the user was erased
            latest.pop(message.key.decode(), None)
            continue
        rec = Recommendation.from_json(message.value)
        latest[rec.user_id] = rec
    return latest


def dead_letters(settings: Settings) -> list[dict]:
    """Each dead letter as {"key": bytes, "value": bytes, header name: header text}."""
    return [
        {"key": m.key, "value": m.value, **{k: v.decode() for k, v in m.headers}}
        for m in consume_all(settings, settings.dead_letter_topic)
    ]


def to_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def variant(settings: Settings, tag: str, data_dir) -> Settings:
    """The same test settings with their own app id, topics, state directory and ports."""
    from dataclasses import replace

    from cli.local_broker import free_port

    topics = {f: f"{getattr(settings, f)}-{tag}" for f in topic_settings()}
    return replace(
        settings,
        app_id=f"{settings.app_id}-{tag}",
        data_dir=data_dir,
        web_port=free_port(),
        metrics_port=free_port(),
        **topics,
    )


def group_progress(
    settings: Settings, topics: list[str]
) -> dict[tuple[str, int], tuple[int | None, int]]:
    """(topic, partition) -> (the worker group's committed offset or None, end offset)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    admin = KafkaAdminClient(**client_options(settings))
    consumer = KafkaConsumer(**client_options(settings))
    try:
        committed = admin.list_group_offsets(settings.app_id).get(settings.app_id, {})
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or ()]
        ends = consumer.end_offsets(tps)
        return {
            (tp.topic, tp.partition): (committed[tp].offset if tp in committed else None, ends[tp])
            for tp in tps
        }
    finally:
        admin.close()
        consumer.close()


def group_caught_up(settings: Settings, topics: list[str]) -> bool:
    """True when the worker group's committed offsets reach the end of every partition of ``topics``;
    False while the broker answers with a retriable error (a restarted broker's group coordinator
    still loading its offsets: CoordinatorLoadInProgressError), so that ``wait_until`` asks again."""
    from kafka.errors import KafkaError

    try:
        progress = group_progress(settings, topics)
    except KafkaError as exc:
        if exc.retriable:
            return False
        raise
    return all(end == 0 or (done is not None and done >= end) for done, end in progress.values())


def stuck_report(settings: Settings, topics: list[str], worker) -> str:
    """What a test prints when a worker does not catch up: offsets, its counters, its log."""
    try:
        samples = scrape(settings.metrics_port)
        counters = {
            n: metric_sum(samples, n)
            for n in (
                "interest_events_consumed_total",
                "interest_batch_size_count",
                "interest_events_redelivered_total",
                "interest_events_dead_lettered_total",
                "interest_recommendations_published_total",
            )
        }
    except OSError as exc:
        counters = {"metrics": repr(exc)}
    progress = group_progress(settings, topics)
    return f"committed/end: {progress}\ncounters: {counters}\nworker log:\n{worker.log_tail(60)}"


def run_sample(
    settings: Settings, worker: WorkerProcess, events: list[dict], tmp_path: Path
) -> None:
    """Publish the sample catalogue, wait for ``worker`` to have it, replay ``events`` and wait
    until all are consumed."""
    from cli.client import publish_catalogue, replay
    from tests.conftest import SAMPLE

    publish_catalogue(settings, SAMPLE / "catalogue.jsonl", progress=False)
    worker.wait_ready(min_items=96)
    log = tmp_path / "events.jsonl"
    log.write_text(to_jsonl(events))
    replay(settings, log, progress=False)
    wait_until(
        lambda: (
            metric_sum(scrape(settings.metrics_port), "interest_events_consumed_total")
            >= len(events)
        ),
        what="all events consumed",
        explain=worker.log_tail,
    )
