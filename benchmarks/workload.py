"""Synthetic catalogue and event stream for the benchmark: deterministic, any size."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator

BRANDS = [
    "northpeak",
    "alder",
    "brightwave",
    "cobalt",
    "dune",
    "ember",
    "fjord",
    "granite",
    "harbor",
    "iris",
    "juniper",
    "kestrel",
    "lumen",
    "meridian",
    "nimbus",
    "onyx",
    "pinnacle",
    "quarry",
    "redwood",
    "sable",
]
ADJECTIVES = [
    "lightweight",
    "waterproof",
    "compact",
    "classic",
    "wireless",
    "organic",
    "insulated",
    "foldable",
    "premium",
    "vintage",
    "ergonomic",
    "rechargeable",
    "portable",
    "stainless",
    "handmade",
    "modular",
]
COLOURS = [
    "black",
    "white",
    "red",
    "blue",
    "green",
    "grey",
    "navy",
    "olive",
    "orange",
    "yellow",
    "pink",
    "brown",
]
NOUNS = [
    "shoes",
    "jacket",
    "backpack",
    "headphones",
    "kettle",
    "lamp",
    "tent",
    "bottle",
    "keyboard",
    "chair",
    "blender",
    "speaker",
    "watch",
    "gloves",
    "scarf",
    "mug",
    "pan",
    "drill",
    "camera",
    "notebook",
    "rug",
    "pillow",
    "helmet",
    "bicycle",
    "charger",
    "mouse",
    "monitor",
    "desk",
    "sofa",
    "blanket",
]
CATEGORIES = [
    "running",
    "outdoor",
    "audio",
    "kitchen",
    "home",
    "office",
    "garden",
    "cycling",
    "photo",
    "tools",
]


def item_id(n: int) -> str:
    return f"i{n}"


def user_id(n: int) -> str:
    return f"u{n}"


def catalogue(n_items: int, seed: int = 0, first: int = 0) -> list[dict]:
    """Items ``first`` .. ``first + n_items - 1``."""
    rng = random.Random(seed)
    return [
        {
            "item_id": item_id(n),
            "text": f"{rng.choice(BRANDS)} {rng.choice(ADJECTIVES)} {rng.choice(COLOURS)} "
            f"{rng.choice(NOUNS)} ({rng.choice(CATEGORIES)})",
        }
        for n in range(first, first + n_items)
    ]


class EventSource:
    """Events of ``n_users`` users on ``n_items`` items, 10% purchases. The first ``n_users`` events are a
    permutation of the users, so the number of users with state is min(events so far, n_users)."""

    def __init__(self, n_users: int, n_items: int, seed: int = 0) -> None:
        self.n_users, self.n_items = n_users, n_items
        self._rng = random.Random(seed)
        self._first = list(range(n_users))
        self._rng.shuffle(self._first)
        self.sent = 0

    def next(self) -> tuple[str, bytes, bytes]:
        """(topic kind "click"|"purchase", key, value); the value's ``ts`` is now: its produce time."""
        n = self.sent
        self.sent += 1
        rng = self._rng
        user = user_id(self._first[n] if n < self.n_users else rng.randrange(self.n_users))
        kind = "purchase" if rng.random() < 0.1 else "click"
        event = {
            "event_id": f"e{n}",
            "user_id": user,
            "item_id": item_id(rng.randrange(self.n_items)),
            "type": kind,
            "ts": time.time(),
        }
        return kind, user.encode(), json.dumps(event, separators=(",", ":")).encode()

    def take(self, n: int) -> Iterator[tuple[str, bytes, bytes]]:
        for _ in range(n):
            yield self.next()
