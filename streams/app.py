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
from collections.abc import Awaitable, Iterator
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
from state.item_store import ItemStore, ItemVector, text_hash
from state.user_state import decode, encode
from streams import heap, metrics
from streams.durability import AcksInOrder
from streams.kafka_compat import back_off_empty_fetches
from streams.offsets import PartitionProgress, Verdict
from streams.schemas import CatalogueItem, Rejection, parse_event, parse_item
from streams.settings import Settings
from streams.topics import bootstrap
from streams.updater import Delivered, InterestUpdater

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
        for partition, batch in by_partition.items():
            found.update(zip(batch, self.data._db_for_partition(partition).get(batch)))  # type: ignore[attr-defined]
        return found

    def set_many(self, values: dict[bytes, tuple[int, bytes]]) -> None:
        """Store each key's (partition, value) locally, then send it to the changelog."""
        batches: dict[int, WriteBatch] = defaultdict(lambda: WriteBatch(raw_mode=True))
        for key, (partition, value) in values.items():
            batches[partition].put(key, value)
        for partition, batch in batches.items():
            self.data._db_for_partition(partition).write(batch)  # type: ignore[attr-defined]
        for key, (partition, value) in values.items():
            self._unconfirmed.append(self.send_changelog(partition, key, value))

    def partition_items(self, partition: int) -> list[tuple[bytes, bytes]]:
        """Every (key, value) stored for ``partition`` on this worker."""
        store = self.data
        db = store._dbs.get(partition)  # type: ignore[attr-defined]
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
    autodiscover=False,
    Table=UserTable,
)

raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw"}
events_topic = app.topic(settings.clicks_topic, settings.purchases_topic, settings.ticks_topic, **raw)
items_topic = app.topic(settings.items_topic, **raw)
ticks_topic = app.topic(settings.ticks_topic, partitions=settings.partitions, **raw)
dead_letter_topic = app.topic(settings.dead_letter_topic, partitions=1, **raw)

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

    def load(self) -> None:
        if settings.torch_threads > 0:
            torch.set_num_threads(settings.torch_threads)  # process-wide: GRU, scoring and the item encoder
        self.encoder = ItemEncoder(settings.encoder_path, settings.encoder_device, settings.encoder_batch, settings.encoder_max_tokens)
        if settings.checkpoint:
            model = InterestModel.load(settings.checkpoint)
            if (model.config.encoder, model.config.embed_dim) != (self.encoder.name, self.encoder.dim):
                # another encoder's vectors would be silently meaningless to this GRU and item tower
                raise RuntimeError(f"checkpoint was trained on {model.config.encoder} ({model.config.embed_dim}-d); "
                                   f"this worker's encoder is {self.encoder.name} ({self.encoder.dim}-d)")
        else:
            model = InterestModel.untrained(self.encoder.dim, settings.hidden_size, self.encoder.name)
        self.store = ItemStore(settings.data_dir / "items")
        catalogue = Catalogue(self.encoder.dim)
        catalogue.upsert(list(self.store))
        self.updater = InterestUpdater(model, catalogue, settings)
        metrics.MODEL_INFO.labels(model.version, self.encoder.name, self.encoder.device.type).set(1)
        log.info("model %s; encoder %s on %s (%s, batches of %d)", model.version, self.encoder.name, self.encoder.device,
                 self.encoder.model.dtype, self.encoder.batch_size)
        metrics.CATALOGUE_ITEMS.set(len(catalogue))

    async def in_model_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, fn, *args)


runtime = Runtime()


async def dead_letter(event: faust.types.EventT, rejection: Rejection) -> Awaitable:
    """Send ``event`` to the dead-letter topic; returns its delivery future."""
    msg = event.message
    sent = await dead_letter_topic.send(
        key=msg.key, value=msg.value or b"",
        headers=[("reason", rejection.reason.encode()), ("detail", rejection.detail.encode()),
                 ("source", f"{msg.topic}:{msg.partition}:{msg.offset}".encode())],
    )
    metrics.EVENTS_DEAD_LETTERED.labels(rejection.reason).inc()
    return sent


async def committed_offset(tp: TP) -> int | None:
    """The group's committed offset of ``tp``, asked of the broker: faust's own copy is filled in after
    its table recovery, and the first events can arrive before that."""
    thread = app.consumer._thread  # type: ignore[attr-defined]  # faust runs aiokafka in this thread
    return await thread.call_thread(thread._ensure_consumer().committed, tp)


async def in_offset_order(batch: list[faust.types.EventT]) -> tuple[list[faust.types.EventT], set[TP]]:
    """The events of ``batch`` to apply, and the partitions where offsets before some of them were lost."""
    for tp in {e.message.tp for e in batch}:
        if not progress.knows(tp):  # newly assigned: start where the group committed (or the log begins)
            earliest = (await app.consumer.earliest_offsets(tp))[tp]
            progress.start(tp, max(await committed_offset(tp) or 0, earliest))
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
    ends = {tp: app.consumer.highwater(tp) for tp in app.consumer.assignment() if tp.topic in progress.topics}
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
            sent = await embed(admitted)
            await item_acks.add(sent, progress.position({e.message.tp for e in batch}))
            await re_read(missing)


async def embed(batch: list[faust.types.EventT]) -> list[Awaitable]:
    """Embed the new or changed items of ``batch`` and publish their vectors; returns the delivery futures."""
    sent: list[Awaitable] = []
    latest: dict[str, CatalogueItem] = {}
    for event in batch:
        item = parse_item(event.message.value or b"")
        if isinstance(item, Rejection):
            sent.append(await dead_letter(event, item))
            continue
        known = runtime.store.get(item.item_id)
        if known is None or known.text_hash != text_hash(item.text):
            latest[item.item_id] = item
    if not latest:
        return sent
    items = list(latest.values())
    start = time.perf_counter()
    vectors = await asyncio.get_running_loop().run_in_executor(runtime.encoder_thread, runtime.encoder.encode, [i.text for i in items])
    took = time.perf_counter() - start
    metrics.ENCODER_BATCH_DURATION.observe(took)
    metrics.ENCODER_ITEMS.inc(len(items))
    metrics.ENCODER_ITEMS_PER_SECOND.set(len(items) / took)
    for item, vec in zip(items, vectors):
        vector = ItemVector(item.item_id, text_hash(item.text), vec).encode()
        sent.append(await app.producer.send(settings.item_vectors_topic, item.item_id.encode(), vector, None, None, None))
    return sent


@app.task
async def follow_item_vectors() -> None:
    """Load the runtime, then keep following item vectors. Every worker reads the whole item-vectors topic into its RocksDB item store and in-memory catalogue.

    Resumes from the offsets saved with the vectors; marks the worker ready once it has caught up with
    what existed at start, so events never meet a half-loaded catalogue.
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
            vectors = [ItemVector.decode(r.key.decode(), r.value) for batch in records.values() for r in batch]
            if not vectors:
                continue
            offsets = {tp.partition: batch[-1].offset + 1 for tp, batch in records.items()}

            def upsert() -> None:
                runtime.updater.catalogue.upsert(vectors)
                runtime.store.put_many(vectors, offsets)

            await runtime.in_model_thread(upsert)
            metrics.CATALOGUE_ITEMS.set(len(runtime.updater.catalogue))
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
        ticks = [e for e in batch if e.message.topic == settings.ticks_topic]
        with fail_stop(batch):
            events, missing = await in_offset_order([e for e in batch if e.message.topic != settings.ticks_topic])
            sent = await apply_events(events) if events else []
            for tick in ticks:
                await decay_partition(tick.message.partition)
            await acks.add(sent + user_states.changelog_sent(), progress.position({e.message.tp for e in batch}))
            await re_read(missing)
        metrics.BATCH_SIZE.observe(len(batch))
        metrics.BATCH_DURATION.observe(time.perf_counter() - start)


async def apply_events(batch: list[faust.types.EventT]) -> list[Awaitable]:
    """Apply ``batch`` to the user table and publish each touched user's top-k; returns the delivery
    futures of the recommendations and dead letters (the table keeps its changelog's)."""
    now = time.time()
    sent: list[Awaitable] = []
    delivered: list[Delivered] = []
    accepted_events: list[faust.types.EventT] = []  # the message behind each delivered event
    origin: dict[str, faust.types.EventT] = {}  # user -> an event of theirs: its partition is the user's
    consumed: Counter[str] = Counter()
    for event in batch:
        msg = event.message
        kind = EVENT_TYPES[msg.topic]
        consumed[msg.topic] += 1
        runtime.positions[(msg.topic, msg.partition)] = (msg.offset, msg.timestamp)
        parsed = parse_event(msg.value or b"", kind, now, settings.max_future_s)
        if isinstance(parsed, Rejection):
            sent.append(await dead_letter(event, parsed))
            continue
        if msg.key != parsed.user_id.encode():
            sent.append(await dead_letter(event, Rejection("bad_key", "message key must be the user id (it picks the partition)")))
            continue
        delivered.append(Delivered(parsed, f"{msg.topic}:{msg.partition}", msg.offset))
        accepted_events.append(event)
        origin[parsed.user_id] = event
    for topic, n in consumed.items():  # metrics once per batch: a labelled inc costs ~2 us
        metrics.EVENTS_CONSUMED.labels(topic, EVENT_TYPES[topic]).inc(n)

    stored = user_states.get_many({user.encode(): event.message.partition for user, event in origin.items()})
    states = {user: None if (value := stored[user.encode()]) is None else decode(value) for user in origin}

    result = await runtime.in_model_thread(runtime.updater.apply, delivered, states)

    user_states.set_many({user.encode(): (origin[user].message.partition, encode(state)) for user, state in result.states.items()})
    message_of = {(d.source, d.offset): event for d, event in zip(delivered, accepted_events)}
    for d, rejection in result.rejected:
        sent.append(await dead_letter(message_of[(d.source, d.offset)], rejection))  # the rejected message itself
    metrics.EVENTS_REDELIVERED.inc(result.redelivered)
    for d in delivered:
        p = origin[d.event.user_id].message.partition
        runtime.watermarks[p] = max(runtime.watermarks.get(p, 0.0), d.event.ts)
    sent_at = time.time()
    for rec in result.recommendations:
        # Straight to the producer: faust's Topic.send adds ~30 us of wrapping per message.
        sent.append(await app.producer.send(settings.recommendations_topic, rec.user_id.encode(), rec.to_json(), None, None, None))
        metrics.LATENCY.observe(sent_at - origin[rec.user_id].message.timestamp)
    metrics.RECOMMENDATIONS.inc(len(result.recommendations))
    return sent


# -- decay: a leader timer ticks every partition; whoever owns it decays its users --------------------------


@app.timer(interval=settings.decay_interval_s, on_leader=True)
async def tick_all_partitions() -> None:
    for partition in range(settings.partitions):
        await ticks_topic.send(value=b"", partition=partition)


async def decay_partition(partition: int) -> None:
    """Decay every user of ``partition`` to the newest event time applied there (event time, so replays
    of old logs decay as they happened). Users are rewritten only when their weight drops >= 5%."""
    now = runtime.watermarks.get(partition)
    if now is None:
        return
    start = time.perf_counter()
    min_elapsed = settings.half_life_s * 0.074  # 2^-0.074 = 0.95
    states = {}
    for key, value in user_states.partition_items(partition):
        state = decode(value)
        if state.lt_weight > 0 and state.lt_time < now - min_elapsed:
            states[key.decode()] = state
    changed = await runtime.in_model_thread(runtime.updater.decay, states, now)
    user_states.set_many({user.encode(): (partition, encode(state)) for user, state in changed.items()})
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
