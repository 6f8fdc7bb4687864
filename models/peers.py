"""Published recommenders the evaluation compares the stream's models with: EASE, SASRec+ and the user's own
re-buys, then popular.

Each follows ``models.evaluate``'s ``Recommender``: built from the catalogue ``ids`` (an item's index is its
position) and its hyperparameters, it ``observe``s time-ordered events and ``scores`` one event per user:
[len(events), len(ids)] float32, higher is better, raw (excluding seen items is the evaluator's job). Each
has a ``GRID`` of constructor keyword arguments for the evaluator to tune over.
"""

from __future__ import annotations

from collections import defaultdict, deque

import numpy as np
import torch

from models import sasrec
from models.longterm import decay_factor
from models.records import Event

# The score of an item a model learned nothing about (never seen in its training period): finite, below
# every learned score, so such items come last, in catalogue order.
FLOOR = np.finfo(np.float32).min
DAY = 86400.0


def most_popular(popularity: np.ndarray, k: int) -> np.ndarray:
    """Catalogue rows, ascending, of the (at most) ``k`` items with the most events (ties to the lower row)."""
    return np.sort(np.argsort(-popularity, kind="stable")[: min(k, np.count_nonzero(popularity))])


class EASE:
    """EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019): item-item weights
    B = I - P diag(1 / diag(P)), P = (XᵀX + λI)⁻¹, the closed-form ridge regression of each item on the
    others with B's diagonal held at zero (the paper's eq. 8). A user's scores are x_u B.

    X is the binary user-item matrix (a re-buy leaves it unchanged) of the events observed before the first
    ``scores`` call (the training period); B is fitted then and frozen, over the ``max_items`` items with
    the most training events (ties to the lower catalogue index). Later events still grow x_u. Other items score
    ``FLOOR``; a user with none of B's items gets the items' training-period popularity.

    Cost: a dense M x M float32 Cholesky solve, M = min(max_items, items in X): two M x M matrices alive
    at once (M = 10,000: 0.8 GB) and about M³ flops. Measured on a busy 2-core machine, one torch thread:
    M = 1,616 0.2 s, M = 10,000 ~10 s; two threads were slower there (M = 19,868: six minutes), hence the
    cap. The items left out are the rarest: bought by one user, their column of B rests on that user's
    basket alone.
    """

    independent_users = True  # B is frozen at the first scores call; x_u holds the user's own events only

    def __init__(self, ids: list[str], reg_weight: float = 500.0, max_items: int = 10_000) -> None:
        self.name = "EASE"
        self.ids, self.reg_weight, self.max_items = ids, reg_weight, max_items
        self.index = {item: n for n, item in enumerate(ids)}
        self.items: dict[str, set[int]] = defaultdict(set)  # catalogue rows each user had
        self.weights: np.ndarray | None = None  # B [M, M]
        self.column = np.full(len(ids), -1)  # catalogue row -> B's row/column, -1 for items not in B
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
        p = torch.cholesky_inverse(chol).mT  # LAPACK's column-major result; P is symmetric: this is P, row-major
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

    independent_users = True  # frozen weights; a user's sequence holds their own events only

    def __init__(self, ids: list[str], config: sasrec.SASRecConfig, max_items: int = 10_000) -> None:
        self.name = "SASRec+"
        self.ids, self.config, self.max_items = ids, config, max_items
        self.index = {item: n for n, item in enumerate(ids)}
        self.items: dict[str, list[int]] = defaultdict(list)  # catalogue rows, oldest first
        self.times: dict[str, list[float]] = defaultdict(list)
        self.model: sasrec.SASRec | None = None
        self.number = np.zeros(len(ids), np.int64)  # catalogue row -> the model's item number 1..M, 0 if none
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
            out[np.ix_(warm, np.flatnonzero(known))] = self.model.last_logits([seqs[n] for n in warm]).numpy()
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

    independent_users = False  # popularity moves with the replay

    def __init__(self, ids: list[str], half_life_s: float | None = None, window_s: float | None = None) -> None:
        self.name = "own re-buys, then popular"
        self.ids, self.half_life_s, self.window_s = ids, half_life_s, window_s
        self.index = {item: n for n, item in enumerate(ids)}
        self.items: dict[str, list[int]] = defaultdict(list)  # catalogue rows, oldest first
        self.times: dict[str, list[float]] = defaultdict(list)
        self.counts = np.zeros(len(ids))
        self.window: deque[tuple[float, int]] = deque()

    def observe(self, events: list[Event]) -> None:
        for e in events:
            row = self.index[e.item_id]
            self.items[e.user_id].append(row)
            self.times[e.user_id].append(e.ts)
            self.counts[row] += 1
            self.window.append((e.ts, row))
        if self.window_s is not None and events:
            while self.window and self.window[0][0] < events[-1].ts - self.window_s:
                self.counts[self.window.popleft()[1]] -= 1

    def scores(self, events: list[Event]) -> np.ndarray:
        out = np.tile(self.counts / (self.counts.max(initial=0.0) + 1.0), (len(events), 1))
        for n, e in enumerate(events):
            rows = self.items.get(e.user_id, [])
            if self.half_life_s is None:
                weights = np.ones(len(rows))
            else:
                weights = np.asarray(decay_factor(e.ts - np.array(self.times[e.user_id]), self.half_life_s))
            own = np.bincount(rows, weights, minlength=len(self.ids))
            out[n] += own + (own > 0)
        return out.astype(np.float32)


EASE_GRID: list[dict[str, object]] = [{"reg_weight": r} for r in (50.0, 200.0, 500.0, 1000.0, 3000.0)]
SASREC_GRID: list[dict[str, object]] = [{"config": sasrec.SASRecConfig(dropout=d)} for d in (0.2, 0.5)]
OWN_GRID: list[dict[str, object]] = [{"half_life_s": h, "window_s": w} for h in (None, 7 * DAY, 30 * DAY)
                                     for w in (7 * DAY, 30 * DAY, None)]
