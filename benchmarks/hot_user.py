"""Head-of-line blocking by a hot user: other users' latency during one user's burst, against the same load
spread over many users.

    python -m benchmarks.hot_user                    # Apache Kafka where it runs (else noida-db), 3 runs each
    python -m benchmarks.hot_user --broker noida-db

A worker on a local broker (or INTEREST_BROKER) with the sample-sized synthetic catalogue. Each run sends,
within ``--window`` seconds, ``--others`` x ``--per-user`` events of the measured users interleaved with
``--burst`` more events: all of one user ("burst"), or spread over as many users as that at ``--per-user``
each ("spread"; the same number of events at the same rate). Latency: recommendation receive time minus
the produce time each event carries in ``ts``, for the measured users' recommendations only. Runs
alternate burst and spread; the summary gives each run's p50 / p95 / max and the medians' ratio.
Writes results/hot-user.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from aiokafka import AIOKafkaProducer

from benchmarks import pipeline
from benchmarks.workload import catalogue
from cli import kafka_broker
from cli.local_broker import LOCAL_BROKERS, local_broker, on_broker
from models.tiny_bert import build_tiny_bert
from streams.connection import client_options
from streams.settings import Settings, topic_settings
from streams.topics import ensure_topics


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.hot_user",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--broker",
        choices=LOCAL_BROKERS,
        default=None,
        help="local broker (default: apache-kafka where it can run)",
    )
    p.add_argument("--others", type=int, default=50, help="measured users")
    p.add_argument("--per-user", type=int, default=10, help="events of each measured user per run")
    p.add_argument(
        "--burst",
        type=int,
        default=5000,
        help="events of the hot user per run (or of the spread users)",
    )
    p.add_argument(
        "--window", type=float, default=0.4, help="seconds over which each run's events are sent"
    )
    p.add_argument("--runs", type=int, default=3, help="runs of each scenario, alternating")
    p.add_argument("--items", type=int, default=1000, help="catalogue size")
    p.add_argument("--out", default="results/hot-user.json")
    return p.parse_args(argv)


def events(run: int, scenario: str, args: argparse.Namespace) -> list[tuple[str, str]]:
    """(user, item) of one run, in send order: the measured users' events spread evenly among the rest."""
    rng = np.random.default_rng(run)
    measured = [f"m{n}" for n in range(args.others) for _ in range(args.per_user)]
    if scenario == "burst":
        rest = ["hot"] * args.burst
    else:
        rest = [f"s{n}" for n in range(args.burst // args.per_user) for _ in range(args.per_user)]
        rng.shuffle(rest)
    rng.shuffle(measured)
    mixed: list[str] = []
    step = len(rest) / max(len(measured), 1)
    for n, user in enumerate(measured):  # evenly interleaved
        mixed += rest[int(n * step) : int((n + 1) * step)] + [user]
    mixed += rest[int(len(measured) * step) :]
    return [(user, f"i{rng.integers(args.items)}") for user in mixed]


async def one_run(settings: Settings, run: int, scenario: str, args: argparse.Namespace) -> dict:
    consumer = await pipeline.tail_recommendations(settings)
    producer = AIOKafkaProducer(**client_options(settings), linger_ms=1)
    await producer.start()
    plan = events(run, scenario, args)
    wanted = {user for user, _ in plan if user.startswith("m")}
    # each measured user's last event time: their last recommendation covers it
    last_ts: dict[str, float] = {}
    latencies: list[float] = []
    done: set[str] = set()

    async def receive() -> None:
        while done != wanted:
            for batch in (await consumer.getmany(timeout_ms=100)).values():
                now = time.time()
                for r in batch:
                    rec = json.loads(r.value) if r.value else None
                    if rec and rec["user_id"] in wanted and rec["event_id"].startswith(f"r{run}-"):
                        latencies.append(now - rec["event_time"])
                        if rec["event_time"] >= last_ts.get(rec["user_id"], float("inf")):
                            done.add(rec["user_id"])

    receiver = asyncio.create_task(receive())
    start = time.time()
    for n, (user, item) in enumerate(plan):
        due = start + args.window * n / len(plan)
        if (wait := due - time.time()) > 0:
            await asyncio.sleep(wait)
        ts = time.time()
        if user in wanted:
            last_ts[user] = ts
        event = {
            "event_id": f"r{run}-{n}",
            "user_id": user,
            "item_id": item,
            "type": "click",
            "ts": ts,
        }
        await producer.send(settings.clicks_topic, json.dumps(event).encode(), key=user.encode())
    await producer.flush()
    sent_s = time.time() - start
    try:
        await asyncio.wait_for(receiver, timeout=300)
    finally:
        receiver.cancel()
        await producer.stop()
        await consumer.stop()
    lat = np.array(latencies) * 1000
    return {
        "run": run,
        "scenario": scenario,
        "events": len(plan),
        "sent_s": round(sent_s, 3),
        "recommendations": len(lat),
        "p50_ms": float(np.percentile(lat, 50)),
        "p95_ms": float(np.percentile(lat, 95)),
        "max_ms": float(lat.max()),
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.broker = args.broker or ("noida-db" if kafka_broker.unavailable() else "apache-kafka")
    base = Settings.from_env()
    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="interest-hot-user-"))
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        if not base.broker:
            base = on_broker(base, stack.enter_context(local_broker(args.broker, work / "broker")))
        items = catalogue(args.items)
        encoder = build_tiny_bert(
            work / "tiny-bert", [i["text"] for i in items], hidden=384, layers=1
        )
        prefix = f"hot-{int(time.time())}"
        settings = replace(
            base,
            app_id=prefix,
            encoder_path=str(encoder),
            **{f: f"{prefix}-{getattr(base, f)}" for f in topic_settings()},
        )
        ensure_topics(settings)
        fleet = pipeline.Fleet.start(settings, 1, work)
        stack.callback(fleet.stop)
        asyncio.run(publish(settings, items))
        fleet.wait_ready(min_items=len(items), timeout_s=600)
        runs = []
        for run in range(2 * args.runs):
            scenario = ("burst", "spread")[run % 2]
            runs.append(asyncio.run(one_run(settings, run, scenario, args)))
            print(
                f"{scenario:>6} run {run}: p50 {runs[-1]['p50_ms']:.0f} ms, p95 {runs[-1]['p95_ms']:.0f} ms, "
                f"max {runs[-1]['max_ms']:.0f} ms ({runs[-1]['events']} events in {runs[-1]['sent_s']} s)",
                flush=True,
            )
    median = {
        s: {
            q: float(np.median([r[q] for r in runs if r["scenario"] == s]))
            for q in ("p50_ms", "p95_ms")
        }
        for s in ("burst", "spread")
    }
    ratio = {q: median["burst"][q] / median["spread"][q] for q in ("p50_ms", "p95_ms")}
    print(
        f"medians burst / spread: p50 {median['burst']['p50_ms']:.0f} / {median['spread']['p50_ms']:.0f} ms "
        f"(x{ratio['p50_ms']:.2f}), p95 {median['burst']['p95_ms']:.0f} / "
        f"{median['spread']['p95_ms']:.0f} ms (x{ratio['p95_ms']:.2f})"
    )
    result = {
        "args": vars(args),
        "broker": args.broker if not Settings.from_env().broker else base.broker,
        "runs": runs,
        "median": median,
        "ratio": ratio,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


async def publish(settings: Settings, items: list[dict]) -> None:
    from benchmarks.reference import fill

    await fill(
        settings,
        settings.items_topic,
        [(i["item_id"].encode(), json.dumps(i).encode()) for i in items],
    )


if __name__ == "__main__":
    main()
