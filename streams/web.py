"""The worker's web port: /health (alive), /ready (catalogue caught up, events being applied) and
/users/<id> (one user's state and latest recommendations, for `interest-stream inspect`). faust's own
views are switched off in the app's settings (``streams.app``): they would serve any raw state.

A user page is personal data: it is served on a loopback ``INTEREST_WEB_BIND`` to anyone who can reach
it (this machine's processes), and beyond loopback only to a request bearing ``INTEREST_WEB_TOKEN``
(none set: not at all). The check comes before faust forwards the request to the worker holding the
user, and the forwarded request carries the same header."""

from __future__ import annotations

import functools
import hmac
import logging
import os
import time

import faust
from aiokafka.partitioner import murmur2

from state.user_state import UserState, decode
from streams.erasure import is_marker
from streams.runtime import Runtime
from streams.settings import Settings, variable
from streams.user_table import UserTable

log = logging.getLogger(__name__)


def user_view(user: str, partition: int, state: UserState, now: float) -> dict:
    """What `inspect` shows of a state: counts, recent items and events, the long-term vector's weight
    and age (seconds since the event time it was decayed to), model version, latest recommendations."""
    return {
        "user_id": user,
        "partition": partition,
        "clicks": state.clicks,
        "purchases": state.purchases,
        "last_event": {"event_id": state.last_event_id, "ts": state.last_event_time},
        "recent_items": state.recent_items,
        "recent_events": len(state.recent_event_ids),
        "long_term": {
            "weight": state.lt_weight,
            "as_of": state.lt_time,
            "age_s": max(now - state.lt_time, 0.0),
        },
        "model_version": state.model_version,
        "applied_offsets": state.applied,
        "latest_recommendations": {
            "produced_at": state.latest_at,
            "items": [{"item_id": item, "score": score} for item, score in state.latest],
        },
    }


def refusal(settings: Settings, authorization: str | None) -> tuple[int, str] | None:
    """Why a request for a user page is refused (HTTP status, reason), or None if it is served."""
    if settings.web_token:
        if hmac.compare_digest(
            (authorization or "").encode(), f"Bearer {settings.web_token}".encode()
        ):
            return None
        return 401, f"a user page needs the header Authorization: Bearer <{variable('web_token')}>"
    if settings.web_on_loopback:
        return None
    return 403, (
        f"user pages are off: {variable('web_bind')}={settings.web_bind} is beyond loopback and no "
        f"{variable('web_token')} is set"
    )


def add_pages(app: faust.App, runtime: Runtime, table: UserTable, settings: Settings) -> None:
    partitions = settings.partitions
    if refusal(settings, None) and not settings.web_token:
        log.warning(
            "user pages (/users/<id>) are off: %s=%s is beyond loopback and no %s is set",
            variable("web_bind"),
            settings.web_bind,
            variable("web_token"),
        )

    def personal(page):
        """Serve ``page`` only to whom ``refusal`` lets through, before faust's table_route forwards it."""

        @functools.wraps(page)
        async def guarded(self, request, **kwargs):
            refused = refusal(settings, request.headers.get("Authorization"))
            if refused is not None:
                return self.json({"error": refused[1]}, status=refused[0])
            # faust cannot route yet (its producer lacks the changelog's partitions)
            if not runtime.ready.is_set():
                return self.json({"error": "the worker is starting"}, status=503)
            return await page(self, request, **kwargs)

        return guarded

    @app.page("/health")
    async def health(self, request):
        return self.json({"status": "ok"})

    @app.page("/ready")
    async def ready(self, request):
        ok = runtime.ready.is_set()
        # The pid lets a parent tell its own worker's answer from another one's on the same port; the
        # partitions (of the event topics and the user table) say what the group gave this worker.
        held = sorted(
            {tp.partition for tp in app.consumer.assignment() if tp.topic in runtime.event_types}
        )
        return self.json(
            {
                "ready": ok,
                "catalogue_items": len(runtime.updater.catalogue) if ok else 0,
                "pid": os.getpid(),
                "partitions": held,
            },
            status=200 if ok else 503,
        )

    @app.page("/users/{user}")
    @personal
    # asked of any worker, answered by the one holding the user
    @app.table_route(table=table, match_info="user")
    async def user_page(self, request, user: str):
        key = user.encode()
        # the producers' partitioner: where the user's events go
        partition = (murmur2(key) & 0x7FFFFFFF) % partitions
        raw = table.get_many({key: partition})[key]
        state = None if raw is None else decode(raw)
        if state is None or is_marker(state):  # never seen, erased, or nothing applied
            return self.json({"user_id": user, "found": False}, status=404)
        return self.json(user_view(user, partition, state, time.time()))
