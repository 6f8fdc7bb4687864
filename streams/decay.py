"""Decay: every user's long-term vector decayed to the newest event time applied on their partition;
the same pass over the partition expires idle users and deletes erasure markers (``streams.erasure``).

Event time, not the wall clock, so that a replayed log decays as it happened. Decaying changes the
long-term weight only (the average stays), so a user is rewritten only once decay has taken
``REWRITE_FRACTION`` of their weight since they were last written: writing every user on every tick
would cost a changelog record per user per tick for a change that does not alter their ranking.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from models.updater import InterestUpdater
from state.user_state import decode, encode
from streams.erasure import expired, forgettable, marker

REWRITE_FRACTION = 0.05


def min_elapsed_s(half_life_s: float) -> float:
    """Event time after which decay has taken ``REWRITE_FRACTION`` of a weight: 2^(-t/h) = 1 - f."""
    return -half_life_s * math.log2(1.0 - REWRITE_FRACTION)


@dataclass
class Decayed:
    rows: dict[bytes, bytes] = field(default_factory=dict)  # user key -> decayed state, or an expired user's marker, to rewrite
    expired: list[bytes] = field(default_factory=list)  # user keys expired (their marker is in rows)
    forgotten: list[bytes] = field(default_factory=list)  # erasure markers to delete
    unreadable: list[bytes] = field(default_factory=list)  # user keys whose stored state does not decode


def decay_step(rows: Iterable[tuple[bytes, bytes]], now: float | None, updater: InterestUpdater, ttl_s: float = 0.0,
               committed: Mapping[str, int | None] | None = None) -> Decayed:
    """Stored (user key, state) rows -> what to rewrite and delete: states decayed to event time ``now``
    (None: no event applied yet, nothing decays or expires), users idle for ``ttl_s`` replaced by their
    erasure marker, markers ``committed`` past deleted. A state that does not decode is left as it is and
    named: it is that user's fault, not the partition's (their events are dead-lettered by the event path)."""
    out = Decayed()
    due = None if now is None else now - min_elapsed_s(updater.config.half_life_s)
    states = {}
    for key, value in rows:
        try:
            state = decode(value)
        except Exception:  # noqa: BLE001 - any way a stored state can fail to decode
            out.unreadable.append(key)
            continue
        if committed is not None and forgettable(state, committed):
            out.forgotten.append(key)
        elif now is not None and expired(state, now, ttl_s):
            out.expired.append(key)
            out.rows[key] = encode(marker(state))
        elif due is not None and state.lt_weight > 0 and state.lt_time < due:
            states[key] = state
    if now is not None:
        out.rows.update({key: encode(state) for key, state in updater.decay(states, now).items()})
    return out
