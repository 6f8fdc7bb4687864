"""Erasure of a user, on request (`interest-stream erase`) or after ``INTEREST_USER_TTL_S`` (wall clock)
without an event, in two steps, without Kafka or faust:

1. Their state is replaced by an *erasure marker*: none of their data (vectors, items, event ids,
   recommendations, counts), only the offsets already applied to them (``UserState.applied``), and the
   worker publishes a null for them on the recommendations topic.
2. Once the consumer group has committed past every one of those offsets, the marker is deleted, with a
   tombstone on the changelog (``forgettable``), at the next pass over the partition.

Why not delete at once: after a crash a worker re-reads from the last committed offset, and without
the applied offsets the events applied before the erasure would be applied again and bring the user
back. An erasure request's own offset is kept too, so that re-reading it cannot erase later events.
A state with no applied event (``is_marker``) holds no data: an erased user, or one whose every event
was rejected; both are deleted the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from state.user_state import UserState


def marker(state: UserState, request: tuple[str, int] | None = None) -> UserState:
    """The erasure marker of ``state``; ``request``: the (source, offset) of the erasure request."""
    applied = dict(state.applied)
    if request is not None:
        applied[request[0]] = request[1]
    return UserState(
        np.zeros_like(state.hidden),
        np.zeros_like(state.lt_sum),
        model_version=state.model_version,
        space=state.space,
        applied=applied,
    )


def is_marker(state: UserState) -> bool:
    return not state.last_event_id


def forgettable(state: UserState, committed: Mapping[str, int | None]) -> bool:
    """A marker the group has committed past: ``committed`` maps a source ("topic:partition") to the
    group's committed offset (the next to read; None if none)."""
    return is_marker(state) and all(
        offset < (committed.get(source) or 0) for source, offset in state.applied.items()
    )


def expired(state: UserState, idle_before: float) -> bool:
    """No event applied since ``idle_before`` (wall clock, unix seconds): the time the user's last
    recommendation was published, or for a state written before that was kept, their last event time.
    The wall clock, not event time: a partition that receives no more events must still expire its users,
    and a replayed log's old timestamps must not expire them at once."""
    return not is_marker(state) and (state.latest_at or state.last_event_time) < idle_before
