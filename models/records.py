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
class Reason:
    """Why an item was recommended (``models.reasons``; with ``INTEREST_REASONS``).

    ``nearest``: of the user's recent items in the catalogue (the item itself aside), the one whose vector
    in the interest space is most cosine-similar to the item's, and that ``similarity`` in [-1, 1]; None
    and 0.0 when the user has no other. ``parts``: the item's score split into named terms that add up to
    it (to float32 rounding): ``short``, the GRU's term, and ``long``, the long-term average's.
    """

    nearest: str | None
    similarity: float
    parts: dict[str, float]

    def shares(self) -> dict[str, float]:
        """Each part's |part| / the sum of |parts|: fractions in [0, 1] that add up to 1 (all 0 for a score
        of exactly 0). Magnitudes, because a part can be negative."""
        total = sum(map(abs, self.parts.values()))
        return {name: abs(part) / total if total else 0.0 for name, part in self.parts.items()}

    def to_dict(self) -> dict:
        """Raises ``NonFinite`` for a NaN or infinite number: orjson would write it as null."""
        self._require_finite()
        return {
            "nearest": self.nearest,
            "similarity": self.similarity,
            "parts": self.parts,
            "shares": self.shares(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Reason":
        """The reason ``to_dict`` gave (``shares`` are derived from ``parts``, not read); raises ``NonFinite``
        for a NaN or infinite number."""
        nearest = d["nearest"]
        reason = cls(
            None if nearest is None else str(nearest),
            float(d["similarity"]),
            {str(name): float(part) for name, part in d["parts"].items()},
        )
        reason._require_finite()
        return reason

    def _require_finite(self) -> None:
        require_finite("a recommendation reason", self.similarity, *self.parts.values())


@dataclass(frozen=True)
class ScoredItem:
    item_id: str
    score: float
    reason: Reason | None = None  # only with INTEREST_REASONS


@dataclass(frozen=True)
class Recommendation:
    user_id: str
    items: list[ScoredItem]
    event_id: str  # the user's newest event applied when it was made (by event time)
    event_time: float  # that event's time, unix seconds
    model_version: str
    produced_at: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        """Raises ``NonFinite`` for a NaN or infinite score or reason: orjson would write it as null. An
        item without a reason has no "reason" key."""
        require_finite("a recommendation score", *(i.score for i in self.items))
        # What asdict() gives, built by hand: asdict deep-copies recursively, 5x the cost on the hot path;
        # two literals, not one and a key added: no cost without reasons.
        items = [
            {"item_id": i.item_id, "score": i.score}
            if i.reason is None
            else {"item_id": i.item_id, "score": i.score, "reason": i.reason.to_dict()}
            for i in self.items
        ]
        return orjson.dumps(
            {
                "user_id": self.user_id,
                "items": items,
                "event_id": self.event_id,
                "event_time": self.event_time,
                "model_version": self.model_version,
                "produced_at": self.produced_at,
            }
        )

    @classmethod
    def from_json(cls, raw: bytes | str) -> "Recommendation":
        """Raises ``ValueError`` for a record that is not a recommendation with finite scores and reasons."""
        try:
            d = json.loads(raw)
            d["items"] = [
                ScoredItem(
                    str(i["item_id"]),
                    float(i["score"]),
                    Reason.from_dict(i["reason"]) if "reason" in i else None,
                )
                for i in d["items"]
            ]
            rec = cls(**d)
        except (TypeError, KeyError, AttributeError) as exc:
            raise ValueError(f"not a recommendation: {exc!r}") from exc
        require_finite("a recommendation score", *(i.score for i in rec.items))
        return rec
