"""What the evaluation replays: a recommender that observes events and scores the whole catalogue."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from models.records import Event


class Recommender(Protocol):
    name: str
    # a user's scores depend on their own events only: any per-user-ordered packing is exact
    independent_users: bool

    def observe(self, events: list[Event]) -> None:
        """Apply time-ordered events (several per user allowed)."""

    def scores(self, events: list[Event]) -> np.ndarray:
        """[len(events), N] float32: each event's user's score for every catalogue item (``catalogue.ids``
        order), finite, higher is better, before the event; raw, nothing excluded. One event per user."""
