"""The scorer keeps the item space in step with the catalogue a changed row at a time, and its
approximate index finds what exact scoring finds, follows upserts and retirements, and honours exclusions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.catalogue import Catalogue
from models.interest import InterestModel, ModelConfig
from models.records import Event
from models.scorer import Scorer, ScoringConfig
from state.item_store import ItemVector
from tests.model_helpers import random_model


def vectors(n: int, dim: int, seed: int, clusters: int = 0) -> np.ndarray:
    """Unit vectors; with ``clusters``, scattered around that many centres, as item embeddings are."""
    rng = np.random.default_rng(seed)
    if clusters:
        centres = rng.standard_normal((clusters, dim)).astype(np.float32)
        x = centres[rng.integers(clusters, size=n)] + 0.35 * rng.standard_normal((n, dim)).astype(
            np.float32
        )
    else:
        x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def items(ids: range, x: np.ndarray) -> list[ItemVector]:
    return [ItemVector(f"i{n}", b"\0" * 16, x[k]) for k, n in enumerate(ids)]


def model(dim: int, out: int = 16) -> InterestModel:
    torch.manual_seed(0)
    return InterestModel(ModelConfig(dim, out, 8, "test")).eval()


def test_the_item_space_follows_upserts_updates_and_retirements_row_by_row():
    # every third item has a learned row: it must follow its item when rows move
    catalogue, m = (
        Catalogue(24),
        random_model(24, 16, 8, known=[f"i{n}" for n in range(0, 3500, 3)]),
    )
    scorer = Scorer(ScoringConfig(bf16=False))
    catalogue.upsert(items(range(3000), vectors(3000, 24, 0)))
    scorer.sync(catalogue, m)
    # 10 updated, 500 new (the space grows)
    catalogue.upsert(items(range(2990, 3500), vectors(510, 24, 1)))
    # rows move: each takes the last row's item
    catalogue.remove([f"i{n}" for n in range(0, 3500, 7)])
    scorer.sync(catalogue, m)
    with torch.inference_mode():
        assert torch.allclose(
            scorer.space, m.item_space(catalogue.embeddings, m.rows(catalogue.ids)), atol=1e-6
        )


def exact_top(scorer: Scorer, q: torch.Tensor, k: int, exclude=None) -> np.ndarray:
    scores = q @ scorer.space.T
    for b, rows in enumerate(exclude or ()):
        scores[b, rows] = float("-inf")
    return torch.topk(scores, k).indices.numpy()


def test_the_ann_index_finds_what_exact_scoring_finds_and_follows_the_catalogue():
    n, dim = 20_000, 32
    catalogue, m = Catalogue(dim), model(dim)
    catalogue.upsert(items(range(n), vectors(n, dim, 0, clusters=200)))
    scorer = Scorer(ScoringConfig(bf16=False, ann_min_items=10_000))
    scorer.sync(catalogue, m)
    assert scorer.index is not None and scorer.index.ntotal == n

    # queries as users are: averages of a few items' vectors, in interest space
    with torch.inference_mode():
        picks = np.random.default_rng(1).integers(n, size=(256, 5))
        q = m.scoring_query(
            m.item_space(torch.from_numpy(vectors(n, dim, 0, clusters=200)[picks].mean(1)))[:, :-1]
        )
    exclude = [list(map(int, row[:3])) for row in picks]
    scores, rows = scorer.top_k(q, 10, exclude)
    want = exact_top(scorer, q, 10, exclude)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.numpy(), want, strict=True)])
    assert recall >= 0.95, recall
    assert not any(set(r) & set(e) for r, e in zip(rows.numpy().tolist(), exclude, strict=True))
    # rescored exactly
    assert torch.allclose(scores, (scorer.space[rows] * q.unsqueeze(1)).sum(-1), atol=1e-5)

    best = int(rows[0, 0])
    retired = catalogue.ids[best]
    # an item moved to right where user 0 looks (its bias: 0, that of every item here)
    target = q[0, :-1] / q[0, :-1].norm()
    with torch.inference_mode():
        moved_to = torch.linalg.lstsq(
            m.item_proj.weight, (target * 10 - m.item_proj.bias).unsqueeze(1)
        ).solution.squeeze(1)
    catalogue.remove([retired])
    catalogue.upsert([ItemVector("i7", b"\0" * 16, moved_to.numpy().astype(np.float32))])
    scorer.sync(catalogue, m)
    # one retired; i7, now longer than the index's M, is every query's candidate instead
    assert scorer.index.ntotal == n - 2
    _, rows = scorer.top_k(q[:1], 10)
    found = [catalogue.ids[r] for r in rows[0].tolist()]
    assert retired not in found and found[0] == "i7"


def test_the_updater_recommends_through_the_index_what_it_recommends_exactly():
    from models.updater import InterestUpdater, UpdaterConfig

    n, dim = 4000, 32
    x = vectors(n, dim, 0, clusters=50)
    catalogue = Catalogue(dim)
    catalogue.upsert(items(range(n), x))
    m = InterestModel.untrained(dim, 8, "test")
    exact, ann = (
        InterestUpdater(m, catalogue, UpdaterConfig(ann_min_items=size, ann_nprobe=32))
        for size in (n + 1, 1000)
    )
    rng = np.random.default_rng(2)
    states = []
    for u in range(64):
        state = exact.new_state()
        seen = rng.integers(n, size=4)
        state.lt_sum, state.lt_weight = x[seen].sum(0), 4.0
        for j in seen:
            state.remember(f"e{u}-{j}", f"i{j}", 10)
        states.append(state)
    want, got = exact.recommend(states), ann.recommend(states)
    assert ann.scorer.index is not None and exact.scorer.index is None
    overlap = np.mean(
        [
            len({s.item_id for s in a} & {s.item_id for s in b}) / len(a)
            for a, b in zip(got, want, strict=True)
        ]
    )
    assert overlap >= 0.95, overlap
    assert all(
        not {s.item_id for s in recs} & set(state.recent_items)
        for recs, state in zip(got, states, strict=True)
    )


def dense_top(
    space: torch.Tensor,
    q: torch.Tensor,
    k: int,
    exclude: list[list[int]],
    boost: list[tuple[np.ndarray, np.ndarray]],
    prior: torch.Tensor | None = None,
):
    """The brute force top_k must equal: every row scored, the prior added to every user's row scores, the
    boosts added at their rows, excluded rows -inf."""
    scores = q @ space.T + (0 if prior is None else prior)
    for b, (rows, amounts) in enumerate(boost):
        scores[b, torch.from_numpy(rows)] += torch.from_numpy(amounts)
    for b, rows in enumerate(exclude):
        scores[b, rows] = float("-inf")
    return torch.topk(scores, k)


def trend_prior(n: int, seed: int, weight: float = 0.7) -> torch.Tensor:
    """A trend term as ``InterestUpdater.trend`` gives it: 0 for most items, log-shares for the
    ~10% touched lately."""
    rng = np.random.default_rng(seed)
    counts = np.where(rng.random(n) < 0.1, rng.pareto(1.5, n), 0.0)
    return torch.from_numpy(weight * np.log1p(n * counts / counts.sum()).astype(np.float32))


@pytest.mark.parametrize("ann_min_items", [100_000, 1000], ids=["exact", "ann"])
@pytest.mark.parametrize(
    "boosted_excluded", [False, True], ids=["exclusions-apart", "exclusions-overlap-boosts"]
)
@pytest.mark.parametrize("trend", [False, True], ids=["no-trend", "trend"])
def test_boosted_top_k_is_the_dense_top_k_of_the_boosted_scores(
    ann_min_items, boosted_excluded, trend
):
    n, dim, k = 3000, 24, 10
    # biases in the space
    catalogue, m = Catalogue(dim), random_model(dim, 16, 8, known=[f"i{j}" for j in range(0, n, 2)])
    catalogue.upsert(items(range(n), vectors(n, dim, 0, clusters=30)))
    # every list probed: nothing missed
    scorer = Scorer(ScoringConfig(bf16=False, ann_min_items=ann_min_items, ann_nprobe=1024))
    scorer.sync(catalogue, m)
    assert (scorer.index is not None) == (ann_min_items < n)

    rng = np.random.default_rng(4)
    q = m.scoring_query(torch.from_numpy(rng.standard_normal((40, 16)).astype(np.float32)))
    boost = [
        (
            rng.choice(n, size=b % 25, replace=False),
            rng.exponential(2.0, size=b % 25).astype(np.float32),
        )
        for b in range(40)
    ]
    with torch.inference_mode():
        unboosted_top = torch.topk(q @ scorer.space.T, 3).indices.numpy()
    # each user's best unboosted rows excluded and, overlapping, every other boosted row (a recent
    # re-buy, with exclusions on)
    exclude = [
        np.setdiff1d(top, rows).tolist() + (rows[::2].tolist() if boosted_excluded else [])
        for top, (rows, _) in zip(unboosted_top, boost)
    ]
    with torch.inference_mode():
        # every list probed: exact with the prior too
        prior = trend_prior(n, 3, 0.1) if trend else None
        scores, rows = scorer.top_k(q, k, exclude, boost, prior)
        want_scores, want_rows = dense_top(scorer.space, q, k, exclude, boost, prior)
        _, unexcluded = dense_top(scorer.space, q, k, [[] for _ in boost], boost, prior)
    assert torch.equal(rows, want_rows) and torch.allclose(scores, want_scores, atol=1e-5)
    # the test has teeth: the boosts move rows into the top k, and it would hold excluded ones, boosted or not
    assert sum(len(set(r) & set(b.tolist())) for r, (b, _) in zip(want_rows.tolist(), boost)) > 40
    assert sum(len(set(r) & set(ex)) for r, ex in zip(unexcluded.tolist(), exclude)) > 40
    assert (
        not boosted_excluded
        or sum(len(set(r) & set(b[::2].tolist())) for r, (b, _) in zip(unexcluded.tolist(), boost))
        > 20
    )


@pytest.mark.parametrize("ann_min_items", [100_000, 1000], ids=["exact", "ann"])
def test_a_rebuy_models_scores_are_the_dense_scores_plus_rebuy_terms_and_rank_as_it_recommends(
    ann_min_items,
):
    from models.updater import Delivered, InterestUpdater, UpdaterConfig

    n, dim = 3000, 24
    x = vectors(n, dim, 0, clusters=30)
    catalogue = Catalogue(dim)
    catalogue.upsert(items(range(n), x))
    m = random_model(dim, 16, 8, known=[f"i{j}" for j in range(0, n, 2)], rebuys=True)
    config = UpdaterConfig(
        exclude_seen=False,
        bf16_scoring=False,
        ann_min_items=ann_min_items,
        ann_nprobe=1024,
        half_life_s=3600.0,
    )
    updater = InterestUpdater(m, catalogue, config)
    rng = np.random.default_rng(5)
    # users re-buy: a few items of their own, clicked and bought (weights 1 and more) over hours, some twice
    user_events = {
        f"u{u}": [
            (f"i{j}", rng.choice(["click", "purchase"]), 1000.0 + 600 * t)
            for t, j in enumerate(rng.choice(rng.integers(n, size=4), size=1 + u % 8))
        ]
        for u in range(32)
    }
    batch = [
        Delivered(Event(f"{u}-{t}", u, item, kind, ts), "t:0", t)
        for u, evs in user_events.items()
        for t, (item, kind, ts) in enumerate(evs)
    ]
    states = updater.apply(batch, {}).states
    users = sorted(states)
    got = updater.scores([states[u] for u in users])

    with torch.no_grad():
        st = [states[u] for u in users]
        q = m.scoring_query(
            m.query(
                torch.from_numpy(np.stack([s.hidden for s in st])),
                torch.from_numpy(np.stack([s.long_term for s in st])),
                torch.tensor([s.lt_weight for s in st]),
            )
        )
        dense = q @ m.item_space(catalogue.embeddings, m.rows(catalogue.ids)).T
        # W: each history item's weight decayed from its last touch to the state's time
        for b, (u, s) in enumerate(zip(users, st)):
            weight, count = torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
            for item, t, w in zip(s.history.items, s.history.times, s.history.weights):
                weight[catalogue.index[item]] = w * 2.0 ** (-(s.lt_time - t) / config.half_life_s)
            # n: the user's events of the item, counted from the input
            for item, _, _ in user_events[u]:
                count[catalogue.index[item]] += 1
            dense[b] += m.rebuy(weight, count).float()  # r(0, 0) = 0: only the user's items move
    assert np.allclose(got, dense.numpy(), atol=1e-5)
    published = updater.recommend([states[u] for u in users])
    for row, recs in zip(got, published):
        assert [catalogue.ids[j] for j in np.argsort(-row, kind="stable")[: config.top_k]] == [
            i.item_id for i in recs
        ]
    # re-buys rank
    assert (
        sum(
            i.item_id in {e[0] for e in user_events[u]}
            for recs, u in zip(published, users)
            for i in recs
        )
        > 32
    )


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-rescored"])
@pytest.mark.parametrize("boosted", [False, True], ids=["no-boost", "boosted"])
def test_exact_top_k_with_a_trend_prior_is_the_dense_top_k(bf16, boosted):
    n, dim, k = 3000, 24, 10
    catalogue, m = Catalogue(dim), random_model(dim, 16, 8, known=[f"i{j}" for j in range(0, n, 2)])
    catalogue.upsert(items(range(n), vectors(n, dim, 0, clusters=30)))
    scorer = Scorer(ScoringConfig(bf16=bf16))
    scorer.sync(catalogue, m)
    rng = np.random.default_rng(6)
    q = m.scoring_query(torch.from_numpy(rng.standard_normal((40, 16)).astype(np.float32)))
    prior = trend_prior(n, 1)
    boost = [
        (
            rng.choice(n, size=1 + b % 9, replace=False),
            rng.exponential(2.0, size=1 + b % 9).astype(np.float32),
        )
        for b in range(40)
    ]
    exclude = [rng.choice(n, size=5, replace=False).tolist() for _ in range(40)]
    with torch.inference_mode():
        scores, rows = scorer.top_k(q, k, exclude, boost if boosted else None, prior)
        want_scores, want_rows = dense_top(
            scorer.space, q, k, exclude, boost if boosted else [], prior
        )
        _, without = dense_top(scorer.space, q, k, exclude, boost if boosted else [])
    assert torch.equal(rows, want_rows) and torch.allclose(scores, want_scores, atol=1e-4)
    # the prior moves most users' lists: the test has teeth
    assert (rows != without).any(dim=1).float().mean() > 0.5


def test_the_ann_path_finds_what_the_dense_top_k_with_a_trend_prior_finds():
    """The index ranks without the prior; the rows with one are scored besides its candidates: as
    good as without."""
    n, dim, k = 20_000, 32, 10
    catalogue, m = Catalogue(dim), random_model(dim, 16, 8)
    catalogue.upsert(items(range(n), vectors(n, dim, 0, clusters=200)))
    scorer = Scorer(ScoringConfig(bf16=False, ann_min_items=1000, ann_nprobe=64))
    scorer.sync(catalogue, m)
    rng = np.random.default_rng(7)
    picks = rng.integers(n, size=(100, 5))
    with torch.inference_mode():
        q = m.scoring_query(
            m.item_space(torch.from_numpy(vectors(n, dim, 0, clusters=200)[picks].mean(1)))[:, :-1]
        )
        prior = trend_prior(n, 2, 0.1)
        _, rows = scorer.top_k(q, k, None, None, prior)
        _, want = dense_top(scorer.space, q, k, [], [], prior)
        _, without = dense_top(scorer.space, q, k, [], [])
    recall = np.mean(
        [len(set(a) & set(b)) / k for a, b in zip(rows.numpy(), want.numpy(), strict=True)]
    )
    moved = np.mean(
        [len(set(a) - set(b)) / k for a, b in zip(want.numpy(), without.numpy(), strict=True)]
    )
    assert recall >= 0.95 and moved > 0.2, (recall, moved)
