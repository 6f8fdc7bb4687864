"""Client-side tools: publish a catalogue, produce and replay events, subscribe to recommendations."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from kafka import KafkaConsumer, KafkaProducer
from tqdm import tqdm

from models.records import Recommendation
from state.faults import InterestStreamError
from streams.connection import client_options
from streams.settings import Settings
from streams.topics import ensure_topics


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """JSON objects, one a line, from a file or ``-`` (stdin); blank lines are skipped."""
    try:
        stream = sys.stdin if str(path) == "-" else open(path, encoding="utf-8")
    except FileNotFoundError:
        raise InterestStreamError(f"{path}: no such file") from None
    with stream:
        for n, line in enumerate(stream, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError as exc:
                    raise InterestStreamError(f"{path}:{n}: not JSON: {exc}") from None


def producer(settings: Settings) -> KafkaProducer:
    ensure_topics(settings)
    return KafkaProducer(**client_options(settings), acks="all", linger_ms=5, batch_size=256 * 1024)


def event_topic(settings: Settings, event: dict) -> str:
    kind = event.get("type", "click")
    if kind not in ("click", "purchase"):
        raise InterestStreamError(f"event {event.get('event_id')!r}: type must be click or purchase, not {kind!r}")
    return settings.purchases_topic if kind == "purchase" else settings.clicks_topic


def send_events(settings: Settings, events: Iterable[dict], speed: float = 0.0, total: int | None = None, progress: bool = True) -> int:
    """Send events keyed by user (their partition). ``speed`` 0: as fast as possible; N: event time x N."""
    out = producer(settings)
    sent, first_ts, started = 0, None, time.monotonic()
    for event in tqdm(events, total=total, unit="ev", disable=not progress, desc="events"):
        if speed > 0:
            first_ts = first_ts if first_ts is not None else event["ts"]
            ahead = (event["ts"] - first_ts) / speed - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)
        out.send(event_topic(settings, event), key=str(event["user_id"]).encode(), value=json.dumps(event).encode())
        sent += 1
    out.flush()
    out.close()
    return sent


def replay(settings: Settings, path: str | Path, speed: float = 0.0, progress: bool = True) -> int:
    """Replay a recorded JSON-lines log in event-time order (stable for equal times)."""
    events = sorted(read_jsonl(path), key=lambda e: e["ts"])
    return send_events(settings, events, speed, total=len(events), progress=progress)


def publish_catalogue(settings: Settings, path: str | Path, progress: bool = True) -> int:
    out = producer(settings)
    items = list(read_jsonl(path))
    for item in tqdm(items, unit="item", disable=not progress, desc="catalogue"):
        out.send(settings.items_topic, key=str(item["item_id"]).encode(), value=json.dumps(item).encode())
    out.flush()
    out.close()
    return len(items)


def recommendations(settings: Settings, from_beginning: bool = False, timeout_s: float | None = None) -> Iterator[Recommendation]:
    """Recommendations as they arrive; stops after ``timeout_s`` without one (never, if None). A record
    that is not a recommendation (another producer's) is skipped with a line on stderr."""
    ensure_topics(settings)
    consumer = KafkaConsumer(
        settings.recommendations_topic, **client_options(settings), group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        consumer_timeout_ms=int(timeout_s * 1000) if timeout_s is not None else float("inf"),
    )
    try:
        for message in consumer:
            try:
                rec = Recommendation.from_json(message.value)
            except ValueError as exc:
                print(f"skipped {message.topic}:{message.partition}:{message.offset}: {str(exc)[:200]}", file=sys.stderr)
                continue
            yield rec
    finally:
        consumer.close()


def format_recommendation(rec: Recommendation, titles: dict[str, str] | None = None) -> str:
    names = [f"{titles.get(i.item_id, i.item_id) if titles else i.item_id} ({i.score:.3f})" for i in rec.items]
    return f"user {rec.user_id} after {rec.event_id} [{rec.model_version}]: " + ", ".join(names)
