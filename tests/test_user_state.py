import numpy as np

from state.user_state import UserState, decode, encode


def test_encoding_round_trips_every_field():
    s = UserState(
        hidden=np.arange(8, dtype=np.float32), lt_sum=np.linspace(0, 1, 6, dtype=np.float32), lt_weight=2.5, lt_time=10.0,
        clicks=3, purchases=1, last_event_id="e9", last_event_time=9.0, model_version="gru-x",
        applied={"clicks:1": 41, "purchases:1": 7}, recent_items=["b", "a"], recent_event_ids=["e9", "e8"],
    )
    back = decode(encode(s))
    assert np.array_equal(back.hidden, s.hidden) and np.array_equal(back.lt_sum, s.lt_sum)
    assert (back.lt_weight, back.lt_time, back.clicks, back.purchases) == (2.5, 10.0, 3, 1)
    assert back.applied == s.applied and back.recent_items == s.recent_items and back.model_version == "gru-x"
    assert np.allclose(back.long_term, s.lt_sum / 2.5)


def test_applied_offsets_and_recent_items():
    s = UserState.new(4, 3, "v")
    assert not s.is_applied("clicks:0", 0)
    s.applied["clicks:0"] = 5
    assert s.is_applied("clicks:0", 5) and s.is_applied("clicks:0", 2) and not s.is_applied("clicks:0", 6)
    assert not s.is_applied("purchases:0", 0)
    for i, item in enumerate(["a", "b", "a", "c"]):
        s.remember(f"e{i}", item, recent_items=2)
    assert s.recent_items == ["c", "a"] and s.recent_event_ids[0] == "e3"
