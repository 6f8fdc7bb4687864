"""Metrics move while a replay runs, and the health endpoints answer (real worker, real broker)."""

from __future__ import annotations

import threading
import urllib.request

import pytest
import torch

from cli.client import publish_catalogue, replay
from cli.worker_process import WorkerProcess
from tests.conftest import SAMPLE
from tests.helpers import metric_sum, scrape, wait_until

pytestmark = pytest.mark.e2e


def test_metrics_move_during_a_replay(settings, sample_events, tmp_path):
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        publish_catalogue(settings, SAMPLE / "catalogue.jsonl", progress=False)
        worker.wait_ready(min_items=96)
        with urllib.request.urlopen(f"http://127.0.0.1:{settings.web_port}/health") as r:
            assert r.status == 200 and b"ok" in r.read()
        before = scrape(settings.metrics_port)
        span = sample_events[-1]["ts"] - sample_events[0]["ts"]
        # real time x (span / 6 s): the replay takes about six seconds, so we can look while it runs
        player = threading.Thread(
            target=replay,
            args=(settings, SAMPLE / "events.jsonl", span / 6.0),
            kwargs={"progress": False},
        )
        player.start()

        def consumed() -> float:
            return metric_sum(scrape(settings.metrics_port), "interest_events_consumed_total")

        # a batch counts its events consumed before it is applied: wait for its recommendations too
        def under_way():
            m = scrape(settings.metrics_port)
            moving = 0 < metric_sum(m, "interest_events_consumed_total") < len(sample_events)
            return (
                m
                if moving and metric_sum(m, "interest_recommendations_published_total") > 0
                else None
            )

        during = wait_until(under_way, what="the replay under way", interval=0.1)
        player.join()
        wait_until(lambda: consumed() >= len(sample_events), what="the replay consumed")

        def reported_caught_up():  # the lag timer runs every 5 s; its last report must say 0 behind
            m = scrape(settings.metrics_port)
            lags = [v for (name, _), v in m.items() if name == "interest_consumer_lag_messages"]
            # users, not RocksDB's estimate (it counts overwrites)
            users = len({e["user_id"] for e in sample_events})
            return (
                m
                if lags and not any(lags) and metric_sum(m, "interest_table_users") == users
                else None
            )

        after = wait_until(reported_caught_up, what="lag reported as 0", timeout_s=30)
    finally:
        worker.stop()

    def moved(name: str, **labels: str) -> list[float]:
        return [metric_sum(m, name, **labels) for m in (before, during, after)]

    c = moved("interest_events_consumed_total")
    assert c[0] == 0 < c[1] < c[2] == len(sample_events)
    assert moved("interest_events_consumed_total", type="purchase")[2] == sum(
        e["type"] == "purchase" for e in sample_events
    )
    r = moved("interest_recommendations_published_total")
    assert r[0] == 0 < r[1] <= r[2]
    lat = moved("interest_event_to_recommendation_seconds_count")
    assert (
        lat[0] == 0 < lat[1] < lat[2]
        and metric_sum(after, "interest_event_to_recommendation_seconds_sum") > 0
    )
    # + decay ticks
    assert moved("interest_batch_size_count")[2] > 0 and moved("interest_batch_size_sum")[2] >= len(
        sample_events
    )
    assert metric_sum(after, "interest_batch_duration_seconds_count") > 0
    assert (
        metric_sum(after, "interest_encoder_items_total") == 96
        and metric_sum(after, "interest_encoder_items_per_second") > 0
    )
    assert (
        metric_sum(after, "interest_catalogue_items") == 96
        and metric_sum(after, "interest_ready") == 1
    )
    # the encoder takes the GPU when there is one
    where = "cuda" if torch.cuda.is_available() else "cpu"
    assert metric_sum(after, "interest_model_info", version="untrained", encoder_device=where) == 1
    assert {
        dict(labels)["topic"] for (name, labels) in after if name == "interest_consumer_lag_seconds"
    } == {settings.clicks_topic, settings.purchases_topic}
    assert not any("user" in dict(labels) for (_, labels) in after)  # no per-user labels
