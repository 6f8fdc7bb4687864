"""Faults against a real broker and real RocksDB: crashes, restarts, scale-out, broker outage.

Logs here are clicks only: the order between a user's clicks and purchases is the order the worker
reads two topics, which differs run to run, and the GRU state depends on order. Within one topic the
order per user is fixed, so a crashed run must end in exactly the state of a clean one.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from cli.client import inspect_user, publish_catalogue, send_events
from cli.worker_process import WorkerProcess
from streams.user_table import load_user_states
from tests.brokers import KEEPS_DEAD_MEMBERS, new_broker
from tests.conftest import SAMPLE
from tests.helpers import (
    consume_all,
    dead_letters,
    group_caught_up,
    latest_recommendations,
    metric_sum,
    scrape,
    stuck_report,
    to_jsonl,
    variant,
    wait_until,
)

pytestmark = pytest.mark.e2e


def click_log(catalogue: list[dict], users: int, per_user: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    ids = [i["item_id"] for i in catalogue]
    t0 = 1_790_000_000.0
    events = [
        {
            "event_id": f"c{u}-{n}",
            "user_id": f"u{u:03d}",
            "item_id": rng.choice(ids),
            "type": "click",
            "ts": t0 + n * 60 + u,
        }
        for u in range(users)
        for n in range(per_user)
    ]
    return sorted(events, key=lambda e: e["ts"])


def start_ready(settings, log_dir, name: str, min_items: int = 96) -> WorkerProcess:
    worker = WorkerProcess(settings, log_dir / f"{name}.log").start()
    worker.wait_ready(min_items=min_items)
    return worker


def event_topics(settings) -> list[str]:
    return [settings.clicks_topic, settings.purchases_topic]


def wait_caught_up(settings, worker: WorkerProcess, what: str, timeout_s: float = 120.0) -> None:
    wait_until(
        lambda: group_caught_up(settings, event_topics(settings)),
        timeout_s=timeout_s,
        what=what,
        explain=lambda: stuck_report(settings, event_topics(settings), worker),
    )


def run_to_end(settings, events, log_dir, name: str = "clean") -> dict:
    """Start a worker, send ``events``, wait until the group has committed everything, stop: the states."""
    worker = start_ready(settings, log_dir, name)
    try:
        send_events(settings, events, progress=False)
        wait_caught_up(settings, worker, f"{name} run caught up")
    finally:
        worker.stop()
    return load_user_states(settings.data_dir)


def assert_same_states(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for user in want:
        g, w = got[user], want[user]
        assert (g.clicks, g.purchases, g.recent_items) == (w.clicks, w.purchases, w.recent_items), (
            user
        )
        by_partition = [
            sorted((source.rsplit(":", 1)[1], offset) for source, offset in x.applied.items())
            for x in (g, w)
        ]
        # same offsets applied (topic names differ per run)
        assert by_partition[0] == by_partition[1], user
        assert np.allclose(g.hidden, w.hidden, atol=1e-5) and np.allclose(
            g.lt_sum, w.lt_sum, atol=1e-5
        ), user
        assert g.lt_weight == pytest.approx(w.lt_weight) and g.lt_time == w.lt_time


def with_rejects(events: list[dict], every: int = 40) -> list[dict]:
    """``events`` with every ``every``-th one for an item that does not exist: rejected by the updater,
    so counted as applied in its user's state, and dead-lettered."""
    return [
        {**e, "event_id": f"reject-{n}", "item_id": "no-such-item"} if n % every == every - 1 else e
        for n, e in enumerate(events)
    ]


@pytest.mark.broker_bug("tansu-list-offsets")  # the restart recovers the table from its changelog
@pytest.mark.parametrize("local_state", ["kept", "deleted"])
def test_kill_9_mid_replay_then_restart_ends_in_the_clean_run_state(
    settings, sample_catalogue, tmp_path, local_state, broker_kind
):
    # Decay ticks would land at different times in each run. Kept: the restarted worker joins with a
    # new member
    # id and gets the partitions once the broker has evicted the killed one (noida-db never does).
    # Deleted: with a
    # static member id, as the Kubernetes StatefulSet gives each pod, it takes the killed one's place at once.
    static = local_state == "deleted" or broker_kind in KEEPS_DEAD_MEMBERS
    settings = replace(settings, decay_interval_s=3600.0, instance_id="worker-0" if static else "")
    events = with_rejects(click_log(sample_catalogue, users=40, per_user=60))
    clean = variant(settings, "clean", tmp_path / "clean")
    crash = variant(settings, "crash", tmp_path / "crash")
    for s in (clean, crash):
        publish_catalogue(s, SAMPLE / "catalogue.jsonl", progress=False)
    want = run_to_end(clean, events, tmp_path)

    worker = start_ready(crash, tmp_path, "crash-1")
    # throttled, so the kill lands mid-stream
    producer = threading.Thread(
        target=send_events, args=(crash, events), kwargs={"speed": 600.0, "progress": False}
    )
    producer.start()
    wait_until(
        lambda: (
            metric_sum(scrape(crash.metrics_port), "interest_events_consumed_total")
            >= len(events) // 4
        ),
        what="a quarter of the events consumed",
        interval=0.05,
    )
    worker.kill()  # SIGKILL: no flush, no commit, no goodbye
    assert producer.is_alive(), "the replay finished before the kill: nothing was interrupted"
    if local_state == "deleted":
        shutil.rmtree(crash.data_dir / "faust")  # recover the user table from its changelog alone
    started = time.monotonic()
    worker = start_ready(crash, tmp_path, "crash-2")
    print(f"restart with local state {local_state}: ready in {time.monotonic() - started:.1f}s")
    try:
        producer.join()
        wait_caught_up(crash, worker, "crashed run caught up", timeout_s=180)
    finally:
        worker.stop()
    assert_same_states(load_user_states(crash.data_dir), want)
    # every rejected event reached the dead-letter topic, the crash notwithstanding (some perhaps twice)
    rejected = {e["event_id"] for e in events if e["item_id"] == "no-such-item"}
    letters = dead_letters(crash)
    assert {json.loads(d["value"])["event_id"] for d in letters} == rejected
    assert {d["reason"] for d in letters} == {"unknown_item"}


# the restart reads the table's changelog from where its local copy stopped
@pytest.mark.broker_bug("tansu-list-offsets")
def test_restart_with_a_backlog_applies_all_of_it(settings, sample_catalogue, tmp_path):
    # Events that arrive while the worker is down are waiting when it starts, before its model is loaded.
    events = click_log(sample_catalogue, users=20, per_user=50, seed=4)
    publish_catalogue(settings, SAMPLE / "catalogue.jsonl", progress=False)
    run_to_end(settings, events[:100], tmp_path, "first")
    send_events(settings, events[100:], progress=False)
    # the backlog, waiting before its model is loaded
    states = run_to_end(settings, [], tmp_path, "restarted")
    assert sum(x.clicks for x in states.values()) == len(events)


# the survivor recovers the other's partitions from their changelog
@pytest.mark.broker_bug("tansu-list-offsets")
def test_two_workers_split_partitions_and_one_takes_over_the_others_users(
    settings, sample_catalogue, tmp_path
):
    events = click_log(sample_catalogue, users=40, per_user=20, seed=2)
    half = len(events) // 2
    # same tag: both share app id (one consumer group) and topics; each has its own state directory and ports
    one = variant(settings, "w", tmp_path / "one")
    two = variant(settings, "w", tmp_path / "two")
    publish_catalogue(one, SAMPLE / "catalogue.jsonl", progress=False)
    w1 = start_ready(one, tmp_path, "w1")
    w2 = start_ready(two, tmp_path, "w2")
    try:

        def split() -> bool:  # each worker's /ready lists the partitions it holds
            held = [set((w.readiness() or {}).get("partitions", ())) for w in (w1, w2)]
            return (
                bool(held[0])
                and bool(held[1])
                and not held[0] & held[1]
                and len(held[0] | held[1]) == one.partitions
            )

        wait_until(split, timeout_s=60, what="the group's partitions split between both workers")
        send_events(one, events[:half], progress=False)
        wait_caught_up(one, w1, "first half processed")
        consumed = [
            metric_sum(scrape(s.metrics_port), "interest_events_consumed_total") for s in (one, two)
        ]
        # partitions were split
        assert all(c > 0 for c in consumed) and sum(consumed) >= half, consumed
        before = latest_recommendations(one)
        # Either worker shows any user: the one that does not hold them forwards the page (faust's
        # table_route).
        counts = Counter(e["user_id"] for e in events[:half])
        for asked in (one, two):
            assert {user: inspect_user(asked, user)["clicks"] for user in counts} == counts
        w2.stop()
        send_events(one, events[half:], progress=False)
        wait_caught_up(one, w1, "survivor processed the rest", timeout_s=180)
        after = latest_recommendations(one)
    finally:
        w2.stop()
        w1.stop()
    states = load_user_states(one.data_dir)
    per_user = {}
    for e in events:
        per_user[e["user_id"]] = per_user.get(e["user_id"], 0) + 1
    # the survivor holds every user with every event applied once: the stopped worker's users came
    # with their state
    assert {u: s.clicks for u, s in states.items()} == per_user
    assert set(after) == set(per_user) and set(before) <= set(after)


@pytest.mark.broker_bug("tansu-memory-only")
def test_broker_outage_worker_waits_and_resumes_without_losing_events(
    settings, sample_catalogue, tmp_path, broker_kind
):
    broker = new_broker(broker_kind, tmp_path / "own-broker").start()
    s = replace(variant(settings, "o", tmp_path / "state"), broker=broker.address)
    events = click_log(sample_catalogue, users=10, per_user=20, seed=3)
    publish_catalogue(s, SAMPLE / "catalogue.jsonl", progress=False)
    worker = start_ready(s, tmp_path, "outage")
    try:
        send_events(s, events[:100], progress=False)
        wait_caught_up(s, worker, "before the outage")
        broker.stop()
        time.sleep(10)
        assert worker.alive, worker.log_tail()
        broker = new_broker(broker_kind, broker.data_dir, port=broker.port).start()
        send_events(s, events[100:], progress=False)
        wait_caught_up(s, worker, "after the outage", timeout_s=180)
        assert worker.alive
    finally:
        worker.stop()
        broker.stop()
    states = load_user_states(s.data_dir)
    assert sum(x.clicks for x in states.values()) == len(events)


def acknowledged_of(replayed: subprocess.CompletedProcess) -> int:
    """The events the `replay` command says the broker acknowledged (it exits 1 if that is not all)."""
    out = replayed.stdout + replayed.stderr
    found = re.search(r"replayed (\d+) events \(acknowledged", out) or re.search(
        r"(\d+) of \d+ events acknowledged", out
    )
    assert found, out
    assert (replayed.returncode == 0) == bool(re.search(r"replayed \d+ events", out)), out
    return int(found.group(1))


@pytest.mark.broker_bug("tansu-memory-only")
@pytest.mark.broker_bug("noida-db-loses-acknowledged")
def test_a_broker_restart_under_load_loses_no_acknowledged_event_and_applies_each_once(
    settings, sample_catalogue, tmp_path, broker_kind
):
    """The broker stopped 4 s into a throttled `replay` and started again 6 s later on the same data: the
    tool says how many events the broker acknowledged (exit 1 if not all); the worker rides through or exits
    70 and is restarted (as an orchestrator would); in the end every event on the topic, the acknowledged
    ones at least, is applied exactly once."""
    broker = new_broker(broker_kind, tmp_path / "own-broker").start()
    s = replace(variant(settings, "restart", tmp_path / "state"), broker=broker.address)
    events = click_log(sample_catalogue, users=20, per_user=60, seed=6)
    log = tmp_path / "events.jsonl"
    log.write_text(to_jsonl(events))
    publish_catalogue(s, SAMPLE / "catalogue.jsonl", progress=False)
    runs = [start_ready(s, tmp_path, "restart-0")]
    try:
        player = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "replay", str(log), "--speed", "300"],
            env={**os.environ, **s.env()},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(4)
        broker.stop()
        time.sleep(6)
        broker = new_broker(broker_kind, broker.data_dir, port=broker.port).start()
        out, err = player.communicate(timeout=120)
        acknowledged = acknowledged_of(
            subprocess.CompletedProcess(player.args, player.returncode, out, err)
        )
        deadline = time.monotonic() + 180
        while not group_caught_up(s, event_topics(s)):
            assert time.monotonic() < deadline, stuck_report(s, event_topics(s), runs[-1])
            if not runs[-1].alive:
                # only the infrastructure stops it
                assert runs[-1].exit_code == 70, (runs[-1].exit_code, runs[-1].log_tail())
                runs.append(start_ready(s, tmp_path, f"restart-{len(runs)}"))
            time.sleep(0.5)
        on_topic = {json.loads(m.value)["event_id"] for m in consume_all(s, s.clicks_topic)}
    finally:
        runs[-1].stop()
        broker.stop()
    states = load_user_states(s.data_dir)
    print(
        f"acknowledged {acknowledged} of {len(events)}, {len(on_topic)} on the topic, worker runs {len(runs)}"
    )
    assert acknowledged <= len(on_topic)
    # each once: a copy is a duplicate, by event id
    assert sum(x.clicks for x in states.values()) == len(on_topic)
