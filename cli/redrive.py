"""`interest-stream redrive`: publish dead letters again to where they came from, once each.

A dead letter (``streams/dead_letters.py``) keeps its message's key and value and says where the
message was (``source``: topic:partition:offset). Once what rejected it is fixed (the catalogue has the
item, say), re-driving sends it back to its source topic and partition: events are partitioned by user,
co-partitioned with the user table. Each copy names its dead letter in a ``redriven-from`` header, so a
copy that is rejected again can be traced.

Idempotent: once the broker has acknowledged a copy, the dead letter's own coordinates are recorded on
a compacted topic, ``<dead-letter topic>-redriven``, which every run reads first. A crash between the
two sends at most the copies then in flight (``IN_FLIGHT``) again; their event ids make the worker
reject those as ``duplicate``.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

from kafka import KafkaConsumer, TopicPartition
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import KafkaError
from tqdm import tqdm

from cli.delivery import Delivery
from state.faults import InterestStreamError
from streams.connection import client_options
from streams.settings import Settings
from streams.topics import ensure_topics, topic_specs

# header of a re-published record: the dead letter's topic:partition:offset
REDRIVEN_FROM = "redriven-from"
IN_FLIGHT = 256  # copies sent before waiting for their acknowledgements (then recording them)
STALL_S = 30.0  # a topic read that makes no progress this long is the broker's failure

# Why a dead letter is not re-driven (the summary's lines).
ALREADY = "already re-driven"
REASON = "reason not selected ({})"
OUTSIDE = "outside --since/--until"
DUPLICATE = "duplicate: a copy can never apply (--reason duplicate re-drives it anyway)"
TRUNCATED = "truncated copy: the whole message is only at its source"
NO_SOURCE = "no readable source header"
FOREIGN = "not from a re-drivable topic ({})"
NO_PARTITION = "source partition does not exist ({})"
NULL = "null value: nothing to re-drive"


def parse_time(text: str) -> float:
    """Unix seconds from ``text``: unix seconds, or an ISO-8601 date or time (UTC unless it has an
    offset). Raises ``InterestStreamError`` for anything else."""
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise InterestStreamError(
                f"{text!r} is neither unix seconds nor an ISO-8601 time (e.g. 2026-03-01T12:00:00Z)"
            ) from None
        return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()
    if not math.isfinite(seconds):
        raise InterestStreamError(f"{text!r} is not a time")
    return seconds


@dataclass(frozen=True)
class Window:
    """Dead letters written from ``since`` (inclusive) to ``until`` (exclusive), unix seconds; None: open."""

    since: float | None = None
    until: float | None = None

    @classmethod
    def parse(cls, since: str | None, until: str | None) -> Window:
        """From the command line's texts (see ``parse_time``); raises ``InterestStreamError`` if empty."""
        window = cls(parse_time(since) if since else None, parse_time(until) if until else None)
        if window.since is not None and window.until is not None and window.since >= window.until:
            raise InterestStreamError(f"--since ({since}) must be before --until ({until})")
        return window

    def __contains__(self, ts: float) -> bool:
        return (self.since is None or ts >= self.since) and (self.until is None or ts < self.until)


@dataclass(frozen=True)
class Selection:
    """Which dead letters to re-drive: ``reasons`` (empty: every reason but ``duplicate``) in ``window``."""

    reasons: frozenset[str] = frozenset()
    window: Window = Window()

    def why_not(self, reason: str, ts: float) -> str | None:
        """Why a dead letter of ``reason`` written at ``ts`` (unix seconds) is left out; None if selected."""
        if self.reasons and reason not in self.reasons:
            return REASON.format(reason)
        if ts not in self.window:
            return OUTSIDE
        # re-sent, it is rejected again
        if reason == "duplicate" and "duplicate" not in self.reasons:
            return DUPLICATE
        return None


@dataclass(frozen=True, order=True)
class Source:
    """Where a dead letter's message was; ordered as the messages were."""

    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Letter:
    """A dead letter as read: its own coordinates (``topic:partition:offset``), time (unix seconds)
    and record."""

    coordinates: str
    ts: float
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]

    @classmethod
    def of(cls, record: ConsumerRecord) -> Letter:
        return cls(
            f"{record.topic}:{record.partition}:{record.offset}",
            record.timestamp / 1000,
            record.key,
            record.value,
            dict(record.headers),
        )

    @property
    def reason(self) -> str:
        return self.headers.get("reason", b"").decode(errors="replace") or "(none)"

    def source(self) -> Source | None:
        """Where the original message was, or None if the ``source`` header is missing or malformed."""
        try:
            topic, partition, offset = self.headers["source"].decode().rsplit(":", 2)
            return Source(topic, int(partition), int(offset))
        except (KeyError, ValueError):  # UnicodeDecodeError is a ValueError
            return None


def verdict(
    letter: Letter, selection: Selection, done: Collection[str], partitions: dict[str, int]
) -> Source | str:
    """Where ``letter`` came from, to re-drive it there, or why not. ``done``: coordinates of the dead
    letters already re-driven; ``partitions``: the re-drivable topics' partition counts."""
    if letter.coordinates in done:
        return ALREADY
    if (why := selection.why_not(letter.reason, letter.ts)) is not None:
        return why
    if letter.headers.get("truncated") == b"true":
        return TRUNCATED
    if (source := letter.source()) is None:
        return NO_SOURCE
    if source.topic not in partitions:
        return FOREIGN.format(source.topic)
    if not 0 <= source.partition < partitions[source.topic]:
        return NO_PARTITION.format(f"{source.topic}:{source.partition}")
    if letter.value is None:
        return NULL
    return source


@dataclass
class Summary:
    """What a run did: dead letters read, re-driven per (reason, topic), skipped per why."""

    dead_letter_topic: str
    dry_run: bool = False
    read: int = 0
    redriven: Counter[tuple[str, str]] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    again: int = 0  # selected dead letters of copies an earlier run sent (rejected again)

    def lines(self) -> list[str]:
        lines = [
            f"read {self.read} dead letters from {self.dead_letter_topic}",
            f"{'would re-drive' if self.dry_run else 're-driven'} {sum(self.redriven.values())}",
        ]
        lines += [
            f"  {reason} -> {topic}: {n}" for (reason, topic), n in sorted(self.redriven.items())
        ]
        if self.again:
            lines.append(
                f"  ({self.again} of them dead letters of earlier re-driven copies: rejected again)"
            )
        lines.append(f"skipped {sum(self.skipped.values())}")
        lines += [f"  {why}: {n}" for why, n in sorted(self.skipped.items())]
        return lines


def redriven_topic(settings: Settings) -> str:
    """The compacted topic that records which dead letters were re-driven."""
    return f"{settings.dead_letter_topic}-redriven"


def bounded_read(
    consumer: KafkaConsumer, topic: str, stall_s: float = STALL_S
) -> tuple[int, Iterator[ConsumerRecord]]:
    """Every record of ``topic`` from its start to its end offsets as of now: (how many offsets, the
    records). A missing topic has none. Raises ``InterestStreamError`` if reading stalls
    ``stall_s`` seconds."""
    tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    if not tps:
        return 0, iter(())
    consumer.assign(tps)
    consumer.seek_to_beginning()
    starts, ends = consumer.beginning_offsets(tps), consumer.end_offsets(tps)

    def records() -> Iterator[ConsumerRecord]:
        left = {tp for tp in tps if consumer.position(tp) < ends[tp]}
        progress = time.monotonic()
        while left:
            for tp, batch in consumer.poll(timeout_ms=500).items():
                progress = time.monotonic()
                yield from (r for r in batch if r.offset < ends[tp])
            done = {tp for tp in left if consumer.position(tp) >= ends[tp]}
            consumer.pause(*done)
            left -= done
            if left and time.monotonic() - progress > stall_s:
                at = ", ".join(
                    f"{tp.partition}: {consumer.position(tp)} of {ends[tp]}" for tp in left
                )
                raise InterestStreamError(
                    f"reading {topic} stalled for {stall_s:.0f}s at offsets {at}: does the broker answer?"
                )

    return sum(ends[tp] - starts[tp] for tp in tps), records()


class Publisher:
    """Sends copies and, once the broker has acknowledged one, records its dead letter as re-driven."""

    def __init__(self, out: Delivery, record_topic: str) -> None:
        self.out = out
        self.record_topic = record_topic
        self.pending: list[tuple[Letter, object]] = []  # (dead letter, its copy's delivery future)

    def send(self, letter: Letter, source: Source) -> None:
        sent = self.out.send(
            source.topic,
            letter.key,
            letter.value,
            label=f"the copy of {letter.coordinates}",
            partition=source.partition,
            headers=[(REDRIVEN_FROM, letter.coordinates.encode())],
        )
        self.pending.append((letter, sent))
        if len(self.pending) >= IN_FLIGHT:
            self.settle()

    def settle(self) -> None:
        """Wait for the copies in flight; record each acknowledged one. Raises ``InterestStreamError``
        (after recording the others) if one failed."""
        self.out.producer.flush()
        failed = None
        for letter, sent in self.pending:
            try:
                if sent is None:  # refused at once: counted by the delivery
                    raise KafkaError("the producer refused the record")
                meta = sent.get()  # type: ignore[attr-defined]
            except KafkaError as exc:
                failed = failed or f"re-publishing {letter.coordinates} failed: {exc}"
                continue
            self.out.send(
                self.record_topic,
                letter.coordinates.encode(),
                f"{meta.topic}:{meta.partition}:{meta.offset}".encode(),
                label=f"the record of {letter.coordinates} on {self.record_topic}",
            )
        self.pending.clear()
        if failed:
            raise InterestStreamError(
                f"{failed}; the others were recorded: run again to re-drive the rest"
            )

    def close(self) -> None:
        """Settle, then wait for the records. Raises ``InterestStreamError`` if one failed: a run again
        re-sends a copy whose record is missing (the worker rejects it as a duplicate)."""
        try:
            self.settle()
        finally:
            # raises NotDelivered for a copy or a record the broker did not acknowledge
            self.out.close()


def redrive(
    settings: Settings, selection: Selection, dry_run: bool = False, progress: bool = True
) -> Summary:
    """Re-publish the selected dead letters, from the dead-letter topic's start to its end as of now,
    to their source topic and partition, each once, in their source's order (the selected ones are
    held in memory until then). ``dry_run``: send and record nothing, only count. Raises
    ``InterestStreamError`` when the broker does not answer or refuses a write."""
    record_topic, specs = redriven_topic(settings), topic_specs(settings)
    if not dry_run:
        specs[record_topic] = (1, {"cleanup.policy": "compact"})
    ensure_topics(settings, specs)
    summary = Summary(settings.dead_letter_topic, dry_run)
    selected = select(settings, selection, summary, progress)
    if dry_run:
        summary.redriven.update((letter.reason, source.topic) for source, letter in selected)
        return summary
    publisher = Publisher(Delivery(settings, "re-driven copies and their records"), record_topic)
    try:
        for source, letter in tqdm(
            selected, unit="letter", desc="re-driving", disable=not progress
        ):
            publisher.send(letter, source)
            summary.redriven[(letter.reason, source.topic)] += 1
    finally:
        publisher.close()  # records what was acknowledged, even after an error
    return summary


def select(
    settings: Settings, selection: Selection, summary: Summary, progress: bool = True
) -> list[tuple[Source, Letter]]:
    """The dead letters to re-drive, in source order: a worker writes those of one batch by stage, not
    by offset, and one user's events must apply in their order. Counts the others in ``summary``."""
    consumer = KafkaConsumer(
        **client_options(settings),
        group_id=None,
        enable_auto_commit=False,
        allow_auto_create_topics=False,
        client_id=f"{settings.app_id}-redrive",
    )
    selected = []
    try:
        # dead letter -> where its copy went
        done = {
            r.key.decode(): (r.value or b"").decode()
            for r in bounded_read(consumer, redriven_topic(settings))[1]
            if r.key
        }
        copies = set(done.values())
        # Events only: an items record sent again could overwrite a newer version of its item; ticks
        # are internal.
        partitions = {
            t: len(consumer.partitions_for_topic(t))
            for t in (settings.clicks_topic, settings.purchases_topic)
        }
        total, records = bounded_read(consumer, settings.dead_letter_topic)
        for record in tqdm(
            records, total=total, unit="letter", desc="dead letters", disable=not progress
        ):
            letter = Letter.of(record)
            summary.read += 1
            target = verdict(letter, selection, done, partitions)
            if isinstance(target, str):
                summary.skipped[target] += 1
            else:
                selected.append((target, letter))
                summary.again += f"{target.topic}:{target.partition}:{target.offset}" in copies
    finally:
        consumer.close()
    return sorted(selected, key=lambda s: s[0])
