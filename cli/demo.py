"""`demo`: the whole product on one machine, with nothing configured.

Starts a local broker (unless INTEREST_BROKER is set), a worker, publishes the bundled catalogue,
replays the bundled event log and prints the recommendations of a few users, then stops everything.
"""

from __future__ import annotations

import tempfile
import textwrap
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from cli.client import (
    format_recommendation,
    publish_catalogue,
    recommendations,
    replay,
)
from cli.local_broker import free_port, local_broker, on_broker
from cli.worker_process import WorkerProcess
from models.data import read_jsonl
from models.records import Recommendation
from state.faults import InterestStreamError
from streams.settings import Settings

SAMPLE = Path(__file__).parent / "sample"


def run_demo(
    settings: Settings, show_users: int = 4, timeout_s: float = 180.0, broker_kind: str = "noida-db"
) -> dict[str, Recommendation]:
    """Run the demo on ``settings.broker``, or on a local broker of ``broker_kind`` (``LOCAL_BROKERS``) if
    none is set. Returns the last recommendation per user."""
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="interest-demo-")))
        if not settings.broker:
            broker = stack.enter_context(local_broker(broker_kind, work / "broker"))
            print(f"started a local broker ({broker.name}) at {broker.address}")
            settings = on_broker(settings, broker)
        settings = replace(
            settings, data_dir=work / "state", web_port=free_port(), metrics_port=free_port()
        )
        worker = WorkerProcess(settings, work / "worker.log").start()
        stack.callback(worker.stop)
        catalogue = {i["item_id"]: i["text"] for i in read_jsonl(SAMPLE / "catalogue.jsonl")}
        events = list(read_jsonl(SAMPLE / "events.jsonl"))
        print(
            f"worker started (metrics on :{settings.metrics_port}); publishing {len(catalogue)} "
            "catalogue items"
        )
        publish_catalogue(settings, SAMPLE / "catalogue.jsonl")
        worker.wait_ready(min_items=len(catalogue), timeout_s=timeout_s)
        print(f"catalogue embedded; replaying {len(events)} events")
        replay(settings, SAMPLE / "events.jsonl")
        users = {e["user_id"] for e in events}
        latest: dict[str, Recommendation] = {}
        # Recommendations are coalesced per user and micro-batch: read them all, until none comes for 10 s.
        for rec in recommendations(settings, from_beginning=True, timeout_s=10.0):
            if isinstance(rec, Recommendation):
                latest[rec.user_id] = rec
            else:  # erased
                latest.pop(rec.user_id, None)
        missing = users - set(latest)
        if missing:
            raise InterestStreamError(
                f"no recommendation for {len(missing)} users:\n{worker.log_tail()}"
            )
        history = defaultdict(list)
        for e in events:
            history[e["user_id"]].append(catalogue[e["item_id"]])
        for user in sorted(latest)[:show_users]:
            print(f"\n{user} recently: " + "; ".join(history[user][-4:]))
            # a line per item with reasons
            print(textwrap.indent(format_recommendation(latest[user], catalogue), "  "))
        print(f"\n{len(latest)} users received recommendations; stopping")
        return latest
