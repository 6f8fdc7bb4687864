"""A decay tick's pass over one partition's users: decay, refresh, and erasure's last steps.

Decay: every user's long-term vector decayed to the newest event time applied on their partition. Event
time, not the wall clock, so that a replayed log decays as it happened. Decaying changes the long-term
weight only (the average stays), so a user is rewritten only once decay has taken ``REWRITE_FRACTION``
of their weight since they were last written: writing every user on every tick would cost a changelog
record per user per tick for a change that does not alter their ranking.

Refresh: the users whose long-term sum holds a vector the catalogue replaced or retired (or lacks one it
now has), or is in another encoder's space, are recomputed from their history
(``InterestUpdater.refresh``), batched on the
encoder's device. Which users are checked is ``RefreshScope``'s: ``streams.refresh`` decides it.

Erasure (``streams.erasure``): users without an event for ``INTEREST_USER_TTL_S`` (wall clock) are
replaced by their erasure marker, and markers the consumer group has committed past are deleted.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from models.updater import CPU, InterestUpdater
from state.user_state import UserState, decode, encode
from streams.erasure import expired, forgettable, marker

REWRITE_FRACTION = 0.05


def min_elapsed_s(half_life_s: float) -> float:
    """Event time after which decay has taken ``REWRITE_FRACTION`` of a weight: 2^(-t/h) = 1 - f."""
    return -half_life_s * math.log2(1.0 - REWRITE_FRACTION)


@dataclass(frozen=True)
class RefreshScope:
    """The users a pass checks for a refresh: all (``changed`` None: what changed is unknown), or those
    whose history holds one of the ``changed`` items (none if it is empty). ``version``: the catalogue's
    when decided."""

    version: int
    changed: frozenset[str] | None

    @property
    def empty(self) -> bool:
        return self.changed is not None and not self.changed


NO_REFRESH = RefreshScope(-1, frozenset())


@dataclass
class Decayed:
    # user key -> decayed or refreshed state, or an expired user's marker
    rows: dict[bytes, bytes] = field(default_factory=dict)
    # user keys expired (their marker is in rows)
    expired: list[bytes] = field(default_factory=list)
    forgotten: list[bytes] = field(default_factory=list)  # erasure markers to delete
    # user keys whose stored state does not decode
    unreadable: list[bytes] = field(default_factory=list)
    # long-term vectors recomputed, by cause
    refreshed: Counter[str] = field(default_factory=Counter)


def decay_step(
    rows: Iterable[tuple[bytes, bytes]],
    now: float | None,
    updater: InterestUpdater,
    scope: RefreshScope = NO_REFRESH,
    device: torch.device = CPU,
    idle_before: float | None = None,
    committed: Mapping[str, int | None] | None = None,
) -> Decayed:
    """Stored (user key, state) rows -> the rows to rewrite and delete: refreshed within ``scope`` (on
    ``device``), decayed to event time ``now`` (None: no decay), users with no event since ``idle_before``
    (wall clock; None: none expire) replaced by their erasure marker, markers ``committed`` past
    deleted. A state that does not decode is
    left as it is and named: it is that user's fault, not the partition's (their events are dead-lettered
    by the event path)."""
    due = -math.inf if now is None else now - min_elapsed_s(updater.config.half_life_s)
    out = Decayed()
    stale: dict[bytes, UserState] = {}
    decaying: dict[bytes, UserState] = {}
    for key, value in rows:
        try:
            state = decode(value)
        except Exception:  # noqa: BLE001 - any way a stored state can fail to decode
            out.unreadable.append(key)
            continue
        if committed is not None and forgettable(state, committed):
            out.forgotten.append(key)
            continue
        if idle_before is not None and expired(state, idle_before):
            out.expired.append(key)
            out.rows[key] = encode(marker(state))
            continue
        if not scope.empty and updater.needs_refresh(state, scope.changed):
            stale[key] = state
        if state.lt_weight > 0 and state.lt_time < due:
            decaying[key] = state
    out.refreshed = updater.refresh(stale.values(), device)
    changed = {**stale, **(updater.decay(decaying, now) if now is not None else {})}
    out.rows.update({key: encode(state) for key, state in changed.items()})
    return out
