"""The user table: live in the worker (a faust Table read and written a micro-batch at a time), and on
disk for tools and tests that look at a stopped worker's state (faust's per-partition RocksDB files)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import cast

import faust
from faust.types import FutureMessage
from rocksdict import AccessType, Options, Rdict, WriteBatch

from state.faults import store_errors
from state.user_state import UserState, decode
from streams.faust_compat import OFFSET_KEY, partition_db, partition_dbs, table_files


class UserTable(faust.Table):
    """The faust table of user states (``app.Table``, with ``Table=UserTable`` in the app's settings).

    ``table[key]`` goes through several faust layers per key (~80 us per event here); a batch reads each
    partition's RocksDB with one multi-get and writes it with one WriteBatch, and sends the changelog
    records ``table[key] = value`` would. Their delivery futures are kept: faust's producer-buffer
    ``flush()`` gives up after 0.1 s without progress and misses a record in transit, so offsets could
    otherwise be committed before the state they produced reached the broker. RocksDB's failures are
    raised as ``StoreFailure`` (the disk's fault, not a message's).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._unconfirmed: list[FutureMessage] = []
        # Users per partition: counted by a scan the first time after a recovery (which writes the
        # partition behind our back), then kept by ``set_many``; RocksDB's own estimate counts overwrites.
        self._users: dict[int, int] = {}
        # keys the last ``get_many`` did not find: new users if set
        self._absent: set[bytes] = set()
        self.on_recover(self._recount)

    async def _recount(self) -> None:
        self._users.clear()

    def get_many(self, keys: dict[bytes, int]) -> dict[bytes, bytes | None]:
        """The stored value of each key (key -> its partition), None where there is none."""
        by_partition: dict[int, list[bytes]] = defaultdict(list)
        for key, partition in keys.items():
            by_partition[partition].append(key)
        found: dict[bytes, bytes | None] = {}
        with store_errors("user table"):
            for partition, batch in by_partition.items():
                found.update(zip(batch, partition_db(self, partition).get(batch), strict=True))
        self._absent = {key for key, value in found.items() if value is None}
        return found

    def set_many(self, values: dict[bytes, tuple[int, bytes]]) -> None:
        """Store each key's (partition, value) locally, then send it to the changelog."""
        self._write(values)

    def delete_many(self, keys: dict[bytes, int]) -> None:
        """Delete each key (key -> its partition) locally, then tombstone it on the changelog (faust's
        recovery deletes a key whose last changelog record is null, and compaction drops it)."""
        self._write({key: (partition, None) for key, partition in keys.items()})

    def _write(self, values: Mapping[bytes, tuple[int, bytes | None]]) -> None:
        """One WriteBatch per partition (None: delete the key), then the changelog records, and the
        users counted."""
        batches: dict[int, WriteBatch] = defaultdict(lambda: WriteBatch(raw_mode=True))
        for key, (partition, value) in values.items():
            if value is None:
                batches[partition].delete(key)
            else:
                batches[partition].put(key, value)
        with store_errors("user table"):
            for partition, batch in batches.items():
                partition_db(self, partition).write(batch)
        for key, (partition, value) in values.items():
            self._unconfirmed.append(self.send_changelog(partition, key, value))
            added = value is not None and key in self._absent
            self._absent.discard(key)
            if partition in self._users and (added or value is None):
                self._users[partition] += 1 if added else -1

    def partition_items(self, partition: int) -> list[tuple[bytes, bytes]]:
        """Every (key, value) stored for ``partition`` on this worker."""
        db = partition_dbs(self).get(partition)
        with store_errors("user table"):
            return [] if db is None else [(k, v) for k, v in db.items() if k != OFFSET_KEY]

    def users(self, partitions: Iterable[int]) -> int:
        """Users stored in ``partitions`` (those open on this worker) of the table."""
        dbs = partition_dbs(self)
        with store_errors("user table"):
            for partition in partitions:
                if partition in dbs and partition not in self._users:
                    self._users[partition] = sum(
                        1 for key in dbs[partition].keys() if key != OFFSET_KEY
                    )
        return sum(self._users.get(partition, 0) for partition in partitions if partition in dbs)

    def close_partitions(self) -> None:
        """Close every partition's RocksDB still open (faust's store drops them at its stop without
        closing them)."""
        dbs = partition_dbs(self)
        while dbs:
            dbs.popitem()[1].close()

    def changelog_sent(self) -> list[FutureMessage]:
        """Delivery futures of the changelog records sent since the last call."""
        sent, self._unconfirmed = self._unconfirmed, []
        return sent


# -- on disk, read-only ------------------------------------------------------------------------------------


@contextmanager
def _read_only(path: Path) -> Iterator[Rdict]:
    db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
    try:
        yield db
    finally:
        db.close()


def changelog_offset(path: Path) -> int:
    """How far into the changelog this copy of a partition is (faust's own record); -1 if it has none."""
    with _read_only(path) as db:
        raw = db.get(OFFSET_KEY)
    return -1 if raw is None else int(raw)


def latest_copies(paths: list[Path]) -> list[Path]:
    """One file per partition: where several workers hold it (the owner, standbys, a former owner),
    the copy furthest along the changelog."""
    best: dict[str, tuple[int, Path]] = {}
    for path in paths:
        offset = changelog_offset(path)
        if path.name not in best or offset > best[path.name][0]:
            best[path.name] = (offset, path)
    return sorted(path for _, path in best.values())


def iter_raw(path: Path) -> Iterator[tuple[bytes, bytes]]:
    with _read_only(path) as db:
        for key, value in db.items():
            if key != OFFSET_KEY:
                yield cast(bytes, key), cast(bytes, value)


def load_user_states(data_dir: Path) -> dict[str, UserState]:
    return {
        key.decode(): decode(value)
        for path in table_files(data_dir)
        for key, value in iter_raw(path)
    }
