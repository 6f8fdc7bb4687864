"""One user, through a real worker: inspect their state, erase them on request, expire them when idle;
and after a restart from the changelog alone they stay erased (privacy requests must survive restarts)."""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import replace

import pytest

from cli.client import (
    Erased,
    Erasure,
    inspect_user,
    publish_catalogue,
    recommendations,
    request_erasure,
    send_events,
    wait_erased,
)
from cli.worker_process import WorkerProcess
from streams.faust_compat import changelog_topic
from tests.conftest import SAMPLE
from tests.helpers import consume_all, metric_sum, scrape, wait_until

pytestmark = pytest.mark.e2e


def events(user: str, items: list[str], ts: float, kind: str = "click") -> list[dict]:
    return [
        {"event_id": f"{user}-{n}", "user_id": user, "item_id": item, "type": kind, "ts": ts + n}
        for n, item in enumerate(items)
    ]


def last_changelog_values(settings) -> dict[bytes, bytes | None]:
    return {
        m.key: m.value for m in consume_all(settings, changelog_topic(settings.app_id), idle_s=2.0)
    }


def keep_active(settings, user: str, stop: threading.Event) -> None:
    """An event for ``user`` every second until ``stop``."""
    n = 0
    while not stop.wait(1.0 if n else 0.0):
        send_events(
            settings,
            [
                {
                    "event_id": f"{user}-{n}",
                    "user_id": user,
                    "item_id": "run-001",
                    "type": "click",
                    "ts": time.time() - 1,
                }
            ],
            progress=False,
        )
        n += 1


def start(settings, log, catalogue: bool = False) -> WorkerProcess:
    """A worker, ready with the sample catalogue (published first if ``catalogue``)."""
    worker = WorkerProcess(settings, log).start()
    try:
        if catalogue:
            publish_catalogue(settings, SAMPLE / "catalogue.jsonl", progress=False)
        worker.wait_ready(min_items=96)
    except BaseException:
        worker.stop()
        raise
    return worker


def test_inspect_then_erase_then_restart_from_the_changelog(settings, tmp_path):
    worker = start(settings, tmp_path / "worker.log", catalogue=True)
    try:
        now = time.time()
        send_events(
            settings,
            events("ann", ["run-000", "run-001", "yog-078"], now - 60)
            + events("bob", ["gar-070"], now - 60, "purchase"),
            progress=False,
        )
        ann = wait_until(
            lambda: (v := inspect_user(settings, "ann")) and v["clicks"] == 3 and v,
            what="ann's three events applied",
        )
        assert (ann["purchases"], ann["recent_items"], ann["last_event"]["event_id"]) == (
            0,
            ["yog-078", "run-001", "run-000"],
            "ann-2",
        )
        assert ann["long_term"]["weight"] > 0 and ann["model_version"] == "untrained"
        latest = [i["item_id"] for i in ann["latest_recommendations"]["items"]]
        # seen items excluded
        assert len(latest) == settings.top_k and not {"run-000", "run-001", "yog-078"} & set(latest)
        assert inspect_user(settings, "nobody") is None

        requests = request_erasure(settings, ["ann"])
        assert wait_erased(settings, requests, timeout_s=30) == {"ann": Erasure.ERASED}
        assert inspect_user(settings, "bob")["purchases"] == 1  # nobody else
        # An event after a request is applied makes the user again: `erase --wait` says so, not
        # "still queued".
        send_events(settings, events("ann", ["run-003"], time.time() - 30), progress=False)
        wait_until(lambda: inspect_user(settings, "ann"), what="ann made again by a later event")
        assert wait_erased(settings, requests, timeout_s=5) == {"ann": Erasure.MADE_AGAIN}
        requests = request_erasure(settings, ["ann"])
        assert wait_erased(settings, requests, timeout_s=30) == {"ann": Erasure.ERASED}
        # twice, ann
        assert (
            metric_sum(
                scrape(settings.metrics_port), "interest_users_erased_total", cause="request"
            )
            == 2
        )
        # Her marker goes once the group has committed past her events: a tombstone is her last
        # changelog record.
        wait_until(
            lambda: b"ann" in (last := last_changelog_values(settings)) and last[b"ann"] is None,
            timeout_s=60,
            what="ann's changelog tombstone",
            explain=worker.log_tail,
        )
        # The compacted topic forgets her recommendations; subscribers see her erased.
        assert [
            r
            for r in recommendations(settings, from_beginning=True, timeout_s=3.0)
            if r.user_id == "ann"
        ][-1] == Erased("ann")
    finally:
        worker.stop()
    assert worker.exit_code == 0, worker.log_tail()

    # A new worker with no local state rebuilds the table from the changelog alone.
    shutil.rmtree(settings.data_dir)
    worker = start(settings, tmp_path / "worker-2.log")
    try:
        assert (
            inspect_user(settings, "ann") is None
            and inspect_user(settings, "bob")["purchases"] == 1
        )
        send_events(
            settings,
            [
                {
                    "event_id": "ann-new",
                    "user_id": "ann",
                    "item_id": "run-002",
                    "type": "click",
                    "ts": time.time() - 10,
                }
            ],
            progress=False,
        )
        back = wait_until(lambda: inspect_user(settings, "ann"), what="ann's new event")
        # a new user: nothing of before came back
        assert (back["clicks"], back["recent_items"]) == (1, ["run-002"])
    finally:
        worker.stop()


def test_idle_users_expire_and_stay_gone_after_a_restart(settings, tmp_path):
    # wall clock: a user with no event for 10 s goes at the next decay pass (every 2 s here)
    ttl = 10.0
    settings = replace(settings, user_ttl_s=ttl)
    worker = start(settings, tmp_path / "worker.log", catalogue=True)
    try:
        # a replayed log's old event time does not expire anyone by itself
        old_ts = time.time() - 30 * 86400
        send_events(settings, events("old", ["run-000"], old_ts), progress=False)
        wait_until(lambda: inspect_user(settings, "old"), what="old's event applied")
        stop_event = threading.Event()
        active = threading.Thread(target=keep_active, args=(settings, "new", stop_event))
        active.start()
        try:
            wait_until(
                lambda: inspect_user(settings, "old") is None,
                what="old expired at a decay pass",
                explain=worker.log_tail,
            )
            # an event every second: never idle for the TTL
            assert inspect_user(settings, "new")["clicks"] >= 1
        finally:
            stop_event.set()
            active.join()
        assert (
            metric_sum(
                scrape(settings.metrics_port), "interest_users_erased_total", cause="expired"
            )
            >= 1
        )
        wait_until(
            lambda: last_changelog_values(settings).get(b"old", b"") is None,
            timeout_s=60,
            what="old's changelog tombstone",
        )
    finally:
        worker.stop()
    shutil.rmtree(settings.data_dir)
    worker = start(replace(settings, user_ttl_s=0.0), tmp_path / "worker-2.log")
    try:
        # (new has expired by now too: its TTL passed while we waited)
        assert inspect_user(settings, "old") is None
    finally:
        worker.stop()
