"""Long-term interest: an exponentially time-decayed, weighted average of item embeddings.

Kept as a decayed sum S and a decayed weight W (the average is S / W). Decaying both by the same factor
leaves the average unchanged but shrinks W, the evidence behind it, which the fusion uses as confidence:
a user idle for many half-lives falls back to their short-term interest.
"""

from __future__ import annotations

import numpy as np


def decay_factor(elapsed_s: np.ndarray | float, half_life_s: float) -> np.ndarray | float:
    """2^(-elapsed / half_life); time running backwards (late events) decays nothing."""
    return np.exp2(-np.maximum(elapsed_s, 0.0) / half_life_s)


def decay_to(
    lt_sum: np.ndarray,
    lt_weight: np.ndarray,
    lt_time: np.ndarray,
    now: np.ndarray,
    half_life_s: float,
):
    """Decay batched sums [B, D], weights [B] and times [B] to ``now`` [B]; returns new (sum,
    weight, time)."""
    f = np.asarray(decay_factor(now - lt_time, half_life_s))
    return lt_sum * f[:, None].astype(np.float32), lt_weight * f, np.maximum(lt_time, now)


def add(lt_sum, lt_weight, lt_time, now, embeddings, weights, half_life_s: float):
    """Decay to the events' times, then add each event's embedding with its weight (all batched)."""
    s, w, t = decay_to(lt_sum, lt_weight, lt_time, now, half_life_s)
    return s + embeddings * weights[:, None].astype(np.float32), w + weights, t
