"""The scorer keeps the item space in step with the catalogue a changed row at a time, and its
approximate index finds what exact scoring finds, follows upserts and retirements, and honours exclusions."""

from __future__ import annotations

import numpy as np
import torch

from models.catalogue import Catalogue
from models.interest import InterestModel, ModelConfig
from models.scorer import Scorer, ScoringConfig
from state.item_store import ItemVector


def vectors(n: int, dim: int, seed: int, clusters: int = 0) -> np.ndarray:
    """Unit vectors; with ``clusters``, scattered around that many centres, as item embeddings are."""
    rng = np.random.default_rng(seed)
    if clusters:
        centres = rng.standard_normal((clusters, dim)).astype(np.float32)
        x = centres[rng.integers(clusters, size=n)] + 0.35 * rng.standard_normal((n, dim)).astype(np.float32)
    else:
        x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def items(ids: range, x: np.ndarray) -> list[ItemVector]:
    return [ItemVector(f"i{n}", b"\0" * 16, x[k]) for k, n in enumerate(ids)]


def model(dim: int, out: int = 16) -> InterestModel:
    torch.manual_seed(0)
    return InterestModel(ModelConfig(dim, out, 8, "test")).eval()


def test_the_item_space_follows_upserts_updates_and_retirements_row_by_row():
    catalogue, m = Catalogue(24), model(24)
    scorer = Scorer(ScoringConfig(bf16=False))
    catalogue.upsert(items(range(3000), vectors(3000, 24, 0)))
    scorer.sync(catalogue, m)
    catalogue.upsert(items(range(2990, 3500), vectors(510, 24, 1)))  # 10 updated, 500 new (the space grows)
    catalogue.remove([f"i{n}" for n in range(0, 3500, 7)])  # rows move: each takes the last row's item
    scorer.sync(catalogue, m)
    with torch.inference_mode():
        assert torch.allclose(scorer.space, m.items(catalogue.embeddings), atol=1e-6)


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

    with torch.inference_mode():  # queries as users are: averages of a few items' vectors, in interest space
        picks = np.random.default_rng(1).integers(n, size=(256, 5))
        q = m.items(torch.from_numpy(vectors(n, dim, 0, clusters=200)[picks].mean(1)))
    exclude = [list(map(int, row[:3])) for row in picks]
    scores, rows = scorer.top_k(q, 10, exclude)
    want = exact_top(scorer, q, 10, exclude)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows.numpy(), want, strict=True)])
    assert recall >= 0.95, recall
    assert not any(set(r) & set(e) for r, e in zip(rows.numpy().tolist(), exclude, strict=True))
    assert torch.allclose(scores, (scorer.space[rows] * q.unsqueeze(1)).sum(-1), atol=1e-5)  # rescored exactly

    best = int(rows[0, 0])
    retired = catalogue.ids[best]
    target = q[0] / q[0].norm()  # an item moved to right where user 0 looks
    with torch.inference_mode():
        moved_to = torch.linalg.lstsq(m.item_proj.weight, (target * 10 - m.item_proj.bias).unsqueeze(1)).solution.squeeze(1)
    catalogue.remove([retired])
    catalogue.upsert([ItemVector("i7", b"\0" * 16, moved_to.numpy().astype(np.float32))])
    scorer.sync(catalogue, m)
    assert scorer.index.ntotal == n - 2  # one retired; i7, now longer than the index's M, is every query's candidate instead
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
    exact, ann = (InterestUpdater(m, catalogue, UpdaterConfig(ann_min_items=size, ann_nprobe=32)) for size in (n + 1, 1000))
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
    overlap = np.mean([len({s.item_id for s in a} & {s.item_id for s in b}) / len(a) for a, b in zip(got, want, strict=True)])
    assert overlap >= 0.95, overlap
    assert all(not {s.item_id for s in recs} & set(state.recent_items) for recs, state in zip(got, states, strict=True))
