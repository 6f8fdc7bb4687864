"""Decay: the long-term weight halves every half-life of event time, the average stays, and a user is
rewritten only once decay has taken 5% of their weight."""

import math

import numpy as np
import pytest

from models import longterm
from state.user_state import UserState, decode, encode
from streams.decay import REWRITE_FRACTION, decay_step, min_elapsed_s
from tests.test_bad_input import make_updater

HALF_LIFE = 1000.0


def stored(weight: float, at: float) -> bytes:
    state = UserState.new(6, 8, "untrained")
    state.lt_sum, state.lt_weight, state.lt_time = np.full(8, weight, np.float32), weight, at
    return encode(state)


def test_the_weight_halves_every_half_life_and_the_average_is_kept():
    s, w, t = longterm.decay_to(
        np.ones((1, 4), np.float32) * 6,
        np.array([3.0]),
        np.array([0.0]),
        np.array([2 * HALF_LIFE]),
        HALF_LIFE,
    )
    assert (
        w[0] == pytest.approx(0.75)
        and s[0] / w[0] == pytest.approx(np.full(4, 2.0))
        and t[0] == 2 * HALF_LIFE
    )
    assert longterm.decay_factor(-50.0, HALF_LIFE) == 1.0  # a late event decays nothing


def test_the_rewrite_rule_is_five_percent_of_the_weight():
    assert REWRITE_FRACTION == 0.05
    assert 2 ** (-min_elapsed_s(HALF_LIFE) / HALF_LIFE) == pytest.approx(0.95)
    assert min_elapsed_s(HALF_LIFE) == pytest.approx(HALF_LIFE * 0.074, rel=1e-2)


def test_only_users_decayed_by_five_percent_or_more_are_rewritten():
    now = 10_000.0
    due, not_yet = now - min_elapsed_s(HALF_LIFE) - 1, now - min_elapsed_s(HALF_LIFE) + 1
    rows = [
        (b"old", stored(4.0, due)),
        (b"recent", stored(4.0, not_yet)),
        (b"empty", stored(0.0, 0.0)),
        (b"bad", b"\x09 junk"),
    ]
    out = decay_step(rows, now, make_updater(half_life_s=HALF_LIFE))
    assert set(out.rows) == {b"old"} and out.unreadable == [b"bad"]
    state = decode(out.rows[b"old"])
    assert state.lt_time == now and state.lt_weight == pytest.approx(
        4.0 * 2 ** (-(now - due) / HALF_LIFE)
    )
    assert math.isclose(state.long_term[0], 1.0, rel_tol=1e-6)  # lt_sum / lt_weight unchanged
