"""Untrusted bytes -> records (``models.records``): events and catalogue items, validated.

Events are parsed and validated here, by hand, from raw bytes: a malformed message must become a
``Rejection`` with a reason, never an exception inside faust's deserializer (which would kill the agent).
Validation closes the value domain, so that what passes can be stored, computed on and written out:
ids are printable text (no control characters, no lone surrogates) of bounded length, JSON nesting is
bounded (orjson refuses more than 1,024 levels), and every number is finite and within the bounds below.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Union

import orjson

from models.records import CatalogueItem, Event, EventType, Rejection

MAX_ID_LEN = 128  # characters of an event, user or item id
MAX_TEXT_LEN = 4096  # characters kept of an item's text (the encoder reads its first 64 tokens)
# 1990-01-01T00:00:00Z. Earlier is a unit mistake (days, not seconds), not an event (MovieLens-100K
# is 1997-98).
MIN_EVENT_TIME = 631_152_000.0


@dataclass(frozen=True)
class EventLimits:
    """The bounds an event's numbers must keep (``Settings`` holds the configurable ones)."""

    max_future_s: float = 300.0  # ts may be at most this far ahead of the wall clock
    max_quantity: int = 1000  # a purchase's quantity scales its long-term weight
    max_price: float = 1e9


def _load_object(raw: bytes | None) -> dict | Rejection:
    """The JSON object in ``raw``. Its size needs no bound of its own: the broker's record limit bounds
    it, orjson parses in linear time, and every field the product keeps is bounded below."""
    if raw is None:
        return Rejection("bad_json", "no value (null)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return _not_json(raw, exc)
    if not isinstance(obj, dict):
        return Rejection("bad_schema", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _not_json(raw: bytes, exc: orjson.JSONDecodeError) -> Rejection:
    """Why orjson refused ``raw``: JSON that the standard library accepts holds a value outside the
    domain (a lone surrogate, NaN or Infinity, a number beyond a double) and is ``bad_value``; anything
    else (syntax, bad UTF-8, nesting deeper than 1,024) is ``bad_json``."""
    try:
        json.loads(raw)
    except Exception:  # noqa: BLE001 - ValueError, UnicodeDecodeError, RecursionError: not JSON at all
        return Rejection("bad_json", str(exc)[:200])
    return Rejection("bad_value", str(exc)[:200])


def _identifier(obj: dict, name: str) -> str | Rejection:
    value = obj.get(name)
    if value is None:
        return Rejection("missing_field", name)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return Rejection("bad_type", f"{name} must be a string or integer")
    return check_id(str(value), name)


def check_id(value: str, name: str) -> str | Rejection:
    """``value`` if it can be an id: 1..MAX_ID_LEN printable characters, so that it is valid UTF-8
    (a lone surrogate is not printable) and holds no control character (NUL would collide with the item
    store's internal keys)."""
    if not value or len(value) > MAX_ID_LEN:
        return Rejection("bad_value", f"{name} must have 1..{MAX_ID_LEN} characters")
    if not value.isprintable():
        return Rejection(
            "bad_value", f"{name} must be printable text (no control characters or lone surrogates)"
        )
    return value


def _number(obj: dict, name: str) -> float | None | Rejection:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Rejection("bad_type", f"{name} must be a number")
    value = float(value)  # orjson gives at most 64-bit integers: never an OverflowError
    if not math.isfinite(value):
        return Rejection("bad_value", f"{name} must be finite")
    return value


def parse_event(
    raw: bytes | None, event_type: EventType, now: float, limits: EventLimits
) -> Union[Event, Rejection]:
    """Validate one event from the ``event_type`` topic; ``now`` is the wall clock for the future check."""
    obj = _load_object(raw)
    if isinstance(obj, Rejection):
        return obj
    found = {name: _identifier(obj, name) for name in ("event_id", "user_id", "item_id")}
    ids: dict[str, str] = {}
    for name, value in found.items():
        if isinstance(value, Rejection):
            return value
        ids[name] = value
    declared = obj.get("type", event_type)
    if declared != event_type:
        return Rejection("bad_value", f"type {str(declared)[:40]!r} on the {event_type} topic")
    ts = _number(obj, "ts")
    if ts is None:
        return Rejection("missing_field", "ts")
    if isinstance(ts, Rejection):
        return ts
    if ts < MIN_EVENT_TIME:
        return Rejection("bad_timestamp", f"ts {ts} is before 1990 (unix seconds expected)")
    if ts > now + limits.max_future_s:
        return Rejection("future_timestamp", f"ts {ts} is {ts - now:.0f}s ahead of the clock")
    quantity = obj.get("quantity", 1)
    if (
        isinstance(quantity, bool)
        or not isinstance(quantity, int)
        or not 1 <= quantity <= limits.max_quantity
    ):
        return Rejection("bad_value", f"quantity must be an integer in 1..{limits.max_quantity}")
    price = _number(obj, "price")
    if isinstance(price, Rejection):
        return price
    if price is not None and not 0 <= price <= limits.max_price:
        return Rejection("bad_value", f"price must be in 0..{limits.max_price:g}")
    return Event(
        event_id=ids["event_id"],
        user_id=ids["user_id"],
        item_id=ids["item_id"],
        type=event_type,
        ts=ts,
        quantity=quantity,
        price=price,
    )


def parse_item(raw: bytes | None) -> Union[CatalogueItem, Rejection]:
    """Validate one catalogue item; its text is kept up to MAX_TEXT_LEN characters."""
    obj = _load_object(raw)
    if isinstance(obj, Rejection):
        return obj
    item_id = _identifier(obj, "item_id")
    if isinstance(item_id, Rejection):
        return item_id
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        return Rejection("bad_value", "text must be a non-empty string")
    return CatalogueItem(item_id, text[:MAX_TEXT_LEN])
