"""The framework floor: a faust agent that takes events in micro-batches, as the worker's does, and only
acknowledges them (no parse, no state, no output). What it costs per event is faust's share of the
pipeline's cost. Run by ``benchmarks.bench`` as a child process, given the benchmark's settings in
its environment (INTEREST_*: the broker and how to reach it, the event topics, the batch settings):

    python -m benchmarks.faust_floor EVENTS OUT.json

With the worker's fetch back-off (``faust_compat.back_off_empty_fetches``: without it faust's empty
internal topics are re-fetched in a tight loop on noida-db, a third of the floor's CPU), it drains
EVENTS events from the start of the click and purchase topics, writes {events, seconds, cpu_s} (from
the first batch to the last, CPU of this process) to OUT.json and exits.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

import faust
from faust.streams import Stream

from streams import faust_compat
from streams.connection import bootstrap, faust_credentials
from streams.settings import Settings


def main(settings: Settings, n: int, out: Path) -> None:
    faust_compat.back_off_empty_fetches(settings.fetch_backoff_s)
    app = faust.App(
        f"faust-floor-{time.time_ns()}",
        broker=[f"kafka://{b}" for b in bootstrap(settings)],
        broker_credentials=faust_credentials(settings),
        consumer_auto_offset_reset="earliest",
        datadir=tempfile.mkdtemp(prefix="faust-floor-"),
        web_enabled=False,
        autodiscover=False,
    )
    source = app.topic(
        settings.clicks_topic,
        settings.purchases_topic,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    )
    seen = {"events": 0, "start": 0.0, "cpu": 0.0}

    async def take(stream: faust.StreamT) -> None:
        async for batch in cast(Stream, stream).take_events(
            settings.batch_max, within=settings.batch_wait_s
        ):
            if not seen["start"]:
                seen["start"], seen["cpu"] = time.perf_counter(), time.process_time()
            seen["events"] += len(batch)
            if seen["events"] >= n:
                result = {
                    "events": seen["events"],
                    "seconds": time.perf_counter() - seen["start"],
                    "cpu_s": time.process_time() - seen["cpu"],
                }
                out.write_text(json.dumps(result))
                os._exit(0)  # measured: no need to leave the group politely

    app.agent(source, name="floor")(take)
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    n, out = sys.argv[1:3]
    main(Settings.from_env(), int(n), Path(out))
