"""Reasons (INTEREST_REASONS): each published item's score split into parts that add up to it, the user's
recent item nearest to it, their JSON, and nothing of them with the setting off."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from cli.client import format_recommendation
from models.catalogue import Catalogue
from models.interest import InterestModel
from models.records import Event, Reason, Recommendation, ScoredItem
from models.updater import Delivered, InterestUpdater, UpdaterConfig
from state.faults import NonFinite
from state.item_store import ItemVector
from tests.model_helpers import random_model

NOW = 1_700_000_000.0


def catalogue_of(vectors: dict[str, list[float]] | np.ndarray) -> Catalogue:
    named = vectors if isinstance(vectors, dict) else {f"i{n}": v for n, v in enumerate(vectors)}
    rows = {item: np.asarray(v, np.float32) for item, v in named.items()}
    catalogue = Catalogue(len(next(iter(rows.values()))))
    catalogue.upsert([ItemVector(item, b"\0" * 16, v) for item, v in rows.items()])
    return catalogue


def events(user_items: dict[str, list[str]]) -> list[Delivered]:
    out = []
    for user, items in user_items.items():
        for n, item in enumerate(items):
            kind = "purchase" if n % 3 == 2 else "click"
            out.append(
                Delivered(
                    Event(f"{user}-{n}", user, item, kind, NOW + 60 * n), "clicks:0", len(out)
                )
            )
    return out


def published(
    updater: InterestUpdater, user_items: dict[str, list[str]]
) -> dict[str, list[ScoredItem]]:
    result = updater.apply(events(user_items), {user: None for user in user_items})
    return {rec.user_id: rec.items for rec in result.recommendations}


CUDA = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: the GPU path is checked where one is lent",
)


@pytest.mark.parametrize(
    ("rebuys", "trend"),
    [(False, False), (True, False), (False, True)],
    ids=["seen-excluded", "rebuys", "trend"],
)
@pytest.mark.parametrize(
    ("ann_min_items", "device"),
    [(100_000, "cpu"), (1000, "cpu"), pytest.param(100_000, "cuda", marks=CUDA)],
    ids=["exact", "ann", "cuda"],
)
def test_parts_add_up_to_the_score_and_nearest_is_the_most_similar_recent_item(
    ann_min_items, device, rebuys, trend
):
    """Every term of the score is a part: the query's two, the item's bias and, in a re-buy model (seen items
    not excluded, so that re-buys are recommended), the re-buy term, nonzero exactly for the user's own items;
    in a trend model the trend term, nonzero exactly for the items someone touched."""
    rng = np.random.default_rng(0)
    embeddings = rng.standard_normal((3000, 12)).astype(np.float32)
    catalogue = catalogue_of(embeddings)
    # a random item tower, biases, learned rows for half the items
    model = random_model(
        embed_dim=12,
        dim=8,
        hidden=6,
        known=catalogue.ids[::2],
        rebuys=rebuys,
        trend_half_life_s=3600.0 if trend else 0.0,
    )
    # the trend model's users share items, so that some touched by others are recommended
    user_items = {
        f"u{u}": [f"i{n}" for n in rng.choice(60 if trend else 3000, size=1 + u % 7, replace=False)]
        for u in range(40)
    }
    touched = {item for items in user_items.values() for item in items}
    config = UpdaterConfig(
        top_k=10,
        ann_min_items=ann_min_items,
        bf16_scoring=False,
        scoring_device=device,
        exclude_seen=not rebuys,
    )
    with_reasons = published(
        InterestUpdater(model, catalogue, replace(config, reasons=True)), user_items
    )
    without = published(InterestUpdater(model, catalogue, config), user_items)

    with torch.inference_mode():
        # nearest: by the vectors, not the bias
        space = model.item_space(catalogue.embeddings, model.rows(catalogue.ids))[:, :-1].numpy()
    unit = space / np.linalg.norm(space, axis=1, keepdims=True)
    rebought = trending = 0
    for user, items in with_reasons.items():
        # the same top-k, scores included, as without reasons: a reason explains, it changes nothing
        assert [(i.item_id, i.score) for i in items] == [
            (i.item_id, i.score) for i in without[user]
        ]
        assert len(items) == 10 and all(i.reason is None for i in without[user])
        recent = [catalogue.index[item] for item in user_items[user]]
        for item in items:
            reason = item.reason
            assert reason is not None and set(reason.parts) == {"short", "long", "item"} | (
                {"rebuy"} if rebuys else set()
            ) | ({"trend"} if trend else set())
            assert sum(reason.parts.values()) == pytest.approx(item.score, rel=1e-5, abs=1e-6)
            # every user has a history and every item a bias: all terms count, the re-buy term for
            # the user's own items only
            own = item.item_id in user_items[user]
            assert all(
                (abs(v) > 1e-6) == {"rebuy": own, "trend": item.item_id in touched}.get(name, True)
                for name, v in reason.parts.items()
            )
            rebought += own
            trending += item.item_id in touched
            # never the item itself
            others = [r for r in recent if r != catalogue.index[item.item_id]]
            similarity = unit[others] @ unit[catalogue.index[item.item_id]]
            assert reason.nearest == (
                catalogue.ids[others[int(np.argmax(similarity))]] if others else None
            )
            assert reason.similarity == pytest.approx(similarity.max() if others else 0.0, abs=1e-5)
    # re-buys are recommended, and explained, in the re-buy model only
    assert (rebought > 0) == rebuys
    assert not trend or trending > 0


def test_nearest_is_the_recent_item_of_highest_cosine_never_the_item_itself():
    # identity item tower: the interest space is the embedding space, so the cosines are known by hand
    model = InterestModel.untrained(embed_dim=4, hidden=3, encoder="t")
    catalogue = catalogue_of(
        {
            "a": [1, 0, 0, 0],
            "b": [0, 1, 0, 0],
            "near-a": [3, 1, 0, 0],
            "near-b": [0.1, 2, 0, 0],
            "c": [0, 0, 1, 0],
        }
    )
    config = UpdaterConfig(top_k=5, reasons=True, exclude_seen=False)
    got = published(InterestUpdater(model, catalogue, config), {"two": ["a", "b"], "one": ["a"]})
    two = {i.item_id: i.reason for i in got["two"]}
    assert set(two) == {"a", "b", "near-a", "near-b", "c"}
    assert (two["near-a"].nearest, two["near-a"].similarity) == (
        "a",
        pytest.approx(3 / np.sqrt(10)),
    )
    assert (two["near-b"].nearest, two["near-b"].similarity) == (
        "b",
        pytest.approx(2 / np.sqrt(4.01)),
    )
    # a recent item's nearest is another one
    assert (two["a"].nearest, two["a"].similarity) == ("b", 0.0)
    one = {i.item_id: i.reason for i in got["one"]}
    # the user has no other recent item
    assert (one["a"].nearest, one["a"].similarity) == (None, 0.0)
    assert one["near-a"].nearest == "a"
    # with recent items excluded, the same reasons for the items still recommended
    excluded = published(
        InterestUpdater(model, catalogue, replace(config, exclude_seen=True)), {"two": ["a", "b"]}
    )["two"]
    assert {i.item_id: i.reason.nearest for i in excluded if i.reason} == {
        "near-a": "a",
        "near-b": "b",
        "c": two["c"].nearest,
    }


def test_without_reasons_the_json_is_as_before():
    rec = Recommendation(
        "u", [ScoredItem("a", 0.5), ScoredItem("b", 0.25)], "e", NOW, "v1", NOW + 1
    )
    assert rec.to_json() == (
        b'{"user_id":"u","items":[{"item_id":"a","score":0.5},{"item_id":"b","score":0.25}],'
        b'"event_id":"e","event_time":1700000000.0,"model_version":"v1","produced_at":1700000001.0}'
    )


def test_reasons_round_trip_through_json():
    rec = Recommendation(
        "u",
        [
            ScoredItem("a", 0.2, Reason("x", 0.9, {"short": 0.3, "long": -0.1})),
            ScoredItem("b", 0.1, Reason(None, 0.0, {"short": 0.1, "long": 0.0})),
        ],
        "e",
        NOW,
        "v1",
        NOW + 1,
    )
    raw = json.loads(rec.to_json())
    assert raw["items"][0]["reason"] == {
        "nearest": "x",
        "similarity": 0.9,
        "parts": {"short": 0.3, "long": -0.1},
        "shares": {"short": pytest.approx(0.75), "long": pytest.approx(0.25)},
    }
    assert raw["items"][1]["reason"]["nearest"] is None
    assert Recommendation.from_json(rec.to_json()) == rec
    assert Reason(None, 0.0, {"short": 0.0, "long": 0.0}).shares() == {"short": 0.0, "long": 0.0}


@pytest.mark.parametrize(
    "reason",
    [
        Reason("x", float("nan"), {"short": 0.1}),
        Reason("x", 0.5, {"short": 0.1, "long": float("inf")}),
    ],
)
def test_a_non_finite_reason_is_never_written_nor_read(reason):
    rec = Recommendation("u", [ScoredItem("a", 0.2, reason)], "e", NOW, "v1", NOW + 1)
    with pytest.raises(NonFinite):
        rec.to_json()
    raw = json.dumps(
        {
            "user_id": "u",
            "items": [
                {
                    "item_id": "a",
                    "score": 0.2,
                    "reason": {
                        "nearest": reason.nearest,
                        "similarity": reason.similarity,
                        "parts": reason.parts,
                    },
                }
            ],
            # json writes NaN, Infinity
            "event_id": "e",
            "event_time": NOW,
            "model_version": "v1",
            "produced_at": NOW,
        }
    )
    with pytest.raises(ValueError, match="not finite"):
        Recommendation.from_json(raw)


def test_subscribe_prints_a_line_per_item_with_its_reason_and_one_line_without():
    plain = Recommendation("u", [ScoredItem("a", 0.5), ScoredItem("b", 0.25)], "e", NOW, "v1")
    assert format_recommendation(plain) == "user u after e [v1]: a (0.500), b (0.250)"
    explained = replace(
        plain,
        items=[
            ScoredItem("a", 0.5, Reason("17", 0.912, {"short": 0.305, "long": 0.195})),
            ScoredItem("b", 0.25, Reason(None, 0.0, {"short": -0.25, "long": 0.5})),
        ],
    )
    assert format_recommendation(explained, {"17": "tent"}).splitlines() == [
        "user u after e [v1]:",
        "  a 0.500  (near tent 0.91 · short 0.61 / long 0.39)",
        # a part that lowered the score: signed
        "  b 0.250  (no other recent item · short -0.33 / long 0.67)",
    ]
