"""The in-memory item catalogue the stream scores against: ids, row index and embedding matrix."""

from __future__ import annotations

import zlib
from collections import OrderedDict
from itertools import repeat

import numpy as np
import torch

from state.item_store import ItemVector


def fingerprint(vector: np.ndarray) -> int:
    """CRC-32 of a vector's float32 bytes: what a user's history remembers of the vector it added, to
    notice that the item's vector changed since (an edited text, another encoder)."""
    return zlib.crc32(np.ascontiguousarray(vector, np.float32).tobytes())


class Catalogue:
    """Grows by doubling so adding items is amortised O(1) per row; ``version`` changes on every change,
    and each row remembers the version that last changed it, so that what is derived from the rows (the
    scorer's item space and index) can follow a row at a time (``changed_since``).

    ``space`` names the encoder the vectors come from (``ItemEncoder.space``). Each row keeps its vector's
    ``fingerprint``, and the catalogue remembers at which version each item's vector last came, changed or
    went (``changed_items_since``), so that the users whose long-term vectors hold an old one, or miss one
    that arrived, can be found.
    """

    def __init__(self, dim: int, space: str = "") -> None:
        self.dim = dim
        self.space = space
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self._rows = torch.zeros((1024, dim))
        self._changed_at = np.zeros(1024, np.int64)  # row -> the version that last changed it
        self._fingerprints = np.zeros(1024, np.uint32)  # row -> fingerprint of its vector
        # item -> version its vector last came, changed or went; oldest first
        self._changes: OrderedDict[str, int] = OrderedDict()
        self.version = 0

    def changed_since(self, version: int) -> np.ndarray:
        """Rows (of the current ``len(self)``) whose content changed after ``version``."""
        return np.flatnonzero(self._changed_at[: len(self.ids)] > version)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def embeddings(self) -> torch.Tensor:
        return self._rows[: len(self.ids)]

    def upsert(self, vectors: list[ItemVector]) -> None:
        """Add or replace items; all or none (a vector of another size raises ``ValueError`` first)."""
        for v in vectors:
            if v.vector.shape != (self.dim,):
                raise ValueError(f"item {v.item_id}: embedding size {v.vector.shape} != {self.dim}")
        if not vectors:
            return
        self.version += 1
        for v in vectors:
            row = self.index.get(v.item_id)
            new_fingerprint = fingerprint(v.vector)
            if row is None or self._fingerprints[row] != new_fingerprint:
                self._mark_changed(v.item_id)
            if row is None:
                row = self.index[v.item_id] = len(self.ids)
                self.ids.append(v.item_id)
                if row >= self._rows.shape[0]:
                    grown = torch.zeros((2 * self._rows.shape[0], self.dim))
                    grown[:row] = self._rows[:row]
                    self._rows = grown
                    self._changed_at = np.concatenate(
                        [self._changed_at, np.zeros_like(self._changed_at)]
                    )
                    self._fingerprints = np.concatenate(
                        [self._fingerprints, np.zeros_like(self._fingerprints)]
                    )
            self._rows[row] = torch.from_numpy(v.vector)
            self._changed_at[row] = self.version
            self._fingerprints[row] = new_fingerprint

    def remove(self, item_ids: list[str]) -> None:
        """Retire items: each one's row takes the last row's item, so rows stay dense. Unknown ids
        are ignored."""
        known = list(dict.fromkeys(item_id for item_id in item_ids if item_id in self.index))
        if not known:
            return
        self.version += 1
        for item_id in known:
            row = self.index.pop(item_id)
            self._mark_changed(item_id)
            last = len(self.ids) - 1
            if row != last:
                moved = self.ids[last]
                self.ids[row], self.index[moved] = moved, row
                self._rows[row] = self._rows[last]
                self._changed_at[row] = self.version
                self._fingerprints[row] = self._fingerprints[last]
            self.ids.pop()

    def _mark_changed(self, item_id: str) -> None:
        self._changes[item_id] = self.version
        self._changes.move_to_end(item_id)

    def changed_items_since(self, version: int) -> frozenset[str]:
        """Items added, given another vector, or retired after ``version``."""
        out = []
        # newest first: stops at the first one not after ``version``
        for item_id in reversed(self._changes):
            if self._changes[item_id] <= version:
                break
            out.append(item_id)
        return frozenset(out)

    def forget_changes(self, version: int) -> None:
        """Forget the changes up to ``version``: nobody will ask ``changed_items_since`` about them again."""
        while self._changes and next(iter(self._changes.values())) <= version:
            self._changes.popitem(last=False)

    def vectors(self, item_ids: list[str]) -> np.ndarray:
        return self._rows[[self.index[i] for i in item_ids]].numpy()

    def rows(self, item_ids: list[str]) -> np.ndarray:
        """int64 [len(item_ids)]: each item's row, -1 for an item the catalogue does not have."""
        return np.fromiter(map(self.index.get, item_ids, repeat(-1)), np.int64, len(item_ids))

    def fingerprints_at(self, rows: np.ndarray) -> np.ndarray:
        """uint32 [len(rows)]: the fingerprint of the vector at each of ``rows`` (all valid)."""
        return self._fingerprints[rows]
