"""Prequential evaluation: replay the held-out, later part of the log in time order, scoring each event before
it is observed.

Every recommender returns raw SCORES over the whole catalogue (``Recommender.scores``); the evaluator ranks
them, the same way for all: full catalogue, never sampled negatives, ties to the lower catalogue index. The
stream models are warmed with ``InterestUpdater.apply`` (the worker's data path) and scored with
``InterestUpdater.scores``, the query the worker ranks with: with the exclusion below, their top-k is what
the stream publishes (``tests/test_evaluation.py`` checks it). The worker's decay timer republishes nothing,
so no decay runs between events here either.

Groups: a user's consecutive test events with the same ``ts`` (a basket; MovieLens ratings given within one
second) form a group. Every event of a group is scored against the list shown before the group (the state
before its first event), then the whole group is observed. Scoring them one by one would let the second
item of a basket be predicted from the first, knowledge of the same basket that no list shown to the user
had: 51% of MovieLens-100K's test events share their second with the user's previous event.

Exclusion (``exclude_seen``, the default): every item the user had before the group is no candidate, for
every recommender alike, so a repeated target is a miss. That is the realistic setting for MovieLens, where
a user rates a film once; ``exclude_seen=False`` (``--keep-seen``) excludes nothing, for re-buys.

Metrics, over the full catalogue. Per event, with r the target's 1-based rank among the candidates (r = 0,
a miss, for an excluded target):
  HR@10 = [1 <= r <= 10];  NDCG@10 = [1 <= r <= 10] / log2(r + 1) (one target: the ideal DCG is 1);
  Recall@20 = [1 <= r <= 20] (= HR@20: one target per event);  MRR@20 = [1 <= r <= 20] / r;
  AUC = (#other candidates scored below the target + #tied / 2) / (#candidates - 1), 0 for an excluded target
  (1 when the target is the only candidate).
Per group, with T its distinct target items and L the top 10 shown before it:
  Precision@10 = |L ∩ T| / 10;  Recall@10 = |L ∩ T| / |T|;  F1@10 = 2 P R / (P + R), 0 when P = R = 0.
Each is averaged over events (groups), overall and split into users with / without training-period history.

Peers (``models.peers``: popular items, item-kNN, EASE, SASRec+, own re-buys; or any ``Peer``) are tuned on
the training period's last 10% by time, the part ``models.train`` validates on (``tune``), then built once
more on the whole training period. A peer given one grid point (``models.peers.with_params``) skips tuning.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from models.catalogue import Catalogue
from models.interest import InterestModel
from models.peers import Peer, default_peers
from models.recommender import Recommender
from models.records import CatalogueItem, Event
from models.train import TrainConfig, validation_cutoff
from models.updater import Delivered, InterestUpdater, UpdaterConfig
from state.faults import InterestStreamError
from state.item_store import ItemVector, text_hash
from state.user_state import UserState

K = 20  # the deepest cut-off among the metrics
LIST = 10  # the list a group's precision, recall and F1 are of
WARM_CHUNK = 8192  # training-period events per warm-up batch (any size gives the same states)
# the training period's last part by time that tunes the peers: where training validates
VAL_FRACTION = TrainConfig.val_fraction
EVENT_METRICS = ("HR@10", "NDCG@10", "Recall@20", "MRR@20", "AUC")
GROUP_METRICS = ("Precision@10", "Recall@10", "F1@10")
METRICS = EVENT_METRICS + GROUP_METRICS


class StreamRecommender:
    """An InterestModel as the worker runs it: ``apply`` per batch, scored from the states it left."""

    def __init__(
        self, name: str, model: InterestModel, catalogue: Catalogue, config: UpdaterConfig
    ) -> None:
        self.name = name
        # the trend term moves with everyone's events
        self.independent_users = model.config.trend_half_life_s <= 0
        self.updater = InterestUpdater(model, catalogue, config)
        self.states: dict[str, UserState] = {}
        self.offset = 0  # one replay "partition": offsets only grow, as on a topic
        self.cold = self.updater.new_state()  # a user with no event yet

    def observe(self, events: list[Event]) -> None:
        batch = [Delivered(e, "replay:0", self.offset + n) for n, e in enumerate(events)]
        self.offset += len(events)
        self.states.update(
            self.updater.apply(
                batch, {e.user_id: self.states.get(e.user_id) for e in events}
            ).states
        )

    def scores(self, events: list[Event]) -> np.ndarray:
        return self.updater.scores([self.states.get(e.user_id, self.cold) for e in events])


def groups(events: list[Event]) -> list[list[int]]:
    """Indices of ``events`` (time-ordered) grouped: a user's consecutive events with the same ``ts``, in
    the order of their first events."""
    out: list[list[int]] = []
    last: dict[str, tuple[float, int]] = {}  # user -> (ts, group) of their latest event
    for n, e in enumerate(events):
        ts, g = last.get(e.user_id, (None, -1))
        if ts != e.ts:
            g = len(out)
            out.append([])
            last[e.user_id] = (e.ts, g)
        out[g].append(n)
    return out


def rounds(events: list[Event], independent_users: bool) -> Iterator[list[list[int]]]:
    """The groups of ``events`` in batches holding at most one group per user, each user's groups in order.

    Time-dependent recommenders (popularity, a model with a trend term) get consecutive runs of the groups in
    log order (nothing from the future leaks in); those whose users never interact (a stream model without a
    trend term) get every user's n-th group together: the same scores, far fewer batches.
    """
    if independent_users:
        by_position: dict[int, list[list[int]]] = defaultdict(list)
        count: dict[str, int] = defaultdict(int)
        for g in groups(events):
            user = events[g[0]].user_id
            by_position[count[user]].append(g)
            count[user] += 1
        yield from by_position.values()
        return
    batch: list[list[int]] = []
    users: set[str] = set()
    for g in groups(events):
        user = events[g[0]].user_id
        if user in users:
            yield batch
            batch, users = [], set()
        batch.append(g)
        users.add(user)
    if batch:
        yield batch


def top(scores: np.ndarray, candidates: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best candidate rows of ``scores`` [N], best first, ties to the lower row."""
    masked = np.where(candidates, scores, -np.inf)
    order = np.argsort(-masked, kind="stable")[:k]
    return order[candidates[order]]


def judge(
    scores: np.ndarray, candidates: np.ndarray, targets: list[int]
) -> tuple[list[int], list[float], int]:
    """One group scored by one row: ``scores`` [N], ``candidates`` [N] bool, ``targets`` the rows of its
    events' items. Returns each target's rank (1-based, ties to the lower row; 0 if not a candidate) and AUC
    (module docstring), and |L ∩ T| for the top-10 L and the distinct targets T."""
    n = int(candidates.sum())
    ranks, aucs = [], []
    for t in targets:
        if not candidates[t]:
            ranks.append(0)
            aucs.append(0.0)
            continue
        s = scores[t]
        above = int((candidates & (scores > s)).sum())
        tied = candidates & (scores == s)  # the target among them
        below = n - above - int(tied.sum())
        ranks.append(1 + above + int(tied[:t].sum()))
        aucs.append((below + 0.5 * (int(tied.sum()) - 1)) / (n - 1) if n > 1 else 1.0)
    return ranks, aucs, len(set(top(scores, candidates, LIST).tolist()) & set(targets))


@dataclass(frozen=True)
class Outcome:
    """What a replay measured: per test event (in test order) and per group (in ``groups`` order)."""

    ranks: np.ndarray  # [E] int: the target's rank among the candidates, 0 if not one
    auc: np.ndarray  # [E] float
    group: np.ndarray  # [E] int: the event's group
    hits: np.ndarray  # [G] int: |L ∩ T|
    targets: np.ndarray  # [G] int: |T|, the group's distinct items


def replay(
    rec: Recommender,
    index: dict[str, int],
    warm: list[Event],
    test: list[Event],
    exclude_seen: bool,
    progress: bool = False,
) -> Outcome:
    """Warm ``rec`` on ``warm``, then score each group of ``test`` before observing it. ``index``: item id ->
    catalogue row. A user's seen items (excluded with ``exclude_seen``) are those of every earlier group."""
    for start in range(0, len(warm), WARM_CHUNK):
        rec.observe(warm[start : start + WARM_CHUNK])
    seen: dict[str, set[int]] = defaultdict(set)
    if exclude_seen:
        for e in warm:
            seen[e.user_id].add(index[e.item_id])
    ranks, auc, group = (
        np.zeros(len(test), np.int64),
        np.zeros(len(test)),
        np.zeros(len(test), np.int64),
    )
    hits: list[int] = []
    targets: list[int] = []
    batches = list(rounds(test, rec.independent_users))
    for batch in tqdm(batches, desc=rec.name, unit="round", disable=not progress, leave=False):
        scores = rec.scores([test[g[0]] for g in batch])
        for row, g in zip(scores, batch):
            candidates = np.ones(len(row), bool)
            user = test[g[0]].user_id
            candidates[list(seen[user])] = False
            rows = [index[test[n].item_id] for n in g]
            r, a, h = judge(row, candidates, rows)
            ranks[g], auc[g], group[g] = r, a, len(hits)
            hits.append(h)
            targets.append(len(set(rows)))
        events = [test[n] for n in sorted(n for g in batch for n in g)]
        rec.observe(events)
        if exclude_seen:
            for e in events:
                seen[e.user_id].add(index[e.item_id])
    return Outcome(ranks, auc, group, np.array(hits, np.int64), np.array(targets, np.int64))


def metrics(outcome: Outcome, events: np.ndarray | None = None) -> dict[str, float | None]:
    """The module docstring's metrics over the events ``events`` selects ([E] bool; None: all) and their
    groups; None where no event is selected (undefined, not zero). Also the counts ``events`` and
    ``groups``."""
    pick = np.ones(len(outcome.ranks), bool) if events is None else events
    r, auc = outcome.ranks[pick].astype(float), outcome.auc[pick]
    chosen = np.unique(outcome.group[pick])
    if not len(r):
        return {**dict.fromkeys(METRICS), "events": 0, "groups": 0}
    hit10, hit20 = (r >= 1) & (r <= 10), (r >= 1) & (r <= K)
    safe = np.where(r >= 1, r, 1.0)
    precision = outcome.hits[chosen] / LIST
    recall = outcome.hits[chosen] / outcome.targets[chosen]
    f1 = np.where(
        precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0
    )
    return {
        "HR@10": float(hit10.mean()),
        "NDCG@10": float(np.where(hit10, 1.0 / np.log2(safe + 1), 0.0).mean()),
        "Recall@20": float(hit20.mean()),
        "MRR@20": float(np.where(hit20, 1.0 / safe, 0.0).mean()),
        "AUC": float(auc.mean()),
        "Precision@10": float(precision.mean()),
        "Recall@10": float(recall.mean()),
        "F1@10": float(f1.mean()),
        "events": int(len(r)),
        "groups": int(len(chosen)),
    }


def tune(
    make: Callable[[dict[str, Any]], Recommender],
    grid: list[dict[str, Any]],
    train: list[Event],
    index: dict[str, int],
    exclude_seen: bool = True,
    progress: bool = False,
) -> tuple[dict[str, Any], list[float]]:
    """The grid point whose recommender scores the best NDCG@10 on the validation part of ``train`` (events
    at or after ``models.train.validation_cutoff``, the last ``VAL_FRACTION`` by time), warmed on the rest;
    the first on ties. Returns (its params, each point's validation NDCG@10 in grid order). Raises
    ``InterestStreamError`` when no training event is before the validation part, or the grid is empty."""
    if not grid:
        raise InterestStreamError("nothing to tune: the grid is empty")
    cutoff = validation_cutoff(np.array([e.ts for e in train]), VAL_FRACTION)
    fit = [e for e in train if e.ts < cutoff]
    if not fit:
        raise InterestStreamError(
            f"too few events to tune on: none of the {len(train)} training events is before the validation "
            f"part (the last {VAL_FRACTION:.0%} of the training period by time)"
        )
    validation = [e for e in train if e.ts >= cutoff]
    ndcg = []
    for params in grid:
        value = metrics(replay(make(params), index, fit, validation, exclude_seen, progress))[
            "NDCG@10"
        ]
        ndcg.append(float(value or 0.0))
    return grid[int(np.argmax(ndcg))], ndcg  # argmax: the first of equal maxima


def ablate(model: InterestModel, keep: str) -> InterestModel:
    """The same trained model with one side of the fusion switched off: ``keep`` is "long" or "short"."""
    variant = copy.deepcopy(model)
    with torch.no_grad():
        # exp(-inf) = 0
        (variant.log_a_short if keep == "long" else variant.log_a_long).fill_(float("-inf"))
    variant.version = f"{model.version}+{keep}-only"
    return variant


def build_catalogue(items: list[CatalogueItem], embeddings: np.ndarray) -> Catalogue:
    """The catalogue of ``items``, its rows (``ids``) in their order."""
    catalogue = Catalogue(embeddings.shape[1])
    catalogue.upsert(
        [ItemVector(i.item_id, text_hash(i.text), embeddings[n]) for n, i in enumerate(items)]
    )
    return catalogue


@dataclass(frozen=True)
class EvalConfig:
    exclude_seen: bool = True  # see the module docstring


def evaluate(
    train: list[Event],
    test: list[Event],
    items: list[CatalogueItem],
    embeddings: np.ndarray,
    models: dict[str, InterestModel],
    serving: UpdaterConfig,
    config: EvalConfig = EvalConfig(),
    peers: list[Peer] | None = None,
    progress: bool = False,
) -> dict[str, dict]:
    """Metrics per recommender (the models, then ``peers``, by default ``default_peers`` for
    ``config.exclude_seen``): under "all", "users_with_history" and "new_users" (with / without
    training-period
    events); a peer also has "tuning": the chosen "params" and, where there was a choice, their "validation
    NDCG@10" and each grid point's ("grid"); a one-point grid is given, not tuned: "validation
    NDCG@10" None."""
    catalogue = build_catalogue(items, embeddings)
    serving = replace(
        serving, top_k=K, exclude_seen=config.exclude_seen, recent_items=len(catalogue)
    )
    index = {item_id: n for n, item_id in enumerate(catalogue.ids)}
    known = {e.user_id for e in train}
    warm_users = np.array([e.user_id in known for e in test])
    results: dict[str, dict] = {}

    def run(rec: Recommender) -> dict[str, Any]:
        outcome = replay(rec, index, train, test, config.exclude_seen, progress)
        return {
            "all": metrics(outcome),
            "users_with_history": metrics(outcome, warm_users),
            "new_users": metrics(outcome, ~warm_users),
        }

    for name, model in models.items():
        results[name] = run(StreamRecommender(name, model, catalogue, serving))
    for peer in default_peers(catalogue.ids, config.exclude_seen) if peers is None else peers:
        tuning: dict[str, Any]
        # nothing to choose: no validation replay (one costs SASRec+ a training)
        if len(peer.grid) == 1:
            params, tuning = peer.grid[0], {"params": peer.grid[0], "validation NDCG@10": None}
        else:
            params, ndcg = tune(peer.make, peer.grid, train, index, config.exclude_seen, progress)
            tuning = {
                "params": params,
                "validation NDCG@10": max(ndcg),
                "grid": [{"params": p, "NDCG@10": v} for p, v in zip(peer.grid, ndcg)],
            }
        results[peer.name] = {**run(peer.make(params)), "tuning": tuning}
    return results


def chosen_params(results: dict[str, dict]) -> dict[str, dict[str, Any]]:
    """Each peer's params in ``evaluate``'s ``results``: what ``models.peers.with_params`` takes to
    rerun them."""
    return {name: r["tuning"]["params"] for name, r in results.items() if "tuning" in r}


def format_table(results: dict[str, dict]) -> str:
    """Overall metrics per recommender, NDCG@10 for users with and without training-period history, then
    each peer's tuned params."""

    def cell(value: float | None, width: int) -> str:
        return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"

    width = max(len(n) for n in results) + 2
    lines = [
        f"{'':{width}}"
        + "".join(f"{n:>13}" for n in METRICS)
        + f"{'NDCG@10 known':>15}{'new users':>11}"
    ]
    for name, r in results.items():
        lines.append(
            f"{name:{width}}"
            + "".join(cell(r["all"][n], 13) for n in METRICS)
            + cell(r["users_with_history"]["NDCG@10"], 15)
            + cell(r["new_users"]["NDCG@10"], 11)
        )
    first = next(iter(results.values()))
    counts = {
        k: (first[k]["events"], first[k]["groups"])
        for k in ("all", "users_with_history", "new_users")
    }
    lines.append(
        f"events (groups): {counts['all'][0]} ({counts['all'][1]}), of users with training-period history "
        f"{counts['users_with_history'][0]} ({counts['users_with_history'][1]}), of new users "
        f"{counts['new_users'][0]} "
        f"({counts['new_users'][1]}); Recall@20 = HR@20 (one target per event); "
        "Precision/Recall/F1@10 per group"
    )
    for name, r in results.items():
        if "tuning" in r:
            chosen = ", ".join(f"{k}={v}" for k, v in r["tuning"]["params"].items())
            ndcg = r["tuning"]["validation NDCG@10"]
            lines.append(
                f"{name}: {chosen} "
                + ("(given, not tuned)" if ndcg is None else f"(validation NDCG@10 {ndcg:.4f})")
            )
    return "\n".join(lines)
