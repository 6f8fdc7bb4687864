"""The worker's local data directory: one worker at a time, and damaged stores set aside at start.

Everything in it can be rebuilt from the broker (user-table partitions from their changelog, the item
store from the item-vectors topic), so a store RocksDB cannot open is moved to ``damaged/`` and started
afresh rather than failing every start.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import IO

from rocksdict import AccessType, Rdict

from state.faults import InterestStreamError

LOCK_FILE = ".lock"
DAMAGED_DIR = "damaged"


class DataDirInUse(InterestStreamError):
    pass


class UnusableDataDir(InterestStreamError):
    pass


def _unusable(data_dir: Path, exc: OSError) -> str:
    """What is wrong with a data directory that could not be made or written in, in words."""
    if isinstance(exc, FileExistsError) or (
        isinstance(exc, NotADirectoryError) and data_dir.is_file()
    ):
        return "is a file, not a directory"
    if isinstance(exc, NotADirectoryError):
        above = next((p for p in data_dir.parents if p.is_file()), None)
        return f"{above} above it is a file" if above else "a part of the path is not a directory"
    if isinstance(exc, PermissionError):
        return "cannot be made or written in (permission denied)"
    return f"cannot be made or written in ({exc.strerror or exc})"


def lock(data_dir: Path) -> IO[str]:
    """Take an exclusive lock on ``data_dir`` for as long as the returned file stays open (the process's
    life); raises ``DataDirInUse`` naming the holder's pid if another process has it, and
    ``UnusableDataDir`` if it is not a directory this process can make and write in."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        handle = open(data_dir / LOCK_FILE, "a+")
    except OSError as exc:
        raise UnusableDataDir(
            f"INTEREST_DATA_DIR={str(data_dir)!r}: {_unusable(data_dir, exc)}"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise DataDirInUse(
            f"data directory {data_dir} is in use by another worker (pid {holder}); "
            "give each worker its own INTEREST_DATA_DIR"
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def damaged(path: Path) -> str | None:
    """Why RocksDB cannot open the store at ``path`` (a lost .sst, a corrupt CURRENT...), None if it can."""
    try:
        # No options: rocksdict reads the store's own (raw or not); passing others would rewrite them.
        Rdict(str(path), access_type=AccessType.read_only()).close()
    except Exception as exc:  # noqa: BLE001 - rocksdict raises a plain Exception with RocksDB's status text
        return str(exc)
    return None


def set_aside(path: Path, data_dir: Path) -> Path:
    """Move a damaged store into ``data_dir/damaged/`` (kept for inspection) and return where it went."""
    target = data_dir / DAMAGED_DIR / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}"
    target.parent.mkdir(parents=True, exist_ok=True)
    path.rename(target)
    return target
