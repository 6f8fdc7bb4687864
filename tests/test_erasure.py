"""Erasure in the pure steps: a request leaves a marker with no personal data but the applied offsets; a
request read again after a crash erases nothing new; idle users expire; a marker goes only once the
group has committed past every offset it holds."""

from __future__ import annotations

import time

from state.user_state import decode, encode
from streams.decay import decay_step
from streams.erasure import forgettable, is_marker
from streams.ingest import EventStep, erasure_step
from streams.schemas import EventLimits
from tests.test_bad_input import Msg, make_updater
from tests.test_ingest import click


def applied_state(user: str, offsets: list[int], ts: float) -> bytes:
    """``user``'s stored state after their clicks at ``offsets`` of clicks:0."""
    step = EventStep(make_updater(), {"clicks": "click"}, EventLimits(), 1_000_000)
    out = step(
        [click(o, user, ts + o) for o in offsets], lambda keys: dict.fromkeys(keys), time.time()
    )
    return out.states[user.encode()][1]


def test_an_erasure_keeps_only_the_applied_offsets_and_is_not_applied_twice():
    stored = {
        b"ann": applied_state("ann", [3, 4], time.time() - 100),
        b"bob": None,
        b"bad": b"\x01junk",
    }
    requests = [
        Msg("erasures", 0, 7, b"ann", b"{}"),
        Msg("erasures", 0, 8, b"bob", b"{}"),
        Msg("erasures", 0, 9, b"bad", None),
        Msg("erasures", 0, 10, None, b"{}"),
    ]
    out = erasure_step(
        requests, lambda keys: {k: stored[k] for k in keys}, make_updater().new_state
    )
    assert set(out.erased) == {b"ann", b"bob", b"bad"} and [
        r.rejection.reason for r in out.rejected
    ] == ["bad_key"]
    ann = decode(out.states[b"ann"][1])
    assert is_marker(ann) and ann.applied == {"clicks:0": 4, "erasures:0": 7}
    assert (ann.clicks, ann.recent_items, ann.recent_event_ids, ann.latest, ann.lt_weight) == (
        0,
        [],
        [],
        [],
        0.0,
    )
    assert not ann.hidden.any() and not ann.lt_sum.any() and len(ann.history) == 0
    # a state that does not decode is erased too
    assert decode(out.states[b"bad"][1]).applied == {"erasures:0": 9}
    assert b"bob" not in out.states  # nothing stored: nothing to mark
    # The same request read again after a crash: the marker already holds it; later events must stay.
    again = erasure_step(
        [requests[0]], lambda keys: {b"ann": out.states[b"ann"][1]}, make_updater().new_state
    )
    assert again.states == {} and set(again.erased) == {b"ann"}


def test_a_marker_goes_once_the_group_committed_past_every_offset_it_holds():
    ann = decode(
        erasure_step(
            [Msg("erasures", 0, 7, b"ann", b"{}")],
            lambda keys: {b"ann": applied_state("ann", [3, 4], 1e9)},
            make_updater().new_state,
        ).states[b"ann"][1]
    )
    # the request itself not committed yet
    assert not forgettable(ann, {"clicks:0": 5, "erasures:0": 7})
    assert not forgettable(ann, {"clicks:0": None, "erasures:0": 8})  # no commit yet
    assert forgettable(ann, {"clicks:0": 5, "erasures:0": 8})
    # a user, not a marker
    assert not forgettable(decode(applied_state("bob", [1], 1e9)), {"clicks:0": 99})


def last_seen(raw: bytes, at: float) -> bytes:
    """The state with its last recommendation published at ``at`` (wall clock): when it last had an event."""
    state = decode(raw)
    state.latest_at = at
    return encode(state)


def test_the_decay_pass_expires_idle_users_and_deletes_committed_markers():
    now = 1_700_000_000.0  # event time and wall clock alike here
    marker = erasure_step(
        [Msg("erasures", 0, 7, b"gone", b"{}")],
        lambda keys: {b"gone": applied_state("gone", [1], now - 9e4)},
        make_updater().new_state,
    ).states[b"gone"][1]
    rows = [
        (b"idle", last_seen(applied_state("idle", [2], now - 3 * 86400), now - 3 * 86400)),
        (b"active", last_seen(applied_state("active", [5], now - 60), now - 60)),
        (b"gone", marker),
    ]
    out = decay_step(
        rows,
        now,
        make_updater(half_life_s=86400.0),
        idle_before=now - 86400.0,
        committed={"clicks:0": 6, "erasures:0": 8},
    )
    assert out.expired == [b"idle"] and out.forgotten == [b"gone"]
    idle = decode(out.rows[b"idle"])
    assert (
        is_marker(idle)
        and idle.applied == {"clicks:0": 2}
        and idle.recent_items == []
        and len(idle.history) == 0
    )
    assert b"active" not in out.rows  # decayed less than 5% in a minute: not rewritten
    kept = decay_step(rows, now, make_updater(half_life_s=86400.0), committed={"clicks:0": 2})
    # no TTL: decayed, not expired
    assert kept.expired == [] and kept.forgotten == [] and b"idle" in kept.rows
    # Old event times alone (a replayed log) do not expire a user who had an event a minute ago.
    replayed = [(b"replayed", last_seen(applied_state("replayed", [3], now - 3 * 86400), now - 60))]
    assert (
        decay_step(
            replayed, now, make_updater(half_life_s=86400.0), idle_before=now - 86400.0
        ).expired
        == []
    )
