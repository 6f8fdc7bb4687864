"""The data path for one micro-batch: events -> user states -> recommendations.

Pure computation, no Kafka: the worker's event step calls ``apply`` in its model thread, and
``models.evaluate`` calls the same ``apply`` in-process and ranks ``scores`` (``recommend``'s query over the
whole catalogue), so what is measured is what is served.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from itertools import repeat
from typing import TypeVar

import numpy as np
import torch

from models import history, longterm, reasons
from models.catalogue import Catalogue
from models.interest import InterestModel
from models.records import Event, Recommendation, Rejection, ScoredItem
from models.scorer import Scorer, ScoringConfig
from models.trending import Trending
from state.user_state import UserState

K = TypeVar("K")  # a user's key: their id, or its bytes
CPU = torch.device("cpu")
# users per recompute: bounds its memory (~100 entries each, and a [users, D] result)
REFRESH_BATCH = 4096


@dataclass(frozen=True)
class UpdaterConfig:
    """What the updater needs of the settings (``Settings.updater_config()`` gives the configured one).
    These defaults are the product's: ``streams.settings.Settings`` takes its fields' defaults from here."""

    top_k: int = 10  # recommendations per user
    exclude_seen: bool = True  # drop the user's recent items from their recommendations
    reasons: bool = False  # a reason per recommended item (models.reasons)
    recent_items: int = 50  # recent items remembered per user
    # items a user's long-term history keeps, to recompute it (models.history)
    history_items: int = 100
    half_life_s: float = 7 * 86400.0  # of the long-term interest, seconds of event time
    click_weight: float = 1.0  # long-term weight of a click
    purchase_weight: float = 3.0  # of a purchase (times its quantity)
    max_lateness_s: float = 86400.0  # events older than the user's last by more are rejected
    # score large catalogues in bf16 where the CPU has it natively
    bf16_scoring: bool = ScoringConfig.bf16
    # from this catalogue size on, candidates come from an ANN index (models.scorer)
    ann_min_items: int = ScoringConfig.ann_min_items
    ann_nprobe: int = ScoringConfig.ann_nprobe  # IVF lists searched per query
    # where the catalogue is scored: auto (cuda if present), cpu or cuda[:N]; a Scorer alone stays on the CPU
    scoring_device: str = "auto"


@dataclass(frozen=True)
class Delivered:
    """An event as it arrived: ``source`` is "topic:partition", ``offset`` its position there."""

    event: Event
    source: str
    offset: int


@dataclass
class BatchResult:
    states: dict[str, UserState] = field(default_factory=dict)  # every user whose state changed
    recommendations: list[Recommendation] = field(default_factory=list)
    rejected: list[tuple[Delivered, Rejection]] = field(default_factory=list)
    redelivered: int = 0  # already applied before a crash/rebalance: skipped, not rejected
    # long-term vectors recomputed, by cause (``refresh``)
    refreshed: Counter[str] = field(default_factory=Counter)


class InterestUpdater:
    def __init__(self, model: InterestModel, catalogue: Catalogue, config: UpdaterConfig) -> None:
        self.model = model.eval()
        self.catalogue = catalogue
        self.config = config
        self.scorer = Scorer(
            ScoringConfig(
                config.bf16_scoring, config.ann_min_items, config.ann_nprobe, config.scoring_device
            )
        )
        # the recent popularity of the items of the events this updater applied, for the model's trend term
        self.trending = (
            Trending(model.config.trend_half_life_s) if model.config.trend_half_life_s > 0 else None
        )

    def new_state(self) -> UserState:
        return UserState.new(
            self.model.config.hidden, self.catalogue.dim, self.model.version, self.catalogue.space
        )

    # -- step 1: decide, per event, whether it is applied --------------------------------------------------

    def _admit(
        self, batch: list[Delivered], states: dict[str, UserState | None], result: BatchResult
    ):
        """Per user, the events to apply in arrival order (an empty list for a user with only redelivered
        events, who is published again); rejected and redelivered events are set aside."""
        accepted: dict[str, list[Event]] = defaultdict(list)
        for d in batch:
            ev = d.event
            state = states.get(ev.user_id)
            if state is None:
                state = states[ev.user_id] = self.new_state()
            # Written back even when only redelivered: the local store may hold a write whose changelog
            # record died with the crashed worker; rewriting the state repairs the changelog.
            result.states[ev.user_id] = state
            if state.is_applied(d.source, d.offset):
                result.redelivered += 1
                # its recommendation may have died with the crashed worker: publish again
                if state.last_event_id:
                    accepted.setdefault(ev.user_id, [])
                continue
            # consumed, whatever the verdict: never looked at twice
            state.applied[d.source] = d.offset
            rejection = self._check(ev, state)
            if rejection is not None:
                result.rejected.append((d, rejection))
                continue
            if state.model_version != self.model.version:  # another GRU wrote this hidden vector
                state.hidden = np.zeros(self.model.config.hidden, np.float32)
                state.model_version = self.model.version
            state.remember(ev.event_id, ev.item_id, self.config.recent_items)
            # the newest event by event time, with its own time (a late one is not it)
            if ev.ts >= state.last_event_time:
                state.last_event_id, state.last_event_time = ev.event_id, ev.ts
            accepted[ev.user_id].append(ev)
        return accepted

    def _check(self, ev: Event, state: UserState) -> Rejection | None:
        if ev.item_id not in self.catalogue.index:
            return Rejection(
                "unknown_item", f"item {ev.item_id!r} is not in the embedded catalogue"
            )
        if ev.event_id in state.recent_event_ids:
            return Rejection(
                "duplicate", f"event {ev.event_id!r} was already applied to user {ev.user_id!r}"
            )
        if state.last_event_time and ev.ts < state.last_event_time - self.config.max_lateness_s:
            return Rejection(
                "too_late",
                f"ts {ev.ts} is {state.last_event_time - ev.ts:.0f}s behind the user's last event",
            )
        return None

    # -- step 2: advance short- and long-term state, one round per event position ---------------------------

    def _advance(self, accepted: dict[str, list[Event]], states: dict[str, UserState]) -> None:
        """Step every user's short- and long-term state through their events, in order. Everything that does
        not depend on the order (the items' vectors, the GRU's inputs, weights) is computed for the whole
        micro-batch at once; round r then steps the users with an r-th event together. A user with many
        events costs a round each (a GRU step and a decay-and-add), not a round's full setup."""
        s = self.config
        users = [u for u, evs in accepted.items() if evs]
        if not users:
            return
        events = [e for u in users for e in accepted[u]]  # user by user, each in arrival order
        lengths = [len(accepted[u]) for u in users]
        # the user of each event, as an index into ``users``
        owner = np.repeat(np.arange(len(users)), lengths)
        position = np.concatenate([np.arange(n) for n in lengths])  # each event's round
        item_ids = [e.item_id for e in events]
        emb = self.catalogue.vectors(item_ids)
        is_purchase = np.array([e.type == "purchase" for e in events])
        weights = np.where(is_purchase, s.purchase_weight, s.click_weight) * np.array(
            [e.quantity for e in events]
        )
        ts = np.array([e.ts for e in events])
        fingerprints = self.catalogue.fingerprints_at(self.catalogue.rows(item_ids))
        st = [states[u] for u in users]
        lt_sum = np.stack([x.lt_sum for x in st])
        lt_weight = np.array([x.lt_weight for x in st])
        lt_time = np.array([x.lt_time for x in st])
        counted_at = np.empty(len(events))  # the time the long-term sum counted each event at
        with torch.inference_mode():
            item_vec = self.model.item_space(torch.from_numpy(emb), self.model.rows(item_ids))[
                :, :-1
            ]
            x_all = self.model.step_input(item_vec, torch.from_numpy(is_purchase).long())
            hidden = torch.from_numpy(np.stack([x.hidden for x in st]))
            for r in range(max(lengths)):
                at = np.flatnonzero(position == r)
                who = owner[at]
                hidden[who] = self.model.gru(x_all[at], hidden[who])
                lt_sum[who], lt_weight[who], lt_time[who] = longterm.add(
                    lt_sum[who],
                    lt_weight[who],
                    lt_time[who],
                    ts[at],
                    emb[at],
                    weights[at],
                    s.half_life_s,
                )
                counted_at[at] = lt_time[who]
        hidden_np = hidden.numpy()
        for i, x in enumerate(st):
            x.hidden, x.lt_sum, x.lt_weight, x.lt_time = (
                hidden_np[i].copy(),
                lt_sum[i],
                float(lt_weight[i]),
                float(lt_time[i]),
            )
        for i, e in enumerate(events):
            x = st[owner[i]]
            # at counted_at: the time the sum counted the event at (a late one counts as of the user's newest)
            if weights[i] > 0 and history.record(
                x.history,
                e.item_id,
                float(counted_at[i]),
                float(weights[i]),
                int(fingerprints[i]),
                s.half_life_s,
            ):
                history.prune(x.history, s.history_items, s.half_life_s)
            if e.type == "purchase":
                x.purchases += 1
            else:
                x.clicks += 1

    # -- step 3: fuse, score the catalogue, keep the top k --------------------------------------------------

    def _query_parts(self, states: list[UserState]) -> dict[str, torch.Tensor]:
        """The parts [B, dim] of the fused query each state ranks the item space with
        (``InterestModel.query_parts``;
        call under inference mode)."""
        return self.model.query_parts(
            torch.from_numpy(np.stack([x.hidden for x in states])),
            torch.from_numpy(np.stack([x.long_term for x in states])),
            torch.tensor([x.lt_weight for x in states], dtype=torch.float32),
        )

    def scores(self, states: list[UserState]) -> np.ndarray:
        """Every catalogue item's score for each state, exact fp32, nothing excluded.

        ``recommend``'s top-k is these scores' top-k with the exclusions (up to bf16 near-ties, and ANN
        misses in a large catalogue).

        Args:
            states: the users' states, as ``apply`` leaves them.

        Returns:
            float32 [len(states), len(catalogue)], columns in ``catalogue.ids`` order, higher is
            better: the fused query's dot product with each item, plus the trend, item bias and
            re-buy terms the model was trained with (docs/architecture.md).
        """
        if not states or not len(self.catalogue):
            return np.zeros((len(states), len(self.catalogue)), np.float32)
        self.scorer.sync(self.catalogue, self.model)
        with torch.inference_mode():
            q = self.model.scoring_query(self.model.fuse(self._query_parts(states)))
            scores = (q.to(self.scorer.device) @ self.scorer.space.T).cpu().numpy()
            if (trend := self.trend()) is not None:
                scores += trend.numpy()
            if self.model.config.rebuys:
                for row, (rows, amounts) in zip(scores, self.rebuy_boost(states)):
                    row[rows] += amounts
        return scores

    def recommend(self, states: list[UserState], k: int | None = None) -> list[list[ScoredItem]]:
        """Top-k over the full catalogue for each state, the user's recent items excluded if configured,
        each item with its reason if configured (``models.reasons``)."""
        k = k or self.config.top_k
        if not states or not len(self.catalogue):
            return [[] for _ in states]
        with torch.inference_mode():
            parts = self._query_parts(states)
            recent: list[list[int]] = []  # each user's recent items' rows, if needed
            if self.config.exclude_seen or self.config.reasons:
                row = self.catalogue.index.get
                recent = [[j for j in map(row, x.recent_items) if j is not None] for x in states]
            self.scorer.sync(self.catalogue, self.model)
            boost = self.rebuy_boost(states) if self.model.config.rebuys else None
            trend = self.trend()
            scores, idx = self.scorer.top_k(
                self.model.scoring_query(self.model.fuse(parts)),
                k,
                recent if self.config.exclude_seen else None,
                boost,
                trend,
            )
            explained = (
                reasons.explain(
                    parts, self.scorer.space, idx, recent, self.catalogue.ids, boost, trend
                )
                if self.config.reasons
                else repeat(repeat(None))
            )
        ids = self.catalogue.ids
        return [  # through numpy: torch's tolist() costs ~1 us per element
            [
                ScoredItem(ids[j], v, why)
                for v, j, why in zip(row_s, row_i, row_why)
                if v != float("-inf")
            ]
            for row_s, row_i, row_why in zip(
                scores.numpy().tolist(), idx.numpy().tolist(), explained
            )
        ]

    def trend(self) -> torch.Tensor | None:
        """The trend term g f_i [len(catalogue)] of every item (``InterestModel.trend``) as of the
        events applied
        so far; None for a model without one. Call under inference mode."""
        if self.trending is None:
            return None
        return self.model.trend(torch.from_numpy(self.trending.feature(self.catalogue)))

    def rebuy_boost(self, states: list[UserState]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per state, the catalogue rows of its history's items and their re-buy terms r(W, n)
        (``InterestModel.rebuy``),
        W being the decayed weight of the user's clicks and purchases of the item at the state's ``lt_time``
        (``history.weights_at``), n how many times they touched it."""
        boost = []
        for x in states:
            rows = self.catalogue.rows(x.history.items)
            present = rows >= 0
            weight = torch.from_numpy(
                history.weights_at(x.history, x.lt_time, self.config.half_life_s)[present]
            )
            count = torch.tensor(x.history.counts, dtype=torch.float64)[torch.from_numpy(present)]
            boost.append((rows[present], self.model.rebuy(weight, count).numpy()))
        return boost

    def apply(self, batch: list[Delivered], states: dict[str, UserState | None]) -> BatchResult:
        """Apply a micro-batch: per user, in offset order, one GRU step and one decayed long-term add
        per event, then one top-k per user over the full catalogue.

        Args:
            batch: the micro-batch's admitted events, in offset order per source partition.
            states: the stored state of each user in the batch, None for a new user; the states are
                advanced in place (decode them afresh from the store to keep the old ones).

        Returns:
            The changed states, one recommendation per user with an applied or redelivered event, the
            rejected events with their reasons (unknown item, duplicate event id, later than
            ``max_lateness_s``), the redelivered count (offsets a state already holds: skipped) and
            the long-term refreshes by cause.
        """
        result = BatchResult()
        accepted = self._admit(batch, states, result)
        # Never add to, or score with, a long-term sum of another encoder's space: recompute it in
        # this one first.
        result.refreshed = self.refresh(
            [x for u in accepted if (x := result.states[u]).space != self.catalogue.space]
        )
        self._advance(accepted, result.states)
        if self.trending is not None:
            applied = [e for evs in accepted.values() for e in evs]
            self.trending.add([e.item_id for e in applied], np.array([e.ts for e in applied]))
        # A recommendation for every user with an applied event, and again for redelivered ones (at-least-once
        # output); none for a user whose events were all rejected: nothing changed for them.
        users = list(accepted)
        now = time.time()
        for user, items in zip(users, self.recommend([result.states[u] for u in users])):
            state = result.states[user]
            state.latest, state.latest_at = [(i.item_id, i.score) for i in items], now
            result.recommendations.append(
                Recommendation(
                    user, items, state.last_event_id, state.last_event_time, self.model.version, now
                )
            )
        return result

    # -- long-term refresh: recompute from the history with the current item vectors
    # --------------------------

    def needs_refresh(self, state: UserState, changed: Set[str] | None) -> bool:
        """Whether ``state``'s long-term sum is in another encoder's space, or is not its history's sum of
        the catalogue's current vectors (``history.is_stale``). ``changed``: the items whose vectors came,
        changed or went since the state was last checked (``Catalogue.changed_items_since``); None if
        unknown (every entry is compared)."""
        if state.space != self.catalogue.space or state.lt_sum.size != self.catalogue.dim:
            return True
        if changed is not None and not state.history.holds_any(changed):
            return False
        return history.is_stale(state.history, self.catalogue)

    def refresh(self, states: Iterable[UserState], device: torch.device = CPU) -> Counter[str]:
        """Recompute the long-term sums and weights of ``states`` (in place) from their histories with the
        current vectors, batched on ``device``, at each state's ``lt_time``; returns how many were
        recomputed by cause: ``encoder`` (another encoder's space: the short-term state restarts too, its
        GRU was fed that encoder's vectors) or ``item_vectors`` (an item's vector changed, went or came). A
        state written before spaces were recorded (no space, no history) is taken as this space's: there
        is nothing to recompute it from (docs/refresh.md, Rolling out a new encoder)."""
        causes: Counter[str] = Counter()
        due = []
        for x in states:
            if not x.space and not len(x.history) and x.lt_sum.size == self.catalogue.dim:
                x.space = self.catalogue.space
                continue
            if x.space != self.catalogue.space:
                causes["encoder"] += 1
                # the GRU was fed the other encoder's vectors
                x.hidden = np.zeros(self.model.config.hidden, np.float32)
            else:
                causes["item_vectors"] += 1
            due.append(x)
        for start in range(0, len(due), REFRESH_BATCH):
            chunk = due[start : start + REFRESH_BATCH]
            sums, weights = history.recompute(
                [x.history for x in chunk],
                np.array([x.lt_time for x in chunk]),
                self.catalogue,
                self.config.half_life_s,
                device,
            )
            for x, lt_sum, lt_weight in zip(chunk, sums, weights):
                x.lt_sum, x.lt_weight, x.space = lt_sum, float(lt_weight), self.catalogue.space
        return causes

    def decay(self, states: dict[K, UserState], now: float) -> dict[K, UserState]:
        """Decay long-term vectors to event time ``now``; returns the states that changed."""
        stale = {u: x for u, x in states.items() if x.lt_weight > 0 and x.lt_time < now}
        if stale:
            st = list(stale.values())
            lt_sum, lt_weight, lt_time = longterm.decay_to(
                np.stack([x.lt_sum for x in st]),
                np.array([x.lt_weight for x in st]),
                np.array([x.lt_time for x in st]),
                np.full(len(st), now),
                self.config.half_life_s,
            )
            for i, x in enumerate(st):
                x.lt_sum, x.lt_weight, x.lt_time = lt_sum[i], float(lt_weight[i]), float(lt_time[i])
        return stale
