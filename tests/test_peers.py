import json
import math

import numpy as np
import pytest
import torch

from models import sasrec
from models.peers import (
    DAY,
    EASE,
    EASE_GRID,
    FLOOR,
    KNN_GRID,
    POPULAR_GRID,
    SASREC_GRID,
    ItemKNN,
    OwnThenPopular,
    Popular,
    SASRecPlus,
    default_peers,
    with_params,
)
from models.records import Event
from models.sasrec import SASRecConfig
from state.faults import InterestStreamError


@pytest.fixture(autouse=True)
def one_thread():
    """The tensors here are tiny: a second thread only adds waiting (8x slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ev(n: int, user: str, item: str, ts: float | None = None) -> Event:
    return Event(f"e{n}", user, item, "purchase", float(n) if ts is None else ts)


def log(pairs: list[tuple[str, str]]) -> list[Event]:
    return [ev(n, u, i) for n, (u, i) in enumerate(pairs)]


def test_popular_counts_a_moving_window():
    pop = Popular(["a", "b", "c"], window_s=1.5)
    pop.observe([ev(0, "u1", "a", 0.0), ev(1, "u1", "b", 1.0), ev(2, "u2", "b", 2.0)])
    # t=0 left the window at t=2
    assert pop.scores([ev(3, "u2", "c"), ev(4, "u3", "c")]).tolist() == [[0, 2, 0], [0, 2, 0]]


def test_item_knn_scores_by_co_occurrence_with_recent_items():
    knn = ItemKNN(["a", "b", "c", "d"], recent=20)
    knn.observe(
        [
            ev(0, "u1", "a"),
            ev(1, "u1", "b"),
            ev(2, "u2", "a"),
            ev(3, "u2", "b"),
            ev(4, "u3", "a"),
            ev(5, "u3", "c"),
            ev(6, "u4", "a"),
        ]
    )
    known, new = knn.scores([ev(7, "u4", "d"), ev(8, "new", "d")])
    # b: 2 / sqrt(4 * 2) = 0.71, c: 1 / sqrt(4 * 1) = 0.5, d: never co-occurs; plus popularity below 1e-6
    assert known == pytest.approx(
        [0.0 + 1e-6, 2 / math.sqrt(8) + 0.5e-6, 0.5 + 0.25e-6, 0.0], abs=1e-7
    )
    assert np.argsort(-new, kind="stable").tolist() == [0, 1, 2, 3]  # no history: by popularity


def test_ease_has_a_zero_diagonal_and_recovers_a_planted_co_occurrence():
    ids = [f"i{n}" for n in range(8)]
    rng = np.random.default_rng(0)
    pairs = [("probe", "i0")]
    for u in range(60):
        items = {f"i{n}" for n in rng.choice(np.arange(2, 8), 2, replace=False)}
        if u % 2:
            items |= {"i0", "i1"}  # whoever buys i0 buys i1
        pairs += [(f"u{u}", i) for i in sorted(items)]
    ease = EASE(ids, reg_weight=5.0)
    ease.observe(log(pairs))
    scores = ease.scores([ev(999, "probe", "x")])[0]
    assert ease.weights is not None and np.all(np.diag(ease.weights) == 0)
    assert scores[0] == 0.0  # B_00: i0 does not predict itself
    assert np.argmax(scores[1:]) == 0  # i1 first among the rest


def test_ease_scores_are_x_u_times_b_by_hand():
    ids = ["a", "b", "c", "d", "never"]
    pairs = [
        ("u1", "a"),
        ("u1", "b"),
        ("u2", "b"),
        ("u2", "c"),
        ("u3", "a"),
        ("u3", "c"),
        ("u3", "d"),
        ("u4", "d"),
    ]
    lam = 2.0
    x = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [1, 0, 1, 1], [0, 0, 0, 1]], float)
    p = np.linalg.inv(x.T @ x + lam * np.eye(4))
    b = np.eye(4) - p / np.diag(p)  # B = I - P diag(1/diag(P))
    ease = EASE(ids, reg_weight=lam)
    ease.observe(log(pairs))
    got = ease.scores([ev(10, "u3", "b"), ev(11, "u5", "a")])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got[0, :4], x[2] @ b, rtol=1e-5, atol=1e-6)
    assert got[0, 4] == FLOOR  # never seen in training
    assert got[1, :4].tolist() == [2, 2, 2, 2]  # no history: training popularity
    ease.observe([ev(12, "u4", "b"), ev(13, "u4", "never")])
    np.testing.assert_allclose(
        ease.scores([ev(14, "u4", "a")])[0, :4], (x[3] + [0, 1, 0, 0]) @ b, rtol=1e-5, atol=1e-6
    )


def test_ease_solves_over_the_most_popular_items_only():
    ease = EASE(["rare", "a", "b", "c"], reg_weight=1.0, max_items=3)
    ease.observe(
        log(
            [
                ("u1", "a"),
                ("u1", "b"),
                ("u2", "b"),
                ("u2", "c"),
                ("u3", "a"),
                ("u3", "c"),
                ("u3", "rare"),
            ]
        )
    )
    scores = ease.scores([ev(10, "u3", "x")])[0]
    assert ease.weights is not None and ease.weights.shape == (3, 3)
    assert scores[0] == FLOOR and np.all(scores[1:] > FLOOR)


CYCLE_CONFIG = SASRecConfig(
    dim=16,
    heads=1,
    dropout=0.0,
    max_len=8,
    epochs=40,
    patience=3,
    batch_size=16,
    lr=1e-2,
    val_fraction=0.2,
)


def cycle_log(users: int = 24, length: int = 12) -> tuple[list[str], list[Event]]:
    """Each user walks the cycle a -> b -> c -> a ... from a random start; event times interleave users."""
    ids = ["a", "b", "c", "d", "e"]
    rng = np.random.default_rng(1)
    starts = rng.integers(0, 3, users)
    events = [
        ev(step * users + u, f"u{u}", ids[(starts[u] + step) % 3])
        for step in range(length)
        for u in range(users)
    ]
    return ids, events


def test_sasrec_learns_a_cycle():
    ids, events = cycle_log()
    rec = SASRecPlus(ids, CYCLE_CONFIG)
    rec.observe(events)
    probe = [ev(1000 + u, f"u{u}", "a") for u in range(24)]
    scores = rec.scores(probe)
    expected = [
        (ids.index(rec_items[-1]) + 1) % 3
        for rec_items in ([e.item_id for e in events if e.user_id == f"u{u}"] for u in range(24))
    ]
    assert (scores.argmax(1) == expected).mean() == 1.0  # HR@1
    assert np.all(scores[:, 3:] == FLOOR)  # d, e: never seen


def test_sasrec_embeds_the_most_popular_items_only(monkeypatch):
    ids, events = cycle_log(users=6, length=5)
    trained_on = []
    fit = sasrec.fit
    monkeypatch.setattr(
        sasrec,
        "fit",
        lambda seqs, times, *rest: trained_on.append((seqs, times)) or fit(seqs, times, *rest),
    )
    rec = SASRecPlus(ids, SASRecConfig(dim=8, max_len=4, epochs=1), max_items=2)
    rec.observe(events + [ev(500, "u0", "a"), ev(501, "u1", "a")])
    scores = rec.scores([ev(502, "u0", "x")])[0]
    assert rec.model is not None and rec.model.item.num_embeddings == 3  # padding + 2
    assert (scores > FLOOR).sum() == 2 and scores[ids.index("a")] > FLOOR
    seqs, times = trained_on[0]
    # the third item is left out, not padding
    assert all(0 not in s and len(s) == len(t) for s, t in zip(seqs, times))


def test_sasrec_is_deterministic_under_a_seed():
    ids, events = cycle_log(users=8, length=6)
    config = SASRecConfig(dim=8, max_len=4, epochs=3, batch_size=4, dropout=0.3, seed=7)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # a different global state before each: the seed alone must decide
        rec = SASRecPlus(ids, config)
        rec.observe(events)
        runs.append(rec.scores([ev(100, "u0", "a"), ev(101, "u1", "a")]))
        torch.manual_seed(456)
    assert np.array_equal(runs[0], runs[1])
    other = SASRecPlus(
        ids, SASRecConfig(dim=8, max_len=4, epochs=3, batch_size=4, dropout=0.3, seed=8)
    )
    other.observe(events)
    assert not np.array_equal(runs[0], other.scores([ev(100, "u0", "a"), ev(101, "u1", "a")]))


def test_own_re_buys_come_first_then_popular():
    ids = ["milk", "bread", "eggs", "tea", "jam"]
    rec = OwnThenPopular(ids)
    rec.observe(
        log(
            [
                ("u1", "tea"),
                ("u1", "bread"),
                ("u1", "tea"),
                ("u2", "eggs"),
                ("u3", "eggs"),
                ("u3", "jam"),
                ("u4", "eggs"),
            ]
        )
    )
    scores = rec.scores([ev(10, "u1", "x"), ev(11, "new", "x")])
    assert scores.dtype == np.float32
    # own: tea (2) > bread (1); then eggs (3), jam (1)
    assert np.argsort(-scores[0], kind="stable").tolist() == [3, 1, 2, 4, 0]
    # popular only: eggs 3, tea 2, bread 1, jam 1
    assert np.argsort(-scores[1], kind="stable").tolist() == [2, 3, 1, 4, 0]


def test_decay_lets_a_recent_purchase_pass_an_old_frequent_one():
    ids = ["old", "recent"]
    events = [
        ev(0, "u", "old", 0.0),
        ev(1, "u", "old", DAY),
        ev(2, "u", "old", 2 * DAY),
        ev(3, "u", "recent", 60 * DAY),
    ]
    probe = [ev(4, "u", "x", 61 * DAY)]
    plain, decayed = OwnThenPopular(ids), OwnThenPopular(ids, half_life_s=7 * DAY)
    for rec in (plain, decayed):
        rec.observe(events)
    assert plain.scores(probe)[0].argmax() == 0  # 3 purchases > 1
    assert decayed.scores(probe)[0].argmax() == 1  # 3 * 2^(-59/7) < 2^(-1/7)
    assert decayed.scores(probe)[0].min() > 1.0  # still both above any item the user never bought


def test_popularity_window_forgets_old_events():
    rec = OwnThenPopular(["a", "b"], window_s=10.0)
    rec.observe([ev(0, "u1", "a", 0.0), ev(1, "u1", "a", 1.0), ev(2, "u2", "b", 20.0)])
    assert rec.scores([ev(3, "u3", "a", 21.0)])[0].argmax() == 1


@pytest.mark.parametrize(
    "peer",
    [
        lambda ids: EASE(ids, 1.0),
        lambda ids: SASRecPlus(ids, SASRecConfig(dim=8, max_len=4, epochs=1)),
        lambda ids: OwnThenPopular(ids, 7 * DAY, 7 * DAY),
    ],
)
def test_scores_are_float32_finite_or_the_floor(peer):
    ids, events = cycle_log(users=6, length=5)
    rec = peer(ids)
    rec.observe(events)
    scores = rec.scores([ev(100, "u0", "a"), ev(101, "stranger", "a")])
    assert (
        scores.dtype == np.float32 and scores.shape == (2, len(ids)) and np.all(np.isfinite(scores))
    )


@pytest.mark.parametrize(
    "exclude_seen, names",
    [
        (True, ["popular", "item-knn", "EASE", "SASRec+"]),
        # only where re-buys count
        (False, ["popular", "item-knn", "EASE", "SASRec+", "own re-buys, then popular"]),
    ],
)
def test_the_peers_of_each_mode(exclude_seen, names):
    ids = ["a", "b", "c"]
    peers = default_peers(ids, exclude_seen, seed=5)
    assert [p.name for p in peers] == names
    assert [p.name for p in peers if p.seeded] == ["SASRec+"]
    for peer in peers:
        json.dumps(peer.grid)  # a report can hand the chosen point on
        built = [peer.make(params) for params in peer.grid]
        assert len(built) > 1 and all(rec.name == peer.name for rec in built)  # a choice to tune
    sasrec_peer = peers[names.index("SASRec+")]
    assert {rec.config.seed for rec in map(sasrec_peer.make, sasrec_peer.grid)} == {5}
    assert [rec.config.dropout for rec in map(sasrec_peer.make, sasrec_peer.grid)] == [
        p["dropout"] for p in SASREC_GRID
    ]


def test_given_params_cut_a_peers_grid_to_one_point():
    peers = with_params(default_peers(["a"]), {"SASRec+": {"dropout": 0.5}})
    assert [len(p.grid) for p in peers] == [len(POPULAR_GRID), len(KNN_GRID), len(EASE_GRID), 1]
    assert peers[3].grid == [{"dropout": 0.5}] and peers[3].seeded
    with pytest.raises(
        InterestStreamError, match="params given for own re-buys, then popular: not among the peers"
    ):
        with_params(default_peers(["a"]), {"own re-buys, then popular": {}})
