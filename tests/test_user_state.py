import numpy as np
from rocksdict import Options, Rdict

from state.user_state import UserState, decode, encode
from streams.user_table import OFFSET_KEY, latest_copies, table_files


def test_encoding_round_trips_every_field():
    s = UserState(
        hidden=np.arange(8, dtype=np.float32),
        lt_sum=np.linspace(0, 1, 6, dtype=np.float32),
        lt_weight=2.5,
        lt_time=10.0,
        clicks=3,
        purchases=1,
        last_event_id="e9",
        last_event_time=9.0,
        model_version="gru-x",
        applied={"clicks:1": 41, "purchases:1": 7},
        recent_items=["b", "a"],
        recent_event_ids=["e9", "e8"],
        latest=[("c", 0.75), ("d", -0.125)],
        latest_at=11.5,
    )
    back = decode(encode(s))
    assert back.latest == s.latest and back.latest_at == 11.5
    assert np.array_equal(back.hidden, s.hidden) and np.array_equal(back.lt_sum, s.lt_sum)
    assert (back.lt_weight, back.lt_time, back.clicks, back.purchases) == (2.5, 10.0, 3, 1)
    assert (
        back.applied == s.applied
        and back.recent_items == s.recent_items
        and back.model_version == "gru-x"
    )
    assert np.allclose(back.long_term, s.lt_sum / 2.5)


def test_applied_offsets_and_recent_items():
    s = UserState.new(4, 3, "v")
    assert not s.is_applied("clicks:0", 0)
    s.applied["clicks:0"] = 5
    assert (
        s.is_applied("clicks:0", 5)
        and s.is_applied("clicks:0", 2)
        and not s.is_applied("clicks:0", 6)
    )
    assert not s.is_applied("purchases:0", 0)
    for i, item in enumerate(["a", "b", "a", "c"]):
        s.remember(f"e{i}", item, recent_items=2)
    assert s.recent_items == ["c", "a"] and s.recent_event_ids[0] == "e3"


def test_latest_copies_keeps_each_partition_once_furthest_along_the_changelog(tmp_path):
    # three workers' copies of partition 0 (standby, owner, one that never recorded an offset), one
    # of partition 1
    for worker, partition, offset in (
        ("a", 0, b"7"),
        ("b", 0, b"12"),
        ("c", 0, None),
        ("a", 1, b"3"),
    ):
        db = Rdict(
            str(tmp_path / worker / f"user-state-{partition}.db"), options=Options(raw_mode=True)
        )
        if offset is not None:
            db[OFFSET_KEY] = offset
        db[b"u"] = worker.encode()
        db.close()
    copies = [p for worker in "abc" for p in table_files(tmp_path / worker)]
    assert latest_copies(copies) == [
        tmp_path / "a" / "user-state-1.db",
        tmp_path / "b" / "user-state-0.db",
    ]
