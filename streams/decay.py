"""Decay: every user's long-term vector decayed to the newest event time applied on their partition.

Event time, not the wall clock, so that a replayed log decays as it happened. Decaying changes the
long-term weight only (the average stays), so a user is rewritten only once decay has taken
``REWRITE_FRACTION`` of their weight since they were last written: writing every user on every tick
would cost a changelog record per user per tick for a change that does not alter their ranking.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from models.updater import InterestUpdater
from state.user_state import decode, encode

REWRITE_FRACTION = 0.05


def min_elapsed_s(half_life_s: float) -> float:
    """Event time after which decay has taken ``REWRITE_FRACTION`` of a weight: 2^(-t/h) = 1 - f."""
    return -half_life_s * math.log2(1.0 - REWRITE_FRACTION)


@dataclass
class Decayed:
    rows: dict[bytes, bytes] = field(default_factory=dict)  # user key -> decayed state, to rewrite
    unreadable: list[bytes] = field(default_factory=list)  # user keys whose stored state does not decode


def decay_step(rows: Iterable[tuple[bytes, bytes]], now: float, updater: InterestUpdater) -> Decayed:
    """Stored (user key, state) rows -> the rows to rewrite, decayed to event time ``now``. A state that
    does not decode is left as it is and named: it is that user's fault, not the partition's (their
    events are dead-lettered by the event path)."""
    due = now - min_elapsed_s(updater.config.half_life_s)
    out = Decayed()
    states = {}
    for key, value in rows:
        try:
            state = decode(value)
        except Exception:  # noqa: BLE001 - any way a stored state can fail to decode
            out.unreadable.append(key)
            continue
        if state.lt_weight > 0 and state.lt_time < due:
            states[key] = state
    out.rows = {key: encode(state) for key, state in updater.decay(states, now).items()}
    return out
