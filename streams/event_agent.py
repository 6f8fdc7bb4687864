"""The event agent: click and purchase events in micro-batches -> the user table -> recommendations;
erasure requests and decay ticks on the same stream. A batch's path, top to bottom:

  ``run``: take a micro-batch -> admit it in offset order (``Checkpoints``) -> ``apply`` its events
  inside the ingestion boundary -> ``erase`` its erasure requests -> ``decay`` (and refresh) each tick's
  partition -> hand what it sent to the acks that make its offsets durable.
  ``apply``: validate and read the users' states -> the updater, in the model thread (``EventStep``)
  -> dead letters (acknowledged before any state is written) -> states -> recommendations.
  ``erase``: erasure markers (``streams.erasure``) -> a null recommendation per user.
  ``decay``: decay, expire idle users, delete the erasure markers the group has committed past.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from functools import partial
from typing import cast

import faust
from aiokafka.errors import KafkaError
from faust.streams import Stream
from faust.types import TP

from streams import metrics
from streams.boundary import contain
from streams.checkpoints import Checkpoints, fail_stop
from streams.dead_letters import DeadLetterWriter
from streams.decay import decay_step
from streams.ingest import Message, erasure_step
from streams.refresh import RefreshPasses
from streams.runtime import Runtime
from streams.settings import Settings
from streams.user_table import UserTable

log = logging.getLogger(__name__)


def observe_many(histogram, value: float, n: int) -> None:
    for _ in range(n):
        histogram.observe(value)


def count_refreshed(causes: Counter[str]) -> None:
    for cause, n in causes.items():
        metrics.LONGTERM_REFRESHED.labels(cause).inc(n)


class EventAgent:
    def __init__(
        self,
        app: faust.App,
        settings: Settings,
        table: UserTable,
        ticks: faust.TopicT,
        runtime: Runtime,
        checkpoints: Checkpoints,
        dead_letters: DeadLetterWriter,
    ) -> None:
        self.app = app
        self.settings = settings
        self.table = table
        self.ticks = ticks
        self.runtime = runtime
        self.checkpoints = checkpoints
        self.dead_letters = dead_letters
        self.passes = RefreshPasses()

    async def run(self, stream: faust.StreamT) -> None:
        s = self.settings
        # faust's StreamT lacks take_events
        async for batch in cast(Stream, stream).take_events(s.batch_max, within=s.batch_wait_s):
            # Wait here, not before the loop: faust registers a stream with its consumer when it is first
            # iterated and expects agents to do that at start.
            await self.runtime.ready.wait()
            start, taken = time.perf_counter(), time.time()
            with fail_stop(batch):
                admitted, missing = await self.checkpoints.admit(
                    [e for e in batch if e.message.topic != s.ticks_topic]
                )
                sent: list[Awaitable] = []
                decoded = await self.dead_letters.set_aside_undecodable(
                    [e.message for e in admitted], sent
                )
                messages = [m for m in decoded if m.topic != s.erasures_topic]
                self._count(messages, taken)
                await contain(
                    "events",
                    messages,
                    partial(self.apply, sent=sent, taken=taken),
                    self.dead_letters.into(sent),
                )
                erasures = [m for m in decoded if m.topic == s.erasures_topic]
                await contain(
                    s.erasures_topic,
                    erasures,
                    partial(self.erase, sent=sent),
                    self.dead_letters.into(sent),
                )
                ticks = await self.dead_letters.set_aside_undecodable(
                    [e.message for e in batch if e.message.topic == s.ticks_topic], sent
                )
                for tick in ticks:
                    await contain(
                        s.ticks_topic,
                        [tick],
                        partial(self.decay_ticked, sent=sent),
                        self.dead_letters.into(sent),
                    )
                await self.checkpoints.event_acks.add(
                    [*sent, *self.table.changelog_sent()], self.checkpoints.position(batch)
                )
                await self.checkpoints.re_read(missing)
            metrics.BATCH_SIZE.observe(len(batch))
            metrics.BATCH_DURATION.observe(time.perf_counter() - start)

    def _count(self, messages: Sequence[Message], taken: float) -> None:
        counts: Counter[str] = Counter()
        queued = metrics.STAGE.labels("queued")
        for msg in messages:
            counts[msg.topic] += 1
            self.runtime.positions[(msg.topic, msg.partition)] = (msg.offset, msg.timestamp)
            queued.observe(taken - msg.timestamp)
        for topic, n in counts.items():  # metrics once per batch: a labelled inc costs ~2 us
            metrics.EVENTS_CONSUMED.labels(topic, self.runtime.event_types[topic]).inc(n)

    async def apply(self, messages: Sequence[Message], sent: list[Awaitable], taken: float) -> None:
        """Apply ``messages`` to the user table and publish each touched user's top-k, adding the delivery
        futures of the recommendations and dead letters to ``sent`` (the table keeps its changelog's)."""
        step = self.runtime.events
        admitted = step.admit(messages, time.time())
        stored = self.table.get_many(admitted.users)
        out = await self.runtime.in_model_thread(step.apply, admitted, stored)
        letters = [await self.dead_letters.send(r.message, r.rejection) for r in out.rejected]
        if letters and out.states:
            # A rejected event counts as applied in its user's state: its dead letter must be on the broker
            # before that state is, or a crash in between would lose it (the restarted worker skips
            # the event).
            await asyncio.gather(*letters)
        self.table.set_many(out.states)
        sent += letters
        metrics.EVENTS_REDELIVERED.inc(out.redelivered)
        count_refreshed(out.refreshed)
        for p, ts in out.watermarks.items():
            self.runtime.watermarks[p] = max(self.runtime.watermarks.get(p, 0.0), ts)
        sent_at = time.time()
        recommendations = []
        applied = metrics.STAGE.labels("applied")
        for key, value, msg in out.recommendations:
            # Straight to the producer: faust's Topic.send adds ~30 us of wrapping per message.
            recommendations.append(
                await self.app.producer.send(
                    self.settings.recommendations_topic,
                    key=key,
                    value=value,
                    partition=None,
                    timestamp=None,
                    headers=None,
                )
            )
            metrics.LATENCY.observe(sent_at - msg.timestamp)
            applied.observe(sent_at - taken)
        if recommendations:
            acknowledged = asyncio.gather(*recommendations)
            acknowledged.add_done_callback(
                lambda _: observe_many(
                    metrics.STAGE.labels("acknowledged"),
                    time.time() - sent_at,
                    len(recommendations),
                )
            )
            sent.append(acknowledged)
        metrics.RECOMMENDATIONS.inc(len(out.recommendations))

    async def erase(self, messages: Sequence[Message], sent: list[Awaitable]) -> None:
        """Replace each requested user's state by its erasure marker and publish a null
        recommendation for them."""
        if not messages:
            return
        out = erasure_step(messages, self.table.get_many, self.runtime.updater.new_state)
        sent += [await self.dead_letters.send(r.message, r.rejection) for r in out.rejected]
        self.table.set_many(out.states)
        await self._unpublish(out.erased, sent)
        metrics.USERS_ERASED.labels("request").inc(len(out.erased))

    async def _unpublish(self, users: dict[bytes, int], sent: list[Awaitable]) -> None:
        """A null (a tombstone: the recommendations topic is compacted) for each user, on their partition."""
        for key, partition in users.items():
            sent.append(
                await self.app.producer.send(
                    self.settings.recommendations_topic,
                    key=key,
                    value=None,  # a tombstone
                    partition=partition,
                    timestamp=None,
                    headers=None,
                )
            )

    async def tick_all_partitions(self) -> None:
        """Leader timer: a tick to every partition; whoever owns one decays its users (``decay``)."""
        for partition in range(self.settings.partitions):
            await self.ticks.send(value=b"", partition=partition)

    async def decay_ticked(self, ticks: Sequence[Message], sent: list[Awaitable]) -> None:
        await self.decay(ticks[0].partition, sent)

    async def decay(self, partition: int, sent: list[Awaitable]) -> None:
        """Decay every user of ``partition`` to the newest event time applied there, recompute the long-term
        vectors that hold replaced item vectors on the encoder's device, expire the users idle for
        ``INTEREST_USER_TTL_S`` and delete the erasure markers committed past (``streams.decay``); then save
        the trend counts. The pass runs even before the partition has an event time: markers go, and changed
        items are refreshed."""
        s = self.settings
        now = self.runtime.watermarks.get(partition)
        updater = self.runtime.updater
        scope = await self.runtime.in_model_thread(self.passes.scope, partition, updater.catalogue)
        start = time.perf_counter()
        sources = [
            TP(topic, partition) for topic in (s.clicks_topic, s.purchases_topic, s.erasures_topic)
        ]
        committed: dict[str, int | None] | None = None  # unknown: no marker is deleted this pass
        try:
            committed = {
                f"{tp.topic}:{tp.partition}": offset
                for tp, offset in (await self.checkpoints.committed_offsets(sources)).items()
            }
        # deleting markers can wait for the next pass; decay and refresh need no broker
        except KafkaError as exc:
            log.warning(
                "partition %d: committed offsets unavailable (%r); erasure markers kept until the next pass",
                partition,
                exc,
            )
        rows = self.table.partition_items(partition)
        idle_before = time.time() - s.user_ttl_s if s.user_ttl_s > 0 else None
        done = await self.runtime.in_model_thread(
            decay_step,
            rows,
            now,
            updater,
            scope,
            self.runtime.encoder.device,
            idle_before,
            committed,
        )
        if done.unreadable:
            log.warning(
                "partition %d: %d stored user states do not decode (e.g. %r); not decayed",
                partition,
                len(done.unreadable),
                done.unreadable[0][:64],
            )
            metrics.STATES_UNREADABLE.inc(len(done.unreadable))
        self.table.set_many({key: (partition, value) for key, value in done.rows.items()})
        self.table.delete_many(dict.fromkeys(done.forgotten, partition))
        await self._unpublish(dict.fromkeys(done.expired, partition), sent)
        metrics.USERS_ERASED.labels("expired").inc(len(done.expired))
        await self.runtime.in_model_thread(self.passes.done, partition, scope, updater.catalogue)
        # a restart goes on from here (models.trending)
        await self.runtime.in_model_thread(self.runtime.save_trending)
        count_refreshed(done.refreshed)
        metrics.DECAY_DURATION.observe(time.perf_counter() - start)

    async def forget_passes(self) -> None:
        """After a rebalance: every partition's next pass checks all its users for a refresh
        (``streams.refresh``)."""
        await self.runtime.in_model_thread(self.passes.forget)
