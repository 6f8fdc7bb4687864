"""The faust app: topics, the user table, agents and timers.

Read top to bottom, it is the data path: catalogue items are embedded and shared with every worker;
click/purchase events are taken in micro-batches, applied to the RocksDB-backed user table, and each
touched user's top-k is published. Model work runs in one dedicated thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from typing import NoReturn

import faust
import torch
from aiokafka import AIOKafkaConsumer, TopicPartition
from faust.types import TP, FutureMessage
from rocksdict import WriteBatch

from models.catalogue import Catalogue
from models.encoder import ItemEncoder
from models.interest import InterestModel
from models.records import Rejection
from models.updater import InterestUpdater
from state.faults import InterestStreamError, store_errors
from state.item_store import ItemStore, ItemVector
from streams import heap, metrics
from streams.boundary import contain
from streams.dead_letters import dead_letter
from streams.decay import decay_step
from streams.durability import AcksInOrder
from streams.ingest import EventStep, Message, item_step
from streams.kafka_compat import back_off_empty_fetches
from streams.offsets import PartitionProgress, Verdict
from streams.schemas import check_id
from streams.settings import Settings
from streams.topics import bootstrap

settings = Settings.from_env()
back_off_empty_fetches(settings.fetch_backoff_s)
log = logging.getLogger(__name__)


class UserTable(faust.Table):
    """The faust table of user states, read and written a micro-batch at a time.

    ``table[key]`` goes through several faust layers per key (~80 us per event here); a batch reads each
    partition's RocksDB with one multi-get and writes it with one WriteBatch, and sends the changelog
    records ``table[key] = value`` would. Their delivery futures are kept: faust's producer-buffer
    ``flush()`` gives up after 0.1 s without progress and misses a record in transit, so offsets could
    otherwise be committed before the state they produced reached the broker.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._unconfirmed: list[FutureMessage] = []

    def get_many(self, keys: dict[bytes, int]) -> dict[bytes, bytes | None]:
        """The stored value of each key (key -> its partition), None where there is none."""
        by_partition: dict[int, list[bytes]] = defaultdict(list)
        for key, partition in keys.items():
            by_partition[partition].append(key)
        found: dict[bytes, bytes | None] = {}
        with store_errors("user table"):
            for partition, batch in by_partition.items():
                found.update(zip(batch, self.data._db_for_partition(partition).get(batch)))  # type: ignore[attr-defined]
        return found

    def set_many(self, values: dict[bytes, tuple[int, bytes]]) -> None:
        """Store each key's (partition, value) locally, then send it to the changelog."""
        batches: dict[int, WriteBatch] = defaultdict(lambda: WriteBatch(raw_mode=True))
        for key, (partition, value) in values.items():
            batches[partition].put(key, value)
        with store_errors("user table"):
            for partition, batch in batches.items():
                self.data._db_for_partition(partition).write(batch)  # type: ignore[attr-defined]
        for key, (partition, value) in values.items():
            self._unconfirmed.append(self.send_changelog(partition, key, value))

    def partition_items(self, partition: int) -> list[tuple[bytes, bytes]]:
        """Every (key, value) stored for ``partition`` on this worker."""
        store = self.data
        db = store._dbs.get(partition)  # type: ignore[attr-defined]
        with store_errors("user table"):
            return [] if db is None else [(k, v) for k, v in db.items() if k != store.offset_key]  # type: ignore[attr-defined]

    def changelog_sent(self) -> list[FutureMessage]:
        """Delivery futures of the changelog records sent since the last call."""
        sent, self._unconfirmed = self._unconfirmed, []
        return sent


app = faust.App(
    settings.app_id,
    broker=[f"kafka://{b}" for b in bootstrap(settings)],
    store="rocksdb://",
    datadir=str(settings.data_dir / "faust"),
    topic_partitions=settings.partitions,
    topic_replication_factor=settings.replication_factor,
    consumer_auto_offset_reset="earliest",
    producer_linger=0.005,
    broker_session_timeout=settings.session_timeout_s,
    broker_heartbeat_interval=settings.session_timeout_s / 10,
    broker_commit_interval=settings.commit_interval_s,
    consumer_group_instance_id=settings.instance_id or None,
    web_port=settings.web_port,
    web_host="0.0.0.0",
    # /health and /ready only: faust's own views would serve any user's raw state to anyone on the port.
    web_router_enabled=False,
    web_tables_enabled=False,
    web_graph_enabled=False,
    web_stats_enabled=False,
    autodiscover=False,
    Table=UserTable,
)

raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
events_topic = app.topic(settings.clicks_topic, settings.purchases_topic, settings.ticks_topic, **raw)
items_topic = app.topic(settings.items_topic, **raw)
ticks_topic = app.topic(settings.ticks_topic, partitions=settings.partitions, **raw)

user_states = app.Table(
    "user-state", partitions=settings.partitions, key_type=bytes, value_type=bytes, options={"driver": "rocksdict"},
)

EVENT_TYPES = {settings.clicks_topic: "click", settings.purchases_topic: "purchase"}
# Per input partition: the next offset to apply and what is durable; faust commits no further.
progress = PartitionProgress([*EVENT_TYPES, settings.items_topic])
progress.limit_commits()
# A batch's offsets become durable once the broker has what it produced, while the next batch runs.
acks = AcksInOrder(progress.made_durable, lambda exc: stop_worker("a record of a batch was not delivered"))
item_acks = AcksInOrder(progress.made_durable, lambda exc: stop_worker("an item vector was not delivered"))


@app.on_partitions_revoked.connect
async def forget_revoked(app, revoked, **kwargs) -> None:
    await acks.drain()  # the next owner must find every state and item vector this worker wrote on the broker
    await item_acks.drain()
    progress.forget(revoked)


class Runtime:
    """What the agents share: model, catalogue and stores, loaded once at worker start."""

    def __init__(self) -> None:
        self.model_thread = ThreadPoolExecutor(1, thread_name_prefix="model")  # updater, catalogue: one writer
        self.encoder_thread = ThreadPoolExecutor(1, thread_name_prefix="encoder")  # long refreshes run beside events
        self.ready = asyncio.Event()
        self.watermarks: dict[int, float] = {}  # partition -> newest event time applied there
        self.positions: dict[tuple[str, int], tuple[int, float]] = {}  # (topic, partition) -> last offset, its timestamp
        self.encoder: ItemEncoder
        self.store: ItemStore
        self.updater: InterestUpdater
        self.events: EventStep

    def load(self) -> None:
        if settings.torch_threads > 0:
            torch.set_num_threads(settings.torch_threads)  # process-wide: GRU, scoring and the item encoder
        self.encoder = ItemEncoder(settings.encoder_path, settings.encoder_device, settings.encoder_batch, settings.encoder_max_tokens)
        if settings.checkpoint:
            model = InterestModel.load(settings.checkpoint)
            if (model.config.encoder, model.config.embed_dim) != (self.encoder.name, self.encoder.dim):
                # another encoder's vectors would be silently meaningless to this GRU and item tower
                raise InterestStreamError(f"checkpoint was trained on {model.config.encoder} ({model.config.embed_dim}-d); "
                                   f"this worker's encoder is {self.encoder.name} ({self.encoder.dim}-d)")
        else:
            model = InterestModel.untrained(self.encoder.dim, settings.hidden_size, self.encoder.name)
        self.store = ItemStore(settings.data_dir / "items")
        catalogue = Catalogue(self.encoder.dim)
        catalogue.upsert(list(self.store))
        self.updater = InterestUpdater(model, catalogue, settings.updater_config())
        self.events = EventStep(self.updater, EVENT_TYPES, settings.limits(), settings.max_message_bytes)
        metrics.MODEL_INFO.labels(model.version, self.encoder.name, self.encoder.device.type).set(1)
        log.info("model %s; encoder %s on %s (%s, batches of %d)", model.version, self.encoder.name, self.encoder.device,
                 self.encoder.model.dtype, self.encoder.batch_size)
        metrics.CATALOGUE_ITEMS.set(len(catalogue))

    async def in_model_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)

    async def in_encoder_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.encoder_thread, fn, *args)


runtime = Runtime()


async def send_dead_letter(msg: Message, rejection: Rejection) -> Awaitable:
    """Send ``msg``'s dead letter (truncated to fit if it must be); returns its delivery future."""
    letter = dead_letter(f"{msg.topic}:{msg.partition}:{msg.offset}", msg.key, msg.value, rejection, settings.max_message_bytes)
    sent = await app.producer.send(settings.dead_letter_topic, letter.key, letter.value, None, None, letter.headers)
    metrics.EVENTS_DEAD_LETTERED.labels(rejection.reason).inc()
    return sent


def dead_letters_into(sent: list[Awaitable]):
    """The boundary's poison handler for a topic whose bad messages become dead letters."""
    async def poison(msg: Message, rejection: Rejection) -> None:
        sent.append(await send_dead_letter(msg, rejection))
    return poison


async def committed_offset(tp: TP) -> int | None:
    """The group's committed offset of ``tp``, asked of the broker: faust's own copy is filled in after
    its table recovery, and the first events can arrive before that."""
    thread = app.consumer._thread  # type: ignore[attr-defined]  # faust runs aiokafka in this thread
    return await thread.call_thread(thread._ensure_consumer().committed, tp)


async def start_partition(tp: TP) -> None:
    """Newly assigned: processing starts where the group committed (or where the log begins)."""
    earliest = (await app.consumer.earliest_offsets(tp))[tp]
    committed = await committed_offset(tp)
    if not progress.knows(tp):  # the agent or the re-read timer may have started it while this one asked
        progress.start(tp, max(committed or 0, earliest))


async def in_offset_order(batch: list[faust.types.EventT]) -> tuple[list[faust.types.EventT], set[TP]]:
    """The events of ``batch`` to apply, and the partitions where offsets before some of them were lost."""
    for tp in {e.message.tp for e in batch}:
        if not progress.knows(tp):
            await start_partition(tp)
    admitted, missing = [], set()
    for event in batch:
        verdict = progress.admit(event.message.tp, event.message.offset)
        if verdict is Verdict.APPLY:
            admitted.append(event)
        elif verdict is Verdict.MISSING_BEFORE:
            missing.add(event.message.tp)
    return admitted, missing


async def re_read(missing: set[TP]) -> None:
    for tp in missing:
        offset = progress.re_reading(tp)
        if offset is not None:
            await seek_back(tp, offset, "was lost before it reached this worker")


async def seek_back(tp: TP, offset: int, why: str) -> None:
    log.warning("offset %s of %s:%s %s; re-reading from it", offset, tp.topic, tp.partition, why)
    metrics.PARTITION_REREADS.inc()
    try:
        await app.consumer.seek(tp, offset)
    except Exception:  # e.g. revoked meanwhile: its next owner starts from the committed offset
        log.warning("could not re-read %s:%s", tp.topic, tp.partition, exc_info=True)


@app.timer(interval=5.0)
async def re_read_stalled_partitions() -> None:
    if not runtime.ready.is_set():
        return
    assigned = [tp for tp in app.consumer.assignment() if tp.topic in progress.topics]
    for tp in assigned:
        # A partition whose first messages faust dropped (around a recovery) and that receives nothing
        # new would never be started by an event; start it here so that it is seen stalled below.
        if not progress.knows(tp):
            await start_partition(tp)
    ends = {tp: app.consumer.highwater(tp) for tp in assigned}
    for tp, offset in progress.stalled({tp: end for tp, end in ends.items() if end is not None}).items():
        await seek_back(tp, offset, "is behind the end and nothing arrived for 5 s")


def stop_worker(what: str) -> NoReturn:
    """A batch that failed was admitted but its effects are not durable: stop the worker before a later
    batch makes its offsets committable. Restarted, it resumes from the last commit."""
    log.critical("%s; exiting so that none of it is committed", what, exc_info=True)
    logging.shutdown()
    os._exit(70)


@contextmanager
def fail_stop(batch: list[faust.types.EventT]) -> Iterator[None]:
    """Whatever escapes the ingestion boundary is the infrastructure's failure (broker, disk)."""
    try:
        yield
    except Exception:
        stop_worker(f"batch of {len(batch)} messages failed")


# -- catalogue: embed new or changed items, share the vectors with every worker ----------------------------


@app.agent(items_topic)
async def embed_items(stream) -> None:
    """Embed catalogue items in batches; unchanged texts are skipped, so re-publishing a catalogue is cheap."""
    async for batch in stream.take_events(settings.encoder_batch * 8, within=1.0):
        await runtime.ready.wait()  # inside the loop, as in update_interests
        with fail_stop(batch):
            admitted, missing = await in_offset_order(batch)
            sent: list[Awaitable] = []
            await contain(settings.items_topic, [e.message for e in admitted], lambda part: embed(part, sent), dead_letters_into(sent))
            await item_acks.add(sent, progress.position({e.message.tp for e in batch}))
            await re_read(missing)


def known_hash(item_id: str) -> bytes | None:
    known = runtime.store.get(item_id)
    return None if known is None else known.text_hash


def encode_texts(texts: list[str]):
    start = time.perf_counter()
    vectors = runtime.encoder.encode(texts)
    took = time.perf_counter() - start
    metrics.ENCODER_BATCH_DURATION.observe(took)
    metrics.ENCODER_ITEMS.inc(len(texts))
    metrics.ENCODER_ITEMS_PER_SECOND.set(len(texts) / took)
    return vectors


async def embed(messages: Sequence[Message], sent: list[Awaitable]) -> None:
    """Embed the new or changed items of ``messages`` and publish their vectors (tombstones for the
    retired ones), adding the delivery futures to ``sent``."""
    out = await runtime.in_encoder_thread(item_step, messages, known_hash, encode_texts)
    for rejected in out.rejected:
        sent.append(await send_dead_letter(rejected.message, rejected.rejection))
    for key, value in out.vectors:
        sent.append(await app.producer.send(settings.item_vectors_topic, key, value, None, None, None))
    for key in out.retired:
        sent.append(await app.producer.send(settings.item_vectors_topic, key, None, None, None, None))


def read_vectors(records: Sequence, dim: int) -> tuple[list[ItemVector], list[str], dict[int, int]]:
    """item-vectors records -> (vectors, retired item ids, next offset per partition); raises for a record
    that is not a finite ``dim``-d vector under a valid item id."""
    vectors, retired, offsets = [], [], {}
    for r in records:
        item_id = check_id(r.key.decode(), "item id")
        if isinstance(item_id, Rejection):
            raise ValueError(item_id.detail)
        if r.value is None:
            retired.append(item_id)
        else:
            vectors.append(ItemVector.decode(item_id, r.value, dim))
        offsets[r.partition] = r.offset + 1
    return vectors, retired, offsets


async def catalogue_update(records: Sequence) -> None:
    vectors, retired, offsets = read_vectors(records, runtime.encoder.dim)

    def update() -> None:
        runtime.store.apply(vectors, retired, offsets)
        runtime.updater.catalogue.upsert(vectors)
        runtime.updater.catalogue.remove(retired)

    await runtime.in_model_thread(update)
    metrics.ITEMS_RETIRED.inc(len(retired))
    metrics.CATALOGUE_ITEMS.set(len(runtime.updater.catalogue))


async def ignore_vector(record, rejection: Rejection) -> None:
    """Every worker reads the whole item-vectors topic, so a bad record is skipped and counted here
    rather than dead-lettered once per worker."""
    log.warning("item-vectors %s:%s: %s; skipped", record.partition, record.offset, rejection.detail)
    metrics.ITEM_VECTORS_IGNORED.inc()
    await runtime.in_model_thread(runtime.store.apply, [], [], {record.partition: record.offset + 1})


@app.task
async def follow_item_vectors() -> None:
    """Load the runtime, then keep following item vectors. Every worker reads the whole item-vectors topic into its RocksDB item store and in-memory catalogue.

    Resumes from the offsets saved with the vectors; marks the worker ready once it has caught up with
    what existed at start, so events never meet a half-loaded catalogue. A null value retires its item.
    """
    await asyncio.get_running_loop().run_in_executor(None, runtime.load)  # encoder load takes seconds
    heap.settle()
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap(settings), enable_auto_commit=False, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()  # fetches metadata for every topic
        partitions = [TopicPartition(settings.item_vectors_topic, p) for p in sorted(consumer.partitions_for_topic(settings.item_vectors_topic) or [])]
        consumer.assign(partitions)
        saved = runtime.store.offsets()
        for tp in partitions:
            if tp.partition in saved:
                consumer.seek(tp, saved[tp.partition])
            else:
                await consumer.seek_to_beginning(tp)
        end = await consumer.end_offsets(partitions)
        while True:
            if not runtime.ready.is_set() and all([await consumer.position(tp) >= end[tp] for tp in partitions]):
                runtime.ready.set()
                metrics.READY.set(1)
            records = await consumer.getmany(timeout_ms=500, max_records=2000)
            batch = [r for part in records.values() for r in part]
            if batch:
                try:
                    await contain(settings.item_vectors_topic, batch, catalogue_update, ignore_vector)
                except Exception:
                    stop_worker("the item store could not be written")
    finally:
        await consumer.stop()


# -- events: micro-batches -> user states -> recommendations ------------------------------------------------


@app.agent(events_topic)
async def update_interests(stream) -> None:
    async for batch in stream.take_events(settings.batch_max, within=settings.batch_wait_s):
        # Wait here, not before the loop: faust registers a stream with its consumer when it is first
        # iterated and expects agents to do that at start.
        await runtime.ready.wait()
        start = time.perf_counter()
        ticks = [e.message for e in batch if e.message.topic == settings.ticks_topic]
        with fail_stop(batch):
            events, missing = await in_offset_order([e for e in batch if e.message.topic != settings.ticks_topic])
            sent: list[Awaitable] = []
            messages = [e.message for e in events]
            consumed(messages)
            await contain("events", messages, lambda part: apply_events(part, sent), dead_letters_into(sent))
            for tick in ticks:
                await contain(settings.ticks_topic, [tick], lambda part: decay_partition(part[0].partition), dead_letters_into(sent))
            await acks.add(sent + user_states.changelog_sent(), progress.position({e.message.tp for e in batch}))
            await re_read(missing)
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.BATCH_DURATION.observe(time.perf_counter() - start)


def consumed(messages: list[Message]) -> None:
    counts: Counter[str] = Counter()
    for msg in messages:
        counts[msg.topic] += 1
        runtime.positions[(msg.topic, msg.partition)] = (msg.offset, msg.timestamp)
    for topic, n in counts.items():  # metrics once per batch: a labelled inc costs ~2 us
        metrics.EVENTS_CONSUMED.labels(topic, EVENT_TYPES[topic]).inc(n)


async def apply_events(messages: Sequence[Message], sent: list[Awaitable]) -> None:
    """Apply ``messages`` to the user table and publish each touched user's top-k, adding the delivery
    futures of the recommendations and dead letters to ``sent`` (the table keeps its changelog's)."""
    admitted = runtime.events.admit(messages, time.time())
    stored = user_states.get_many(admitted.users)
    out = await runtime.in_model_thread(runtime.events.apply, admitted, stored)
    letters = [await send_dead_letter(r.message, r.rejection) for r in out.rejected]
    if letters and out.states:
        # A rejected event counts as applied in its user's state: its dead letter must be on the broker
        # before that state is, or a crash in between would lose it (the restarted worker skips the event).
        await asyncio.gather(*letters)
    user_states.set_many(out.states)
    sent += letters
    metrics.EVENTS_REDELIVERED.inc(out.redelivered)
    for p, ts in out.watermarks.items():
        runtime.watermarks[p] = max(runtime.watermarks.get(p, 0.0), ts)
    sent_at = time.time()
    for key, value, msg in out.recommendations:
        # Straight to the producer: faust's Topic.send adds ~30 us of wrapping per message.
        sent.append(await app.producer.send(settings.recommendations_topic, key, value, None, None, None))
        metrics.LATENCY.observe(sent_at - msg.timestamp)
    metrics.RECOMMENDATIONS.inc(len(out.recommendations))


# -- decay: a leader timer ticks every partition; whoever owns it decays its users --------------------------


@app.timer(interval=settings.decay_interval_s, on_leader=True)
async def tick_all_partitions() -> None:
    for partition in range(settings.partitions):
        await ticks_topic.send(value=b"", partition=partition)


async def decay_partition(partition: int) -> None:
    """Decay every user of ``partition`` to the newest event time applied there (``streams.decay``)."""
    now = runtime.watermarks.get(partition)
    if now is None:
        return
    start = time.perf_counter()
    rows = user_states.partition_items(partition)
    decayed = await runtime.in_model_thread(decay_step, rows, now, runtime.updater)
    if decayed.unreadable:
        log.warning("partition %d: %d stored user states do not decode (e.g. %r); not decayed",
                    partition, len(decayed.unreadable), decayed.unreadable[0][:64])
        metrics.STATES_UNREADABLE.inc(len(decayed.unreadable))
    user_states.set_many({key: (partition, value) for key, value in decayed.rows.items()})
    metrics.DECAY_DURATION.observe(time.perf_counter() - start)


# -- observability ------------------------------------------------------------------------------------------


@app.timer(interval=5.0)
async def report_lag() -> None:
    now = time.time()
    assigned = {(tp.topic, tp.partition) for tp in app.consumer.assignment()}
    for topic, partition in list(runtime.positions):
        if (topic, partition) not in assigned:  # moved to another worker: it reports that lag now
            del runtime.positions[(topic, partition)]
            for gauge in (metrics.CONSUMER_LAG, metrics.CONSUMER_LAG_SECONDS):
                with suppress(KeyError):  # never reported if no highwater was known yet
                    gauge.remove(topic, str(partition))
    for tp in app.consumer.assignment():
        seen = runtime.positions.get((tp.topic, tp.partition))
        highwater = app.consumer.highwater(tp)
        if seen is None or highwater is None:
            continue
        offset, timestamp = seen
        behind = max(highwater - offset - 1, 0)
        metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(behind)
        metrics.CONSUMER_LAG_SECONDS.labels(tp.topic, str(tp.partition)).set(now - timestamp if behind else 0.0)
    dbs = user_states.data._dbs.values()  # type: ignore[attr-defined]
    metrics.TABLE_USERS.set(sum(db.property_int_value("rocksdb.estimate-num-keys") or 0 for db in dbs))


@app.page("/health")
async def health(self, request):
    return self.json({"status": "ok"})


@app.page("/ready")
async def ready(self, request):
    ok = runtime.ready.is_set()
    return self.json({"ready": ok, "catalogue_items": len(runtime.updater.catalogue) if ok else 0}, status=200 if ok else 503)
