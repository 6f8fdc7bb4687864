"""The in-memory item catalogue the stream scores against: ids, row index and embedding matrix."""

from __future__ import annotations

import numpy as np
import torch

from state.item_store import ItemVector


class Catalogue:
    """Grows by doubling so adding items is amortised O(1) per row; ``version`` changes on every change,
    and each row remembers the version that last changed it, so that what is derived from the rows (the
    scorer's item space and index) can follow a row at a time (``changed_since``)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self._rows = torch.zeros((1024, dim))
        self._changed_at = np.zeros(1024, np.int64)  # row -> the version that last changed it
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
            if row is None:
                row = self.index[v.item_id] = len(self.ids)
                self.ids.append(v.item_id)
                if row >= self._rows.shape[0]:
                    grown = torch.zeros((2 * self._rows.shape[0], self.dim))
                    grown[:row] = self._rows[:row]
                    self._rows = grown
                    self._changed_at = np.concatenate([self._changed_at, np.zeros_like(self._changed_at)])
            self._rows[row] = torch.from_numpy(v.vector)
            self._changed_at[row] = self.version

    def remove(self, item_ids: list[str]) -> None:
        """Retire items: each one's row takes the last row's item, so rows stay dense. Unknown ids are ignored."""
        known = list(dict.fromkeys(item_id for item_id in item_ids if item_id in self.index))
        if not known:
            return
        self.version += 1
        for item_id in known:
            row = self.index.pop(item_id)
            last = len(self.ids) - 1
            if row != last:
                moved = self.ids[last]
                self.ids[row], self.index[moved] = moved, row
                self._rows[row] = self._rows[last]
                self._changed_at[row] = self.version
            self.ids.pop()

    def vectors(self, item_ids: list[str]) -> np.ndarray:
        return self._rows[[self.index[i] for i in item_ids]].numpy()
