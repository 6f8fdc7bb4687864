"""The catalogue: items are embedded once by whichever worker owns their partition and shared with
every worker through the compacted item-vectors topic.

  ``embed_items`` (agent on items): admit in offset order -> ``item_step`` inside the ingestion
  boundary, in the encoder thread (new or changed texts only) -> vectors, tombstones for retired items,
  dead letters -> acks.
  ``follow_item_vectors`` (task): load the runtime -> read the whole item-vectors topic into the item
  store and the in-memory catalogue -> ready once caught up -> keep following.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import cast

import faust
import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from faust.streams import Stream

from models.records import Rejection
from state.item_store import ItemVector
from streams import faust_compat, heap, metrics
from streams.boundary import contain
from streams.checkpoints import Checkpoints, fail_stop, stop_worker
from streams.connection import client_options
from streams.dead_letters import DeadLetterWriter
from streams.ingest import LastPublished, Message, item_step
from streams.runtime import Runtime
from streams.schemas import check_id
from streams.settings import Settings
from streams.topics import ENCODER_HEADER, encoder_of, topic_partitions

log = logging.getLogger(__name__)


@dataclass
class VectorRecords:
    vectors: list[ItemVector] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)
    offsets: dict[int, int] = field(default_factory=dict)  # next offset to read per partition
    foreign: int = 0  # vectors of another encoder, skipped


def read_vectors(records: Sequence[ConsumerRecord], dim: int, space: str) -> VectorRecords:
    """item-vectors records -> the vectors of encoder ``space`` (records without an encoder header are
    taken as its: they predate it), the retired item ids (null values), how far they reach; another
    encoder's vectors are skipped and counted, their numbers mean nothing in this space. Raises for a
    record that is not a finite ``dim``-d vector, or a null, under a valid item id."""
    out = VectorRecords()
    for r in records:
        if (why := faust_compat.undecodable(r.headers)) is not None:
            raise ValueError(f"a record batch that cannot be decoded: {why}")
        item_id = check_id(r.key.decode(), "item id")
        if isinstance(item_id, Rejection):
            raise ValueError(item_id.detail)
        if r.value is None:
            out.retired.append(item_id)
        elif encoder_of(r) not in (None, space):
            out.foreign += 1
        else:
            out.vectors.append(ItemVector.decode(item_id, r.value, dim))
        out.offsets[r.partition] = r.offset + 1
    return out


class CatalogueAgents:
    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        runtime: Runtime,
        checkpoints: Checkpoints,
        dead_letters: DeadLetterWriter,
    ) -> None:
        self.app = app
        self.settings = settings
        self.runtime = runtime
        self.checkpoints = checkpoints
        self.dead_letters = dead_letters
        self.published = LastPublished(self._stored_hash)

    # -- embed: items -> item-vectors --------------------------------------------------------------------

    async def embed_items(self, stream: faust.StreamT) -> None:
        """Embed catalogue items in batches; unchanged texts are skipped, so re-publishing a
        catalogue is cheap."""
        # faust's StreamT lacks take_events
        async for batch in cast(Stream, stream).take_events(
            self.settings.encoder_batch * 8, within=1.0
        ):
            await self.runtime.ready.wait()  # inside the loop, as in the event agent
            with fail_stop(batch):
                admitted, missing = await self.checkpoints.admit(batch)
                sent: list[Awaitable] = []
                messages = await self.dead_letters.set_aside_undecodable(
                    [e.message for e in admitted], sent
                )
                await contain(
                    self.settings.items_topic,
                    messages,
                    partial(self.embed, sent=sent),
                    self.dead_letters.into(sent),
                )
                await self.checkpoints.item_acks.add(sent, self.checkpoints.position(batch))
                await self.checkpoints.re_read(missing)

    async def embed(self, messages: Sequence[Message], sent: list[Awaitable]) -> None:
        """Embed the new or changed items of ``messages`` and publish their vectors (tombstones for the
        retired ones), adding the delivery futures to ``sent``."""
        out = await self.runtime.in_encoder_thread(
            item_step, messages, self.published.known_hash, self._encode_texts
        )
        for rejected in out.rejected:
            sent.append(await self.dead_letters.send(rejected.message, rejected.rejection))
        topic = self.settings.item_vectors_topic
        headers = [(ENCODER_HEADER, self.runtime.encoder.space.encode())]
        for key, value in out.vectors:
            sent.append(
                await self.app.producer.send(
                    topic, key=key, value=value, partition=None, timestamp=None, headers=headers
                )
            )
        for key in out.retired:
            sent.append(
                await self.app.producer.send(
                    topic, key=key, value=None, partition=None, timestamp=None, headers=None
                )
            )
        self.published.published(out)

    def _stored_hash(self, item_id: str) -> bytes | None:
        known = self.runtime.store.get(item_id)
        return None if known is None else known.text_hash

    def _encode_texts(self, texts: list[str]) -> np.ndarray:
        start = time.perf_counter()
        vectors = self.runtime.encoder.encode(texts)
        took = time.perf_counter() - start
        metrics.ENCODER_BATCH_DURATION.observe(took)
        metrics.ENCODER_ITEMS.inc(len(texts))
        metrics.ENCODER_ITEMS_PER_SECOND.set(len(texts) / took)
        return vectors

    # -- follow: item-vectors -> item store and catalogue, on every worker --------------------------------

    async def follow_item_vectors(self) -> None:
        """Load the runtime, then follow the whole item-vectors topic into the item store and catalogue.

        Resumes from the offsets saved with the vectors; marks the worker ready once it has caught up with
        what existed at start, so events never meet a half-loaded catalogue. A null value retires its item.
        """
        # the encoder takes seconds
        await asyncio.get_running_loop().run_in_executor(None, self.runtime.load)
        heap.settle()
        topic = self.settings.item_vectors_topic
        # From the broker: an aiokafka consumer knows no topic's partitions before it is assigned one.
        count = await asyncio.get_running_loop().run_in_executor(
            None, topic_partitions, self.settings, [topic]
        )
        partitions = [TopicPartition(topic, p) for p in range(count.get(topic, 0))]
        consumer = AIOKafkaConsumer(
            **client_options(self.settings), enable_auto_commit=False, group_id=None
        )
        await consumer.start()
        try:
            consumer.assign(partitions)
            saved = self.runtime.store.offsets()
            for tp in partitions:
                if tp.partition in saved:
                    consumer.seek(tp, saved[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
            end = await consumer.end_offsets(partitions)
            while True:
                if not self.runtime.ready.is_set() and all(
                    [await consumer.position(tp) >= end[tp] for tp in partitions]
                ):
                    self.runtime.mark_ready()
                records = await consumer.getmany(timeout_ms=500, max_records=2000)
                batch = [r for part in records.values() for r in part]
                if batch:
                    try:
                        await contain(topic, batch, self._update_catalogue, self._skip_vector)
                    except Exception:
                        stop_worker("the item store could not be written")
        finally:
            await consumer.stop()

    async def _update_catalogue(self, records: Sequence[ConsumerRecord]) -> None:
        read = read_vectors(records, self.runtime.encoder.dim, self.runtime.encoder.space)

        def update() -> None:
            self.runtime.store.apply(read.vectors, read.retired, read.offsets)
            self.runtime.updater.catalogue.upsert(read.vectors)
            self.runtime.updater.catalogue.remove(read.retired)

        await self.runtime.in_model_thread(update)
        if read.foreign:
            log.warning(
                "item-vectors: %d vectors of another encoder than %s skipped (docs/refresh.md, "
                "Rolling out a new encoder)",
                read.foreign,
                self.runtime.encoder.space,
            )
            metrics.ITEM_VECTORS_IGNORED.inc(read.foreign)
        metrics.ITEMS_RETIRED.inc(len(read.retired))
        metrics.CATALOGUE_ITEMS.set(len(self.runtime.updater.catalogue))

    async def _skip_vector(self, record: ConsumerRecord, rejection: Rejection) -> None:
        """Every worker reads the whole item-vectors topic, so a bad record is skipped and counted here
        rather than dead-lettered once per worker."""
        log.warning(
            "item-vectors %s:%s: %s; skipped", record.partition, record.offset, rejection.detail
        )
        metrics.ITEM_VECTORS_IGNORED.inc()
        await self.runtime.in_model_thread(
            self.runtime.store.apply, [], [], {record.partition: record.offset + 1}
        )
