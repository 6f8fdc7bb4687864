"""Delivery and checkpointing in the worker: events are applied in offset order with none skipped, and
an offset is committed only once everything it covers is on the broker.

The rules are in ``streams.offsets`` (the next offset to apply, re-reads, holes) and
``streams.durability`` (batches durable in order); this is their glue to faust: where a newly assigned
partition starts (the group's committed offset, asked of the broker), seeking back, the stall timer,
draining on a rebalance, the commit cap (``faust_compat.cap_commits``), and the fail-stop that keeps a
failed batch's offsets from ever being committed.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import faust
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from faust.types import TP, EventT

from state.faults import INFRASTRUCTURE_EXIT
from streams import faust_compat, metrics
from streams.durability import AcksInOrder
from streams.offsets import PartitionProgress, Verdict

log = logging.getLogger(__name__)


def stop_worker(what: str) -> NoReturn:
    """A batch that failed was admitted but its effects are not durable: stop the worker before a later
    batch makes its offsets committable. Restarted, it resumes from the last commit."""
    log.critical("%s; exiting so that none of it is committed", what, exc_info=True)
    logging.shutdown()
    os._exit(INFRASTRUCTURE_EXIT)


@contextmanager
def fail_stop(batch: Sequence) -> Iterator[None]:
    """Whatever escapes the ingestion boundary is the infrastructure's failure (broker, disk)."""
    try:
        yield
    except Exception:
        stop_worker(f"batch of {len(batch)} messages failed")


class Checkpoints:
    def __init__(
        self, app: faust.App, group: str, kafka: Mapping[str, Any], topics: Iterable[str]
    ) -> None:
        self.app = app
        self.group = group  # the consumer group: faust's app id
        self.kafka = kafka  # how its admin client connects: streams.connection.client_options
        self.progress = PartitionProgress(topics)
        # A batch's offsets become durable once the broker has what it produced, while the next batch runs.
        self.event_acks = AcksInOrder(
            self.progress.made_durable,
            lambda exc: stop_worker("a record of a batch was not delivered"),
        )
        self.item_acks = AcksInOrder(
            self.progress.made_durable, lambda exc: stop_worker("an item vector was not delivered")
        )
        self._admin: AIOKafkaAdminClient | None = None
        # the agents and the stall timer ask at once: one client, used once started
        self._admin_started = asyncio.Lock()
        faust_compat.cap_commits(app, self.progress.topics, self.progress.durable.get)
        app.on_partitions_revoked.connect(self.on_revoked)  # type: ignore[arg-type]  # mode's handler type wants a signal= argument
        app.on_before_shutdown.connect(self.close)  # type: ignore[arg-type]

    async def admit(self, batch: Sequence[EventT]) -> tuple[list[EventT], set[TP]]:
        """The events of ``batch`` to apply, and the partitions where offsets before some of them
        were lost."""
        for tp in {e.message.tp for e in batch}:
            if not self.progress.knows(tp):
                await self.start_partition(tp)
        admitted, missing = [], set()
        for event in batch:
            verdict = self.progress.admit(event.message.tp, event.message.offset)
            if verdict is Verdict.APPLY:
                admitted.append(event)
            elif verdict is Verdict.MISSING_BEFORE:
                missing.add(event.message.tp)
        return admitted, missing

    def position(self, batch: Sequence[EventT]) -> dict[TP, int]:
        """The next offset to apply of each partition of ``batch``: what its acks will make durable."""
        return self.progress.position({e.message.tp for e in batch})

    async def start_partition(self, tp: TP) -> None:
        """Newly assigned: processing starts where the group committed (or where the log begins). Asked of
        the broker: faust's own copy is filled in after its table recovery, and events can come before."""
        earliest = (await self.app.consumer.earliest_offsets(tp))[tp]
        committed = await self.committed_offset(tp)
        # the agent or the stall timer may have started it while this one asked
        if not self.progress.knows(tp):
            self.progress.start(tp, max(committed or 0, earliest))

    async def committed_offset(self, tp: TP) -> int | None:
        return (await self.committed_offsets([tp]))[tp]

    async def committed_offsets(self, tps: list[TP]) -> dict[TP, int | None]:
        """The group's committed offset of each partition (the next to read), None where it has none."""
        # a client still starting has no broker to send to (NodeNotReadyError)
        async with self._admin_started:
            if self._admin is None:
                admin = AIOKafkaAdminClient(**self.kafka, client_id=f"{self.group}-checkpoints")
                await admin.start()
                self._admin = admin
        found = await self._admin.list_consumer_group_offsets(
            self.group, partitions=[TopicPartition(tp.topic, tp.partition) for tp in tps]
        )
        offsets = {(t.topic, t.partition): meta.offset for t, meta in found.items()}
        return {
            tp: None
            if offsets.get((tp.topic, tp.partition), -1) < 0
            else offsets[(tp.topic, tp.partition)]
            for tp in tps
        }

    async def re_read(self, missing: set[TP]) -> None:
        for tp in missing:
            offset = self.progress.re_reading(tp)
            if offset is not None:
                await self._seek_back(tp, offset, "was lost before it reached this worker")

    async def re_read_stalled(self) -> None:
        """Timer: re-read every partition behind its end where nothing was applied since the last look."""
        for tp in self._assigned():
            # A partition whose first messages faust dropped (around a recovery) and that receives nothing
            # new would never be started by an event; start it here so that it is seen stalled below.
            if not self.progress.knows(tp):
                await self.start_partition(tp)
        # Asked again: a rebalance during the awaits above may have taken partitions away (aiokafka asserts).
        ends = {tp: self.app.consumer.highwater(tp) for tp in self._assigned()}
        for tp, offset in self.progress.stalled(
            {tp: end for tp, end in ends.items() if end is not None}
        ).items():
            await self._seek_back(tp, offset, "is behind the end and nothing arrived for 5 s")

    def _assigned(self) -> list[TP]:
        return [tp for tp in self.app.consumer.assignment() if tp.topic in self.progress.topics]

    async def _seek_back(self, tp: TP, offset: int, why: str) -> None:
        log.warning(
            "offset %s of %s:%s %s; re-reading from it", offset, tp.topic, tp.partition, why
        )
        metrics.PARTITION_REREADS.inc()
        try:
            await faust_compat.seek(self.app.consumer, tp, offset)
        except Exception:  # e.g. revoked meanwhile: its next owner starts from the committed offset
            log.warning("could not re-read %s:%s", tp.topic, tp.partition, exc_info=True)

    async def on_revoked(self, app: faust.App, revoked: set[TP], **kwargs) -> None:
        """Before partitions move: the next owner must find every state and item vector this worker wrote."""
        await self.event_acks.drain()
        await self.item_acks.drain()
        self.progress.forget(revoked)

    async def close(self, app: faust.App, **kwargs) -> None:
        """At shutdown (faust's ``on_before_shutdown``)."""
        if self._admin is not None:
            await self._admin.close()
