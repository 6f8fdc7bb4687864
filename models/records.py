"""The records of the data path: an event, a rejection, a catalogue item, a recommendation.

Pure data and their JSON; parsing untrusted bytes into them is ``streams.schemas``'s job.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import orjson

from state.faults import require_finite

EventType = Literal["click", "purchase"]
EVENT_TYPES: tuple[EventType, ...] = ("click", "purchase")


@dataclass(frozen=True)
class Event:
    event_id: str
    user_id: str
    item_id: str
    type: EventType
    ts: float  # event time, unix seconds
    quantity: int = 1
    price: float | None = None

    def to_json(self) -> bytes:
        d = asdict(self)
        if self.price is None:
            del d["price"]
        return json.dumps(d, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Rejection:
    reason: str  # a short machine-readable code, used as a metric label
    detail: str


@dataclass(frozen=True)
class CatalogueItem:
    item_id: str
    text: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float


@dataclass(frozen=True)
class Recommendation:
    user_id: str
    items: list[ScoredItem]
    event_id: str  # the user's newest event applied when it was made (by event time)
    event_time: float  # that event's time, unix seconds
    model_version: str
    produced_at: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        """Raises ``NonFinite`` for a NaN or infinite score: orjson would write it as null."""
        require_finite("a recommendation score", *(i.score for i in self.items))
        # What asdict() gives, built by hand: asdict deep-copies recursively, 5x the cost on the hot path.
        return orjson.dumps({
            "user_id": self.user_id, "items": [{"item_id": i.item_id, "score": i.score} for i in self.items],
            "event_id": self.event_id, "event_time": self.event_time, "model_version": self.model_version,
            "produced_at": self.produced_at,
        })

    @classmethod
    def from_json(cls, raw: bytes | str) -> "Recommendation":
        """Raises ``ValueError`` for a record that is not a recommendation with finite scores."""
        try:
            d = json.loads(raw)
            d["items"] = [ScoredItem(str(i["item_id"]), float(i["score"])) for i in d["items"]]
            rec = cls(**d)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a recommendation: {exc!r}") from exc
        require_finite("a recommendation score", *(i.score for i in rec.items))
        return rec
