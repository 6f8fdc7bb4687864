"""Prequential evaluation: replay the held-out, later part of the log in time order through the stream's code.

Every model is warmed on the training period with ``InterestUpdater.apply`` (the worker's data path); then,
for each test event, the top-k the stream published for that user after their previous event (which is
``InterestUpdater.recommend`` on their state: full catalogue, no sampled negatives) is scored against the
event's item, and only then is the event applied. (The worker's decay timer republishes nothing, so no decay
runs between events here either.) Baselines replay the same events, with the same exclusion.

Exclusion: with ``exclude_seen`` every item the user already had is removed from their list, for every
model and baseline alike (``recent_items`` is raised to the catalogue size so "recent" means all). This is
the realistic setting for MovieLens, where a user rates a film once; a model that re-recommends seen films
would only lose slots. One target per event, so Recall@20 equals HR@20.
"""

from __future__ import annotations

import copy
from collections import defaultdict, deque
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from models.catalogue import Catalogue
from models.interest import InterestModel
from models.records import CatalogueItem, Event
from models.updater import Delivered, InterestUpdater, UpdaterConfig
from state.item_store import ItemVector, text_hash
from state.user_state import UserState

K = 20  # the deepest cut-off among the metrics: every list shown has this many items
WARM_CHUNK = 8192  # training-period events per warm-up batch (any size gives the same states)
METRICS = ("HR@10", "NDCG@10", "Recall@20", "MRR@20")


def rank_metrics(ranks: np.ndarray) -> dict[str, float | None]:
    """``ranks``: 1-based position of each event's item in the list shown before it, 0 if not in the top 20."""
    r = np.asarray(ranks, float)
    if not len(r):
        return {**dict.fromkeys(METRICS), "events": 0}  # undefined, not zero
    hit10, hit20 = (r >= 1) & (r <= 10), r >= 1
    safe = np.where(hit20, r, 1.0)
    return {
        "HR@10": float(hit10.mean()),
        "NDCG@10": float(np.where(hit10, 1.0 / np.log2(safe + 1), 0.0).mean()),
        "Recall@20": float(hit20.mean()),  # == HR@20: one target per event
        "MRR@20": float(np.where(hit20, 1.0 / safe, 0.0).mean()),
        "events": int(len(r)),
    }


def ranks_of(lists: list[list[str]], events: list[Event]) -> np.ndarray:
    return np.array([items.index(e.item_id) + 1 if e.item_id in items else 0 for items, e in zip(lists, events)])


class Recommender(Protocol):
    name: str
    independent_users: bool  # a user's lists depend on their own events only: any per-user-ordered packing is exact

    def observe(self, events: list[Event]) -> None:
        """Apply time-ordered events (several per user allowed)."""

    def recommend(self, events: list[Event]) -> list[list[str]]:
        """The top-K each event's user is shown before it (one event per user)."""


class StreamRecommender:
    """An InterestModel served exactly as the worker serves it: ``apply`` per batch, its published top-K kept."""

    independent_users = True

    def __init__(self, name: str, model: InterestModel, catalogue: Catalogue, config: UpdaterConfig) -> None:
        self.name = name
        self.updater = InterestUpdater(model, catalogue, config)
        self.states: dict[str, UserState] = {}
        self.published: dict[str, list[str]] = {}
        self.offset = 0  # one replay "partition": offsets only grow, as on a topic
        self.cold = [i.item_id for i in self.updater.recommend([self.updater.new_state()])[0]]

    def observe(self, events: list[Event]) -> None:
        batch = [Delivered(e, "replay:0", self.offset + n) for n, e in enumerate(events)]
        self.offset += len(events)
        result = self.updater.apply(batch, {e.user_id: self.states.get(e.user_id) for e in events})
        self.states.update(result.states)
        for rec in result.recommendations:  # = updater.recommend(state after the user's last event)
            self.published[rec.user_id] = [i.item_id for i in rec.items]

    def recommend(self, events: list[Event]) -> list[list[str]]:
        return [self.published.get(e.user_id, self.cold) for e in events]


def _top(scores: np.ndarray, exclude: list[list[int]], ids: list[str]) -> list[list[str]]:
    """Top-K rows of ``scores`` [B, N] with each row's ``exclude`` removed; ties go to the lower index."""
    out = []
    for row, ex in zip(scores, exclude):
        row = row.copy()
        row[ex] = -np.inf
        out.append([ids[j] for j in np.argsort(-row, kind="stable")[:K] if row[j] > -np.inf])
    return out


class Popular:
    """Most events in the last ``window_s`` of event time (all time if None), counts moving with the replay."""

    independent_users = False

    def __init__(self, name: str, ids: list[str], window_s: float | None, exclude_seen: bool = True) -> None:
        self.name, self.ids, self.window_s, self.exclude_seen = name, ids, window_s, exclude_seen
        self.index = {i: n for n, i in enumerate(ids)}
        self.counts = np.zeros(len(ids))
        self.window: deque[tuple[float, int]] = deque()
        self.seen: dict[str, list[int]] = defaultdict(list)

    def observe(self, events: list[Event]) -> None:
        for e in events:
            row = self.index[e.item_id]
            self.counts[row] += 1
            self.window.append((e.ts, row))
            self.seen[e.user_id].append(row)
        if self.window_s is not None:
            while self.window and self.window[0][0] < events[-1].ts - self.window_s:
                self.counts[self.window.popleft()[1]] -= 1

    def recommend(self, events: list[Event]) -> list[list[str]]:
        exclude = [self.seen[e.user_id] if self.exclude_seen else [] for e in events]
        return _top(np.broadcast_to(self.counts, (len(events), len(self.ids))), exclude, self.ids)


class ItemKNN:
    """Item-to-item co-occurrence in the user histories seen so far, cosine-normalised; a user's score for an
    item is its summed similarity to their ``recent`` last items, ties broken by popularity."""

    independent_users = False

    def __init__(self, name: str, ids: list[str], recent: int = 20, exclude_seen: bool = True) -> None:
        self.name, self.ids, self.recent, self.exclude_seen = name, ids, recent, exclude_seen
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

    def recommend(self, events: list[Event]) -> list[list[str]]:
        norm = np.sqrt(np.maximum(self.count, 1.0))
        scores = np.empty((len(events), len(self.ids)), np.float32)
        for b, e in enumerate(events):
            recent = self.history[e.user_id][-self.recent :]
            scores[b] = (self.co[recent] / norm[recent, None]).sum(0) / norm if recent else 0.0
        scores += 1e-6 * self.count / max(self.count.max(), 1.0)
        return _top(scores, [self.history[e.user_id] if self.exclude_seen else [] for e in events], self.ids)


def rounds(events: list[Event], independent_users: bool) -> Iterator[list[int]]:
    """Indices of ``events`` in batches holding at most one event per user, each user's events in order.

    Time-dependent baselines get consecutive runs of the time-ordered log (nothing from the future leaks
    in); stream models, whose users never interact, get every user's n-th event together: the same lists,
    far fewer batches.
    """
    if independent_users:
        by_position: dict[int, list[int]] = defaultdict(list)
        seen: dict[str, int] = defaultdict(int)
        for n, e in enumerate(events):
            by_position[seen[e.user_id]].append(n)
            seen[e.user_id] += 1
        yield from by_position.values()
        return
    batch: list[int] = []
    users: set[str] = set()
    for n, e in enumerate(events):
        if e.user_id in users:
            yield batch
            batch, users = [], set()
        batch.append(n)
        users.add(e.user_id)
    if batch:
        yield batch


def replay(rec: Recommender, warm: list[Event], test: list[Event], progress: bool = False) -> list[list[str]]:
    """The list shown before each ``test`` event (in test order), after warming on ``warm``."""
    for start in range(0, len(warm), WARM_CHUNK):
        rec.observe(warm[start : start + WARM_CHUNK])
    shown: list[list[str]] = [[] for _ in test]
    batches = list(rounds(test, rec.independent_users))
    for batch in tqdm(batches, desc=rec.name, unit="round", disable=not progress, leave=False):
        events = [test[n] for n in batch]
        for n, items in zip(batch, rec.recommend(events)):
            shown[n] = items
        rec.observe(events)
    return shown


def ablate(model: InterestModel, keep: str) -> InterestModel:
    """The same trained model with one side of the fusion switched off: ``keep`` is "long" or "short"."""
    variant = copy.deepcopy(model)
    with torch.no_grad():
        (variant.log_a_short if keep == "long" else variant.log_a_long).fill_(float("-inf"))  # exp(-inf) = 0
    variant.version = f"{model.version}+{keep}-only"
    return variant


def build_catalogue(items: list[CatalogueItem], embeddings: np.ndarray) -> Catalogue:
    catalogue = Catalogue(embeddings.shape[1])
    catalogue.upsert([ItemVector(i.item_id, text_hash(i.text), embeddings[n]) for n, i in enumerate(items)])
    return catalogue


def _span(seconds: float) -> str:
    return f"{seconds / 86400:g}d" if seconds % 86400 == 0 else f"{seconds / 3600:g}h"


@dataclass(frozen=True)
class EvalConfig:
    exclude_seen: bool = True  # see the module docstring
    popular_window_s: float = 7 * 86400.0
    knn_recent: int = 20


def evaluate(
    train: list[Event], test: list[Event], items: list[CatalogueItem], embeddings: np.ndarray,
    models: dict[str, InterestModel], serving: UpdaterConfig, config: EvalConfig = EvalConfig(), progress: bool = False,
) -> dict[str, dict]:
    """Metrics per recommender, overall and split into users with / without training-period history."""
    catalogue = build_catalogue(items, embeddings)
    serving = replace(serving, top_k=K, exclude_seen=config.exclude_seen, recent_items=len(catalogue))
    ids = catalogue.ids
    recommenders: list[Recommender] = [StreamRecommender(name, m, catalogue, serving) for name, m in models.items()]
    recommenders += [
        Popular(f"popular-{_span(config.popular_window_s)}", ids, config.popular_window_s, config.exclude_seen),
        Popular("popular-all", ids, None, config.exclude_seen),
        ItemKNN("item-knn", ids, config.knn_recent, config.exclude_seen),
    ]
    known = {e.user_id for e in train}
    warm_users = np.array([e.user_id in known for e in test])
    results = {}
    for r in recommenders:
        ranks = ranks_of(replay(r, train, test, progress), test)
        results[r.name] = {"all": rank_metrics(ranks), "users_with_history": rank_metrics(ranks[warm_users]),
                           "new_users": rank_metrics(ranks[~warm_users])}
    return results


def format_table(results: dict[str, dict]) -> str:
    """Overall metrics per recommender, then NDCG@10 for users with and without training-period history."""
    def cell(value: float | None, width: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"

    width = max(len(n) for n in results) + 2
    lines = [f"{'':{width}}" + "".join(f"{n:>10}" for n in METRICS) + f"{'NDCG@10 known users':>22}{'new users':>11}"]
    for name, r in results.items():
        lines.append(f"{name:{width}}" + "".join(cell(r["all"][n], 10) for n in METRICS)
                     + cell(r["users_with_history"]["NDCG@10"], 22) + cell(r["new_users"]["NDCG@10"], 11))
    events = {k: next(iter(results.values()))[k]["events"] for k in ("all", "users_with_history", "new_users")}
    lines.append(f"events: {events['all']} ({events['users_with_history']} of users with training-period history, "
                 f"{events['new_users']} of new users); Recall@20 = HR@20 (one target per event)")
    return "\n".join(lines)
