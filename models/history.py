"""A user's long-term history: what their decayed sum of item vectors is made of, kept so that the sum can
be recomputed with the current vectors when item vectors change (an edited text, another encoder, a
retired item).

``models.longterm`` keeps S(T) = sum over events e of w_e 2^(-(T - t_e)/h) v(item_e), t_e being the time the
sum counted the event at: its event time, or the user's newest time for a late event (``longterm.add``
decays nothing backwards), so t_e never decreases for a user. Grouped by item,
S(T) = sum over items i of W_i 2^(-(T - t_i)/h) v_i, with t_i the item's last touch and W_i its touches'
weights decayed-summed to t_i (W <- W 2^(-(t - t_i)/h) + w at each touch, the same formula). A history
(``state.user_state.History``) keeps (i, t_i, W_i, fingerprint of v_i, touches), bounded:
``record`` merges touches,
``prune`` drops what weighs least, ``recompute`` evaluates the sums with the catalogue's current vectors.
An item the catalogue does not have (retired, or not yet arrived in a catalogue still filling) keeps its
entry, outside the sum, until pruned: dropping it would lose it for good.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from models import longterm
from models.catalogue import Catalogue
from state.user_state import History

# An entry untouched for this many half-lives before the user's newest touch keeps under 1% of its weight.
HORIZON_HALF_LIVES = math.log2(100)
PRUNE_TO = 0.9  # a history past its cap is cut to this share of it
# The fingerprint of an entry whose item the catalogue did not have at the last recompute: its weight is
# not in the sum, and comes back into it when the item does (a CRC-32 of 0 is a 1-in-2^32 collision).
NOT_IN_SUM = 0


def record(
    history: History, item_id: str, t: float, weight: float, fingerprint: int, half_life_s: float
) -> bool:
    """Add a touch of ``item_id`` with ``weight``, counted at time ``t`` (unix seconds, never before the
    history's newest); True if the item is new to the history. A touch of an item whose vector changed
    since keeps the old fingerprint: its older weight was added with the old vector, so the history
    stays stale until it is recomputed (``is_stale``)."""
    try:
        i = history.items.index(item_id)
    except ValueError:
        history.items.append(item_id)
        history.times.append(t)
        history.weights.append(weight)
        history.fingerprints.append(fingerprint)
        history.counts.append(1)
        return True
    # longterm.decay_factor's formula in Python floats: numpy's per-call cost would dominate here,
    # once per event
    history.weights[i] = (
        history.weights[i] * 2.0 ** (-(t - history.times[i]) / half_life_s) + weight
    )
    history.times[i] = t
    history.counts[i] += 1
    return False


def prune(history: History, max_items: int, half_life_s: float) -> None:
    """Bound ``history`` after a new item joined it (as its newest entry): drop the entries untouched for
    ``HORIZON_HALF_LIVES`` before its newest touch; then, beyond ``max_items``, those of least decayed
    weight, never the newest, down to ``PRUNE_TO`` of ``max_items`` so that a user past the cap sorts
    their history once every ~tenth new item rather than at each. Relative to the newest touch, not the
    clock, so an idle user keeps theirs: every entry decays alike, and the average they make stays."""
    times = history.times
    newest = times[-1]
    horizon = newest - HORIZON_HALF_LIVES * half_life_s
    if len(times) <= max_items and min(times) >= horizon:
        return  # the usual case, at the cost of one min()
    at = np.array(times)
    kept = at >= horizon
    kept[-1] = True
    if kept.sum() > max_items:
        decayed = np.where(
            kept,
            np.array(history.weights) * longterm.decay_factor(newest - at, half_life_s),
            -np.inf,
        )
        decayed[-1] = np.inf
        kept[np.argsort(-decayed, kind="stable")[max(1, int(PRUNE_TO * max_items)) :]] = False
    history.keep(kept.tolist())


def weights_at(history: History, t: float, half_life_s: float) -> np.ndarray:
    """float64 [len(history)]: each entry's weight W_i decayed from its last touch to time ``t``
    (unix seconds)."""
    return np.array(history.weights, np.float64) * longterm.decay_factor(
        t - np.array(history.times), half_life_s
    )


def current_fingerprints(history: History, catalogue: Catalogue) -> tuple[np.ndarray, np.ndarray]:
    """Each entry's row (-1: the catalogue lacks the item) and the fingerprint its weight should have
    been added with now (``NOT_IN_SUM`` for a lacking item)."""
    rows = catalogue.rows(history.items)
    return rows, np.where(rows >= 0, catalogue.fingerprints_at(rows), NOT_IN_SUM).astype(np.uint32)


def is_stale(history: History, catalogue: Catalogue) -> bool:
    """Whether an entry of ``history`` is in the sum with another vector than its item's current one, in it
    while the catalogue lacks the item, or out of it while the catalogue has the item."""
    return bool(
        (
            current_fingerprints(history, catalogue)[1] != np.array(history.fingerprints, np.uint32)
        ).any()
    )


def recompute(
    histories: Sequence[History],
    at: np.ndarray,
    catalogue: Catalogue,
    half_life_s: float,
    device: torch.device,
) -> tuple[np.ndarray, np.ndarray]:
    """The long-term sums float32 [B, D] and weights float64 [B] of ``histories`` at event times ``at`` [B],
    with the catalogue's current vectors: one sparse [B, items] x [items, D] product on ``device`` (only
    the rows the histories use are moved there). Each history's fingerprints become the current vectors'
    (``NOT_IN_SUM`` for the items the catalogue lacks, left out of the sum)."""
    rows, users, decayed = [], [], []
    for b, history in enumerate(histories):
        r, fingerprints = current_fingerprints(history, catalogue)
        history.fingerprints[:] = fingerprints.tolist()
        present = r >= 0
        rows.append(r[present])
        users.append(np.full(int(present.sum()), b, np.int64))
        decayed.append(weights_at(history, at[b], half_life_s)[present])
    n = len(histories)
    if not n:
        return np.zeros((0, catalogue.dim), np.float32), np.zeros(0)
    user, weight = np.concatenate(users), np.concatenate(decayed).astype(np.float64)
    used, column = np.unique(np.concatenate(rows), return_inverse=True)
    vectors = catalogue.embeddings[torch.from_numpy(used)].to(device)  # [U, D]
    mix = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([user, column])),
        torch.from_numpy(weight.astype(np.float32)),
        # valid by construction
        (n, len(used)),
        device=device,
        check_invariants=False,
    )
    sums = (
        torch.sparse.mm(mix, vectors).cpu().numpy()
        if len(used)
        else np.zeros((n, catalogue.dim), np.float32)
    )
    return sums, np.bincount(user, weights=weight, minlength=n)
