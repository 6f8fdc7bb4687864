"""The recommenders the evaluation compares the stream's models with: popular items, item-kNN, EASE, SASRec+
and the user's own re-buys, then popular; ``default_peers`` lists them, each with the grid it is tuned over.

Each follows ``models.recommender.Recommender``: built from the catalogue ``ids`` (an item's index is its
position) and its hyperparameters, it ``observe``s time-ordered events and ``scores`` one event per user:
[len(events), len(ids)] float32, higher is better, raw (excluding seen items is the evaluator's job).
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from models import sasrec
from models.longterm import decay_factor
from models.recommender import Recommender
from models.records import Event
from state.faults import InterestStreamError

# The score of an item a model learned nothing about (never seen in its training period): finite, below
# every learned score, so such items come last, in catalogue order.
FLOOR = np.finfo(np.float32).min
DAY = 86400.0


def most_popular(popularity: np.ndarray, k: int) -> np.ndarray:
    """Catalogue rows, ascending, of the (at most) ``k`` items with the most events (ties to the
    lower row)."""
    return np.sort(np.argsort(-popularity, kind="stable")[: min(k, np.count_nonzero(popularity))])


class Popular:
    """Most events in the last ``window_s`` of event time (all time if None), counts moving with the replay;
    every user gets the same scores."""

    name = "popular"
    independent_users = False

    def __init__(self, ids: list[str], window_s: float | None = None) -> None:
        self.window_s = window_s
        self.index = {i: n for n, i in enumerate(ids)}
        self.counts = np.zeros(len(ids), np.float32)
        self.window: deque[tuple[float, int]] = deque()

    def observe(self, events: list[Event]) -> None:
        for e in events:
            row = self.index[e.item_id]
            self.counts[row] += 1
            self.window.append((e.ts, row))
        if self.window_s is not None and events:
            while self.window and self.window[0][0] < events[-1].ts - self.window_s:
                self.counts[self.window.popleft()[1]] -= 1

    def scores(self, events: list[Event]) -> np.ndarray:
        return np.repeat(self.counts[None], len(events), axis=0)


class ItemKNN:
    """Item-to-item co-occurrence in the user histories seen so far, cosine-normalised; a user's score for an
    item is its summed similarity to their ``recent`` last distinct items, plus a popularity share below 1e-6
    that breaks ties (alone it ranks a user without history). Dense: N^2 float32 (2 GB at 22k items)."""

    name = "item-knn"
    independent_users = False

    def __init__(self, ids: list[str], recent: int = 20) -> None:
        self.recent = recent
        self.index = {i: n for n, i in enumerate(ids)}
        self.co = np.zeros((len(ids), len(ids)), np.float32)
        self.count = np.zeros(len(ids), np.float32)  # users who had the item
        self.history: dict[str, list[int]] = defaultdict(list)  # distinct items, oldest first

    def observe(self, events: list[Event]) -> None:
        for e in events:
            row, hist = self.index[e.item_id], self.history[e.user_id]
            if row in hist:
                continue
            self.co[row, hist] += 1
            self.co[hist, row] += 1
            self.count[row] += 1
            hist.append(row)

    def scores(self, events: list[Event]) -> np.ndarray:
        norm = np.sqrt(np.maximum(self.count, 1.0))
        out = np.empty((len(events), len(self.count)), np.float32)
        for b, e in enumerate(events):
            recent = self.history[e.user_id][-self.recent :]
            out[b] = (self.co[recent] / norm[recent, None]).sum(0) / norm if recent else 0.0
        return out + 1e-6 * self.count / max(self.count.max(), 1.0)


class EASE:
    """EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): item-item weights
    B = I - P diag(1 / diag(P)), P = (XᵀX + λI)⁻¹, the closed-form ridge regression of each item on the
    others with B's diagonal held at zero (the paper's eq. 8). A user's scores are x_u B.

    X is the binary user-item matrix (a re-buy leaves it unchanged) of the events observed before the first
    ``scores`` call (the training period); B is fitted then and frozen, over the ``max_items`` items with
    the most training events (ties to the lower catalogue index). Later events still grow x_u.
    Other items score
    ``FLOOR``; a user with none of B's items gets the items' training-period popularity.

    Cost: a dense M x M float32 Cholesky solve, M = min(max_items, items in X): two M x M matrices alive
    at once (M = 10,000: 0.8 GB) and about M³ flops. Measured on a busy 2-core machine, one torch thread:
    M = 1,616 0.2 s, M = 10,000 ~10 s; two threads were slower there (M = 19,868: six minutes), hence the
    cap. The items left out are the rarest: bought by one user, their column of B rests on that user's
    basket alone.
    """

    name = "EASE"
    # B is frozen at the first scores call; x_u holds the user's own events only
    independent_users = True

    def __init__(self, ids: list[str], reg_weight: float = 500.0, max_items: int = 10_000) -> None:
        self.ids, self.reg_weight, self.max_items = ids, reg_weight, max_items
        self.index = {item: n for n, item in enumerate(ids)}
        self.items: dict[str, set[int]] = defaultdict(set)  # catalogue rows each user had
        self.weights: np.ndarray | None = None  # B [M, M]
        # catalogue row -> B's row/column, -1 for items not in B
        self.column = np.full(len(ids), -1)
        self.popularity = np.zeros(len(ids), np.float32)

    def observe(self, events: list[Event]) -> None:
        for e in events:
            self.items[e.user_id].add(self.index[e.item_id])
            if self.weights is None:
                self.popularity[self.index[e.item_id]] += 1

    def fit(self) -> None:
        rows = most_popular(self.popularity, self.max_items)
        self.column[rows] = np.arange(len(rows))
        x = torch.zeros(len(self.items), len(rows))
        for u, items in enumerate(self.items.values()):
            x[u, self.column[list(items)]] = 1.0
        gram = x.T @ x
        gram.diagonal().add_(self.reg_weight)
        chol = torch.linalg.cholesky(gram)  # gram is symmetric positive definite: half an LU's work
        del gram  # M x M float32 each: at most two alive at once
        # LAPACK's column-major result; P is symmetric: this is P, row-major
        p = torch.cholesky_inverse(chol).mT
        del chol
        p.div_(-p.diagonal().clone())  # column j over -P_jj
        p.diagonal().zero_()
        self.weights = p.numpy()

    def scores(self, events: list[Event]) -> np.ndarray:
        if self.weights is None:
            self.fit()
        assert self.weights is not None
        known = self.column >= 0
        out = np.full((len(events), len(self.ids)), FLOOR, np.float32)
        for n, e in enumerate(events):
            cols = self.column[list(self.items.get(e.user_id, ()))]
            cols = cols[cols >= 0]
            out[n, known] = self.weights[cols].sum(0) if len(cols) else self.popularity[known]
        return out


class SASRecPlus:
    """SASRec+ (``models.sasrec``): a causal transformer over the user's last ``max_len`` items, its next-item
    scores as the dot product with each item's embedding.

    Trained at the first ``scores`` call on the events observed before it (the training period), then frozen;
    later events only extend the users' sequences. Only the ``max_items`` items with the most training events
    get an embedding (the full softmax costs M x dim per event: ~95% of an epoch at M = 20,000, 22 s an
    epoch on one busy core); the others score ``FLOOR`` and are left out of the sequences. A user with none
    of the embedded items gets the items' training-period popularity.
    """

    name = "SASRec+"
    independent_users = True  # frozen weights; a user's sequence holds their own events only

    def __init__(
        self, ids: list[str], config: sasrec.SASRecConfig, max_items: int = 10_000
    ) -> None:
        self.ids, self.config, self.max_items = ids, config, max_items
        self.index = {item: n for n, item in enumerate(ids)}
        self.items: dict[str, list[int]] = defaultdict(list)  # catalogue rows, oldest first
        self.times: dict[str, list[float]] = defaultdict(list)
        self.model: sasrec.SASRec | None = None
        # catalogue row -> the model's item number 1..M, 0 if none
        self.number = np.zeros(len(ids), np.int64)
        self.popularity = np.zeros(len(ids), np.float32)
        self.report: sasrec.FitReport | None = None

    def observe(self, events: list[Event]) -> None:
        for e in events:
            self.items[e.user_id].append(self.index[e.item_id])
            if self.model is None:
                self.times[e.user_id].append(e.ts)
                self.popularity[self.index[e.item_id]] += 1

    def fit(self) -> None:
        rows = most_popular(self.popularity, self.max_items)
        self.number[rows] = np.arange(1, len(rows) + 1)
        seqs, times = [], []
        for user, ts in self.times.items():
            numbers = self.number[self.items[user]]
            seqs.append(numbers[numbers > 0].tolist())
            times.append(np.asarray(ts)[numbers > 0].tolist())
        self.model, self.report = sasrec.fit(seqs, times, len(rows), self.config)
        self.times.clear()

    def scores(self, events: list[Event]) -> np.ndarray:
        if self.model is None:
            self.fit()
        assert self.model is not None
        known = self.number > 0
        out = np.full((len(events), len(self.ids)), FLOOR, np.float32)
        out[:, known] = self.popularity[known]
        seqs = [[int(i) for i in self.number[self.items.get(e.user_id, [])] if i] for e in events]
        warm = np.array([n for n, s in enumerate(seqs) if s], np.int64)
        if len(warm):
            out[np.ix_(warm, np.flatnonzero(known))] = self.model.last_logits(
                [seqs[n] for n in warm]
            ).numpy()
        return out


class OwnThenPopular:
    """The user's own most-bought items, then the popular ones: "personal top frequency" (P-TopFreq in Li et
    al., "A Next Basket Recommendation Reality Check", TOIS 2023; the personal item frequency of Hu et al.,
    SIGIR 2020), optionally time-decayed.

    score(i) = 1[c_u(i) > 0] + c_u(i) + p(i): c_u(i) the user's purchases of i, each weighted
    2^(-age / half_life) at the scored event's time (weight 1 without a half-life); p(i) = n(i) / (max n + 1)
    in [0, 1), n(i) the events on i in the last ``window_s`` of the replay (all of it if None). So the user's
    own items come first; without decay counts are whole and popularity only breaks their ties, with decay it
    weighs at most one fresh purchase. Events are counted as lines, not quantities: a quantity mixes units
    (items, weights, litres), a line is one decision to buy.
    """

    name = "own re-buys, then popular"
    independent_users = False  # popularity moves with the replay

    def __init__(
        self, ids: list[str], half_life_s: float | None = None, window_s: float | None = None
    ) -> None:
        self.ids, self.half_life_s = ids, half_life_s
        self.popular = Popular(ids, window_s)  # n(i)
        self.items: dict[str, list[int]] = defaultdict(list)  # catalogue rows, oldest first
        self.times: dict[str, list[float]] = defaultdict(list)

    def observe(self, events: list[Event]) -> None:
        self.popular.observe(events)
        for e in events:
            self.items[e.user_id].append(self.popular.index[e.item_id])
            self.times[e.user_id].append(e.ts)

    def scores(self, events: list[Event]) -> np.ndarray:
        counts = self.popular.counts.astype(np.float64)  # whole numbers: exact in either type
        out = np.tile(counts / (counts.max(initial=0.0) + 1.0), (len(events), 1))
        for n, e in enumerate(events):
            rows = self.items.get(e.user_id, [])
            if self.half_life_s is None:
                weights = np.ones(len(rows))
            else:
                weights = np.asarray(
                    decay_factor(e.ts - np.array(self.times[e.user_id]), self.half_life_s)
                )
            own = np.bincount(rows, weights, minlength=len(self.ids))
            out[n] += own + (own > 0)
        return out.astype(np.float32)


# Each grid: points of constructor keyword arguments (SASRec+'s: of its SASRecConfig), JSON values all, so a
# report can hand the chosen point to a later run (``with_params``).
POPULAR_GRID: list[dict[str, Any]] = [{"window_s": d * DAY} for d in (1, 7, 30)] + [
    {"window_s": None}
]
KNN_GRID: list[dict[str, Any]] = [{"recent": r} for r in (5, 20, 100)]
EASE_GRID: list[dict[str, Any]] = [{"reg_weight": r} for r in (50.0, 200.0, 500.0, 1000.0, 3000.0)]
SASREC_GRID: list[dict[str, Any]] = [{"dropout": d} for d in (0.2, 0.5)]
OWN_GRID: list[dict[str, Any]] = [
    {"half_life_s": h, "window_s": w}
    for h in (None, 7 * DAY, 30 * DAY)
    for w in (7 * DAY, 30 * DAY, None)
]


@dataclass(frozen=True)
class Peer:
    """A recommender to compare the models with: ``make(params)`` builds it afresh (nothing observed) for
    each point of ``grid``; of several points the one with the best validation NDCG@10 is kept
    (``models.evaluate.tune``), a single point is taken as given. ``seeded``: its result depends on the
    seed (trained from a random start); the others give the same result every run."""

    name: str
    make: Callable[[dict[str, Any]], Recommender]
    grid: list[dict[str, Any]]
    seeded: bool = False


def default_peers(ids: list[str], exclude_seen: bool = True, seed: int = 0) -> list[Peer]:
    """Popular items (window: a day, a week, 30 days or all time), item-kNN (the last 5, 20 or 100 items),
    EASE, SASRec+ (trained under ``seed``) and, only where re-buys count (not ``exclude_seen``: with the
    user's items excluded it would be popular items again), own re-buys then popular."""
    peers = [
        Peer(Popular.name, lambda p: Popular(ids, **p), POPULAR_GRID),
        Peer(ItemKNN.name, lambda p: ItemKNN(ids, **p), KNN_GRID),
        Peer(EASE.name, lambda p: EASE(ids, **p), EASE_GRID),
        Peer(
            SASRecPlus.name,
            lambda p: SASRecPlus(ids, sasrec.SASRecConfig(**p, seed=seed)),
            SASREC_GRID,
            seeded=True,
        ),
    ]
    if not exclude_seen:
        peers.append(Peer(OwnThenPopular.name, lambda p: OwnThenPopular(ids, **p), OWN_GRID))
    return peers


def with_params(peers: list[Peer], chosen: dict[str, dict[str, Any]]) -> list[Peer]:
    """``peers`` with the grid of each one ``chosen`` names cut to its given params (say, those an earlier
    run tuned): no tuning for those. Raises ``InterestStreamError`` for a name that is not one of
    ``peers``."""
    unknown = sorted(set(chosen) - {p.name for p in peers})
    if unknown:
        raise InterestStreamError(
            f"params given for {', '.join(unknown)}: not among the peers ({', '.join(p.name for p in peers)})"
        )
    return [replace(p, grid=[chosen[p.name]]) if p.name in chosen else p for p in peers]
