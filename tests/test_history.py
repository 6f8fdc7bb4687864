"""The long-term history: touches merged with the long-term formula, bounded, and enough to recompute the
long-term sum with the current item vectors, the same as the incremental sum when nothing changed."""

from __future__ import annotations

import struct

import numpy as np
import orjson
import pytest
import torch

from models import history
from models.catalogue import Catalogue, fingerprint
from models.interest import InterestModel
from models.records import Event
from models.updater import Delivered, InterestUpdater, UpdaterConfig
from state.item_store import ItemVector
from state.user_state import _HEADER, History, UserState, decode, encode
from streams.decay import RefreshScope, decay_step
from streams.refresh import RefreshPasses

HALF_LIFE = 1000.0
DIM = 8


def vectors(n: int, seed: int, dim: int = DIM) -> list[ItemVector]:
    rng = np.random.default_rng(seed)
    out = rng.normal(size=(n, dim)).astype(np.float32)
    return [ItemVector(f"i{i}", b"\0" * 16, v / np.linalg.norm(v)) for i, v in enumerate(out)]


def updater(items: list[ItemVector], space: str = "", **config) -> InterestUpdater:
    dim = items[0].vector.size
    catalogue = Catalogue(dim, space)
    catalogue.upsert(items)
    settings = {"half_life_s": HALF_LIFE, "max_lateness_s": 500.0, "purchase_weight": 3.0, **config}
    return InterestUpdater(
        InterestModel.untrained(dim, 6, "t"), catalogue, UpdaterConfig(**settings)
    )


def random_events(
    n: int, seed: int, users: int = 4, items: int = 12, gap_s: float = 300.0
) -> list[list[Delivered]]:
    """Micro-batches of clicks and purchases ``gap_s`` apart on average (quantities, some late events,
    repeated items)."""
    rng = np.random.default_rng(seed)
    ts, batches, offset = 10_000.0, [], 0
    for _ in range(0, n, 7):
        batch = []
        for _ in range(7):
            ts += float(rng.exponential(gap_s))
            late = float(rng.uniform(0, 400.0)) if rng.random() < 0.15 else 0.0
            kind = "purchase" if rng.random() < 0.3 else "click"
            ev = Event(
                f"e{offset}",
                f"u{rng.integers(users)}",
                f"i{rng.integers(items)}",
                kind,
                ts - late,
                quantity=int(rng.integers(1, 4)) if kind == "purchase" else 1,
            )
            batch.append(Delivered(ev, "clicks:0", offset))
            offset += 1
        batches.append(batch)
    return batches


def run(
    up: InterestUpdater, batches: list[list[Delivered]], decay_every: int = 3
) -> dict[str, UserState]:
    """Apply ``batches`` through encode/decode as the worker does, decaying every few batches."""
    stored: dict[str, UserState] = {}
    for n, batch in enumerate(batches):
        users = {d.event.user_id for d in batch}
        result = up.apply(
            batch, {u: decode(encode(stored[u])) if u in stored else None for u in users}
        )
        assert not result.rejected, result.rejected
        stored.update(result.states)
        if n % decay_every == decay_every - 1:
            now = max(d.event.ts for d in batch) + 200.0
            stored.update(up.decay({u: decode(encode(x)) for u, x in stored.items()}, now))
    return {u: decode(encode(x)) for u, x in stored.items()}


def test_touches_of_one_item_merge_with_the_long_term_formula():
    h = History()
    assert history.record(h, "a", 100.0, 1.0, 7, HALF_LIFE)
    assert history.record(h, "b", 600.0, 3.0, 8, HALF_LIFE)
    assert not history.record(h, "a", 1100.0, 2.0, 7, HALF_LIFE)
    assert h.items == ["a", "b"] and list(h.times) == [1100.0, 600.0]
    assert h.weights[0] == pytest.approx(1.0 * 2 ** (-1000.0 / HALF_LIFE) + 2.0)
    # another vector now: the old fingerprint stays
    assert not history.record(h, "b", 1200.0, 1.0, 99, HALF_LIFE)
    assert h.fingerprints[1] == 8


def test_pruning_keeps_the_horizon_of_the_newest_touch_then_the_weightiest():
    h = History()
    history.record(h, "ancient", 0.0, 50.0, 1, HALF_LIFE)
    history.record(h, "light", 7000.0, 0.5, 1, HALF_LIFE)
    history.record(h, "heavy", 7100.0, 5.0, 1, HALF_LIFE)
    history.record(h, "new", 7200.0, 0.1, 1, HALF_LIFE)
    history.prune(h, 10, HALF_LIFE)
    # 7200 s = 7.2 half-lives after "ancient": under 1% of its weight
    assert h.items == ["light", "heavy", "new"]
    full = History()
    for n in range(11):  # weights 10, 9, ... 1, then the newest touch, the lightest
        history.record(full, f"w{10 - n}", 7000.0 + n, 10.0 - n if n < 10 else 0.5, 1, HALF_LIFE)
    history.prune(full, 10, HALF_LIFE)
    # past the cap: cut to 90% of it, the lightest first, never the newest
    assert full.items == [*(f"w{10 - n}" for n in range(8)), "w0"]
    idle = History()
    history.record(idle, "a", 0.0, 1.0, 1, HALF_LIFE)
    history.record(idle, "b", 10.0, 1.0, 1, HALF_LIFE)
    history.prune(idle, 10, HALF_LIFE)
    assert idle.items == ["a", "b"]  # relative to the newest touch: an idle user keeps theirs


def test_the_updater_keeps_a_bounded_history():
    up = updater(vectors(12, 0), history_items=5)
    states = run(up, random_events(140, 1, users=2))
    for state in states.values():
        assert 0 < len(state.history) <= 5 and len(set(state.history.items)) == len(state.history)
        assert max(state.history.times) <= state.lt_time


def test_the_history_round_trips_and_old_states_decode_without_one():
    state = UserState.new(4, DIM, "v", "enc@1")
    for i, t in enumerate([1.7e9, 1.7e9 + 3.5, 1.7e9 + 90_000.25]):
        history.record(state.history, f"i-é{i}", t, 1.5 * (i + 1), 4_000_000_000 + i, 604800.0)
    state.lt_time = 1.7e9 + 100_000.0
    raw = encode(state)
    back = decode(raw)
    assert (
        back.space == "enc@1"
        and len(back.history) == 3
        and back.history.items == state.history.items
    )
    # float32 offsets
    assert np.allclose(back.history.times, state.history.times, rtol=0, atol=0.01)
    assert (
        back.history.weights == state.history.weights
        and back.history.fingerprints == state.history.fingerprints
    )
    unused = decode(raw)
    unused.lt_time += 5_000.0  # a decay pass: the history is written back as it was, never unpacked
    assert (
        encode(unused)[-len(state.history.pack()) :] == state.history.pack()
        and unused.history._block is not None
    )

    # the same state as written before the refresh existed
    version, n_json, n_hidden, n_lt = _HEADER.unpack_from(raw)
    meta = orjson.loads(raw[_HEADER.size : _HEADER.size + n_json])
    del meta["sp"], meta["hb"]
    blob = orjson.dumps(meta)
    arrays = raw[_HEADER.size + n_json : _HEADER.size + n_json + 4 * (n_hidden + n_lt)]
    old = decode(_HEADER.pack(version, len(blob), n_hidden, n_lt) + blob + arrays)
    assert (
        old.space == ""
        and len(old.history) == 0
        and old.history.items == []
        and old.lt_time == state.lt_time
    )


def test_touches_are_counted_and_a_history_from_before_counts_reads_each_entry_as_touched_once():
    state = UserState.new(4, DIM, "v", "enc@1")
    for item, t in [("a", 100.0), ("b", 200.0), ("a", 300.0), ("a", 400.0)]:
        history.record(state.history, item, t, 1.0, 7, 604800.0)
    assert state.history.items == ["a", "b"] and state.history.counts == [3, 1]
    raw = encode(state)
    assert decode(raw).history.counts == [3, 1]
    state.history.keep([False, True])
    assert state.history.counts == [1]

    # the same state as written before touches were counted: entries of 12 bytes, no "hc"
    version, n_json, n_hidden, n_lt = _HEADER.unpack_from(raw)
    meta = orjson.loads(raw[_HEADER.size : _HEADER.size + n_json])
    start = _HEADER.size + n_json + 4 * (n_hidden + n_lt)
    block = raw[start:]
    base, n = struct.unpack_from("<dI", block)
    numbers = struct.unpack_from(f"<{n}f{n}f{n}I", block, 12)
    old_block = (
        struct.pack("<dI", base, n) + struct.pack(f"<{n}f{n}f{n}I", *numbers) + block[12 + 16 * n :]
    )
    del meta["hc"]
    meta["hb"] = len(old_block)
    blob = orjson.dumps(meta)
    old = decode(
        _HEADER.pack(version, len(blob), n_hidden, n_lt)
        + blob
        + raw[_HEADER.size + n_json : start]
        + old_block
    )
    # searched in the packed ids
    assert old.history.holds_any({"b"}) and not old.history.holds_any({"c"})
    assert (
        old.history.items == ["a", "b"]
        and old.history.counts == [1, 1]
        and old.history.weights == decode(raw).history.weights
    )
    assert decode(encode(old)).history.counts == [1, 1]  # written back with counts


def test_recomputing_from_the_history_agrees_with_the_incremental_sum():
    up = updater(vectors(12, 0))
    # 5,000 s: within the horizon, nothing pruned
    states = run(up, random_events(210, 2, gap_s=25.0))
    incremental = {u: (x.lt_sum.copy(), x.lt_weight) for u, x in states.items()}
    assert not any(up.needs_refresh(x, None) for x in states.values())
    assert up.refresh(states.values()) == {"item_vectors": len(states)}
    for u, x in states.items():
        assert np.allclose(x.lt_sum, incremental[u][0], rtol=1e-5, atol=1e-5)
        assert x.lt_weight == pytest.approx(incremental[u][1], rel=1e-5)


def test_a_replaced_vector_makes_its_users_stale_and_they_are_recomputed_with_it():
    items = vectors(40, 0)
    up = updater(items)
    batches = random_events(140, 3, items=40, gap_s=25.0)
    states = run(up, batches)
    edited = ItemVector("i3", b"\1" * 16, vectors(1, 9)[0].vector)
    before = up.catalogue.version
    up.catalogue.upsert([edited, items[4]])  # i4 with the same vector: not a replacement
    assert up.catalogue.changed_items_since(before) == {"i3"}
    touched = {u for u, x in states.items() if "i3" in x.history.items}
    assert touched and touched != set(states)
    assert {
        u
        for u, x in states.items()
        if up.needs_refresh(x, up.catalogue.changed_items_since(before))
    } == touched
    assert {u for u, x in states.items() if up.needs_refresh(x, None)} == touched
    assert up.refresh([states[u] for u in touched]) == {"item_vectors": len(touched)}

    # the same events applied with the edited vector from the start
    fresh = run(updater([edited if v.item_id == "i3" else v for v in items]), batches)
    for u in touched:
        assert np.allclose(states[u].lt_sum, fresh[u].lt_sum, rtol=1e-5, atol=1e-5)
        assert states[u].history.fingerprints[states[u].history.items.index("i3")] == fingerprint(
            edited.vector
        )
        assert not up.needs_refresh(states[u], None)


def test_a_retired_item_leaves_the_long_term_sum_and_comes_back_into_it_with_its_vector():
    items = vectors(40, 0)
    up = updater(items)
    states = run(up, random_events(140, 4, items=40, gap_s=25.0))
    up.catalogue.remove(["i5"])
    touched = [x for x in states.values() if "i5" in x.history.items]
    assert (
        touched
        and len(touched) < len(states)
        and all(up.needs_refresh(x, frozenset({"i5"})) for x in touched)
    )
    incremental, expected = [], []
    for x in touched:  # the incremental sum less i5's part
        i = x.history.items.index("i5")
        part = float(x.history.weights[i]) * 2 ** (-(x.lt_time - x.history.times[i]) / HALF_LIFE)
        incremental.append((x.lt_sum.copy(), x.lt_weight))
        expected.append((x.lt_sum - part * items[5].vector, x.lt_weight - part))
    up.refresh(touched)
    for x, (lt_sum, lt_weight) in zip(touched, expected):
        assert np.allclose(x.lt_sum, lt_sum, rtol=1e-5, atol=1e-5) and x.lt_weight == pytest.approx(
            lt_weight, rel=1e-5
        )
        assert x.history.fingerprints[
            x.history.items.index("i5")
        ] == history.NOT_IN_SUM and not up.needs_refresh(x, None)
    # back (or late to arrive in a catalogue still filling): into the sums again
    up.catalogue.upsert([items[5]])
    assert up.catalogue.changed_items_since(up.catalogue.version - 1) == {"i5"}
    assert all(up.needs_refresh(x, frozenset({"i5"})) for x in touched)
    up.refresh(touched)
    for x, (lt_sum, lt_weight) in zip(touched, incremental):
        assert np.allclose(x.lt_sum, lt_sum, rtol=1e-5, atol=1e-5) and x.lt_weight == pytest.approx(
            lt_weight, rel=1e-5
        )


def test_a_packed_history_is_searched_for_a_few_items_without_unpacking():
    h = History()
    for n, item in enumerate(["i1", "i12", "a-é"]):
        history.record(h, item, 100.0 + n, 1.0, 1, HALF_LIFE)
    packed = History.packed(h.pack())
    assert (
        packed.holds_any({"i12"})
        and packed.holds_any({"x", "a-é"})
        and not packed.holds_any({"i", "2", "i123", "1"})
    )
    assert packed._block is not None  # still packed
    many = {f"x{n}" for n in range(40)}
    assert not packed.holds_any(many) and packed.holds_any(many | {"i1"})


def test_the_catalogue_tracks_fingerprints_and_replacements_across_retirements():
    catalogue = Catalogue(DIM)
    items = vectors(4, 0)
    catalogue.upsert(items)
    catalogue.remove(["i0"])  # i3 moves to row 0
    rows = catalogue.rows(["i3", "i0", "i1"])
    assert rows[1] == -1 and catalogue.fingerprints_at(rows[[0, 2]]).tolist() == [
        fingerprint(items[3].vector),
        fingerprint(items[1].vector),
    ]
    v1 = catalogue.version
    # i3's vector again: no change
    catalogue.upsert([ItemVector("i1", b"\0" * 16, items[2].vector), items[3]])
    assert catalogue.changed_items_since(0) == {
        "i0",
        "i1",
        "i2",
        "i3",
    } and catalogue.changed_items_since(v1) == {"i1"}
    catalogue.forget_changes(v1)
    assert catalogue.changed_items_since(0) == {"i1"}


def test_the_decay_pass_refreshes_the_users_in_its_scope_and_the_passes_narrow_it():
    up = updater(vectors(40, 0))
    states = run(up, random_events(140, 5, items=40))
    rows = [(u.encode(), encode(x)) for u, x in states.items()]
    passes = RefreshPasses()
    first = passes.scope(0, up.catalogue)
    assert first.changed is None  # the first pass checks everyone
    assert decay_step(rows, None, up, first).rows == {}  # nothing changed: nobody rewritten
    passes.done(0, first, up.catalogue)
    assert passes.scope(0, up.catalogue).empty
    some = next(
        i
        for x in states.values()
        for i in x.history.items
        if any(i not in y.history.items for y in states.values())
    )
    up.catalogue.upsert([ItemVector(some, b"\1" * 16, vectors(1, 11)[0].vector)])
    scope = passes.scope(0, up.catalogue)
    assert scope.changed == {some}
    out = decay_step(rows, None, up, scope)
    touched = {u.encode() for u, x in states.items() if some in x.history.items}
    assert (
        0 < len(touched) < len(states)
        and set(out.rows) == touched
        and out.refreshed == {"item_vectors": len(touched)}
    )
    assert not any(up.needs_refresh(decode(v), None) for v in out.rows.values())
    passes.done(0, scope, up.catalogue)
    passes.forget()
    assert passes.scope(0, up.catalogue).changed is None


def test_an_event_for_a_state_of_another_encoder_recomputes_it_in_this_ones_space_first():
    batches = random_events(140, 7, gap_s=25.0)
    states = run(updater(vectors(12, 0), "enc-a"), batches[:-1])
    b = updater(vectors(12, 1, dim=12), "enc-b")  # another encoder: other vectors, another size
    last = batches[-1][:1]
    user = last[0].event.user_id
    result = b.apply(last, {user: decode(encode(states[user]))})
    assert result.refreshed == {"encoder": 1}
    # all of it in B's space from the start
    state, fresh = result.states[user], run(b, [*batches[:-1], last])[user]
    assert state.space == "enc-b" and state.lt_sum.shape == (12,)
    assert np.allclose(
        state.lt_sum, fresh.lt_sum, rtol=1e-5, atol=1e-5
    ) and state.lt_weight == pytest.approx(fresh.lt_weight)
    # the short-term state restarted: one GRU step from zeros with B's vector
    with torch.inference_mode():
        event = last[0].event
        # in the interest space
        item_vec = b.model.item_space(torch.from_numpy(b.catalogue.vectors([event.item_id])))[
            :, :-1
        ]
        expected = b.model.step(
            torch.zeros(1, 6), item_vec, torch.tensor([int(event.type == "purchase")])
        )[0].numpy()
    assert np.allclose(state.hidden, expected, atol=1e-6)


def test_a_state_from_before_spaces_is_taken_as_this_encoders_unless_its_size_differs():
    up = updater(vectors(12, 0), "enc-a")
    legacy = UserState.new(6, DIM, "t")
    legacy.lt_sum, legacy.lt_weight, legacy.hidden = (
        np.ones(DIM, np.float32),
        2.0,
        np.ones(6, np.float32),
    )
    assert up.needs_refresh(legacy, frozenset())
    assert (
        up.refresh([legacy]) == {}
        and legacy.space == "enc-a"
        and legacy.lt_weight == 2.0
        and legacy.hidden[0] == 1.0
    )
    other = UserState.new(6, 12, "t")
    other.lt_sum, other.lt_weight = np.ones(12, np.float32), 2.0
    assert (
        up.refresh([other]) == {"encoder": 1}
        and other.lt_sum.shape == (DIM,)
        and other.lt_weight == 0.0
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_recompute_on_cuda_matches_the_cpu():
    up = updater(vectors(12, 0))
    states = list(run(up, random_events(210, 6)).values())
    at = np.array([x.lt_time for x in states])
    cpu = history.recompute(
        [x.history for x in states], at, up.catalogue, HALF_LIFE, torch.device("cpu")
    )
    cuda = history.recompute(
        [x.history for x in states], at, up.catalogue, HALF_LIFE, torch.device("cuda")
    )
    assert np.allclose(cpu[0], cuda[0], rtol=1e-5, atol=1e-6) and np.allclose(cpu[1], cuda[1])


def test_refresh_scope_is_empty_only_for_an_empty_set():
    assert (
        RefreshScope(0, frozenset()).empty
        and not RefreshScope(0, None).empty
        and not RefreshScope(0, frozenset({"a"})).empty
    )
