"""`dev`: the product on one machine that stays up, for trying the client commands from another terminal.

A local broker (unless INTEREST_BROKER is set) and one worker, both keeping their data under one folder
across restarts; the bundled sample catalogue is published on the first start, so that the
examples of docs/usage.md name items that exist. Ctrl-C (or SIGTERM) stops the worker, then the broker.
"""

from __future__ import annotations

import signal
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

from cli.client import publish_catalogue
from cli.demo import SAMPLE
from cli.local_broker import local_broker, on_broker
from cli.worker_process import WorkerProcess
from models.data import read_jsonl
from state.faults import InterestStreamError
from streams.settings import Settings

SAMPLE_CATALOGUE = SAMPLE / "catalogue.jsonl"


def run_dev(
    settings: Settings,
    folder: Path,
    port: int,
    sample: bool = True,
    ready_timeout_s: float = 300.0,
    broker_kind: str = "noida-db",
) -> None:
    """Run until interrupted, on ``settings.broker`` or else a local broker of ``broker_kind`` on ``port``
    (``LOCAL_BROKERS``; its data in ``folder/broker``). Raises ``InterestStreamError`` if the worker
    exits on its own."""
    folder.mkdir(parents=True, exist_ok=True)
    # SIGTERM ends it like Ctrl-C: both children are stopped in order either way. SIGINT is set too: a shell
    # without job control (a script's `dev &`, CI) starts it with SIGINT ignored, and Python keeps that.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with ExitStack() as stack:
        if not settings.broker:
            broker = stack.enter_context(local_broker(broker_kind, folder / "broker", port))
            settings = on_broker(settings, broker)
        settings = replace(settings, data_dir=folder / "state")
        worker = WorkerProcess(settings, folder / "worker.log").start()
        stack.callback(worker.stop)
        published = folder / "sample-published"
        items = sum(1 for _ in read_jsonl(SAMPLE_CATALOGUE)) if sample else 0
        if sample and not published.exists():
            publish_catalogue(settings, SAMPLE_CATALOGUE, progress=False)
            published.touch()
        try:
            worker.wait_ready(min_items=items, timeout_s=ready_timeout_s)
            print(
                f"broker {settings.broker}, worker ready ({items} sample items); data in {folder}/ "
                "(worker.log, state/)\n"
                f"metrics http://127.0.0.1:{settings.metrics_port}/metrics, worker "
                f"http://127.0.0.1:{settings.web_port}/ready\n\n"
                f"In another terminal:\n  export INTEREST_BROKER={settings.broker}\n\n"
                "Ctrl-C stops both; the next `interest-stream dev` goes on from the same state.",
                flush=True,
            )
            while worker.alive:
                time.sleep(0.5)
            raise InterestStreamError(
                f"the worker exited with {worker.exit_code} (log: "
                f"{folder / 'worker.log'}):\n{worker.log_tail()}"
            )
        except KeyboardInterrupt:
            print("\nstopping the worker and the broker", flush=True)
