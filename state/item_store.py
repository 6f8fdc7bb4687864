"""Item embeddings: their wire/storage encoding and the local RocksDB store every worker keeps.

The embedding agent publishes each embedded item once to the compacted item-vectors topic; every worker
reads that whole topic into this store (and its in-memory catalogue), remembering how far it has read, so
a restart resumes where it stopped instead of re-reading or re-embedding the catalogue.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from rocksdict import Rdict

_HEADER = struct.Struct("<16sI")  # text hash, vector length
_OFFSET_PREFIX = b"\x00offset:"  # never a valid item key: item keys are UTF-8 ids without NUL


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


@dataclass(frozen=True)
class ItemVector:
    item_id: str
    text_hash: bytes
    vector: np.ndarray  # float32 [D], L2-normalised

    def encode(self) -> bytes:
        vec = np.ascontiguousarray(self.vector, np.float32)
        return _HEADER.pack(self.text_hash, vec.size) + vec.tobytes()

    @classmethod
    def decode(cls, item_id: str, raw: bytes) -> "ItemVector":
        digest, n = _HEADER.unpack_from(raw)
        return cls(item_id, digest, np.frombuffer(raw, np.float32, n, _HEADER.size).copy())


class ItemStore:
    """RocksDB (rocksdict) map item id -> ItemVector, plus the item-vectors topic offsets read so far."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = Rdict(str(path))

    def put_many(self, vectors: list[ItemVector], offsets: dict[int, int]) -> None:
        for v in vectors:
            self._db[v.item_id.encode()] = v.encode()
        for partition, offset in offsets.items():
            self._db[_OFFSET_PREFIX + str(partition).encode()] = str(offset).encode()

    def get(self, item_id: str) -> ItemVector | None:
        raw = self._db.get(item_id.encode())
        return None if raw is None else ItemVector.decode(item_id, raw)

    def offsets(self) -> dict[int, int]:
        """Next offset to read per item-vectors partition."""
        out = {}
        for key, value in self._db.items(from_key=_OFFSET_PREFIX):
            if not key.startswith(_OFFSET_PREFIX):
                break
            out[int(key[len(_OFFSET_PREFIX) :])] = int(value)
        return out

    def __iter__(self) -> Iterator[ItemVector]:
        for key, value in self._db.items():
            if not key.startswith(b"\x00"):
                yield ItemVector.decode(key.decode(), value)

    def close(self) -> None:
        self._db.close()
