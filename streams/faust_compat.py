"""Every use of faust's and aiokafka's private parts, in one place, checked at worker start.

Pinned in pyproject.toml: faust-streaming==0.15.3, aiokafka==0.14.0. Each use says why no public API
does the job. ``check()`` runs before the app is built and fails with the versions in its message if
any part is missing or has changed shape; tests/test_faust_compat.py drives each against the real
faust and aiokafka classes, so that an upgrade that stops calling a patched method is noticed.

- The user table's RocksDB, a partition at a time (``partition_db``, ``partition_dbs``): faust reads
  and writes one key at a time through several layers (~80 us per key); a micro-batch needs one
  multi-get and one WriteBatch per partition, and decay needs to iterate a partition.
- Commits capped at durable offsets (``cap_commits``): faust commits what its streams acknowledged, and
  it counts offset gaps as done; no setting or hook limits a commit to what the worker made durable.
- Client-side fetch back-off (``back_off_empty_fetches``): noida-db answers empty fetches at once
  instead of waiting ``fetch_max_wait_ms``, and faust exposes no aiokafka fetch setting that helps.
- faust's on-disk layout of a table (``OFFSET_KEY``, ``table_files``), for reading a stopped worker's
  state: its file names and offset key are not an API.
- A seek on the consumer's own thread (``seek``): faust's ``ThreadDelegateConsumer._seek`` calls the
  aiokafka consumer's ``seek`` from the caller's thread (the event loop), which deletes the fetcher's
  buffered records while the consumer thread iterates them (a ``KeyError`` in
  ``Fetcher.fetched_records`` that stops the worker, seen once in six fresh-clone runs); faust has no
  public seek that runs on that thread.
- Record batches that cannot be decoded (``stand_in_for_undecodable_batches``): aiokafka raises from the
  fetch (a codec it lacks, a failed CRC, corrupt compressed bytes) and the consumer, so the worker, stops
  at the same offset at every start; no setting or hook lets a consumer skip a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import weakref
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import aiokafka
import faust
from aiokafka.consumer.fetcher import Fetcher, PartitionRecords
from aiokafka.errors import CorruptRecordException
from faust.stores.rocksdb import Store as RocksDBStore
from faust.transport.consumer import Consumer, ThreadDelegateConsumer
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaDriverConsumer
from faust.types import TP
from faust.types.transports import ConsumerT

from state.faults import InterestStreamError

PINNED = {"faust-streaming": "0.15.3", "aiokafka": "0.14.0"}
# faust's record of a partition's changelog offset, in its RocksDB
OFFSET_KEY: bytes = RocksDBStore.offset_key


class IncompatibleLibrary(InterestStreamError):
    pass


def _parameters(fn: Callable) -> list[str]:
    return list(inspect.signature(fn).parameters)


def check() -> None:
    """Raise ``IncompatibleLibrary`` naming the installed versions if a private part used here changed."""
    problems = []
    expectations = [
        (RocksDBStore, "_db_for_partition", ["self", "partition"]),
        (Consumer, "_filter_committable_offsets", ["self", "tps"]),
        (Consumer, "_should_commit", ["self", "tp", "offset"]),
        (Fetcher, "_proc_fetch_request", ["self", "assignment", "node_id", "request"]),
        (
            PartitionRecords,
            "__init__",
            [
                "self",
                "tp",
                "records",
                "aborted_transactions",
                "fetch_offset",
                "key_deserializer",
                "value_deserializer",
                "check_crcs",
                "isolation_level",
            ],
        ),
    ]
    for owner, name, params in expectations:
        fn = getattr(owner, name, None)
        if fn is None or _parameters(fn) != params:
            problems.append(
                f"{owner.__module__}.{owner.__name__}.{name}({', '.join(params[1:])}) is gone or changed"
            )
    uses = [
        (RocksDBStore, "__init__", "self._dbs = "),
        (Consumer, "_commit_tps", "self._filter_committable_offsets("),
        (Fetcher, "_fetch_requests_routine", "self._proc_fetch_request("),
        (PartitionRecords, "_unpack_records", "records.next_batch()"),
        (PartitionRecords, "_unpack_records", ".validate_crc()"),
        (PartitionRecords, "_unpack_records", "for record in next_batch:"),
        (ThreadDelegateConsumer, "__init__", "self._thread = "),
        (ThreadDelegateConsumer, "_seek", "self._thread.seek("),
        (Consumer, "seek", "self._read_offset["),
    ]
    for owner, method, code in uses:
        if code not in inspect.getsource(getattr(owner, method)):
            problems.append(f"{owner.__name__}.{method} no longer does {code!r}")
    if (
        AIOKafkaDriverConsumer._filter_committable_offsets
        is not Consumer._filter_committable_offsets
    ):
        problems.append("faust's aiokafka Consumer overrides _filter_committable_offsets")
    if not isinstance(OFFSET_KEY, bytes):
        problems.append("faust's RocksDB store has no offset_key")
    if problems:
        installed = f"faust-streaming {faust.__version__}, aiokafka {aiokafka.__version__}"
        pinned = ", ".join(f"{name} {version}" for name, version in PINNED.items())
        raise IncompatibleLibrary(
            f"{installed} (this worker is written against {pinned}): "
            + "; ".join(problems)
            + ". Install the pinned versions (pip install -e .)."
        )


# -- seeking ---------------------------------------------------------------------------------------------


async def seek(consumer: ConsumerT, tp: TP, offset: int) -> None:
    """``consumer.seek(tp, offset)``, run on the thread that owns the aiokafka consumer (its fetcher's
    buffers are not safe to change from another thread); faust's own ``seek`` runs it on the caller's."""
    thread = consumer._thread  # type: ignore[attr-defined]
    await thread.call_thread(thread.seek, tp, offset)
    # as Consumer.seek does after its _seek: faust drops what it reads below its read offset
    consumer._read_offset[tp] = offset if offset else None  # type: ignore[attr-defined]


# -- the user table's RocksDB ----------------------------------------------------------------------------


def partition_db(table: faust.Table, partition: int):
    """The rocksdict ``Rdict`` holding ``partition`` of ``table`` on this worker (opened if need be)."""
    return table.data._db_for_partition(partition)  # type: ignore[attr-defined]


def partition_dbs(table: faust.Table) -> dict:
    """Every partition of ``table`` this worker has open: partition -> rocksdict ``Rdict``."""
    return table.data._dbs  # type: ignore[attr-defined]


def table_files(data_dir: Path, table: str = "user-state") -> list[Path]:
    """The RocksDB directories of ``table``'s partitions under a worker's data directory (faust names
    them ``<table>-<partition>.db``)."""
    return sorted(p for p in data_dir.rglob(f"{table}-*.db") if p.is_dir())


def table_partition(path: Path) -> int:
    """The partition a ``table_files`` directory holds."""
    return int(path.name.removesuffix(".db").rsplit("-", 1)[1])


def changelog_topic(app_id: str, table: str = "user-state") -> str:
    """faust's name for ``table``'s changelog topic."""
    return f"{app_id}-{table}-changelog"


# -- commits capped at durable offsets -------------------------------------------------------------------

# faust app -> (topics, durable offset of a TP)
_CAPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cap_commits(app: faust.App, topics: Iterable[str], durable: Callable[[TP], int | None]) -> None:
    """Make ``app``'s consumer commit a partition of ``topics`` at ``durable(tp)`` at most, and not at all
    while that is None; other partitions commit as faust decides. Several apps in one process each keep
    their own cap."""
    _CAPS[app] = (frozenset(topics), durable)
    if getattr(Consumer._filter_committable_offsets, "capped", False):
        return
    original = Consumer._filter_committable_offsets

    @functools.wraps(original)
    def committable(consumer: Consumer, tps: Iterable[TP]) -> dict[TP, int]:
        tps = list(tps)
        offsets = original(consumer, tps)  # also keeps faust's own bookkeeping of acks
        cap = _CAPS.get(consumer.app)
        if cap is None:
            return offsets
        capped_topics, durable_offset = cap
        for tp in tps:
            if tp.topic not in capped_topics:
                continue
            offset = durable_offset(tp)
            if offset is not None and consumer._should_commit(tp, offset):
                offsets[tp] = offset
            else:
                offsets.pop(tp, None)
        return offsets

    committable.capped = True  # type: ignore[attr-defined]
    Consumer._filter_committable_offsets = committable  # type: ignore[method-assign,assignment]


# -- client-side long polling ----------------------------------------------------------------------------


def back_off_empty_fetches(delay_s: float) -> None:
    """Make every aiokafka consumer of this process wait ``delay_s`` after a fetch that added no records
    (the node stays in flight meanwhile, so no other fetch is sent to it). Kafka holds a fetch until data
    arrives or ``fetch_max_wait_ms`` passes; noida-db answers at once, so an idle consumer would re-fetch
    in a tight loop (~0.8 core for an idle worker), at the cost of at most ``delay_s`` of latency."""
    if delay_s <= 0 or getattr(Fetcher._proc_fetch_request, "backs_off", False):
        return
    fetch = Fetcher._proc_fetch_request

    @functools.wraps(fetch)
    async def fetch_then_back_off(self, assignment, node_id, request) -> bool:
        added = await fetch(self, assignment, node_id, request)
        if not added:
            # Cancelled by close() or an unassignment: return as aiokafka's own fetch does. A CancelledError
            # escaping here fails Fetcher.close(), kills faust's consumer thread, and stop hangs 60 s.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(delay_s)
        return added

    fetch_then_back_off.backs_off = True  # type: ignore[attr-defined]
    Fetcher._proc_fetch_request = fetch_then_back_off  # type: ignore[method-assign,assignment]


# -- record batches that cannot be decoded ---------------------------------------------------------------

# on a stand-in record: why its batch could not be decoded
UNDECODABLE_HEADER = "interest-stream-undecodable"
# stand_in_for_undecodable_batches' report
_REPORT: list[Callable[[object, int, int, BaseException], None]] = []


def undecodable(headers: Iterable[tuple[str, bytes]] | Mapping[str, bytes] | None) -> str | None:
    """Why the batch of a stand-in record could not be decoded (from its headers: aiokafka's pairs or
    faust's); None for a real record."""
    pairs = headers.items() if isinstance(headers, Mapping) else headers or ()
    return next(
        (value.decode(errors="replace") for key, value in pairs if key == UNDECODABLE_HEADER), None
    )


class _StandIn:
    """A record in place of one that could not be decoded: its offset, no key, no value, and the reason
    in a header (what aiokafka's fetcher reads of a record)."""

    key = value = None
    checksum = None
    timestamp_type = 0

    def __init__(self, offset: int, timestamp: int, why: bytes) -> None:
        self.offset, self.timestamp = offset, timestamp
        self.headers = [(UNDECODABLE_HEADER, why)]


class _GuardedBatch:
    """A fetched record batch whose records, if they cannot be decoded, are stand-ins at the same offsets."""

    def __init__(
        self, batch, tp, report: Callable[[object, int, int, BaseException], None]
    ) -> None:
        self._batch, self._tp, self._report = batch, tp, report
        self._corrupt = False

    def __getattr__(self, name: str):
        return getattr(self._batch, name)

    def validate_crc(self) -> bool:
        self._corrupt = not self._batch.validate_crc()
        return True  # iterating says what is wrong, offset by offset, instead of the fetch raising

    def __next__(self):  # a control batch's marker (never compressed)
        return next(self._batch)

    def __iter__(self):
        first, end = self._batch.base_offset, self._batch.next_offset
        try:
            if self._corrupt:
                raise CorruptRecordException(f"invalid CRC of the batch at offset {first}")
            # decompresses: a codec missing or bad compressed bytes raise here
            records = list(self._batch)
        except Exception as exc:  # noqa: BLE001 - any way the batch fails to decode stays with it
            self._report(self._tp, first, end, exc)
            # aiokafka's name themselves
            said = (
                str(exc)
                if str(exc).startswith(type(exc).__name__)
                else f"{type(exc).__name__}: {exc}"
            )
            why = f"{said}; batch offsets {first}-{end - 1}".encode()[:500]
            return iter(
                [
                    _StandIn(offset, self._batch.first_timestamp or 0, why)
                    for offset in range(first, end)
                ]
            )
        return iter(records)


class _GuardedRecords:
    """A fetch response's record batches (aiokafka's ``MemoryRecords``), each guarded."""

    def __init__(
        self, records, tp, report: Callable[[object, int, int, BaseException], None]
    ) -> None:
        self._records, self._tp, self._report = records, tp, report

    def __getattr__(self, name: str):
        return getattr(self._records, name)

    def has_next(self) -> bool:
        return self._records.has_next()

    def next_batch(self):
        batch = self._records.next_batch()
        return None if batch is None else _GuardedBatch(batch, self._tp, self._report)


def stand_in_for_undecodable_batches(
    report: Callable[[object, int, int, BaseException], None],
) -> None:
    """Make every aiokafka consumer of this process deliver, for a record batch it cannot decode, one
    stand-in record per offset of the batch (no key, no value, ``UNDECODABLE_HEADER`` naming why), and go
    on with the next batch; ``report(tp, first offset, next offset, exception)`` is called once per
    batch, in the consumer's thread (the last ``report`` given, for every consumer). The stand-ins go
    through the ingestion boundary as any record does (each becomes a dead letter), so the partition moves
    on and its offsets are committed as usual."""
    _REPORT[:] = [report]
    if getattr(PartitionRecords.__init__, "guarded", False):
        return
    init = PartitionRecords.__init__

    @functools.wraps(init)
    def guarded_init(self, tp, records, *args, **kwargs) -> None:
        init(
            self,
            tp,
            _GuardedRecords(records, tp, lambda *failed: _REPORT[0](*failed)),
            *args,
            **kwargs,
        )

    guarded_init.guarded = True  # type: ignore[attr-defined]
    PartitionRecords.__init__ = guarded_init  # type: ignore[method-assign]
