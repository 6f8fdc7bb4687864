"""Recent popularity ("trending"): each item's share of the recent events, decayed in event time.

An item's decayed count is c_i(T) = sum over its events e of 2^(-(T - t_e)/h), h the half-life; the score's
trend feature is

    f_i = log(1 + N c_i / C),   C = sum_i c_i,  N the catalogue size,

the item's share of the recent events against an even spread over the catalogue (0 for an item nobody
touched lately; log: a share spans orders of magnitude). A share does not change when every count decays
alike, so the counts are kept forward-decayed (Cormode et al., "Forward decay", ICDE 2009): an event adds
2^((t_e - t_0)/h) and nothing decays in between; t_0 moves up before the numbers grow too large. Every
event counts once, click or purchase, as the popularity peer counts them (``models.peers.Popular``).

A worker keeps one over the events it applies: its partitions' users, a sample of all users whose shares
estimate everyone's. It saves the counts in its item store at its decay passes and reads them back at start
(``to_bytes``), so a restart loses at most the events since the last pass, the only effect of which is a
slightly older popularity. Training computes the feature over the whole log (``snapshots``).
"""

from __future__ import annotations

import json
import math

import numpy as np

from models import longterm
from models.catalogue import Catalogue

RESCALE_EXPONENT = 500.0  # 2^500 of 2^1023: forward weights rescaled (t_0 moved up) past this
# at a rescale, an item with less than this share is forgotten (its f_i is below N * 1e-12)
NEGLIGIBLE = 1e-12
MAX_SNAPSHOTS = 4096  # training's feature table is [snapshots, N] float32


def feature(counts: np.ndarray) -> np.ndarray:
    """float32 [N] trend feature of decayed (or forward-decayed) counts [N]; zeros when there are none."""
    total = float(counts.sum())
    if total <= 0:
        return np.zeros(len(counts), np.float32)
    return np.log1p(len(counts) * counts / total).astype(np.float32)


class Trending:
    """The worker's recent-popularity counts: forward-decayed, per item id; ``feature`` by catalogue row."""

    def __init__(self, half_life_s: float) -> None:
        if not half_life_s > 0:
            raise ValueError(f"half-life {half_life_s} s: must be > 0")
        self.half_life_s = half_life_s
        self.t0: float | None = None
        self.counts: dict[str, float] = {}
        # ``counts`` by catalogue row as of a catalogue version, and the events added since:
        # ``feature`` follows
        # a batch's events instead of reading every item's count again (a million items: ~0.2 s)
        self._by_row = np.zeros(0)
        # (id of the catalogue, its version) ``_by_row`` is of
        self._version: tuple[int, int] | None = None
        self._pending: list[tuple[list[str], np.ndarray]] = []

    def add(self, item_ids: list[str], ts: np.ndarray) -> None:
        """Count one event of each ``item_ids[n]`` at event time ``ts[n]`` (unix seconds)."""
        if not item_ids:
            return
        if self.t0 is None:
            self.t0 = float(ts.min())
        exponent = (ts - self.t0) / self.half_life_s
        # move t_0 to now: every count shrinks alike, shares stay
        if exponent.max() > RESCALE_EXPONENT:
            shift = float(ts.max()) - self.t0
            scale = float(longterm.decay_factor(shift, self.half_life_s))
            floor = NEGLIGIBLE * sum(self.counts.values()) * scale
            self.counts = {i: c * scale for i, c in self.counts.items() if c * scale > floor}
            self.t0 += shift
            self._version = None
            exponent = (ts - self.t0) / self.half_life_s
        weights = np.exp2(exponent)
        for item, w in zip(item_ids, weights.tolist()):
            self.counts[item] = self.counts.get(item, 0.0) + w
        if self._version is not None:
            self._pending.append((list(item_ids), weights))

    def to_bytes(self) -> bytes:
        return json.dumps(
            {"half_life_s": self.half_life_s, "t0": self.t0, "counts": self.counts}
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> "Trending":
        """Raises ``ValueError`` for bytes that are not ``to_bytes``'s: finite, non-negative counts."""
        try:
            obj = json.loads(raw)
            out = cls(float(obj["half_life_s"]))
            out.t0 = None if obj["t0"] is None else float(obj["t0"])
            out.counts = {str(i): float(c) for i, c in obj["counts"].items()}
        except (TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not saved trend counts: {exc!r}") from None
        if not all(math.isfinite(c) and c >= 0 for c in out.counts.values()) or (
            out.t0 is not None and not math.isfinite(out.t0)
        ):
            raise ValueError("saved trend counts hold a negative or non-finite number")
        return out

    def feature(self, catalogue: Catalogue) -> np.ndarray:
        """float32 [len(catalogue)]: each row's trend feature f_i (module docstring)."""
        version = (id(catalogue), catalogue.version)
        # another catalogue, or rows came, moved or went: every row read again
        if self._version != version:
            get = self.counts.get
            self._by_row = np.fromiter(
                (get(i, 0.0) for i in catalogue.ids), np.float64, len(catalogue)
            )
            self._version = version
        else:
            for items, weights in self._pending:
                rows = catalogue.rows(items)
                np.add.at(self._by_row, rows[rows >= 0], weights[rows >= 0])
        self._pending.clear()
        return feature(self._by_row)


def snapshots(
    items: np.ndarray, times: np.ndarray, n_items: int, half_life_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """The trend feature over a whole log for training: events' catalogue rows [E] and times [E] (unix s) ->
    (snapshot start times [K], features float32 [K, n_items]); snapshot k counts the events before its
    start, so an event at time t reads the snapshot ``searchsorted(starts, t, "right") - 1`` and never
    itself or anything after. Snapshots every h/8 (more apart when the log would need over MAX_SNAPSHOTS)."""
    if not len(times):
        return np.zeros(1), np.zeros((1, n_items), np.float32)
    t_min, t_max = float(times.min()), float(times.max())
    step = max(half_life_s / 8, (t_max - t_min) / (MAX_SNAPSHOTS - 1), 1.0)
    starts = t_min + step * np.arange(int((t_max - t_min) // step) + 1)
    order = np.argsort(times, kind="stable")
    # bucket k: events [ends[k-1], ends[k])
    ends = np.searchsorted(times[order], starts, "left")[1:].tolist() + [len(order)]
    counts, out, begin = np.zeros(n_items), np.zeros((len(starts), n_items), np.float32), 0
    for k, start in enumerate(starts):
        if k:
            counts *= longterm.decay_factor(step, half_life_s)
        out[k] = feature(counts)
        done = order[begin : ends[k]]
        # at its time, as of `start`
        np.add.at(counts, items[done], 2.0 ** ((times[done] - start) / half_life_s))
        begin = ends[k]
    return starts, out
