"""Throughput and latency of the pipeline against the plainest Kafka loop, on one local broker.

    python -m benchmarks.bench                         # 10k users, 10k items, tiny encoder (~3 min)
    python -m benchmarks.bench --users 100000 --items 100000
    INTEREST_PARTITIONS=16 python -m benchmarks.bench --workers 4   # scale-out: workers over partitions
    make bench

One run, one broker (``--broker``: a local noida-db or Apache Kafka started for the run, or INTEREST_BROKER).
It measures
  (a) the reference: consume N events and produce one message per event, with aiokafka (faust's client)
      and kafka-python; and two floors: the model's work alone in-process (no Kafka, no faust), and
      aiokafka's loop producing per event the bytes the pipeline writes (a user state, a recommendation);
  (b) the pipeline: worker processes in one consumer group (``--workers``, one by default; the catalogue
      embedded by the workers themselves) drain a backlog produced at the maximum rate (capacity), then
      take events at sustained rates for the latency from event produce time (carried in ``ts``) to
      recommendation receive time; then a catalogue refresh of as many new items, timed until every
      worker can recommend them;
  (c) the MiniLM encoder (or INTEREST_ENCODER_PATH), items/s on the CPU and on the GPU when torch sees one
      (``python -m benchmarks.encoder`` measures it alone, by batch size);
  (d) the decay timer per 100k users (RocksDB read, decode, decay, encode, write), and a long-term
  refresh of all of them;
  (e) bytes per user state (encoded, and on disk in RocksDB) and worker RSS against users with state.
``--encoder tiny`` (default) gives the worker a tiny random BERT, so that embedding the catalogue does
not dominate the run; (c) measures MiniLM on its own. Worker settings come from INTEREST_* variables as
usual (e.g. INTEREST_BATCH_MAX). Prints a summary table and writes results/bench.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from kafka.admin import NewTopic

from benchmarks import encoder, micro, pipeline, reference
from benchmarks.workload import EventSource, catalogue
from cli import kafka_broker
from cli.local_broker import LOCAL_BROKERS, local_broker, on_broker
from models.tiny_bert import build_tiny_bert
from streams.settings import Settings, shown, topic_settings
from streams.topics import admin_client, ensure_topics

MINILM_DIM = 384  # the decay cost is for production-sized states
_CPUS = sorted(os.sched_getaffinity(0))
WORKER_CPUS, OTHER_CPUS = set(_CPUS[-1:]), set(_CPUS[:-1]) or set(_CPUS)  # --pin


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--broker",
        choices=LOCAL_BROKERS,
        default=None,
        help="the local broker started for the run when INTEREST_BROKER is empty, its CPU measured too "
        "(default: apache-kafka where it can run, else noida-db)",
    )
    p.add_argument("--users", type=int, default=10_000, help="distinct users (each gets state)")
    p.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes in the consumer group (at most INTEREST_PARTITIONS)",
    )
    p.add_argument("--items", type=int, default=10_000, help="catalogue size")
    p.add_argument(
        "--events", type=int, default=0, help="capacity backlog; 0: max(100k, 2 x users)"
    )
    p.add_argument(
        "--reference-events", type=int, default=100_000, help="events through the reference loops"
    )
    p.add_argument(
        "--encoder", choices=("tiny", "minilm"), default="tiny", help="the worker's encoder"
    )
    p.add_argument(
        "--encoder-items", type=int, default=2000, help="texts for the MiniLM throughput (0: skip)"
    )
    p.add_argument(
        "--refresh-items",
        type=int,
        default=-1,
        help="new items in the catalogue refresh (-1: as many as --items; 0: skip)",
    )
    p.add_argument(
        "--decay-users", type=int, default=100_000, help="users for the decay timer cost (0: skip)"
    )
    p.add_argument("--duration", type=float, default=15.0, help="seconds per latency phase")
    p.add_argument(
        "--loads",
        default="0.1,0.5,0.8",
        help="latency phases' rates as fractions of the sustained capacity (of the drain rate with "
        "--sustain-window 0); 'goal' is half the aiokafka reference (default 0.1,0.5,0.8)",
    )
    p.add_argument(
        "--sustain-window",
        type=float,
        default=30.0,
        help="seconds each rate is held in the search for the sustained capacity (0: no search; "
        "default 30)",
    )
    p.add_argument(
        "--sustain-probes",
        type=int,
        default=5,
        help="bisection steps of that search over (0, 1.25 x the drain rate] (default 5)",
    )
    p.add_argument(
        "--pin",
        action="store_true",
        help="the workers on the last CPU, the broker and this process (the load generator, the "
        "references) on the others, as separate machines would have them (Linux affinity)",
    )
    p.add_argument("--out", default="results/bench.json")
    p.add_argument(
        "--keep",
        action="store_true",
        help="keep the working directory (broker data, worker log, state)",
    )
    return p.parse_args(argv)


def bench_settings(base: Settings, encoder_path: str) -> Settings:
    prefix = f"bench-{int(time.time())}"
    topics = {f: f"{prefix}-{getattr(base, f)}" for f in topic_settings()}
    # each worker: own state, ports
    return replace(base, app_id=prefix, encoder_path=encoder_path, **topics)


def run_reference(
    settings: Settings, n: int, broker_pid: int | None, value_sizes: tuple[int, int]
) -> dict:
    """The reference loops, and aiokafka's loop again writing ``value_sizes`` bytes per event (a user state
    and a recommendation: the least the pipeline sends per event)."""
    names = {
        k: f"{settings.app_id}-ref-{k}"
        for k in ("in", "out-aiokafka", "out-kafka-python", "out-pipeline-writes")
    }
    admin = admin_client(settings)
    admin.create_topics(
        [NewTopic(t, settings.partitions, settings.replication_factor) for t in names.values()]
    )
    admin.close()
    messages = [(key, value) for _, key, value in EventSource(10_000, 10_000, seed=1).take(n)]
    out = {
        "events": n,
        "produce_only_events_per_s": asyncio.run(reference.fill(settings, names["in"], messages)),
        "pipeline_writes_bytes": value_sizes,
    }
    loops = {
        "aiokafka": lambda: asyncio.run(
            reference.aiokafka_loop(
                settings, names["in"], names["out-aiokafka"], n, f"{settings.app_id}-ref-aiokafka"
            )
        ),
        "kafka_python": lambda: reference.kafka_python_loop(
            settings,
            names["in"],
            names["out-kafka-python"],
            n,
            f"{settings.app_id}-ref-kafka-python",
        ),
        "pipeline_writes": lambda: asyncio.run(
            reference.aiokafka_loop(
                settings,
                names["in"],
                names["out-pipeline-writes"],
                n,
                f"{settings.app_id}-ref-pipeline-writes",
                value_sizes,
            )
        ),
    }
    for name, loop in loops.items():
        broker_cpu = pipeline.cpu_seconds({"broker": [broker_pid]}) if broker_pid else {}
        out[f"{name}_events_per_s"], cpu = loop()
        out[f"{name}_cpu_us_per_event"] = 1e6 * cpu / n
        if broker_pid:  # includes the group join: a slight overestimate
            out[f"{name}_broker_cpu_us_per_event"] = (
                1e6
                * (pipeline.cpu_seconds({"broker": [broker_pid]})["broker"] - broker_cpu["broker"])
                / n
            )
    return out


async def publish_items(
    settings: Settings, fleet: pipeline.Fleet, items: list[dict], catalogue_size: int
) -> float:
    """Seconds from publishing ``items`` until every worker's catalogue has ``catalogue_size`` items."""
    start = time.time()
    await reference.fill(
        settings,
        settings.items_topic,
        [(i["item_id"].encode(), json.dumps(i).encode()) for i in items],
    )
    fleet.wait_ready(min_items=catalogue_size, timeout_s=3600)
    return time.time() - start


async def catalogue_refresh(
    settings: Settings, fleet: pipeline.Fleet, new_items: list[dict]
) -> dict:
    """A refresh while the workers run: new items published, embedded, sent as vectors, followed back into
    every catalogue. Also the encoder's own rate inside the workers, from their metrics."""
    before = fleet.metrics()
    size = int(before["interest_catalogue_items"]) // len(fleet.workers) + len(new_items)
    seconds = await publish_items(settings, fleet, new_items, size)
    after = fleet.metrics()
    encoded = after["interest_encoder_items_total"] - before["interest_encoder_items_total"]
    encoder_s = (
        after["interest_encoder_batch_duration_seconds_sum"]
        - before["interest_encoder_batch_duration_seconds_sum"]
    )
    return {
        "items": len(new_items),
        "seconds": seconds,
        "items_per_s": len(new_items) / seconds,
        "encoder_items_per_s": encoded / encoder_s,
    }


async def run_pipeline(
    settings: Settings,
    args: argparse.Namespace,
    items: list[dict],
    reference_rate: float,
    work: Path,
    broker_pid: int | None,
) -> dict:
    ensure_topics(settings)
    fleet = pipeline.Fleet.start(settings, args.workers, work)
    if args.pin:
        pipeline.pin(fleet.pids(), WORKER_CPUS)
    try:
        ready_s = await publish_items(settings, fleet, items, len(items))
        monitor = pipeline.Monitor(fleet)
        monitor.start()
        producer = pipeline.Producer(settings, EventSource(args.users, args.items))
        await producer.start()
        try:
            n_events = args.events or max(100_000, 2 * args.users)
            pids = {"worker": fleet.pids(), **({"broker": [broker_pid]} if broker_pid else {})}
            cap = await pipeline.capacity(settings, fleet, producer, n_events, 0.0, pids)
            floor = faust_floor(settings, n_events, work)
            sustained = None
            rate = cap["events_per_s"]
            if args.sustain_window > 0:
                print("    sustained capacity: a search over rates ...", flush=True)
                sustained = await pipeline.sustained_capacity(
                    fleet, producer, cap["events_per_s"], args.sustain_window, args.sustain_probes
                )
                rate = sustained["events_per_s"] or rate
            loads = [
                0.5 * reference_rate / rate if x == "goal" else float(x)
                for x in args.loads.split(",")
            ]
            phases = []
            for load in sorted(loads):
                if load > 1.0:
                    phases.append({"load": load, "skipped": "above the capacity"})
                    continue
                consumed = fleet.metric("interest_events_consumed_total")
                phases.append(
                    {
                        "load": load,
                        **await pipeline.latency(
                            settings,
                            fleet,
                            producer,
                            load * rate,
                            args.duration,
                            consumed,
                        ),
                    }
                )
        finally:
            await producer.stop()
            monitor.stop()
        n_new = len(items) if args.refresh_items < 0 else args.refresh_items
        refresh = (
            await catalogue_refresh(settings, fleet, catalogue(n_new, seed=3, first=len(items)))
            if n_new
            else None
        )
        dead = fleet.metric("interest_events_dead_lettered_total")
        produced = producer.source.sent
    finally:
        fleet.stop()
    table = pipeline.table_size(fleet.data_dirs())
    if table["applied_events"] != produced:
        print(
            f"WARNING: {produced} events produced, {table['applied_events']} applied",
            file=sys.stderr,
        )
    return {
        "ready_s": ready_s,
        "refresh": refresh,
        "capacity": cap,
        "sustained": sustained,
        "faust_floor": floor,
        "latency": phases,
        "dead_lettered": dead,
        "events_produced": produced,
        "table": table,
        "memory": pipeline.rss_vs_users(monitor.samples, 0.0, args.users),
    }


def faust_floor(settings: Settings, n_events: int, work: Path) -> dict:
    """The framework floor (``benchmarks.faust_floor``) over the events the capacity phase produced."""
    out = work / "faust-floor.json"
    subprocess.run(
        [sys.executable, "-m", "benchmarks.faust_floor", str(n_events), str(out)],
        env={**os.environ, **settings.env()},
        check=True,
        timeout=600,
    )
    return json.loads(out.read_text())


def summary(r: dict) -> list[tuple[str, str]]:
    ref, pipe, model = r["reference"], r["pipeline"], r["model_work"]
    cap = pipe["capacity"]
    writes_cpu = ref["pipeline_writes_cpu_us_per_event"] + ref.get(
        "pipeline_writes_broker_cpu_us_per_event", 0
    )
    rows = [
        ("reference aiokafka consume+produce, events/s", f"{ref['aiokafka_events_per_s']:,.0f}"),
        ("reference aiokafka loop CPU per event, us", f"{ref['aiokafka_cpu_us_per_event']:.0f}"),
        (
            "reference kafka-python consume+produce, events/s",
            f"{ref['kafka_python_events_per_s']:,.0f}",
        ),
        ("aiokafka produce only, events/s", f"{ref['produce_only_events_per_s']:,.0f}"),
        (
            "aiokafka loop writing the pipeline's bytes per event "
            f"({' + '.join(map(str, ref['pipeline_writes_bytes']))} B), events/s",
            f"{ref['pipeline_writes_events_per_s']:,.0f} (ratio "
            f"{ref['pipeline_writes_events_per_s'] / ref['aiokafka_events_per_s']:.2f})",
        ),
        (
            "model work alone, one thread, no Kafka (parse, RocksDB, GRU, top-k, encode), events/s",
            f"{model['events_per_s']:,.0f} (ratio "
            f"{model['events_per_s'] / ref['aiokafka_events_per_s']:.2f})",
        ),
        (
            f"pipeline capacity (backlog drain, {r['args']['workers']} worker(s)), events/s",
            f"{cap['events_per_s']:,.0f}",
        ),
        (
            "pipeline incl. producer contention, events/s",
            f"{cap['events_per_s_with_producer']:,.0f}",
        ),
        *(
            [
                (
                    f"sustained capacity (consumer lag within {sus['lag_bound_s']:.0f} s of events "
                    f"over {sus['window_s']:.0f} s), events/s",
                    f"{sus['events_per_s']:,.0f} (+{sus['resolution_events_per_s']:,.0f}; probes "
                    + ", ".join(
                        f"{p['target_events_per_s']:,.0f}{'' if p['kept_up'] else ' x'}"
                        for p in sus["probes"]
                    )
                    + ")",
                )
            ]
            if (sus := pipe.get("sustained"))
            else []
        ),
        ("ratio pipeline / aiokafka reference", f"{r['ratio']:.2f}"),
        (
            f"the goal's CPU per event on {r['machine']['cpus']} cores, all processes (cores / half "
            "the reference), us",
            f"{r['machine']['cpus'] * 1e6 / (0.5 * ref['aiokafka_events_per_s']):.0f}",
        ),
        (
            "  spent: pipeline's workers + broker / model work alone / writes loop + broker, us",
            f"{cap['worker_cpu_us_per_event'] + cap.get('broker_cpu_us_per_event', 0):.0f} / "
            f"{model['cpu_us_per_event']:.0f} / {writes_cpu:.0f}",
        ),
        (
            "  micro-batches in the drain: mean events, mean ms",
            f"{cap['mean_batch_events']:.0f}, {cap['mean_batch_ms']:.0f}",
        ),
        ("workers' CPU per event during the drain, us", f"{cap['worker_cpu_us_per_event']:.0f}"),
    ]
    if "broker_cpu_us_per_event" in cap:
        rows.append(
            ("broker CPU per event during the drain, us", f"{cap['broker_cpu_us_per_event']:.0f}")
        )
    floor = pipe["faust_floor"]
    rows.append(
        (
            "faust floor: an agent taking the same micro-batches and only acking, events/s, CPU us per event",
            f"{floor['events'] / floor['seconds']:,.0f}, {1e6 * floor['cpu_s'] / floor['events']:.0f}",
        )
    )
    basis = "sustained" if pipe.get("sustained") else "drain"
    for ph in pipe["latency"]:
        if "skipped" in ph:
            rows.append((f"latency at {ph['load']:.2f} x capacity", ph["skipped"]))
            continue
        rows.append(
            (
                f"latency at {ph['events_per_s']:,.0f} ev/s ({ph['load']:.2f} x {basis}, "
                f"{ph['events_per_s'] / ref['aiokafka_events_per_s']:.2f} x reference) p50 / p99 / max ms",
                f"{ph['p50_ms']:.0f} / {ph['p99_ms']:.0f} / {ph['max_ms']:.0f}",
            )
        )
        rows.append(
            (
                "  micro-batches there: mean events, mean ms",
                f"{ph['mean_batch_events']:.0f}, {ph['mean_batch_ms']:.0f}",
            )
        )
        st = ph["stages"]
        rows.append(
            (
                "  by stage p50 / p99 ms: queued (produce -> batch taken), applied (-> handed to "
                "producer), received",
                ", ".join(
                    f"{st[k]['p50_ms']:.0f} / {st[k]['p99_ms']:.0f}"
                    for k in ("queued", "applied", "received")
                    if k in st
                ),
            )
        )
    table, mem = pipe["table"], pipe["memory"]
    rows += [
        (
            "events produced / applied (exactly once) / dead-lettered",
            f"{pipe['events_produced']:,} / {table['applied_events']:,} / {pipe['dead_lettered']:.0f}",
        ),
        (
            f"workers' start to ready, {r['args']['items']:,} items embedded, s",
            f"{pipe['ready_s']:.1f}",
        ),
        *(
            [
                (
                    f"refresh in the running workers ({r['args']['encoder']}): "
                    f"{pipe['refresh']['items']:,} new items to catalogue, items/s",
                    f"{pipe['refresh']['items_per_s']:,.0f}",
                ),
                (
                    "  the encoder's own rate in that refresh, items/s",
                    f"{pipe['refresh']['encoder_items_per_s']:,.0f}",
                ),
            ]
            if pipe["refresh"]
            else []
        ),
    ]
    for e in r.get("encoder", []):
        rows.append(
            (
                f"encoder {e['encoder']} ({e['device']}: {e['hardware']}, {e['dtype']}, "
                f"{e['items']} texts), items/s",
                f"{e['items_per_s']:,.0f}",
            )
        )
    if "decay" in r:
        d = r["decay"]
        rows.append(
            (
                "decay timer per 100k users, s (read/decode/decay/encode/write)",
                f"{d['total_s_per_100k_users']:.2f} "
                f"({d['read_s']:.2f}/{d['decode_s']:.2f}/{d['decay_s']:.2f}/{d['encode_s']:.2f}/{d['write_s']:.2f})",
            )
        )
        rows.append(
            (
                "long-term refresh per 100k users, every one recomputed from a full history, s",
                f"{d['refresh_s_per_100k_users']:.2f}",
            )
        )
        rows.append(
            ("bytes per user state, full history (encoded)", f"{d['full_state_bytes']:,.0f}")
        )
    rows += [
        (
            f"bytes per user state in this run (encoded / RocksDB files), {table['users']:,} users",
            f"{table['value_bytes_per_user']:,.0f} / {table['disk_bytes_per_user']:,.0f}",
        ),
        (
            "workers' RSS at ready -> with all users, MB",
            f"{mem['rss_at_ready_mb']:,.0f} -> {mem['rss_with_all_users_mb']:,.0f}",
        ),
        ("workers' RSS growth per user, bytes", f"{mem['rss_growth_bytes_per_user']:,.0f}"),
    ]
    return rows


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    args.broker = args.broker or ("noida-db" if kafka_broker.unavailable() else "apache-kafka")
    base = Settings.from_env()
    results: dict = {
        "args": vars(args),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
    }
    with ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="interest-bench-"))
        if args.keep:
            print(f"working directory: {work}")
        else:
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        broker_pid = None
        if not base.broker:
            local = stack.enter_context(local_broker(args.broker, work / "broker"))
            base, broker_pid = on_broker(base, local), local.pid
        if args.pin:
            pipeline.pin([os.getpid(), *([broker_pid] if broker_pid else [])], OTHER_CPUS)
        results["broker"] = args.broker if broker_pid else base.broker
        items = catalogue(args.items)
        encoder_path = base.encoder_path
        # MiniLM's width, so scoring and state sizes are production-sized
        if args.encoder == "tiny":
            encoder_path = str(
                build_tiny_bert(
                    work / "tiny-bert", [i["text"] for i in items], hidden=MINILM_DIM, layers=1
                )
            )
        settings = bench_settings(base, encoder_path)
        if not 1 <= args.workers <= settings.partitions:
            raise SystemExit(
                f"--workers {args.workers}: between 1 and the partitions ({settings.partitions}, "
                "INTEREST_PARTITIONS)"
            )
        # written to results/bench.json: the SASL password masked
        results["settings"] = shown(settings)

        print(
            f"(a) the model's work alone, in-process, {args.reference_events:,} events ...",
            flush=True,
        )
        model = results["model_work"] = micro.model_work(
            args.users, args.items, args.reference_events, MINILM_DIM, settings
        )
        print(f"    reference loops, {args.reference_events:,} events ...", flush=True)
        sizes = (
            round(model["state_bytes_per_event"]),
            round(model["recommendation_bytes_per_event"]),
        )
        results["reference"] = run_reference(settings, args.reference_events, broker_pid, sizes)
        print(
            f"(b) pipeline: {args.workers} worker(s), {args.users:,} users, {args.items:,} items ...",
            flush=True,
        )
        results["pipeline"] = asyncio.run(
            run_pipeline(
                settings,
                args,
                items,
                results["reference"]["aiokafka_events_per_s"],
                work,
                broker_pid,
            )
        )
        results["ratio"] = (
            results["pipeline"]["capacity"]["events_per_s"]
            / results["reference"]["aiokafka_events_per_s"]
        )
        if args.encoder_items:
            print("(c) MiniLM encoder ...", flush=True)
            texts = [i["text"] for i in catalogue(args.encoder_items, seed=2)]
            devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
            results["encoder"] = [
                encoder.throughput(texts, base.encoder_path, d)[0] for d in devices
            ]
        if args.decay_users:
            print("(d) decay timer ...", flush=True)
            results["decay"] = micro.decay_cost(
                args.decay_users, MINILM_DIM, settings.hidden_size, settings
            )

    rows = summary(results)
    width = max(len(k) for k, _ in rows)
    print()
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {out}")
    return results


if __name__ == "__main__":
    main()
