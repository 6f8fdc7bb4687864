"""The worker's web port: /health (alive), /ready (catalogue caught up, events being applied) and
/users/<id> (one user's state and latest recommendations, for `interest-stream inspect`). faust's own
views are switched off in the app's settings (``streams.app``): they would serve any raw state."""

from __future__ import annotations

import os
import time

import faust
from aiokafka.partitioner import murmur2

from state.user_state import UserState, decode
from streams.erasure import is_marker
from streams.runtime import Runtime
from streams.user_table import UserTable


def user_view(user: str, partition: int, state: UserState, now: float) -> dict:
    """What `inspect` shows of a state: counts, recent items and events, the long-term vector's weight
    and age (seconds since the event time it was decayed to), model version, latest recommendations."""
    return {
        "user_id": user, "partition": partition, "clicks": state.clicks, "purchases": state.purchases,
        "last_event": {"event_id": state.last_event_id, "ts": state.last_event_time},
        "recent_items": state.recent_items, "recent_events": len(state.recent_event_ids),
        "long_term": {"weight": state.lt_weight, "as_of": state.lt_time, "age_s": max(now - state.lt_time, 0.0)},
        "model_version": state.model_version, "applied_offsets": state.applied,
        "latest_recommendations": {"produced_at": state.latest_at,
                                   "items": [{"item_id": item, "score": score} for item, score in state.latest]},
    }


def add_pages(app: faust.App, runtime: Runtime, table: UserTable, partitions: int) -> None:

    @app.page("/health")
    async def health(self, request):
        return self.json({"status": "ok"})

    @app.page("/ready")
    async def ready(self, request):
        ok = runtime.ready.is_set()
        # The pid lets a parent tell its own worker's answer from another one's on the same port; the
        # partitions (of the event topics and the user table) say what the group gave this worker.
        held = sorted({tp.partition for tp in app.consumer.assignment() if tp.topic in runtime.event_types})
        return self.json({"ready": ok, "catalogue_items": len(runtime.updater.catalogue) if ok else 0, "pid": os.getpid(),
                          "partitions": held}, status=200 if ok else 503)

    @app.page("/users/{user}")
    @app.table_route(table=table, match_info="user")  # asked of any worker, answered by the one holding the user
    async def user_page(self, request, user: str):
        key = user.encode()
        partition = (murmur2(key) & 0x7FFFFFFF) % partitions  # the producers' partitioner: where the user's events go
        raw = table.get_many({key: partition})[key]
        state = None if raw is None else decode(raw)
        if state is None or is_marker(state):  # never seen, erased, or nothing applied
            return self.json({"user_id": user, "found": False}, status=404)
        return self.json(user_view(user, partition, state, time.time()))
