import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.encoder import ItemEncoder
from models.evaluate import (
    EvalConfig,
    ItemKNN,
    K,
    Popular,
    StreamRecommender,
    ablate,
    build_catalogue,
    evaluate,
    format_table,
    rank_metrics,
    ranks_of,
    replay,
    rounds,
)
from models.interest import InterestModel, ModelConfig
from models.records import CatalogueItem, Event
from models.updater import Delivered, InterestUpdater, UpdaterConfig


def ev(n: int, user: str, item: str, ts: float | None = None) -> Event:
    return Event(f"e{n}", user, item, "click", float(n + 1) if ts is None else ts)


def test_metrics_on_hand_made_ranks():
    m = rank_metrics(np.array([1, 2, 0, 11, 20]))  # 0: not in the top 20
    assert m["HR@10"] == pytest.approx(2 / 5)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(3)) / 5)
    assert m["Recall@20"] == pytest.approx(4 / 5)
    assert m["MRR@20"] == pytest.approx((1 + 1 / 2 + 1 / 11 + 1 / 20) / 5)
    assert m["events"] == 5
    assert ranks_of([["a", "b"], ["a", "b"], []], [ev(0, "u", "b"), ev(1, "u", "c"), ev(2, "u", "a")]).tolist() == [2, 0, 0]


def test_rounds_hold_one_event_per_user_in_each_users_order():
    events = [ev(0, "a", "x"), ev(1, "b", "x"), ev(2, "a", "y"), ev(3, "c", "x"), ev(4, "a", "z"), ev(5, "b", "z")]
    assert list(rounds(events, independent_users=False)) == [[0, 1], [2, 3], [4, 5]]  # consecutive runs of the log
    assert list(rounds(events, independent_users=True)) == [[0, 1, 3], [2, 5], [4]]  # every user's n-th event


def test_popular_counts_a_moving_window_and_excludes_seen():
    pop = Popular("p", ["a", "b", "c"], window_s=1.5)
    pop.observe([ev(0, "u1", "a", 0.0), ev(1, "u1", "b", 1.0), ev(2, "u2", "b", 2.0)])
    assert pop.counts.tolist() == [0, 2, 0]  # the event at t=0 left the window at t=2
    assert pop.recommend([ev(3, "u2", "c"), ev(4, "u3", "c")]) == [["a", "c"], ["b", "a", "c"]]


def test_item_knn_scores_by_co_occurrence_with_recent_items():
    knn = ItemKNN("k", ["a", "b", "c", "d"])
    knn.observe([ev(0, "u1", "a"), ev(1, "u1", "b"), ev(2, "u2", "a"), ev(3, "u2", "b"), ev(4, "u3", "a"), ev(5, "u3", "c"),
                 ev(6, "u4", "a")])
    # b: 2 / sqrt(4 * 2) = 0.71, c: 1 / sqrt(4 * 1) = 0.5, d: never co-occurs; a: seen
    assert knn.recommend([ev(7, "u4", "d")]) == [["b", "c", "d"]]
    assert knn.recommend([ev(8, "new", "d")]) == [["a", "b", "c", "d"]]  # no history: by popularity


def test_ablations_switch_off_one_side_of_the_fusion():
    model = InterestModel(ModelConfig(4, 3, 5, "t")).eval()
    h, lt, w = torch.randn(2, 5), torch.randn(2, 4), torch.tensor([1.0, 3.0])
    with torch.no_grad():
        conf = (w / (w + model.log_w0.exp())).unsqueeze(-1)
        assert torch.allclose(ablate(model, "short").query(h, lt, w), model.log_a_short.exp() * model.out(h))
        assert torch.allclose(ablate(model, "long").query(h, lt, w), model.log_a_long.exp() * conf * model.items(lt))
    assert model.log_a_short.item() == 0.0  # the original is untouched


@pytest.fixture(scope="module")
def sample(tiny_encoder, sample_catalogue, sample_events):
    items = [CatalogueItem(i["item_id"], i["text"]) for i in sample_catalogue]
    events = [Event(e["event_id"], e["user_id"], e["item_id"], e["type"], e["ts"]) for e in sample_events]
    return items, ItemEncoder(str(tiny_encoder), "cpu").encode([i.text for i in items]), events


def test_evaluation_scores_exactly_what_the_stream_recommends(sample):
    """The list scored before each test event = InterestUpdater.recommend on the state the stream reached by
    applying every earlier event one batch at a time; so the batched replay changes nothing."""
    items, emb, events = sample
    torch.manual_seed(0)
    model = InterestModel(ModelConfig(32, 16, 16, "tiny")).eval()
    catalogue = build_catalogue(items, emb)
    settings = replace(UpdaterConfig(), top_k=K, exclude_seen=True, recent_items=len(items))
    warm, test = events[:500], events[500:]
    shown = replay(StreamRecommender("m", model, catalogue, settings), warm, test)

    updater = InterestUpdater(model, catalogue, settings)
    states = {}
    for n, e in enumerate(events):
        if n >= len(warm):
            expected = updater.recommend([states.get(e.user_id) or updater.new_state()])[0]
            assert shown[n - len(warm)] == [i.item_id for i in expected]
        states[e.user_id] = updater.apply([Delivered(e, "log:0", n)], {e.user_id: states.get(e.user_id)}).states[e.user_id]
    seen = {}
    for e, items_shown in zip(events, [[]] * len(warm) + shown):
        assert not set(items_shown) & seen.get(e.user_id, set())  # everything the user had is excluded
        seen.setdefault(e.user_id, set()).add(e.item_id)


def test_evaluate_reports_every_recommender_on_the_same_events(sample):
    items, emb, events = sample
    untrained = InterestModel.untrained(32, 16, "tiny")
    results = evaluate(events[:500], events[500:], items, emb, {"untrained": untrained, "long": ablate(untrained, "long")},
                       UpdaterConfig(), EvalConfig(popular_window_s=3600.0))
    assert list(results) == ["untrained", "long", "popular-1h", "popular-all", "item-knn"]
    for r in results.values():
        assert r["all"]["events"] == len(events) - 500 == r["users_with_history"]["events"] + r["new_users"]["events"]
        assert 0.0 <= r["all"]["NDCG@10"] <= r["all"]["HR@10"] <= r["all"]["Recall@20"] <= 1.0
    assert results["item-knn"]["new_users"] == {"HR@10": None, "NDCG@10": None, "Recall@20": None, "MRR@20": None, "events": 0}
    assert "item-knn" in format_table(results)
