"""Train the InterestModel (item tower, GRU, fusion) for next-item prediction on an event log.

GRU4Rec-style: the state before every event of a user's time-ordered sequence predicts that event's item
with a full softmax over the whole catalogue (cross-entropy). Session-parallel mini-batches: users are laid
end to end in a few lanes, the GRU restarts from the empty state where a new user begins, and gradients
are truncated every ``window`` steps (the hidden state itself carries on). Adam, early stopping on the last
part of the training period, then the count and trend weights calibrated on it (``calibrate``) and, by
default, a refit on the whole period.

The model is stepped with the stream's own ``step`` and ``query``; the long-term inputs are not learned
but precomputed with ``models.longterm`` under the stream's settings (half-life, click/purchase weights),
so training sees exactly the states the stream will hold; so are the user's items before each event (the
seen mask's, or the re-buy term's history, by the stream's own ``models.history``) and the trend feature
(``models.trending``, snapshots of all users' events).
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models import history, longterm, trending
from models.interest import STREAM_SETTINGS, InterestModel, ModelConfig
from models.records import Event
from models.train_config import TrainConfig
from models.updater import UpdaterConfig
from state.faults import InterestStreamError
from state.user_state import History


def validation_cutoff(times: np.ndarray, fraction: float) -> float:
    """The time from which on (inclusive) events of the training period are its validation part: its last
    ``fraction`` by time, the ``1 - fraction`` quantile of ``times`` (unix seconds)."""
    return float(np.quantile(times, 1 - fraction))


@dataclass
class TrainReport:
    epochs: int  # epochs of the final model
    # per epoch: train loss, validation loss/HR@10/NDCG@10
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    # feature weight -> the scale chosen on validation (``calibrate``)
    calibration: dict[str, float] = field(default_factory=dict)


@dataclass
class Sequences:
    """All events, user after user (time-ordered within a user), with the stream's long-term state *before*
    each event's group: a user's consecutive events with the same time (a basket, or ratings within one
    second) form a group, and each is predicted from the state before the group, as the evaluation scores
    them against the list shown before it (``models.evaluate``)."""

    start: list[int]  # [U + 1] offset of each user's first event
    items: torch.Tensor  # [E] catalogue row
    types: torch.Tensor  # [E] 0 click, 1 purchase
    times: torch.Tensor  # [E]
    user: torch.Tensor  # [E]
    pos: torch.Tensor  # [E] position in the user's sequence
    group: torch.Tensor  # [E] bool: the event starts a group
    # [E] its long-term (and history) weight: click or purchase weight times quantity
    weights: torch.Tensor
    # [E, embed_dim] decayed average before the event's group (zeros before the first)
    lt_avg: torch.Tensor
    lt_weight: torch.Tensor  # [E] its decayed weight
    # the user's items as of each event's group: what the seen mask or the re-buy term reads
    history: "HistoryEntries"
    # [K, N] trend feature snapshots over all users' events (``trending.snapshots``)
    trend: torch.Tensor | None = None
    trend_at: torch.Tensor | None = None  # [E] the snapshot each event reads


@dataclass
class HistoryEntries:
    """Per event, the user's items before its group: entries ``begin[e]`` to ``end[e]`` (exclusive)
    of ``items``.
    They depend on the log alone, not on the model, so they are computed once (``seen_items``,
    ``rebuy_history``) and each
    mini-batch reads a few thousand entries instead of carrying [lanes, items] weights step by step.

    With ``rebuys``: the stream's own bounded history (``models.history``: recorded, pruned and decayed as the
    stream does), snapshot at each group's start: ``weight`` its W decayed to the user's newest
    event, ``count``
    its touches. Without (seen items excluded): every item the user had, unbounded, as the evaluation masks
    them; the ranges are prefixes of one list per user, ``weight`` and ``count`` unused (ones)."""

    rebuys: bool
    begin: torch.Tensor  # [E] int64
    end: torch.Tensor  # [E] int64
    items: torch.Tensor  # [M] int64 catalogue rows
    weight: torch.Tensor  # [M] float32
    count: torch.Tensor  # [M] float32


def build_sequences(
    events: list[Event],
    index: dict[str, int],
    embeddings: np.ndarray,
    settings: UpdaterConfig,
    trend_half_life_s: float = 0.0,
    rebuys: bool = False,
) -> Sequences:
    """Group time-ordered events by user; long-term inputs via ``longterm.add``, batched by position like the
    stream; the user's items before each group (``HistoryEntries``: with ``rebuys`` the re-buy term's history,
    else the seen mask's items); with ``trend_half_life_s`` > 0 the trend feature each event is
    scored with."""
    by_user: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        if e.item_id in index:
            by_user[e.user_id].append(e)
    seqs = list(by_user.values())
    flat = [e for s in seqs for e in s]
    start = np.cumsum([0, *(len(s) for s in seqs)])
    items = np.array([index[e.item_id] for e in flat], np.int64)
    types = np.array([e.type == "purchase" for e in flat], np.int64)
    times = np.array([e.ts for e in flat])
    user = np.repeat(np.arange(len(seqs)), np.diff(start))
    pos = np.arange(len(flat)) - start[user]
    group = pos == 0
    group[1:] |= times[1:] != times[:-1]
    weights = np.where(types == 1, settings.purchase_weight, settings.click_weight) * np.array(
        [e.quantity for e in flat]
    )
    lt_avg = np.zeros((len(flat), embeddings.shape[1]), np.float32)
    lt_weight = np.zeros(len(flat))
    s_sum, s_w, s_t = (
        np.zeros((len(seqs), embeddings.shape[1]), np.float32),
        np.zeros(len(seqs)),
        np.zeros(len(seqs)),
    )
    for p in range(int(pos.max(initial=-1)) + 1):
        users = np.flatnonzero(np.diff(start) > p)
        rows = start[users] + p
        lt_weight[rows] = s_w[users]
        has = s_w[users] > 0
        # = UserState.long_term
        lt_avg[rows[has]] = s_sum[users[has]] / s_w[users[has], None].astype(np.float32)
        s_sum[users], s_w[users], s_t[users] = longterm.add(
            s_sum[users],
            s_w[users],
            s_t[users],
            times[rows],
            embeddings[items[rows]],
            weights[rows],
            settings.half_life_s,
        )
    # each event's group's first event
    first = np.maximum.accumulate(np.where(group, np.arange(len(flat)), 0))
    lt_avg, lt_weight = lt_avg[first], lt_weight[first]
    entries = (
        rebuy_history(items, times, weights, start, first, settings)
        if rebuys
        else seen_items(items, weights, start, user, first)
    )
    tensor = torch.from_numpy
    out = Sequences(
        list(start),
        tensor(items),
        tensor(types),
        tensor(times),
        tensor(user),
        tensor(pos),
        tensor(group),
        tensor(weights),
        tensor(lt_avg),
        tensor(lt_weight),
        entries,
    )
    if trend_half_life_s > 0:
        starts, table = trending.snapshots(items, times, len(embeddings), trend_half_life_s)
        out.trend, out.trend_at = (
            torch.from_numpy(table),
            torch.from_numpy(np.searchsorted(starts, times, "right") - 1),
        )
    return out


def seen_items(
    items: np.ndarray, weights: np.ndarray, start: np.ndarray, user: np.ndarray, first: np.ndarray
) -> HistoryEntries:
    """``HistoryEntries`` without re-buys: per user the items in the order they first came (with a
    weight), each
    event's range the prefix of its user's list that came before its group (``user``: each event's user,
    ``first``: its group's first event)."""
    firsts = np.zeros(len(items), bool)
    for u in range(len(start) - 1):
        had: set[int] = set()
        for n in range(start[u], start[u + 1]):
            if weights[n] > 0 and items[n] not in had:
                had.add(items[n])
                firsts[n] = True
    before = np.concatenate([[0], np.cumsum(firsts)])  # entries before each event
    ones = torch.ones(int(firsts.sum()))
    return HistoryEntries(
        False,
        torch.from_numpy(before[start[user]]),
        torch.from_numpy(before[first]),
        torch.from_numpy(items[firsts]),
        ones,
        ones,
    )


def rebuy_history(
    items: np.ndarray,
    times: np.ndarray,
    weights: np.ndarray,
    start: np.ndarray,
    first: np.ndarray,
    settings: UpdaterConfig,
) -> HistoryEntries:
    """``HistoryEntries`` with re-buys: each user's events recorded in a ``History`` by the stream's own
    ``history.record`` and ``prune`` (an item's catalogue row stands for its id), snapshot at each
    group's start."""
    begin, end = np.zeros(len(items), np.int64), np.zeros(len(items), np.int64)
    rows: list[np.ndarray] = []
    decayed: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    size = 0
    for u in range(len(start) - 1):
        h, newest = History(), -np.inf
        for n in range(start[u], start[u + 1]):
            if first[n] == n:  # a group starts: the entries it is scored with
                if h.items:
                    rows.append(np.array(h.items, np.int64))
                    decayed.append(history.weights_at(h, newest, settings.half_life_s))
                    counts.append(np.array(h.counts))
                begin[n], end[n] = size, size + len(h.items)
                size += len(h.items)
            else:
                begin[n], end[n] = begin[first[n]], end[first[n]]
            # a late event counts as of the user's newest (``longterm.add``)
            newest = max(newest, times[n])
            if weights[n] > 0 and history.record(
                h, str(items[n]), newest, float(weights[n]), 0, settings.half_life_s
            ):
                history.prune(h, settings.history_items, settings.half_life_s)
    return HistoryEntries(
        True,
        torch.from_numpy(begin),
        torch.from_numpy(end),
        _concat(rows, np.int64),
        _concat(decayed, np.float32),
        _concat(counts, np.float32),
    )


def _concat(parts: list[np.ndarray], dtype: type) -> torch.Tensor:
    return torch.from_numpy(np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype))


def lanes(
    seqs: Sequences,
    users: list[int],
    lengths: list[int],
    n_lanes: int,
    rng: np.random.Generator | None = None,
) -> torch.Tensor:
    """``users`` (their first ``lengths[u]`` events) laid end to end in ``n_lanes`` rows: [n_lanes, T] event
    indices, -1 where a row has ended. Longest first into the shortest row keeps the rows even, so the last
    mini-batches are not left to a few long users; ``rng`` shuffles the order within each row."""
    rows: list[list[int]] = [[] for _ in range(n_lanes)]
    totals = [0] * n_lanes
    for u in sorted(users, key=lambda u: -lengths[u]):
        r = totals.index(min(totals))
        rows[r].append(u)
        totals[r] += lengths[u]
    grid = torch.full((n_lanes, max(totals)), -1)
    for r, row in enumerate(rows):
        order = rng.permutation(row).tolist() if rng is not None and row else row
        events = [n for u in order for n in range(seqs.start[u], seqs.start[u] + lengths[u])]
        grid[r, : len(events)] = torch.tensor(events, dtype=torch.long)
    return grid


@dataclass
class LaneState:
    """What each lane carries from one window to the next: the GRU state, and the state as of the current
    group's start (what its events are predicted from)."""

    hidden: torch.Tensor  # [L, H]
    group_hidden: torch.Tensor  # [L, H]

    @classmethod
    def empty(cls, lanes: int, hidden: int) -> "LaneState":
        h = torch.zeros(lanes, hidden)
        return cls(h, h)

    def detach(self) -> "LaneState":
        return LaneState(self.hidden.detach(), self.group_hidden.detach())


def history_of(entries: HistoryEntries, events: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries of ``events`` [B] (event indices, -1 for none) flattened: (the position in ``events`` each
    belongs to, the entry's index), both [M] int64."""
    valid = events >= 0
    g = events.clamp(min=0)
    lengths = (entries.end[g] - entries.begin[g]).masked_fill(~valid, 0)
    owner = torch.repeat_interleave(torch.arange(len(events)), lengths)
    offset = torch.arange(len(owner)) - (torch.cumsum(lengths, 0) - lengths)[owner]
    return owner, entries.begin[g][owner] + offset


def window_logits(
    model: InterestModel,
    emb: torch.Tensor,
    rows: torch.Tensor,
    seqs: Sequences,
    idx: torch.Tensor,
    lane: LaneState,
    exclude_seen: bool,
    dropout: float = 0.0,
    scored: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, LaneState]:
    """Steps the lanes through the events ``idx`` [L, W] and scores the positions ``scored`` [L, W] (bool;
    None: all): the scores [M, N] of every catalogue item before each scored event (as the stream ranks them
    before the event's group; M scored events, row-major), whether each one's item was a candidate [M] (with
    ``exclude_seen`` the user's items before the group are not), and the lanes' state after the window.
    ``rows``: the catalogue's learned rows (``InterestModel.rows``). Raises ``ValueError`` if ``seqs`` was
    built for the other mode."""
    if seqs.history.rebuys == exclude_seen:
        raise ValueError(
            f"sequences built {'with' if seqs.history.rebuys else 'without'} re-buys, scored with "
            f"exclude_seen={exclude_seen}"
        )
    L, W = idx.shape

    def drop(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(x, dropout, model.training)

    g = idx.clamp(min=0)  # padding (-1) computes on event 0
    items, types, new_user, new_group = (
        seqs.items[g],
        seqs.types[g],
        seqs.pos[g] == 0,
        seqs.group[g],
    )
    space = model.item_space(emb, rows)  # [N, dim + 1]
    h, gh = lane.hidden, lane.group_hidden
    before = []
    for t in range(W):
        h = h.masked_fill(new_user[:, t, None], 0.0)  # the next user in this lane starts empty
        gh = torch.where(new_group[:, t, None], h, gh)
        before.append(gh)
        h = model.step(h, drop(space[items[:, t], :-1]), types[:, t])
    at = torch.arange(L * W) if scored is None else scored.reshape(-1).nonzero().squeeze(1)
    events = idx.reshape(-1)[at]
    e = events.clamp(min=0)
    q = model.query(
        drop(torch.stack(before, 1).reshape(L * W, -1)[at]),
        seqs.lt_avg[e],
        seqs.lt_weight[e].float(),
    )
    # [M, N]: the full catalogue, only where an event is scored
    logits = model.scoring_query(q) @ space.T
    candidate = torch.ones(len(at), dtype=torch.bool)
    if seqs.trend is not None and seqs.trend_at is not None:
        logits = logits + model.trend(seqs.trend[seqs.trend_at[e]])
    owner, entry = history_of(seqs.history, events)  # a user has a few dozen of the N items
    had = seqs.history.items[entry]
    if exclude_seen:
        logits = logits.index_put((owner, had), torch.tensor(float("-inf")))
        # a repeated target is not a candidate: a miss
        candidate = candidate.index_put((owner[had == seqs.items[e][owner]],), torch.tensor(False))
    elif model.config.rebuys:  # r(0, 0) = 0 for every other item
        logits = logits.index_put(
            (owner, had),
            model.rebuy(seqs.history.weight[entry], seqs.history.count[entry]),
            accumulate=True,
        )
    return logits, candidate, LaneState(h, gh)


def _pass(
    model: InterestModel,
    emb: torch.Tensor,
    rows: torch.Tensor,
    seqs: Sequences,
    grid: torch.Tensor,
    config: TrainConfig,
    opt: torch.optim.Optimizer | None = None,
    since: float = -np.inf,
) -> tuple[float, int, torch.Tensor]:
    """One pass over ``grid``: trains if ``opt`` is given, else ranks. Scores events at or after ``since``:
    (loss sum over the events whose item was a candidate, their number, and without ``opt`` the 1-based
    rank of each scored event's item, 0 where it was not a candidate: a miss)."""
    lane = LaneState.empty(grid.shape[0], model.config.hidden)
    total, fitted, ranks = 0.0, 0, []
    with torch.set_grad_enabled(opt is not None):
        for w in range(0, grid.shape[1], config.window):
            idx = grid[:, w : w + config.window]
            scored = (idx >= 0) & (seqs.times[idx.clamp(min=0)] >= since)
            logits, candidate, lane = window_logits(
                model, emb, rows, seqs, idx, lane, config.exclude_seen, config.dropout, scored
            )
            # truncated backpropagation: the state goes on, its gradient stops here
            lane = lane.detach()
            target = seqs.items[idx[scored]]
            if opt is None and len(target):
                rank = (logits > logits.gather(1, target.unsqueeze(1))).sum(1) + 1
                ranks.append(rank.masked_fill(~candidate, 0))
            if not candidate.any():
                continue
            # the target -100 (cross_entropy's ignore_index) leaves an event out without copying the
            # [M, N] logits
            loss = nn.functional.cross_entropy(
                logits, target.masked_fill(~candidate, -100), reduction="sum"
            )
            n = int(candidate.sum())
            if opt is not None:
                opt.zero_grad()
                (loss / n).backward()
                nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
            total, fitted = total + loss.item(), fitted + n
    return total, fitted, torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


CALIBRATION_SCALES = (1.0, 2.0, 4.0, 8.0)


def calibrate(
    model: InterestModel, score: Callable[[InterestModel], float], progress: bool = False
) -> dict[str, float]:
    """Scale the count and trend weights (``d_rebuy`` in a re-buy model, ``trend_weight`` in a trend model)
    to the validation NDCG@10 ``score`` gives: each in turn, the scale of ``CALIBRATION_SCALES`` that scores
    best (the smaller on ties). Cross-entropy over the whole catalogue learns them smaller than the top of the
    list would have them (grocery, on the validation slice: NDCG@10 0.0101 -> 0.0121 with the trend weight
    0.59 -> 3, 0.0505 -> 0.0535 with the count weight 1.04 -> 4). Returns the scales; the model keeps them."""
    names = [
        name
        for name, used in (
            ("trend_weight", model.config.trend_half_life_s > 0),
            ("d_rebuy", model.config.rebuys),
        )
        if used
    ]
    scales: dict[str, float] = {}
    for name in names:
        weight = getattr(model, name)
        base = weight.detach().clone()
        results = []
        for scale in tqdm(
            CALIBRATION_SCALES, desc=f"calibrate {name}", disable=not progress, leave=False
        ):
            with torch.no_grad():
                weight.copy_(base * scale)
            results.append((score(model), -scale))
        scales[name] = -max(results)[1]
        with torch.no_grad():
            weight.copy_(base * scales[name])
    return scales


def train(
    events: list[Event],
    index: dict[str, int],
    embeddings: np.ndarray,
    encoder: str,
    settings: UpdaterConfig,
    config: TrainConfig | None = None,
    progress: bool = False,
) -> tuple[InterestModel, TrainReport]:
    """Train the model on a log's training period, as the module docstring says.

    Args:
        events: the training period's events, in time order.
        index: item id -> its row of ``embeddings``.
        embeddings: float32 [items, embed_dim], the encoder's vectors of the catalogue.
        encoder: the encoder's name, recorded in the model (a worker with another encoder refuses it).
        settings: the stream settings the long-term inputs are computed under (half-life, click and
            purchase weights): serve the model with the same (the checkpoint records them).
        config: how to train; ``TrainConfig()`` if None.
        progress: a progress bar per epoch.

    Returns:
        The trained model (not saved: ``InterestModel.save``) and its report (final epochs, per-epoch
        history, seconds, calibrated feature scales).

    Raises:
        InterestStreamError: no event is left to fit before the validation part.
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    seqs = build_sequences(
        events,
        index,
        embeddings,
        settings,
        config.trend_half_life_s,
        rebuys=not config.exclude_seen,
    )
    emb = torch.from_numpy(embeddings)
    ids = sorted(index, key=index.__getitem__)
    n_users = len(seqs.start) - 1
    full_len = np.diff(seqs.start).tolist()
    validate = config.val_fraction > 0
    cutoff = validation_cutoff(seqs.times.numpy(), config.val_fraction) if validate else np.inf
    fit_len = [
        int((seqs.times[seqs.start[u] : seqs.start[u + 1]] < cutoff).sum()) for u in range(n_users)
    ]
    if not sum(fit_len):  # every training event is as late as the validation cutoff
        raise InterestStreamError(
            f"too few events to train on: none of the {len(seqs.items)} training events is before the "
            f"validation part (the last {config.val_fraction:.0%} of the training period by time)"
        )
    val_grid = (
        lanes(seqs, [u for u in range(n_users) if full_len[u] > fit_len[u]], full_len, config.lanes)
        if validate
        else None
    )

    def validation(model: InterestModel, rows: torch.Tensor) -> dict[str, float]:
        """Loss, HR@10 and NDCG@10 of ``model`` on the validation part, as the evaluation ranks."""
        assert val_grid is not None  # early stopping and calibration need a validation period
        model.eval()
        loss, fitted, ranks = _pass(model, emb, rows, seqs, val_grid, config, since=cutoff)
        # 0: the item was not a candidate, a miss as in the evaluation
        hit = ((ranks >= 1) & (ranks <= 10)).double()
        return {
            "val_loss": loss / max(fitted, 1),
            "val_hr@10": hit.mean().item(),
            "val_ndcg@10": (hit / torch.log2(ranks.clamp(min=1) + 1.0)).mean().item(),
        }

    def fit(
        epochs: int, lengths: list[int], early_stop: bool
    ) -> tuple[InterestModel, list[dict], int]:
        torch.manual_seed(config.seed)
        rng = np.random.default_rng(config.seed)
        # learned rows for the items this fit trains on; every other item keeps its text alone
        trained = np.unique(
            np.concatenate(
                [
                    seqs.items[seqs.start[u] : seqs.start[u] + n].numpy()
                    for u, n in enumerate(lengths)
                ]
            )
        )
        model = InterestModel(
            ModelConfig(
                embeddings.shape[1],
                config.dim,
                config.hidden,
                encoder,
                len(trained),
                not config.exclude_seen,
                config.trend_half_life_s,
                **{name: getattr(settings, name) for name in STREAM_SETTINGS},
            )
        )
        model.learn_items([ids[i] for i in trained])
        rows = model.rows(ids)
        scalars = model.feature_weights()
        groups: list[dict[str, Any]] = [
            {"params": [p for p in model.parameters() if all(p is not s for s in scalars)]},
            {"params": scalars, "lr": config.lr * config.feature_lr_scale},
        ]
        opt = torch.optim.Adam(groups, lr=config.lr)
        history, best, best_state, stale = [], -1.0, None, 0
        bar = tqdm(
            range(1, epochs + 1),
            desc="fit" if early_stop else "refit",
            unit="epoch",
            disable=not progress,
        )
        for epoch in bar:
            grid = lanes(
                seqs, [u for u in range(n_users) if lengths[u]], lengths, config.lanes, rng
            )
            model.train()
            loss, fitted, _ = _pass(model, emb, rows, seqs, grid, config, opt)
            row = {"epoch": epoch, "train_loss": loss / max(fitted, 1)}
            if early_stop:
                row.update(validation(model, rows))
            history.append(row)
            bar.set_postfix({k: round(v, 4) for k, v in row.items() if k != "epoch"})
            if early_stop:
                if row["val_ndcg@10"] > best:
                    best, best_state, stale = (
                        row["val_ndcg@10"],
                        copy.deepcopy(model.state_dict()),
                        0,
                    )
                else:
                    stale += 1
                    if stale >= config.patience:
                        break
        bar.close()
        if best_state is not None:
            model.load_state_dict(best_state)
        best_epoch = max(history, key=lambda r: r["val_ndcg@10"])["epoch"] if early_stop else epochs
        return model.eval(), history, best_epoch

    model, history, best_epoch = fit(config.epochs, fit_len if validate else full_len, validate)
    scales = (
        calibrate(model, lambda m: validation(m, m.rows(ids))["val_ndcg@10"], progress)
        if validate
        else {}
    )
    if validate and config.refit:
        model, refit_history, _ = fit(best_epoch, full_len, early_stop=False)
        history += [{**r, "refit": True} for r in refit_history]
    with torch.no_grad():
        for name, scale in scales.items():
            getattr(model, name).mul_(scale)
    return model, TrainReport(best_epoch, history, time.perf_counter() - started, scales)
