"""The ingestion boundary: what one message makes fail stays with that message.

Every input topic's batches go through ``contain``. A batch whose processing raises is retried in
halves, in order, until the message at fault is alone; that one is handed to the topic's ``poison``
handler (a dead letter, or for item vectors a counted skip) and the rest are processed normally, so one
poison message costs one dead letter. Failures of the infrastructure itself (broker, disk) are not any
message's fault: they propagate, and the worker stops before anything not durable is committed.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError

from models.records import Rejection
from state.faults import MessageFault, StoreFailure
from streams import metrics
from streams.dead_letters import MAX_DETAIL_CHARS

log = logging.getLogger(__name__)

M = TypeVar("M")
_ONE_MESSAGE_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError)


def is_infrastructure(exc: BaseException) -> bool:
    """A failure of the broker, the disk or the process, rather than of the message being processed."""
    if isinstance(exc, KafkaError):
        return not isinstance(exc, _ONE_MESSAGE_TOO_LARGE)
    return isinstance(exc, (StoreFailure, OSError, MemoryError))


def rejection_for(exc: Exception) -> Rejection:
    """The dead-letter reason and bounded detail of a message that made processing raise ``exc``."""
    reason = exc.reason if isinstance(exc, MessageFault) else "internal_error"
    return Rejection(reason, f"{type(exc).__name__}: {exc}"[:MAX_DETAIL_CHARS])


async def contain(
    topic: str,
    batch: Sequence[M],
    process: Callable[[Sequence[M]], Awaitable[None]],
    poison: Callable[[M, Rejection], Awaitable[None]],
) -> None:
    """``process(batch)``; if it raises for any reason but the infrastructure, ``process`` each half in
    turn, and so on, down to the single message that fails, which goes to ``poison`` instead.

    ``process`` must leave nothing half-written that a retry would apply twice: it computes everything
    first and writes only what it computed (the user states' applied offsets make a re-run idempotent).

    Args:
        topic: the batch's topic, the label of ``interest_batch_splits_total``.
        batch: the micro-batch's messages, in offset order.
        process: applies messages; called with the batch, then with halves of a failing part.
        poison: takes one message that still fails alone, with the reason and detail of its failure
            (``rejection_for``); it publishes the dead letter.

    Raises:
        Exception: whatever ``process`` raised when ``is_infrastructure`` says the broker, the disk or
            the process failed, not the messages: the worker stops (exit 70), nothing is set aside.
    """
    try:
        await process(batch)
        return
    except Exception as exc:  # noqa: BLE001 - the point of a boundary
        if is_infrastructure(exc):
            raise
        failure = exc
    if len(batch) > 1:
        metrics.BATCH_SPLITS.labels(topic).inc()
        middle = len(batch) // 2
        await contain(topic, batch[:middle], process, poison)
        await contain(topic, batch[middle:], process, poison)
        return
    log.warning("a message on %s could not be processed; it is set aside", topic, exc_info=failure)
    await poison(batch[0], rejection_for(failure))
