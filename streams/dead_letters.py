"""Dead letters: a rejected message's copy with why and where it came from, that always fits the broker.

Headers: ``reason`` (a short code, also the metric label), ``detail`` (at most ``MAX_DETAIL_CHARS``
characters of explanation) and ``source`` (``topic:partition:offset`` of the original); a message with
neither key nor value has an empty value and ``null-value: true``. A copy that
would exceed the largest record the broker takes keeps the start of the key and value, and says so:
``truncated: true`` with ``original-key-bytes`` and ``original-value-bytes``; the whole message is
still at its ``source`` for as long as that topic keeps it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from models.records import Rejection
from streams import faust_compat, metrics


class Producer(Protocol):
    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: list[tuple[str, bytes]] | None,
    ) -> Awaitable: ...


class App(Protocol):
    """faust's App, as far as dead letters need it."""

    @property
    def producer(self) -> Producer: ...


class Source(Protocol):
    """What a dead letter needs of the message it stands for (faust's ``Message`` has these)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None

    @property
    # faust's HeadersArg
    def headers(self) -> Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None: ...


M = TypeVar("M", bound=Source)

MAX_DETAIL_CHARS = 500
# Upper bound of what a record costs beyond its key, value and header bytes: the record batch header
# (61 bytes) and the record's varint lengths (Kafka's record format v2).
RECORD_OVERHEAD = 256


@dataclass(frozen=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]

    @property
    def size(self) -> int:
        """An upper bound of the record's size on the wire, in bytes."""
        return record_size(self.key, self.value, self.headers)


def record_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> int:
    return (
        len(key or b"")
        + len(value or b"")
        + sum(len(n) + len(v) for n, v in headers)
        + RECORD_OVERHEAD
    )


def dead_letter(
    source: str, key: bytes | None, value: bytes | None, rejection: Rejection, max_bytes: int
) -> DeadLetter:
    """The dead letter of the message at ``source`` ("topic:partition:offset"), at most ``max_bytes``."""
    # lone surrogates too
    detail = rejection.detail[:MAX_DETAIL_CHARS].encode("utf-8", "backslashreplace")
    headers = [
        ("reason", rejection.reason.encode()),
        ("detail", detail),
        ("source", source.encode()),
    ]
    # a record needs one of them (aiokafka refuses to send neither)
    if key is None and value is None:
        value, headers = b"", [*headers, ("null-value", b"true")]
    if record_size(key, value, headers) <= max_bytes:
        return DeadLetter(key, value, headers)
    k, v = key or b"", value or b""
    headers += [
        ("truncated", b"true"),
        ("original-key-bytes", str(len(k)).encode()),
        ("original-value-bytes", str(len(v)).encode()),
    ]
    room = max_bytes - record_size(b"", b"", headers)
    keep_key = min(len(k), max(room - len(v), room // 2))  # the value keeps at least half the room
    kept_key, kept_value = k[:keep_key], v[: room - keep_key]
    return DeadLetter(
        kept_key if key is not None else None, kept_value if value is not None else None, headers
    )


class DeadLetterWriter:
    """Sends dead letters to ``topic`` through faust's producer, counting them by reason."""

    def __init__(self, app: App, topic: str, max_bytes: int) -> None:
        self.app = app
        self.topic = topic
        self.max_bytes = max_bytes

    async def send(self, msg: Source, rejection: Rejection) -> Awaitable:
        """Send ``msg``'s dead letter; returns its delivery future."""
        letter = dead_letter(
            f"{msg.topic}:{msg.partition}:{msg.offset}",
            msg.key,
            msg.value,
            rejection,
            self.max_bytes,
        )
        sent = await self.app.producer.send(
            self.topic,
            key=letter.key,
            value=letter.value,
            partition=None,
            timestamp=None,
            headers=letter.headers,
        )
        metrics.EVENTS_DEAD_LETTERED.labels(rejection.reason, msg.topic).inc()
        return sent

    async def set_aside_undecodable(self, messages: Sequence[M], sent: list[Awaitable]) -> list[M]:
        """``messages`` less the stand-ins of a record batch the consumer could not decode
        (``faust_compat.stand_in_for_undecodable_batches``), each of which becomes an ``undecodable_batch``
        dead letter (no key, no value: the records are still at ``source``), its future into ``sent``."""
        kept = []
        for msg in messages:
            why = faust_compat.undecodable(msg.headers)
            if why is None:
                kept.append(msg)
            else:
                sent.append(await self.send(msg, Rejection("undecodable_batch", why)))
        return kept

    def into(self, sent: list[Awaitable]) -> Callable[[Source, Rejection], Awaitable[None]]:
        """The ingestion boundary's poison handler: dead-letter the message, its future into ``sent``."""

        async def poison(msg: Source, rejection: Rejection) -> None:
            sent.append(await self.send(msg, rejection))

        return poison
