"""Scoring the catalogue for a batch of users: the item space (every item in the model's interest space)
kept in step with the catalogue a changed row at a time, and the top-k over it.

Below ``ann_min_items`` the top-k is exact: one matrix product with the whole item space (in bf16 with
exact rescoring where the CPU has native bf16, ``models.topk``). From ``ann_min_items`` on, candidates
come from an approximate nearest-neighbour index (faiss IVF with 8-bit scalar-quantised vectors, inner
product), 2k + the user's exclusions + 16 per user, and are rescored exactly against the fp32 item
space: scores are exact, the order is exact unless the index missed an item (recall@10 against exact
scoring is measured by ``benchmarks.scoring``). The index follows every upsert and retirement (IVF
supports removal); it is trained once, when the catalogue first reaches the size (a retrained index
needs a restart). On a CUDA device the exact product is cheap at any size and no index is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np
import torch

from models.catalogue import Catalogue
from models.hardware import cpu_has_bf16, pick_device
from models.interest import InterestModel
from models.topk import CANDIDATE_MARGIN, top_k

MIN_BF16_ITEMS = 2048  # below this the fp32 product is cheap already


@dataclass(frozen=True)
class ScoringConfig:
    bf16: bool = True  # exact scoring in bf16 (rescored in fp32) where the CPU has native bf16
    # from this catalogue size on (CPU), candidates come from the ANN index
    ann_min_items: int = 100_000
    ann_nprobe: int = 64  # IVF lists searched per query: recall against cost (benchmarks.scoring)
    device: str = "cpu"  # where the item space lives and the product runs: auto, cpu or cuda[:N]


def ivf_lists(n_items: int) -> int:
    """IVF lists for a catalogue: ~4 sqrt(n), faiss's usual guidance, within [64, 8192]."""
    return int(min(8192, max(64, 4 * math.sqrt(n_items))))


def padded(dim: int) -> int:
    return -(-dim // 16) * 16


class Scorer:
    def __init__(self, config: ScoringConfig) -> None:
        self.config = config
        self.device = pick_device(config.device)
        self._bf16 = config.bf16 and self.device.type == "cpu" and cpu_has_bf16()
        self._space = torch.zeros((0, 0))  # [capacity, dim]; rows [0, size) are the catalogue's
        self._coarse: torch.Tensor | None = None  # bf16 copy of the space, when it pays off
        self._size = 0
        self._model: InterestModel | None = None  # the model and catalogue version the space is of
        self._version = -1
        self.index: faiss.IndexIVFScalarQuantizer | None = None
        self._norm_cap = 0.0  # M of the inner-product-to-L2 transform
        # rows longer than M: candidates for every query
        self._outliers = torch.zeros(0, dtype=torch.int64)

    @property
    def space(self) -> torch.Tensor:
        """The item space [len(catalogue), dim] as of the last ``sync``."""
        return self._space[: self._size]

    def sync(self, catalogue: Catalogue, model: InterestModel) -> None:
        """Bring the item space and index up to date: everything for another model, else only the rows
        the catalogue changed since the last sync."""
        if self._model is model and self._version == catalogue.version:
            return
        size = len(catalogue)
        if self._model is not model:
            rows = np.arange(size)
            # headroom: growing copies the whole space (seconds at a million 384-d items)
            self._space = torch.zeros(
                (max(1024, size + size // 8), model.config.dim + 1), device=self.device
            )
            self.index, self._outliers = None, torch.zeros(0, dtype=torch.int64)
        else:
            rows = catalogue.changed_since(self._version)
            if size > self._space.shape[0]:
                grown = torch.zeros(
                    (max(size, 2 * self._space.shape[0]), self._space.shape[1]), device=self.device
                )
                grown[: self._size] = self._space[: self._size]
                self._space = grown
        if len(rows):
            picked = torch.from_numpy(rows)
            with torch.inference_mode():
                vectors = model.item_space(
                    catalogue.embeddings[picked], model.rows([catalogue.ids[r] for r in rows])
                )
                self._space[picked.to(self.device)] = vectors.to(self.device)
        old_size, self._size = self._size, size
        self._follow_index(rows, old_size)
        self._follow_coarse(rows)
        self._model, self._version = model, catalogue.version

    def _follow_coarse(self, changed: np.ndarray) -> None:
        """The bf16 copy for exact scoring, where it pays off: all rows when its size changes, else
        the changed."""
        if not self._bf16 or self.index is not None or self._size < MIN_BF16_ITEMS:
            self._coarse = None
        elif (
            self._coarse is None
            or len(self._coarse) != self._size
            or len(changed) > self._size // 4
        ):
            self._coarse = self.space.to(torch.bfloat16)
        elif len(changed):
            picked = torch.from_numpy(changed)
            self._coarse[picked] = self.space[picked].to(torch.bfloat16)

    def _follow_index(self, changed: np.ndarray, old_size: int) -> None:
        if self.device.type != "cpu":
            return
        if self.index is None:
            if self._size >= self.config.ann_min_items:
                self.index = self._train(self.space.numpy())
                self._add(np.arange(self._size))
            return
        # replaced rows, and rows gone
        stale = np.union1d(changed, np.arange(self._size, old_size)).astype(np.int64)
        if len(stale):
            self.index.remove_ids(stale)  # type: ignore[arg-type]  # faiss's stubs miss the array form
            self._outliers = self._outliers[~torch.isin(self._outliers, torch.from_numpy(stale))]
        self._add(changed)

    def _add(self, rows: np.ndarray) -> None:
        assert self.index is not None
        x = self.space[torch.from_numpy(rows)].numpy()
        inside = np.linalg.norm(x, axis=1) <= self._norm_cap
        self.index.add_with_ids(self._augment(x[inside]), rows[inside].astype(np.int64))
        self._outliers = torch.cat(
            [self._outliers, torch.from_numpy(rows[~inside].astype(np.int64))]
        )

    def _augment(self, vectors: np.ndarray, queries: bool = False) -> np.ndarray:
        """[n, dim] -> [n, padded(dim + 1)]: the extra coordinate makes every item's norm M, so L2 ranks by
        inner product (0 for queries); zeros pad to a multiple of 16, where faiss's SIMD distances apply."""
        out = np.zeros((len(vectors), padded(vectors.shape[1] + 1)), np.float32)
        out[:, : vectors.shape[1]] = vectors
        if not queries:
            out[:, vectors.shape[1]] = np.sqrt(
                np.maximum(self._norm_cap**2 - np.einsum("ij,ij->i", vectors, vectors), 0.0)
            )
        return out

    def _train(self, vectors: np.ndarray) -> faiss.IndexIVFScalarQuantizer:
        # headroom for items to come
        self._norm_cap = 1.25 * float(np.linalg.norm(vectors, axis=1).max())
        dim, lists = padded(vectors.shape[1] + 1), ivf_lists(len(vectors))
        index = faiss.IndexIVFScalarQuantizer(
            faiss.IndexFlatL2(dim), dim, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_L2
        )
        sample = vectors[
            np.random.default_rng(0).choice(
                len(vectors), min(len(vectors), 64 * lists), replace=False
            )
        ]
        index.train(self._augment(sample))
        index.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]  # removal by id without a scan
        index.nprobe = self.config.ann_nprobe
        return index

    def top_k(
        self,
        queries: torch.Tensor,
        k: int,
        exclude: list[list[int]] | None = None,
        boost: list[tuple[np.ndarray, np.ndarray]] | None = None,
        prior: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries [B, dim + 1] (``InterestModel.scoring_query``) -> (scores [B, k], rows [B, k]); excluded
        rows and missing candidates score -inf. ``boost[b]`` = (rows, amounts): those rows of user b score
        that much more (the re-buy term), unless excluded. Exact for them: they are left out of the search
        and scored one by one, then merged with its top k (so boosted or not, the k best are found).
        ``prior`` [N] (the trend term): added to every user's score of each row; with the ANN index, which
        ranks without it, every row with a prior is scored for every user besides the index's candidates
        (exact as before: a row without one scores what the index ranked it by; the cost grows with the
        rows touched within a few trend half-lives)."""
        prior = None if prior is None else prior.to(self.device)
        if not boost or not any(len(r) for r, _ in boost):
            return self._top_k(queries, k, exclude, prior)
        exclude = exclude or [[] for _ in boost]
        kept = [(r[~np.isin(r, ex)], a[~np.isin(r, ex)]) for (r, a), ex in zip(boost, exclude)]
        scores, rows = self._top_k(
            queries, k, [ex + r.tolist() for ex, (r, _) in zip(exclude, kept)], prior
        )
        width = max(len(r) for r, _ in kept)
        extra_rows = torch.zeros((len(kept), width), dtype=torch.long)
        extra = torch.full((len(kept), width), float("-inf"))
        for b, (r, a) in enumerate(kept):
            if len(r):
                extra_rows[b, : len(r)] = torch.from_numpy(r)
                extra[b, : len(r)] = (
                    self.space[extra_rows[b, : len(r)]].cpu() @ queries[b].cpu()
                ) + torch.from_numpy(a).float()
                if prior is not None:
                    extra[b, : len(r)] += prior[extra_rows[b, : len(r)].to(self.device)].cpu()
        merged, pos = torch.topk(
            torch.cat([scores, extra], 1), min(k, scores.shape[1] + width), dim=-1
        )
        return merged, torch.gather(torch.cat([rows, extra_rows], 1), 1, pos)

    def _top_k(
        self,
        queries: torch.Tensor,
        k: int,
        exclude: list[list[int]] | None,
        prior: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(k, self._size)
        if self.index is None:
            scores, rows = top_k(
                queries.to(self.device), self.space, k, exclude, self._coarse, prior
            )
            return scores.cpu(), rows.cpu()
        wanted = 2 * k + CANDIDATE_MARGIN + max((len(e) for e in exclude or ()), default=0)
        _, found = self.index.search(
            self._augment(queries.numpy(), queries=True), min(wanted, self._size)
        )
        found_rows = torch.from_numpy(found)
        # Scored for every query besides the index's candidates: the rows outside the index, and the rows with
        # a prior (the index ranks without it; a row without one scores what the index ranked it by)
        always = (
            self._outliers
            if prior is None
            else torch.unique(torch.cat([self._outliers, prior.nonzero().flatten()]))
        )
        # none, or scored with ``always``
        missing = (found_rows < 0) | torch.isin(found_rows, always)
        found_rows[missing] = 0
        rows = self.space.index_select(0, found_rows.reshape(-1)).view(*found_rows.shape, -1)
        candidates = torch.cat([found_rows, always.expand(len(found_rows), -1)], dim=1)
        # rescored in fp32
        exact = torch.cat(
            [(rows * queries.unsqueeze(1)).sum(-1), queries @ self.space[always].T], 1
        )
        if prior is not None:
            exact += prior[candidates]
        exact[:, : found_rows.shape[1]][missing] = float("-inf")
        for b, excluded in enumerate(exclude or ()):
            if excluded:
                exact[b, torch.isin(candidates[b], torch.tensor(excluded))] = float("-inf")
        scores, pos = torch.topk(exact, k, dim=-1)
        return scores, torch.gather(candidates, 1, pos)
