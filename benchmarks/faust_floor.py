"""The framework floor: a faust agent that takes events in micro-batches, as the worker's does, and only
acknowledges them (no parse, no state, no output). What it costs per event is faust's share of the
pipeline's cost. Run by ``benchmarks.bench`` as a child process:

    python -m benchmarks.faust_floor BROKER TOPIC[,TOPIC] EVENTS BATCH_MAX WITHIN_S FETCH_BACKOFF_S OUT.json

With the worker's fetch back-off (``faust_compat.back_off_empty_fetches``: without it faust's empty
internal topics are re-fetched in a tight loop on noida-db, a third of the floor's CPU), it drains
EVENTS events from the start of the topics, writes {events, seconds, cpu_s} (from the first
batch to the last, CPU of this process) to OUT.json and exits.
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


def main(broker: str, topics: list[str], n: int, batch_max: int, within_s: float, fetch_backoff_s: float, out: Path) -> None:
    faust_compat.back_off_empty_fetches(fetch_backoff_s)
    app = faust.App(f"faust-floor-{time.time_ns()}", broker=f"kafka://{broker}", consumer_auto_offset_reset="earliest",
                    datadir=tempfile.mkdtemp(prefix="faust-floor-"), web_enabled=False, autodiscover=False)
    source = app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")
    seen = {"events": 0, "start": 0.0, "cpu": 0.0}

    async def take(stream: faust.StreamT) -> None:
        async for batch in cast(Stream, stream).take_events(batch_max, within=within_s):
            if not seen["start"]:
                seen["start"], seen["cpu"] = time.perf_counter(), time.process_time()
            seen["events"] += len(batch)
            if seen["events"] >= n:
                result = {"events": seen["events"], "seconds": time.perf_counter() - seen["start"],
                          "cpu_s": time.process_time() - seen["cpu"]}
                out.write_text(json.dumps(result))
                os._exit(0)  # measured: no need to leave the group politely

    app.agent(source, name="floor")(take)
    faust.Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


if __name__ == "__main__":
    broker, topics, n, batch_max, within, backoff, out = sys.argv[1:8]
    main(broker, topics.split(","), int(n), int(batch_max), float(within), float(backoff), Path(out))
