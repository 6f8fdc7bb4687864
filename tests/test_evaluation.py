import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.encoder import ItemEncoder
from models.evaluate import (
    METRICS,
    EvalConfig,
    K,
    StreamRecommender,
    ablate,
    build_catalogue,
    evaluate,
    format_table,
    judge,
    metrics,
    replay,
    rounds,
    top,
    tune,
)
from models.interest import InterestModel, ModelConfig
from models.peers import ItemKNN, Peer, Popular
from models.records import CatalogueItem, Event
from models.updater import Delivered, InterestUpdater, UpdaterConfig


def ev(n: int, user: str, item: str, ts: float | None = None) -> Event:
    return Event(f"e{n}", user, item, "click", float(n + 1) if ts is None else ts)


IDS = [f"i{n}" for n in range(12)]
INDEX = {i: n for n, i in enumerate(IDS)}


class Fixed:
    """Scores every user with the same row."""

    name, independent_users = "fixed", True

    def __init__(self, row: list[float]) -> None:
        self.row = np.array(row, np.float32)

    def observe(self, events: list[Event]) -> None:
        pass

    def scores(self, events: list[Event]) -> np.ndarray:
        return np.repeat(self.row[None], len(events), axis=0)


class NextInCatalogue:
    """Scores 1 for the catalogue row after the user's last observed item, 0 elsewhere."""

    name, independent_users = "next", True

    def __init__(self) -> None:
        self.last: dict[str, int] = {}

    def observe(self, events: list[Event]) -> None:
        self.last.update({e.user_id: INDEX[e.item_id] for e in events})

    def scores(self, events: list[Event]) -> np.ndarray:
        out = np.zeros((len(events), len(IDS)), np.float32)
        for b, e in enumerate(events):
            if e.user_id in self.last:
                out[b, self.last[e.user_id] + 1] = 1.0
        return out


def test_judge_ranks_and_aucs_and_hits_on_a_hand_made_row():
    scores = np.array([5, 4, 4, 3, 9, 1, 1, 1, 1, 1, 1, 0], np.float32)
    candidates = np.ones(12, bool)
    candidates[4] = False  # the 9: seen
    ranks, aucs, hits = judge(scores, candidates, [2, 4, 11, 2])
    # row 2 (4.0): row 0 above, tied with row 1 (the lower row first): rank 3; of the 10 others 8
    # below, one tied: 8.5 / 10
    assert ranks == [3, 0, 11, 3] and aucs == [pytest.approx(0.85), 0.0, 0.0, pytest.approx(0.85)]
    # ties to the lower row
    assert top(scores, candidates, 10).tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9, 10]
    assert hits == 1  # of the distinct targets {2, 4, 11} only 2 is in the top 10


def test_metrics_per_event_and_per_group_on_hand_made_outcomes():
    outcome = replay(
        Fixed([float(12 - n) for n in range(12)]),
        INDEX,
        [ev(0, "a", "i0", 0.0)],
        [
            ev(1, "a", "i1", 5.0),
            ev(2, "a", "i10", 5.0),
            ev(3, "b", "i0", 5.0),
            ev(4, "a", "i0", 6.0),
        ],
        exclude_seen=True,
    )
    # a's basket at t=5 is scored with i0 seen: i1 rank 1, i10 rank 10; b: i0 rank 1; a at t=6: i0
    # seen, a miss
    assert outcome.ranks.tolist() == [1, 10, 1, 0] and outcome.group.tolist() == [0, 0, 1, 2]
    assert outcome.hits.tolist() == [2, 1, 0] and outcome.targets.tolist() == [2, 1, 1]
    m = metrics(outcome)
    assert m["HR@10"] == pytest.approx(3 / 4) and m["Recall@20"] == pytest.approx(3 / 4)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(11) + 1) / 4)
    assert m["MRR@20"] == pytest.approx((1 + 1 / 10 + 1) / 4)
    # i10: of the 10 other candidates, only i11 below it
    assert m["AUC"] == pytest.approx((1 + 1 / 10 + 1 + 0) / 4)
    assert m["Precision@10"] == pytest.approx((2 / 10 + 1 / 10 + 0) / 3)
    assert m["Recall@10"] == pytest.approx((1 + 1 + 0) / 3)
    f1 = [2 * p * r / (p + r) for p, r in ((0.2, 1.0), (0.1, 1.0))]
    assert m["F1@10"] == pytest.approx((f1[0] + f1[1] + 0) / 3)
    assert (m["events"], m["groups"]) == (4, 3)
    only_b = metrics(outcome, np.array([False, False, True, False]))
    assert (only_b["HR@10"], only_b["Precision@10"], only_b["groups"]) == (1.0, 0.1, 1)
    assert metrics(outcome, np.zeros(4, bool)) == {
        **dict.fromkeys(METRICS),
        "events": 0,
        "groups": 0,
    }


def test_a_repeated_target_is_a_miss_only_when_seen_items_are_excluded():
    warm, test = [ev(0, "u", "i3", 0.0)], [ev(1, "u", "i3", 10.0)]
    row = [0.0] * 12
    row[3] = 1.0
    assert replay(Fixed(row), INDEX, warm, test, exclude_seen=True).ranks.tolist() == [0]
    assert replay(Fixed(row), INDEX, warm, test, exclude_seen=False).ranks.tolist() == [1]


def test_every_event_of_a_same_second_group_is_scored_against_the_list_before_it():
    warm = [ev(0, "u", "i0", 0.0)]
    basket = [ev(1, "u", "i1", 10.0), ev(2, "u", "i2", 10.0)]
    # before the basket, i1 (after i0) scores 1: i1 rank 1; i2 is scored against that list too:
    # after i1 (1), i0 (0): rank 3
    assert replay(NextInCatalogue(), INDEX, warm, basket, exclude_seen=False).ranks.tolist() == [
        1,
        3,
    ]
    # a second later: scored after i1 is observed
    one_by_one = [basket[0], replace(basket[1], ts=11.0)]
    assert replay(
        NextInCatalogue(), INDEX, warm, one_by_one, exclude_seen=False
    ).ranks.tolist() == [1, 1]


def test_rounds_hold_one_group_per_user_in_each_users_order():
    events = [
        ev(0, "a", "x", 1.0),
        ev(1, "b", "x", 2.0),
        ev(2, "a", "y", 2.0),
        ev(3, "b", "z", 2.0),
        ev(4, "a", "z", 3.0),
        ev(5, "c", "x", 3.0),
        ev(6, "a", "x", 3.0),
    ]
    # groups: a@1 [0], b@2 [1, 3], a@2 [2], a@3 [4, 6], c@3 [5]
    # consecutive runs of the log
    assert list(rounds(events, independent_users=False)) == [[[0], [1, 3]], [[2]], [[4, 6], [5]]]
    # every user's n-th group
    assert list(rounds(events, independent_users=True)) == [[[0], [1, 3], [5]], [[2]], [[4, 6]]]


def popularity_log() -> list[Event]:
    """Item a was popular long ago, b lately; the validation part (the last 10% by time) buys b."""
    early = [ev(n, f"u{n}", "i0", float(n)) for n in range(10)]
    late = [ev(10 + n, f"v{n}", "i1", 100_000.0 + n) for n in range(3)]
    return early + late + [ev(13, "w0", "i1", 200_000.0), ev(14, "w1", "i1", 200_001.0)]


def test_tuning_picks_the_best_validation_ndcg_the_first_on_ties():
    def make(p):
        return Popular(IDS, **p)

    day, shorter = {"window_s": 86_400.0}, {"window_s": 50_000.0}
    params, ndcg = tune(make, [{"window_s": None}, day, shorter], popularity_log(), INDEX)
    # all time: a (10) before b (3), b at rank 2; within a day of t=100,002 only b counts: rank 1
    assert params == day and ndcg == pytest.approx([1 / math.log2(3), 1.0, 1.0])


@pytest.fixture(scope="module")
def sample(tiny_encoder, sample_catalogue, sample_events):
    items = [CatalogueItem(i["item_id"], i["text"]) for i in sample_catalogue]
    events = [
        Event(e["event_id"], e["user_id"], e["item_id"], e["type"], e["ts"]) for e in sample_events
    ]
    return items, ItemEncoder(str(tiny_encoder), "cpu").encode([i.text for i in items]), events


def test_the_top_k_of_the_scores_is_what_the_stream_publishes(sample):
    """The scores of a user's state, the items of their events excluded, rank as InterestUpdater.recommend
    publishes for that state: what is measured is what is served. And the batched warm-up reaches the states
    of applying one event at a time (up to float rounding)."""
    items, emb, events = sample
    torch.manual_seed(0)
    model = InterestModel(ModelConfig(32, 16, 16, "tiny")).eval()
    catalogue = build_catalogue(items, emb)
    settings = replace(UpdaterConfig(), top_k=K, exclude_seen=True, recent_items=len(items))
    stream, warm = StreamRecommender("m", model, catalogue, settings), events[:500]
    for start in range(0, len(warm), 64):
        stream.observe(warm[start : start + 64])
    seen: dict[str, set[int]] = {}
    for e in warm:
        seen.setdefault(e.user_id, set()).add(catalogue.index[e.item_id])
    users = sorted(seen)
    scores = stream.scores([Event("q", u, items[0].item_id, "click", 0.0) for u in users])
    assert scores.shape == (len(users), len(items)) and scores.dtype == np.float32
    for user, row in zip(users, scores):
        candidates = np.ones(len(items), bool)
        candidates[list(seen[user])] = False
        published = [i.item_id for i in stream.updater.recommend([stream.states[user]])[0]]
        assert [catalogue.ids[j] for j in top(row, candidates, K)] == published

    updater = InterestUpdater(model, catalogue, settings)
    states = {}
    for n, e in enumerate(warm):
        states[e.user_id] = updater.apply(
            [Delivered(e, "log:0", n)], {e.user_id: states.get(e.user_id)}
        ).states[e.user_id]
    assert np.allclose(updater.scores([states[u] for u in users]), scores, atol=1e-5)


def test_evaluate_reports_every_recommender_on_the_same_events(sample):
    items, emb, events = sample
    untrained = InterestModel.untrained(32, 16, "tiny")
    ids = [i.item_id for i in items]
    peers = [
        Peer("popular", lambda p: Popular(ids, **p), [{"window_s": 3600.0}, {"window_s": None}]),
        Peer("knn", lambda p: ItemKNN(ids, **p), [{"recent": 5}]),
    ]
    results = evaluate(
        events[:500],
        events[500:],
        items,
        emb,
        {"untrained": untrained, "long": ablate(untrained, "long")},
        UpdaterConfig(),
        EvalConfig(),
        peers,
    )
    assert list(results) == ["untrained", "long", "popular", "knn"]
    for r in results.values():
        assert (
            r["all"]["events"]
            == len(events) - 500
            == r["users_with_history"]["events"] + r["new_users"]["events"]
        )
        assert (
            r["all"]["groups"]
            == r["users_with_history"]["groups"] + r["new_users"]["groups"]
            <= r["all"]["events"]
        )
        assert 0.0 <= r["all"]["NDCG@10"] <= r["all"]["HR@10"] <= r["all"]["Recall@20"] <= 1.0
        assert all(0.0 <= r["all"][m] <= 1.0 for m in METRICS)
    assert "tuning" not in results["untrained"]
    tuning = results["popular"]["tuning"]
    assert tuning["params"] in ({"window_s": 3600.0}, {"window_s": None})
    assert (
        tuning["validation NDCG@10"] == max(g["NDCG@10"] for g in tuning["grid"])
        and len(tuning["grid"]) == 2
    )
    # one point: given, no validation replay
    assert results["knn"]["tuning"] == {"params": {"recent": 5}, "validation NDCG@10": None}
    table = format_table(results)
    assert (
        "knn: recent=5 (given, not tuned)" in table
        and "F1@10" in table
        and "popular: window_s=" in table
    )


def test_ablations_switch_off_one_side_of_the_fusion():
    model = InterestModel(ModelConfig(4, 3, 5, "t")).eval()
    h, lt, w = torch.randn(2, 5), torch.randn(2, 4), torch.tensor([1.0, 3.0])
    with torch.no_grad():
        conf = (w / (w + model.log_w0.exp())).unsqueeze(-1)
        assert torch.allclose(
            ablate(model, "short").query(h, lt, w), model.log_a_short.exp() * model.out(h)
        )
        assert torch.allclose(
            ablate(model, "long").query(h, lt, w),
            model.log_a_long.exp() * conf * model.item_proj(lt),
        )
    assert model.log_a_short.item() == 0.0  # the original is untouched
