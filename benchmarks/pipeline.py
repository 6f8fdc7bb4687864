"""The full pipeline under load: worker processes (one consumer group), a catalogue, a backlog produced at
the maximum rate (capacity), then sustained rates (latency). Latency is recommendation receive time minus
the produce time the event carries in ``ts``: on one machine both clocks are the same."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka import KafkaConsumer
from kafka import TopicPartition as KafkaTopicPartition
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.workload import EventSource
from cli.local_broker import free_port
from cli.worker_process import WorkerProcess
from state.user_state import decode
from streams.connection import client_options
from streams.settings import Settings
from streams.topics import topic_partitions
from streams.user_table import iter_raw, latest_copies, table_files


def samples(port: int) -> list:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def scrape(port: int) -> dict[str, float]:
    """One worker's metrics, each summed over its labels."""
    out: dict[str, float] = {}
    for sample in samples(port):
        out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def stage_buckets(ports: list[int]) -> dict[str, dict[float, float]]:
    """The workers' ``interest_event_stage_seconds`` histograms, summed: stage -> {upper bound: count}."""
    out: dict[str, dict[float, float]] = {}
    for port in ports:
        for sample in samples(port):
            if sample.name == "interest_event_stage_seconds_bucket":
                buckets = out.setdefault(sample.labels["stage"], {})
                le = float(sample.labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sample.value
    return out


def quantile(q: float, buckets: dict[float, float]) -> float:
    """The ``q`` quantile of a cumulative histogram, interpolated within its bucket (Prometheus's
    histogram_quantile); the last finite bound if it falls in the +Inf bucket."""
    bounds = sorted(buckets)
    total = buckets[bounds[-1]]
    if total <= 0:
        return float("nan")
    rank, lower, below = q * total, 0.0, 0.0
    for bound in bounds:
        if buckets[bound] >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(buckets[bound] - below, 1e-12)
        lower, below = bound, buckets[bound]
    return lower


def stages(
    before: dict[str, dict[float, float]], after: dict[str, dict[float, float]]
) -> dict[str, dict[str, float]]:
    """p50 and p99 in ms of each stage between two scrapes."""
    out = {}
    for stage, buckets in after.items():
        delta = {le: n - before.get(stage, {}).get(le, 0.0) for le, n in buckets.items()}
        out[stage] = {"p50_ms": 1000 * quantile(0.5, delta), "p99_ms": 1000 * quantile(0.99, delta)}
    return out


@dataclass
class Fleet:
    """The workers under test: one consumer group over the same topics, each with its own state and ports."""

    workers: list[WorkerProcess]

    @classmethod
    def start(cls, settings: Settings, n: int, work: Path) -> "Fleet":
        workers = []
        for k in range(n):
            own = replace(
                settings,
                data_dir=work / f"worker-{k}" / "state",
                web_port=free_port(),
                metrics_port=free_port(),
            )
            workers.append(WorkerProcess(own, work / f"worker-{k}" / "worker.log").start())
        return cls(workers)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()

    def wait_ready(self, min_items: int, timeout_s: float) -> None:
        for worker in self.workers:  # every worker follows the whole catalogue
            worker.wait_ready(min_items=min_items, timeout_s=timeout_s)

    def metrics(self) -> dict[str, float]:
        """Every worker's metrics, summed."""
        out: dict[str, float] = {}
        for worker in self.workers:
            for name, value in scrape(worker.settings.metrics_port).items():
                out[name] = out.get(name, 0.0) + value
        return out

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def stage_buckets(self) -> dict[str, dict[float, float]]:
        return stage_buckets([w.settings.metrics_port for w in self.workers])

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers]

    def data_dirs(self) -> list[Path]:
        return [w.settings.data_dir for w in self.workers]


def batches(before: dict[str, float], after: dict[str, float]) -> dict:
    """Mean micro-batch size and processing time between two scrapes."""
    n = after["interest_batch_size_count"] - before.get("interest_batch_size_count", 0.0)
    return {
        "batches": int(n),
        "mean_batch_events": (
            after["interest_batch_size_sum"] - before.get("interest_batch_size_sum", 0.0)
        )
        / max(n, 1),
        "mean_batch_ms": 1000
        * (
            after["interest_batch_duration_seconds_sum"]
            - before.get("interest_batch_duration_seconds_sum", 0.0)
        )
        / max(n, 1),
    }


def cpu_seconds(pids: dict[str, list[int]]) -> dict[str, float]:
    """User + system CPU seconds used so far by each group of processes."""
    out = {}
    for name, group in pids.items():
        out[name] = 0.0
        for pid in group:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Monitor(threading.Thread):
    """Samples (seconds, events consumed, RSS bytes of all workers) every ``interval`` seconds."""

    def __init__(self, fleet: Fleet, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.fleet, self.interval = fleet, interval
        self.samples: list[tuple[float, float, int]] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.samples.append(
                    (
                        time.time(),
                        self.fleet.metric("interest_events_consumed_total"),
                        sum(map(rss_bytes, self.fleet.pids())),
                    )
                )
            except OSError:
                pass
            self._done.wait(self.interval)

    def stop(self) -> None:
        self._done.set()
        self.join()


@dataclass
class Producer:
    settings: Settings
    source: EventSource
    _producer: AIOKafkaProducer | None = field(default=None, init=False)

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            **client_options(self.settings), linger_ms=5, max_batch_size=256 * 1024
        )
        await self._producer.start()

    async def stop(self) -> None:
        assert self._producer is not None
        await self._producer.stop()

    async def send(self, n: int) -> None:
        assert self._producer is not None
        topics = {"click": self.settings.clicks_topic, "purchase": self.settings.purchases_topic}
        for kind, key, value in self.source.take(n):
            await self._producer.send(topics[kind], value, key=key)

    async def flush(self) -> None:
        assert self._producer is not None
        await self._producer.flush()


def wait_consumed(fleet: Fleet, n: int, timeout_s: float) -> None:
    """Until the workers have consumed ``n`` events and published their last recommendations."""
    deadline = time.monotonic() + timeout_s
    while fleet.metric("interest_events_consumed_total") < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the workers consumed fewer than {n} events in {timeout_s:.0f}s")
        time.sleep(0.25)
    published = -1.0
    while (now := fleet.metric("interest_recommendations_published_total")) != published:
        published = now
        time.sleep(0.5)


def last_recommendation_time(settings: Settings, tail: int = 64) -> float:
    """The newest ``produced_at`` on the recommendations topic, from the last ``tail`` records of each
    partition (appended in time order, give or take two workers racing): reading the whole topic took
    minutes with 100,000 users."""
    consumer = KafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    try:
        tps = [
            KafkaTopicPartition(settings.recommendations_topic, p)
            for p in consumer.partitions_for_topic(settings.recommendations_topic)
        ]
        consumer.assign(tps)
        ends = consumer.end_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(0, ends[tp] - tail))
        newest = 0.0
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            for batch in consumer.poll(timeout_ms=500, max_records=5000).values():
                newest = max([newest, *(json.loads(r.value)["produced_at"] for r in batch)])
        return newest
    finally:
        consumer.close()


async def capacity(
    settings: Settings,
    fleet: Fleet,
    producer: Producer,
    n_events: int,
    consumed_before: float,
    pids: dict[str, list[int]],
) -> dict:
    """Produce ``n_events`` as fast as possible; events/s = what the workers consumed after the producer
    finished / time until the last recommendation (so the producer's CPU use is mostly excluded).
    CPU microseconds per event of the workers (and the broker) over the same span: robust to other load."""
    t0 = time.time()
    await producer.send(n_events)
    await producer.flush()
    t_produced = time.time()
    cpu_before, before = cpu_seconds(pids), fleet.metrics()
    during = before.get("interest_events_consumed_total", 0.0) - consumed_before
    wait_consumed(fleet, consumed_before + n_events, timeout_s=600)
    cpu_after = cpu_seconds(pids)
    drained = batches(before, fleet.metrics())
    t_last = last_recommendation_time(settings)
    after = n_events - during
    rate = after / (t_last - t_produced) if after > 0.1 * n_events else n_events / (t_last - t0)
    return {
        "events": n_events,
        "produce_s": round(t_produced - t0, 2),
        "consumed_while_producing": int(during),
        "drain_s": round(t_last - t_produced, 2),
        "events_per_s": rate,
        "events_per_s_with_producer": n_events / (t_last - t0),
        **drained,
        **{
            f"{name}_cpu_us_per_event": 1e6 * (cpu_after[name] - cpu_before[name]) / max(after, 1)
            for name in pids
        },
    }


async def tail_recommendations(settings: Settings) -> AIOKafkaConsumer:
    """A started consumer at the end of every partition of the recommendations topic: what it reads
    is what the workers publish from now on."""
    consumer = AIOKafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    await consumer.start()
    topic = settings.recommendations_topic
    tps = [
        TopicPartition(topic, p) for p in range(topic_partitions(settings, [topic]).get(topic, 0))
    ]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        # resolve the end offsets now, not after the first recommendations
        await consumer.position(tp)
    return consumer


async def latency(
    settings: Settings,
    fleet: Fleet,
    producer: Producer,
    rate: float,
    duration_s: float,
    consumed_before: float,
) -> dict:
    """Produce at ``rate`` events/s for ``duration_s``; latency of every recommendation of those events."""
    consumer = await tail_recommendations(settings)
    latencies: list[float] = []
    received: list[float] = []  # recommendation handed to the producer -> received here
    before, stages_before = fleet.metrics(), fleet.stage_buckets()
    start = time.time()

    async def receive() -> None:
        while True:
            for batch in (await consumer.getmany(timeout_ms=100)).values():
                now = time.time()
                for r in batch:
                    rec = json.loads(r.value)
                    if rec["event_time"] >= start:
                        latencies.append(now - rec["event_time"])
                        received.append(now - rec["produced_at"])

    receiver = asyncio.create_task(receive())
    sent = 0
    while (elapsed := time.time() - start) < duration_s:
        due = int(rate * elapsed) - sent
        if due > 0:
            await producer.send(due)
            sent += due
        await asyncio.sleep(0.005)
    await producer.flush()
    produced_s = time.time() - start
    await asyncio.get_running_loop().run_in_executor(
        None, wait_consumed, fleet, consumed_before + sent, 120.0
    )
    await asyncio.sleep(0.5)
    receiver.cancel()
    await consumer.stop()
    lat, rec = np.array(latencies) * 1000, np.array(received) * 1000
    by_stage = stages(stages_before, fleet.stage_buckets())
    by_stage["received"] = {
        "p50_ms": float(np.percentile(rec, 50)),
        "p99_ms": float(np.percentile(rec, 99)),
    }
    return {
        "target_events_per_s": rate,
        "events": sent,
        "events_per_s": sent / produced_s,
        "recommendations": len(lat),
        **batches(before, fleet.metrics()),
        "stages": by_stage,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "max_ms": float(lat.max()),
    }


LAG_BOUND_S = 1.0  # kept up: the workers stay within this many seconds of events of the producer


async def keeps_up(
    fleet: Fleet, producer: Producer, rate: float, window_s: float, consumed_before: float
) -> dict:
    """Produce at ``rate`` events/s for ``window_s`` while sampling the consumer lag (events produced
    minus events the workers consumed) every 0.5 s. Kept up: the producer held the rate (within 5%)
    and the lag over the window's second half stayed within ``LAG_BOUND_S`` seconds of events."""
    loop = asyncio.get_running_loop()
    lags: list[tuple[float, float]] = []  # (seconds into the window, lag in events)
    start, sent, sampled = time.time(), 0, 0.0
    while (elapsed := time.time() - start) < window_s:
        due = int(rate * elapsed) - sent
        if due > 0:
            await producer.send(due)
            sent += due
        if elapsed - sampled >= 0.5:
            sampled = elapsed
            consumed = await loop.run_in_executor(
                None, fleet.metric, "interest_events_consumed_total"
            )
            lags.append((elapsed, sent - (consumed - consumed_before)))
        await asyncio.sleep(0.005)
    await producer.flush()
    produced_rate = sent / (time.time() - start)
    await loop.run_in_executor(None, wait_consumed, fleet, consumed_before + sent, 600.0)
    late = [lag for t, lag in lags if t >= window_s / 2] or [float("inf")]
    return {
        "target_events_per_s": rate,
        "events_per_s": produced_rate,
        "events": sent,
        "max_lag_events": max(lag for _, lag in lags) if lags else None,
        "max_lag_second_half_events": max(late),
        "kept_up": produced_rate >= 0.95 * rate and max(late) <= LAG_BOUND_S * rate,
    }


async def sustained_capacity(
    fleet: Fleet, producer: Producer, drain_rate: float, window_s: float, probes: int
) -> dict:
    """The highest rate the workers keep up with (``keeps_up``) for ``window_s``: a bisection over
    (0, 1.25 x the backlog-drain rate] in ``probes`` steps, each probe's events drained before the next.
    A stream processor is rated by what it sustains while events keep arriving, not by how fast it
    drains a backlog produced beforehand (batches are then as large as they get)."""
    lo, hi, tried = 0.0, 1.25 * drain_rate, []
    for _ in range(probes):
        rate = (lo + hi) / 2
        consumed = fleet.metric("interest_events_consumed_total")
        probe = await keeps_up(fleet, producer, rate, window_s, consumed)
        tried.append(probe)
        lo, hi = (rate, hi) if probe["kept_up"] else (lo, rate)
    return {
        "events_per_s": lo,
        "window_s": window_s,
        "lag_bound_s": LAG_BOUND_S,
        "resolution_events_per_s": hi - lo,
        "probes": tried,
    }


def pin(pids: list[int], cpus: set[int]) -> None:
    """Every thread of ``pids`` onto ``cpus`` (threads they start later inherit it), the way separate
    machines would keep the worker and the broker from taking each other's cores."""
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                os.sched_setaffinity(int(task.name), cpus)
            except ProcessLookupError:  # the thread ended meanwhile
                pass


def rss_vs_users(
    samples: list[tuple[float, float, int]], consumed_at_ready: float, n_users: int
) -> dict:
    """Worker RSS against users holding state (the first ``n_users`` events each create one user)."""
    series = [(int(min(max(c - consumed_at_ready, 0), n_users)), rss) for _, c, rss in samples]
    at_start = series[0][1]
    at_all = next((rss for users, rss in series if users >= n_users), series[-1][1])
    step = max(1, len(series) // 12)
    return {
        "rss_at_ready_mb": at_start / 2**20,
        "rss_with_all_users_mb": at_all / 2**20,
        "rss_end_mb": series[-1][1] / 2**20,
        "rss_growth_bytes_per_user": (at_all - at_start) / n_users,
        "series_users_rss_mb": [(u, round(r / 2**20, 1)) for u, r in series[::step]],
    }


def table_size(data_dirs: list[Path]) -> dict:
    """User tables on disk after the workers stopped: files (SST, WAL, manifest), encoded values, and the
    events applied (clicks + purchases over all users: must equal the events produced, exactly once).
    A partition some worker held before a rebalance is read once, from the worker that held it last."""
    paths = latest_copies([p for d in data_dirs for p in table_files(d)])
    users = value_bytes = applied = 0
    for path in paths:
        for _, value in iter_raw(path):
            state = decode(value)
            users += 1
            value_bytes += len(value)
            applied += state.clicks + state.purchases
    disk = sum(f.stat().st_size for p in paths for f in p.rglob("*") if f.is_file())
    return {
        "users": users,
        "applied_events": applied,
        "disk_bytes": disk,
        "disk_bytes_per_user": disk / max(users, 1),
        "value_bytes_per_user": value_bytes / max(users, 1),
    }
