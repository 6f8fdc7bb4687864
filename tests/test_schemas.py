import json

import pytest

from models.records import Event, Recommendation, Rejection, ScoredItem
from streams.schemas import EventLimits, parse_event, parse_item

NOW = 1_800_000_000.0
LIMITS = EventLimits()


def ev(**kw) -> bytes:
    base = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": NOW - 10}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not ...}).encode()


def test_valid_click_and_purchase():
    e = parse_event(ev(), "click", NOW, LIMITS)
    assert e == Event("e1", "u1", "i1", "click", NOW - 10)
    p = parse_event(ev(quantity=2, price=9.5, type="purchase"), "purchase", NOW, LIMITS)
    assert isinstance(p, Event) and p.quantity == 2 and p.price == 9.5 and p.type == "purchase"
    # integer ids are accepted as strings
    assert parse_event(ev(user_id=42), "click", NOW, LIMITS).user_id == "42"


@pytest.mark.parametrize(
    "raw, reason",
    [
        (b"{not json", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "bad_schema"),
        (ev(user_id=...), "missing_field"),
        (ev(ts=...), "missing_field"),
        (ev(item_id=[1]), "bad_type"),
        (ev(ts="yesterday"), "bad_type"),
        (ev(ts=True), "bad_type"),
        (ev(user_id="x" * 1000), "bad_value"),
        (ev(user_id=""), "bad_value"),
        (ev(ts=-5), "bad_timestamp"),
        (ev(ts=NOW + 3600), "future_timestamp"),
        (ev(quantity=0), "bad_value"),
        (ev(price=-1), "bad_value"),
        (ev(type="purchase"), "bad_value"),
    ],
)
def test_malformed_events_are_rejected_with_a_reason(raw, reason):
    result = parse_event(raw, "click", NOW, LIMITS)
    assert isinstance(result, Rejection) and result.reason == reason and result.detail


def test_items_and_recommendations_round_trip():
    assert parse_item(b'{"item_id": 7, "text": "a tent"}').item_id == "7"
    assert parse_item(b'{"item_id": "7", "text": "  "}').reason == "bad_value"
    rec = Recommendation("u", [ScoredItem("a", 0.5)], "e", NOW, "v1", NOW + 1)
    assert Recommendation.from_json(rec.to_json()) == rec
