"""The in-memory item catalogue the stream scores against: ids, row index and embedding matrix."""

from __future__ import annotations

import numpy as np
import torch

from state.item_store import ItemVector


class Catalogue:
    """Grows by doubling so adding items is amortised O(1) per row; ``version`` changes on every change."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.ids: list[str] = []
        self.index: dict[str, int] = {}
        self._rows = torch.zeros((1024, dim))
        self.version = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def embeddings(self) -> torch.Tensor:
        return self._rows[: len(self.ids)]

    def upsert(self, vectors: list[ItemVector]) -> None:
        for v in vectors:
            if v.vector.shape != (self.dim,):
                raise ValueError(f"item {v.item_id}: embedding size {v.vector.shape} != {self.dim}")
            row = self.index.get(v.item_id)
            if row is None:
                row = self.index[v.item_id] = len(self.ids)
                self.ids.append(v.item_id)
                if row >= self._rows.shape[0]:
                    grown = torch.zeros((2 * self._rows.shape[0], self.dim))
                    grown[:row] = self._rows[:row]
                    self._rows = grown
            self._rows[row] = torch.from_numpy(v.vector)
        if vectors:
            self.version += 1

    def remove(self, item_ids: list[str]) -> None:
        """Retire items: each one's row takes the last row's item, so rows stay dense. Unknown ids are ignored."""
        removed = False
        for item_id in item_ids:
            row = self.index.pop(item_id, None)
            if row is None:
                continue
            last = len(self.ids) - 1
            if row != last:
                moved = self.ids[last]
                self.ids[row], self.index[moved] = moved, row
                self._rows[row] = self._rows[last]
            self.ids.pop()
            removed = True
        if removed:
            self.version += 1

    def vectors(self, item_ids: list[str]) -> np.ndarray:
        return self._rows[[self.index[i] for i in item_ids]].numpy()
