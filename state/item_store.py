"""Item embeddings: their wire/storage encoding and the local RocksDB store every worker keeps.

The embedding agent publishes each embedded item once to the compacted item-vectors topic; every worker
reads that whole topic into this store (and its in-memory catalogue), remembering how far it has read, so
a restart resumes where it stopped instead of re-reading or re-embedding the catalogue. The store also
keeps the worker's trend counts across restarts (``models.trending``).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, cast

import numpy as np
from rocksdict import Rdict, WriteBatch

from state.faults import require_finite, store_errors

_HEADER = struct.Struct("<16sI")  # text hash, vector length
_OFFSET_PREFIX = b"\x00offset:"  # never a valid item key: item keys are UTF-8 ids without NUL
_SOURCE_KEY = b"\x00source"
_TRENDING_KEY = b"\x00trending"


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


@dataclass(frozen=True)
class ItemVector:
    item_id: str
    text_hash: bytes
    vector: np.ndarray  # float32 [D], L2-normalised

    def encode(self) -> bytes:
        """Raises ``NonFinite`` rather than publish a vector with a NaN or an infinity."""
        vec = np.ascontiguousarray(self.vector, np.float32)
        require_finite(f"the vector of item {self.item_id!r}", vec)
        return _HEADER.pack(self.text_hash, vec.size) + vec.tobytes()

    @classmethod
    def decode(cls, item_id: str, raw: bytes, dim: int | None = None) -> "ItemVector":
        """Raises ``ValueError`` (``NonFinite`` among them) for a record that is not a finite vector of
        ``dim`` numbers (any size if None): the item-vectors topic is open to any producer."""
        if len(raw) < _HEADER.size:
            raise ValueError(f"item {item_id!r}: {len(raw)} bytes are not a vector record")
        digest, n = _HEADER.unpack_from(raw)
        if (dim is not None and n != dim) or len(raw) != _HEADER.size + 4 * n:
            raise ValueError(
                f"item {item_id!r}: {len(raw)} bytes are not a {dim or n}-d vector record"
            )
        vector = np.frombuffer(raw, np.float32, n, _HEADER.size).copy()
        require_finite(f"the vector of item {item_id!r}", vector)
        return cls(item_id, digest, vector)


class ItemStore:
    """RocksDB (rocksdict) map item id -> ItemVector, plus the item-vectors topic offsets read so far and
    the source they come from (the topic and the encoder's space). Its writes raise ``StoreFailure`` when
    RocksDB fails."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._db = Rdict(str(path))

    def source(self) -> str | None:
        """What ``reset`` named the store's source; None for a store from before sources were recorded."""
        raw = self._db.get(_SOURCE_KEY)
        return None if raw is None else cast(bytes, raw).decode()

    def reset(self, source: str) -> None:
        """Empty the store (vectors and offsets) to fill it from ``source``."""
        self._db.close()
        Rdict.destroy(str(self._path))
        self._db = Rdict(str(self._path))
        with store_errors("item store"):
            self._db[_SOURCE_KEY] = source.encode()

    def apply(self, vectors: list[ItemVector], retired: list[str], offsets: dict[int, int]) -> None:
        """Store ``vectors``, delete the ``retired`` item ids, and remember how far the topic was read,
        in one atomic write."""
        batch = WriteBatch()
        for v in vectors:
            batch.put(v.item_id.encode(), v.encode())
        for item_id in retired:
            batch.delete(item_id.encode())
        for partition, offset in offsets.items():
            batch.put(_OFFSET_PREFIX + str(partition).encode(), str(offset).encode())
        with store_errors("item store"):
            self._db.write(batch)

    def trending(self) -> bytes | None:
        """What ``save_trending`` saved last (``models.trending.Trending.to_bytes``); None if nothing."""
        raw = self._db.get(_TRENDING_KEY)
        return None if raw is None else cast(bytes, raw)

    def save_trending(self, raw: bytes) -> None:
        with store_errors("item store"):
            self._db[_TRENDING_KEY] = raw

    def get(self, item_id: str) -> ItemVector | None:
        raw = self._db.get(item_id.encode())
        return None if raw is None else ItemVector.decode(item_id, raw)

    def offsets(self) -> dict[int, int]:
        """Next offset to read per item-vectors partition."""
        out = {}
        for key, value in self._db.items(from_key=_OFFSET_PREFIX):
            key = cast(bytes, key)
            if not key.startswith(_OFFSET_PREFIX):
                break
            out[int(key[len(_OFFSET_PREFIX) :])] = int(cast(bytes, value))
        return out

    def __iter__(self) -> Iterator[ItemVector]:
        for key, value in self._db.items():
            key = cast(bytes, key)
            if not key.startswith(b"\x00"):
                yield ItemVector.decode(key.decode(), cast(bytes, value))

    def close(self) -> None:
        self._db.close()
