"""Score the whole catalogue for a batch of users with one matrix product and keep the top k."""

from __future__ import annotations

from itertools import chain

import numpy as np
import torch

CANDIDATE_MARGIN = 16  # extra bf16 candidates per row, beyond 2k, rescored exactly


def top_k(
    queries: torch.Tensor,
    items: torch.Tensor,
    k: int,
    exclude: list[list[int]] | None = None,
    coarse_items: torch.Tensor | None = None,
    prior: torch.Tensor | None = None,
):
    """queries [B, d] x items [N, d] (+ ``prior`` [N], added to every user's scores) -> (scores [B, k],
    indices [B, k]); ``exclude[b]`` rows get -inf.

    ``coarse_items`` (``items`` in bf16) scores the catalogue in bf16, ~3x faster where the CPU has native
    bf16, then rescores each row's best 2k + 16 candidates in fp32: scores are exact, and so is the order
    unless more than k + 16 items sit within bf16 rounding (~0.4%) of the k-th score.
    """
    k = min(k, items.shape[0])
    if coarse_items is None:
        scores = queries @ items.T
        if prior is not None:
            scores += prior
        _exclude(scores, exclude)
        return torch.topk(scores, k, dim=-1)
    coarse = queries.to(coarse_items.dtype) @ coarse_items.T
    if prior is not None:
        coarse += prior.to(coarse.dtype)
    _exclude(coarse, exclude)
    best, candidates = torch.topk(coarse, min(2 * k + CANDIDATE_MARGIN, items.shape[0]), dim=-1)
    # index_select + multiply-sum: ~2x faster than items[candidates] with bmm (a batched
    # matrix-vector product)
    rows = items.index_select(0, candidates.reshape(-1)).view(*candidates.shape, -1)
    exact = (rows * queries.unsqueeze(1)).sum(-1)
    if prior is not None:
        exact += prior[candidates]
    exact[best == float("-inf")] = float("-inf")  # excluded items stay excluded in small catalogues
    scores, pos = torch.topk(exact, k, dim=-1)
    return scores, torch.gather(candidates, 1, pos)


def _exclude(scores: torch.Tensor, exclude: list[list[int]] | None) -> None:
    if exclude:
        # index tensors, not lists: torch converts a Python list index element by element (~0.4 us each)
        rows = np.repeat(np.arange(len(exclude)), [len(idx) for idx in exclude])
        cols = np.fromiter(chain.from_iterable(exclude), np.int64, len(rows))
        if len(cols):
            scores[torch.from_numpy(rows), torch.from_numpy(cols)] = float("-inf")
