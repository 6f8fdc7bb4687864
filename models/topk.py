"""Score the whole catalogue for a batch of users with one matrix product and keep the top k."""

from __future__ import annotations

import torch


def top_k(queries: torch.Tensor, items: torch.Tensor, k: int, exclude: list[list[int]] | None = None):
    """queries [B, d] x items [N, d] -> (scores [B, k], indices [B, k]); ``exclude[b]`` rows get -inf."""
    scores = queries @ items.T
    if exclude:
        rows = [b for b, idx in enumerate(exclude) for _ in idx]
        cols = [i for idx in exclude for i in idx]
        if cols:
            scores[rows, cols] = float("-inf")
    k = min(k, items.shape[0])
    return torch.topk(scores, k, dim=-1)
