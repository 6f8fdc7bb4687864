"""Models for unit tests with every score term switched on, so that a test of the scores catches
one left out."""

from __future__ import annotations

import torch

from models.interest import InterestModel, ModelConfig


def random_model(
    embed_dim: int,
    dim: int,
    hidden: int,
    known: list[str] | None = None,
    rebuys: bool = False,
    encoder: str = "t",
    seed: int = 0,
    trend_half_life_s: float = 0.0,
) -> InterestModel:
    """A random model whose learned parts are not at their (zero) start: a text bias, learned rows [E_i, B_i]
    for the ``known`` items (row 0, every other item's, stays zero) and, with ``rebuys``, a re-buy term
    with a constant and a count part (fresh, r(W, n) = log1p(W)); with ``trend_half_life_s``, a
    trend weight (fresh, 0)."""
    torch.manual_seed(seed)
    known = known or []
    model = InterestModel(
        ModelConfig(embed_dim, dim, hidden, encoder, len(known), rebuys, trend_half_life_s)
    )
    model.learn_items(known)
    with torch.no_grad():
        model.text_bias.weight.normal_(std=0.3)
        model.text_bias.bias.fill_(0.1)
        model.item_id.weight[1:].normal_(std=0.3)
        model.log_a_rebuy.fill_(0.4)
        model.c_rebuy.fill_(0.5)
        model.d_rebuy.fill_(0.3)
        if trend_half_life_s > 0:
            model.trend_weight.fill_(0.7)
    return model.eval()
