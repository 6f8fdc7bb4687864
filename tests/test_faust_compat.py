"""Each use of faust's and aiokafka's private parts (``streams.faust_compat``), driven through the real
classes: if an upgrade stopped calling a patched method, these tests would see offsets committed past
what is durable, or a stop that hangs."""

from __future__ import annotations

import asyncio
import importlib.metadata
import time
from dataclasses import replace

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from faust.stores.rocksdb import Store as RocksDBStore
from faust.types import TP, Message

from streams import faust_compat
from streams.app import build_app
from streams.settings import Settings
from streams.user_table import iter_raw, table_files


def test_the_installed_libraries_are_the_pinned_ones_and_pass_the_start_check():
    for name, version in faust_compat.PINNED.items():
        assert importlib.metadata.version(name) == version
    faust_compat.check()


def test_the_start_check_names_the_versions_and_the_part_that_changed(monkeypatch):
    monkeypatch.delattr(RocksDBStore, "_db_for_partition")
    with pytest.raises(faust_compat.IncompatibleLibrary) as failure:
        faust_compat.check()
    assert "faust-streaming 0.15.3, aiokafka 0.14.0" in str(
        failure.value
    ) and "_db_for_partition" in str(failure.value)


def test_faust_commits_a_capped_partition_no_further_than_its_durable_offset(tmp_path, monkeypatch):
    """faust's own commit path (Consumer.commit -> force_commit -> _commit_tps -> _commit_offsets), with
    only the network call replaced: acknowledged offsets 0-499 of clicks, durable up to 13."""
    worker = build_app(Settings(broker="127.0.0.1:1", data_dir=tmp_path))
    app, progress = worker.app, worker.checkpoints.progress
    consumer = app.consumer
    clicks, ticks = TP(worker.settings.clicks_topic, 0), TP(worker.settings.ticks_topic, 0)
    committed: list[dict] = []

    async def network_commit(offsets):
        committed.append(dict(offsets))
        return True

    async def flushed():
        return None

    monkeypatch.setattr(consumer, "_commit", network_commit)
    monkeypatch.setattr(consumer, "assignment", lambda: {clicks, ticks})
    monkeypatch.setattr(app.producer, "flush", flushed)
    monkeypatch.setattr(app.topics, "acks_enabled_for", lambda topic: True)
    for tp, last in ((clicks, 500), (ticks, 7)):
        for offset in range(last):
            consumer.ack(
                Message(tp.topic, tp.partition, offset, time.time(), 0, [], b"k", b"v", None)
            )

    progress.start(clicks, 0)
    for offset in range(20):
        progress.admit(clicks, offset)
    asyncio.run(consumer.commit())
    # clicks: 20 admitted, none durable yet; ticks as faust decides
    assert committed == [{clicks: 0, ticks: 7}]
    progress.made_durable({clicks: 13})
    asyncio.run(consumer.commit())
    assert committed[-1] == {clicks: 13}  # not faust's 500


@pytest.mark.e2e
def test_the_fetch_back_off_lets_a_consumer_stop_at_once(broker):
    """aiokafka's Fetcher.close cancels a fetch that is backing off; it must return, not raise (the
    CancelledError that escaped it killed faust's consumer thread and hung every other stop for 60 s)."""
    faust_compat.back_off_empty_fetches(0.01)
    topic = f"backoff-{time.monotonic_ns()}"

    async def scenario() -> list[float]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.address)
        await admin.start()
        await admin.create_topics([NewTopic(topic, 1, 1)])
        await admin.close()
        stops = []
        for _ in range(20):
            consumer = AIOKafkaConsumer(bootstrap_servers=broker.address, group_id=None)
            await consumer.start()
            consumer.assign([TopicPartition(topic, 0)])
            await consumer.getmany(timeout_ms=300)  # empty: the fetch routine is backing off
            started = time.monotonic()
            await asyncio.wait_for(consumer.stop(), 5)
            stops.append(time.monotonic() - started)
        return stops

    assert max(asyncio.run(scenario())) < 1.0


def test_the_user_table_reads_and_writes_a_partition_through_its_rocksdb(tmp_path):
    worker = build_app(replace(Settings(broker="127.0.0.1:1"), data_dir=tmp_path))
    table = worker.table
    db = faust_compat.partition_db(table, 2)
    db[b"u1"] = b"state-1"
    db[faust_compat.OFFSET_KEY] = b"41"  # faust's own record, never a user
    assert table.get_many({b"u1": 2, b"u2": 2}) == {b"u1": b"state-1", b"u2": None}
    assert table.partition_items(2) == [(b"u1", b"state-1")]
    assert list(faust_compat.partition_dbs(table)) == [2]
    db.close()
    (path,) = table_files(tmp_path)
    assert path.name == "user-state-2.db" and list(iter_raw(path)) == [(b"u1", b"state-1")]


def test_a_worker_is_built_in_process_from_settings_with_its_agents_timers_and_pages(tmp_path):
    worker = build_app(Settings(broker="127.0.0.1:1", data_dir=tmp_path, app_id="in-process"))
    assert set(worker.app.agents) == {"update_interests", "embed_items"}
    assert worker.app.conf.id == "in-process" and not worker.app.conf.web_tables_enabled
    other = build_app(Settings(broker="127.0.0.1:1", data_dir=tmp_path / "2", app_id="another"))
    assert other.app is not worker.app and other.app.conf.id == "another"


def test_the_user_table_counts_users_not_writes(tmp_path):
    """RocksDB's key estimate counts overwrites (the metric once read 68 for 17 users); the table counts
    each partition once, then follows its writes and deletes, and counts again after a recovery."""
    worker = build_app(replace(Settings(broker="127.0.0.1:1"), data_dir=tmp_path))
    table = worker.table
    # faust's own record, never a user
    faust_compat.partition_db(table, 1)[faust_compat.OFFSET_KEY] = b"7"

    async def scenario() -> None:  # the changelog sends want a running loop
        for round_ in range(5):  # the same three users written five times, a fourth once
            users = {b"u1": 1, b"u2": 1, b"u3": 3} | ({b"u4": 3} if round_ == 2 else {})
            table.get_many(users)
            table.set_many(
                {key: (partition, b"state-%d" % round_) for key, partition in users.items()}
            )
            assert table.users([1, 3]) == 3 + (round_ >= 2)
        assert table.users([1]) == 2 and table.users([3]) == 2 and table.users([0]) == 0
        table.delete_many({b"u2": 1})
        assert table.users([1]) == 1 and table.get_many({b"u2": 1}) == {b"u2": None}
        faust_compat.partition_db(table, 3)[b"u5"] = b"recovered"  # written by a changelog recovery
        await table.call_recover_callbacks()
        assert table.users([1, 3]) == 4

    asyncio.run(scenario())


def record_batch(codec: int, base: int, values: list[bytes]) -> bytes:
    """A record batch as a broker returns it in a fetch (aiokafka's own builder; ``codec``: Kafka's
    compression attribute, 0 none ... 4 zstd), starting at offset ``base``."""
    import struct

    from aiokafka.record.default_records import DefaultRecordBatchBuilder

    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=codec,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for delta, value in enumerate(values):
        builder.append(
            delta, timestamp=1_790_000_000_000 + delta, key=b"u1", value=value, headers=[]
        )
    batch = bytearray(builder.build())
    # the base offset, outside the CRC: the broker assigns it
    struct.pack_into(">q", batch, 0, base)
    return bytes(batch)


@pytest.mark.parametrize("fault", ["codec missing", "failed CRC"])
def test_an_undecodable_batch_is_delivered_as_stand_ins_and_the_next_batch_is_read(
    monkeypatch, fault
):
    """aiokafka's own fetch path (PartitionRecords over MemoryRecords): an lz4 batch that cannot be decoded
    becomes one stand-in per offset, each naming why; the gzip batch after it is read as usual."""
    import aiokafka.codec
    from aiokafka.consumer.fetcher import PartitionRecords
    from aiokafka.record.memory_records import MemoryRecords

    reported = []
    faust_compat.stand_in_for_undecodable_batches(
        lambda tp, first, end, exc: reported.append((first, end, type(exc).__name__))
    )
    data = bytearray(
        record_batch(3, 10, [b"a" * 50, b"b" * 50, b"c" * 50]) + record_batch(1, 13, [b"d", b"e"])
    )
    if fault == "codec missing":
        monkeypatch.setattr(aiokafka.codec, "has_lz4", lambda: False)
    else:
        data[80] ^= 0xFF  # a byte of the first batch's compressed records
    records = PartitionRecords(
        TopicPartition("clicks", 0), MemoryRecords(bytes(data)), [], 10, None, None, True, 0
    )
    got = [(r.offset, r.value, faust_compat.undecodable(r.headers)) for r in records]
    assert [(offset, value) for offset, value, _ in got] == [
        (10, None),
        (11, None),
        (12, None),
        (13, b"d"),
        (14, b"e"),
    ]
    assert all(why and "batch offsets 10-12" in why for _, _, why in got[:3]) and got[3][2] is None
    assert reported == [
        (10, 13, "UnsupportedCodecError" if fault == "codec missing" else "CorruptRecordException")
    ]
    assert records.next_fetch_offset == 15


def test_a_seek_runs_on_the_consumer_thread_and_moves_fausts_read_offset(tmp_path):
    """faust's own seek changes aiokafka's fetch buffers from the event loop's thread while the consumer
    thread reads them (a KeyError stopped a worker); ``faust_compat.seek`` hands it to that thread."""
    consumer = build_app(Settings(broker="127.0.0.1:1", data_dir=tmp_path)).app.consumer
    thread = consumer._thread
    handed = []

    async def call_thread(fun, *args):  # the consumer thread is not started without a broker
        handed.append((fun, args))

    thread.call_thread = call_thread
    tp = TP("clicks", 3)
    asyncio.run(faust_compat.seek(consumer, tp, 42))
    assert handed == [(thread.seek, (tp, 42))]
    assert consumer._read_offset[tp] == 42
