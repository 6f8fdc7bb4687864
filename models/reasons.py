"""Why a user got an item: its score split into named terms, and the user's recent item nearest to it.

Computed for the published top-k only, batched over users: a few dozen vectors per user, never the
catalogue. The parts are the query's terms (``InterestModel.query_parts``); a score term that is not of
the query joins them in ``explain`` as another named part (``item``, the item's bias; ``rebuy``, the re-buy
term; ``trend``, the trend term), so that the parts still add up to the score.
"""

from __future__ import annotations

import numpy as np
import torch

from models.records import Reason

NO_ITEM = -1  # a padding row in ``recent_rows``


def score_parts(
    query_parts: dict[str, torch.Tensor], items: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Each item's score split by query term: ``query_parts`` name -> [B, dim]
    (``InterestModel.query_parts``),
    ``items`` [B, k, dim] (user b's items in the interest space) -> name -> [B, k]. The parts add up to
    the score, sum(parts) . item, to float32 rounding."""
    return {name: (items * part.unsqueeze(1)).sum(-1) for name, part in query_parts.items()}


def nearest(
    items: torch.Tensor, rows: torch.Tensor, recent: torch.Tensor, recent_rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each of user b's items [B, k, dim] (catalogue rows [B, k]), the position among their recent
    items [B, R, dim] (rows [B, R], ``NO_ITEM`` for padding) of the most cosine-similar one other than the
    item itself, and that similarity: ([B, k] int64, -1 where there is none; [B, k] float, 0 there)."""
    if not recent.shape[1]:  # no user has a recent item
        return torch.full(rows.shape, -1), torch.zeros(rows.shape)
    unit = torch.nn.functional.normalize  # a zero vector stays zero: similarity 0
    # [B, k, R]; rounding aside
    similarity = torch.bmm(unit(items, dim=-1), unit(recent, dim=-1).transpose(1, 2)).clamp(
        -1.0, 1.0
    )
    usable = (recent_rows != NO_ITEM).unsqueeze(1) & (recent_rows.unsqueeze(1) != rows.unsqueeze(2))
    best, position = similarity.masked_fill(~usable, float("-inf")).max(-1)
    none = best == float("-inf")
    return position.masked_fill(none, -1), best.masked_fill(none, 0.0)


def padded_rows(rows: list[list[int]]) -> torch.Tensor:
    """Each user's catalogue rows as one [B, R] int64 tensor, R the longest list, ``NO_ITEM`` after
    the end."""
    out = np.full((len(rows), max(map(len, rows), default=0)), NO_ITEM, np.int64)
    for b, user_rows in enumerate(rows):
        out[b, : len(user_rows)] = user_rows
    return torch.from_numpy(out)


def explain(
    query_parts: dict[str, torch.Tensor],
    space: torch.Tensor,
    rows: torch.Tensor,
    recent_rows: list[list[int]],
    ids: list[str],
    rebuy: list[tuple[np.ndarray, np.ndarray]] | None = None,
    trend: torch.Tensor | None = None,
) -> list[list[Reason]]:
    """The reason for each recommended item: ``query_parts`` name -> [B, dim] on the CPU, ``space`` the
    item space [N, dim + 1] (vectors, then biases: ``InterestModel.item_space``; any device), ``rows`` [B, k]
    the recommended rows (CPU), ``recent_rows`` each user's recent items' rows, ``ids`` row -> item id,
    ``rebuy`` each user's re-buy terms (rows, amounts) as ``Scorer.top_k`` added them, ``trend`` [N] the trend
    term of every row. The parts are the query's terms, ``item`` (the item's bias: its popularity over the
    training period) and, with ``rebuy`` and ``trend``, ``rebuy`` and ``trend`` (its recent popularity)."""

    def vectors(at: torch.Tensor) -> torch.Tensor:  # [B, n] rows -> [B, n, dim + 1] on the CPU
        return (
            space.index_select(0, at.reshape(-1).to(space.device))
            .view(*at.shape, space.shape[1])
            .cpu()
        )

    recent = padded_rows(recent_rows)
    items = vectors(rows)
    named = {**score_parts(query_parts, items[..., :-1]), "item": items[..., -1]}
    if rebuy is not None:
        amounts = torch.zeros(rows.shape)
        for b, (boosted, amount) in enumerate(rebuy):
            at = {int(r): float(a) for r, a in zip(boosted, amount)}
            amounts[b] = torch.tensor([at.get(int(r), 0.0) for r in rows[b]])
        named["rebuy"] = amounts
    if trend is not None:
        named["trend"] = trend.cpu()[rows]
    # + 0.0: no -0.0 (a negative weight times 0)
    parts = {name: (part + 0.0).numpy().tolist() for name, part in named.items()}
    position, similarity = nearest(
        items[..., :-1], rows, vectors(recent.clamp(min=0))[..., :-1], recent
    )
    return [
        [
            Reason(
                ids[recent_rows[b][p]] if p >= 0 else None,
                sim,
                {name: parts[name][b][j] for name in parts},
            )
            for j, (p, sim) in enumerate(zip(position_b, similarity_b))
        ]
        for b, (position_b, similarity_b) in enumerate(
            zip(position.numpy().tolist(), similarity.numpy().tolist())
        )
    ]
