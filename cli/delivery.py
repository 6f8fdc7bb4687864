"""Every write of a client tool, checked: a record counts as delivered only once the broker acknowledged it.

kafka-python's ``send`` returns at once and its ``flush`` returns whether or not the records reached the
broker: without looking at each record's future a tool reports what it attempted, not what was written
(a replay across a broker restart printed "replayed 2000 events" with 973 on the topic). ``Delivery``
counts the broker's answers, and ``close`` raises ``NotDelivered`` naming what was not acknowledged.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from kafka import KafkaProducer
from kafka.errors import KafkaError

from state.faults import InterestStreamError
from streams.connection import client_options
from streams.settings import Settings

# How long a record may wait for the broker's acknowledgement, retries included (kafka-python's
# delivery.timeout.ms, 120 s by default: a tool facing a stopped broker would hang two minutes). A send
# that cannot even learn the topic's partitions gives up after BLOCK_S.
DELIVERY_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 10.0
BLOCK_S = 10.0
SHOWN = 5  # records named in the error


class NotDelivered(InterestStreamError):
    pass


@dataclass
class Delivered:
    """The broker's answers: ``acknowledged`` records, and ``failed`` (label, error) pairs."""

    sent: int = 0
    acknowledged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


class Delivery:
    """A kafka-python producer (acks from all in-sync replicas, idempotent: a retried send is written
    once) whose every record is counted once the broker answered. ``what``: the records' name in messages
    ("events"). Not thread-safe for senders; the broker's answers arrive on kafka-python's thread."""

    def __init__(self, settings: Settings, what: str = "records") -> None:
        self.what = what
        self.producer = KafkaProducer(
            **client_options(settings),
            acks="all",
            linger_ms=5,
            batch_size=256 * 1024,
            delivery_timeout_ms=int(DELIVERY_TIMEOUT_S * 1000),
            request_timeout_ms=int(REQUEST_TIMEOUT_S * 1000),
            max_block_ms=int(BLOCK_S * 1000),
        )
        self.done = Delivered()
        # the producer refused a record for lack of the broker
        self.refused: KafkaError | None = None
        self._lock = threading.Lock()

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        label: str,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ):
        """Send one record (``label`` names it in the error: an event id, an item id); returns its future,
        or None if it is not sent (counted as failed): the producer refused it at once (no broker answered
        within ``BLOCK_S``), or refused an earlier one, so that a tool facing a stopped broker ends in
        seconds rather than waiting ``BLOCK_S`` per record."""
        self.done.sent += 1
        if self.refused is not None:
            self._failed(label, self.refused)
            return None
        try:
            future = self.producer.send(
                topic, key=key, value=value, partition=partition, headers=headers
            )
        except KafkaError as exc:
            self.refused = exc
            self._failed(label, exc)
            return None
        future.add_callback(self._acknowledged)
        future.add_errback(lambda exc: self._failed(label, exc))
        return future

    def _acknowledged(self, _metadata) -> None:
        with self._lock:
            self.done.acknowledged += 1

    def _failed(self, label: str, exc: BaseException) -> None:
        with self._lock:
            self.done.failed.append((label, f"{type(exc).__name__}: {exc}"))

    def close(self) -> Delivered:
        """Wait for the broker's answers (at most ``DELIVERY_TIMEOUT_S`` more) and close. Raises
        ``NotDelivered`` with the count and the first records the broker did not acknowledge."""
        try:
            self.producer.flush(timeout=DELIVERY_TIMEOUT_S)
        except KafkaError:
            pass  # the records left without an answer are counted below
        self.producer.close(timeout=5)
        done = self.done
        unanswered = done.sent - done.acknowledged - len(done.failed)
        if done.failed or unanswered:
            first = "; ".join(f"{label} ({error})" for label, error in done.failed[:SHOWN])
            raise NotDelivered(
                f"{done.acknowledged} of {done.sent} {self.what} acknowledged by the broker; "
                f"{done.sent - done.acknowledged} not"
                + (f" ({unanswered} without an answer)" if unanswered else "")
                + (f". First: {first}" if first else "")
                + ". Those may or may not be on the broker: sending them again "
                "is safe for events (the worker rejects a copy of an event it applied as a "
                "duplicate, by event id)"
            )
        return done

    def __enter__(self) -> Delivery:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.close()
        else:  # already failing: close without hiding that error
            self.producer.close(timeout=5)
