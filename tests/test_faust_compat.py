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
    assert "faust-streaming 0.15.3, aiokafka 0.14.0" in str(failure.value) and "_db_for_partition" in str(failure.value)


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
            consumer.ack(Message(tp.topic, tp.partition, offset, time.time(), 0, [], b"k", b"v", None))

    progress.start(clicks, 0)
    for offset in range(20):
        progress.admit(clicks, offset)
    asyncio.run(consumer.commit())
    assert committed == [{clicks: 0, ticks: 7}]  # clicks: 20 admitted, none durable yet; ticks as faust decides
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
    faust_compat.partition_db(table, 1)[faust_compat.OFFSET_KEY] = b"7"  # faust's own record, never a user

    async def scenario() -> None:  # the changelog sends want a running loop
        for round_ in range(5):  # the same three users written five times, a fourth once
            users = {b"u1": 1, b"u2": 1, b"u3": 3} | ({b"u4": 3} if round_ == 2 else {})
            table.get_many(users)
            table.set_many({key: (partition, b"state-%d" % round_) for key, partition in users.items()})
            assert table.users([1, 3]) == 3 + (round_ >= 2)
        assert table.users([1]) == 2 and table.users([3]) == 2 and table.users([0]) == 0
        table.delete_many({b"u2": 1})
        assert table.users([1]) == 1 and table.get_many({b"u2": 1}) == {b"u2": None}
        faust_compat.partition_db(table, 3)[b"u5"] = b"recovered"  # written by a changelog recovery
        await table.call_recover_callbacks()
        assert table.users([1, 3]) == 4

    asyncio.run(scenario())
