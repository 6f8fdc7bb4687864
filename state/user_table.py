"""Read-only access to a worker's user table on disk (faust's per-partition RocksDB files).

For tools and tests that inspect state after a run: the worker itself goes through the faust table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rocksdict import AccessType, Options, Rdict

from state.user_state import UserState, decode

FAUST_OFFSET_KEY = b"__faust\0offset__"  # faust's own record of the changelog offset, in every partition file


def table_files(data_dir: Path, table: str = "user-state") -> list[Path]:
    return sorted(p for p in data_dir.rglob(f"{table}-*.db") if p.is_dir())


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
        raw = db.get(FAUST_OFFSET_KEY)
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
            if key != FAUST_OFFSET_KEY:
                yield key, value


def load_user_states(data_dir: Path) -> dict[str, UserState]:
    return {key.decode(): decode(value) for path in table_files(data_dir) for key, value in iter_raw(path)}
