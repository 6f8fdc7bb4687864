"""The benchmark's own measurements measure what they say (their numbers are not checked here: speed is
for `python -m benchmarks.bench`, not the test suite)."""

import asyncio
import gc
from collections import Counter

import pytest

from benchmarks import micro, reference
from benchmarks.workload import EventSource
from streams import heap
from streams.settings import Settings
from streams.topics import ensure_topics
from tests.helpers import consume_all


def test_model_work_times_every_event_after_the_users_exist():
    result = micro.model_work(
        n_users=64,
        n_items=300,
        n_events=256,
        dim=16,
        settings=Settings(batch_max=64, hidden_size=8),
    )
    assert result["events"] == 256  # the first 64 (one per user) are untimed
    assert result["events_per_s"] > 0 and result["cpu_us_per_event"] > 0
    # every event touches one user's state and publishes one recommendation, in bytes on the wire
    assert (
        result["state_bytes_per_event"] > 4 * (8 + 16)
        and result["recommendation_bytes_per_event"] > 100
    )


@pytest.mark.e2e
def test_writes_loop_sends_one_message_of_each_size_per_event(settings):
    # as the benchmark's worker does: a broker may create no topic on a client's request
    ensure_topics(settings)
    source = EventSource(10, 10)
    messages = [(key, value) for _, key, value in source.take(40)]
    asyncio.run(reference.fill(settings, settings.clicks_topic, messages))
    rate, _ = asyncio.run(
        reference.aiokafka_loop(
            settings,
            settings.clicks_topic,
            settings.recommendations_topic,
            40,
            settings.app_id,
            value_sizes=(300, 50),
        )
    )
    out = consume_all(settings, settings.recommendations_topic)
    assert rate > 0
    assert Counter(len(m.value) for m in out) == {300: 40, 50: 40}
    assert Counter(m.key for m in out) == Counter(key for key, _ in messages for _ in range(2))


def test_settled_heap_is_restored_after_a_measurement():
    before = gc.get_threshold()
    with heap.settled():
        assert gc.get_threshold() == heap.THRESHOLDS != before
    assert gc.get_threshold() == before


def test_stage_quantiles_interpolate_within_the_bucket_as_prometheus_does():
    from benchmarks.pipeline import quantile, stages

    cumulative = {0.01: 50.0, 0.02: 90.0, 0.05: 100.0, float("inf"): 100.0}
    assert quantile(0.5, cumulative) == 0.01 and abs(quantile(0.7, cumulative) - 0.015) < 1e-12
    assert abs(quantile(0.99, cumulative) - 0.047) < 1e-12
    before = {"queued": {0.01: 40.0, 0.02: 40.0, 0.05: 40.0, float("inf"): 40.0}}
    assert stages(before, {"queued": cumulative})["queued"]["p50_ms"] == 1000 * quantile(
        0.5, {0.01: 10.0, 0.02: 50.0, 0.05: 60.0, float("inf"): 60.0}
    )


def test_scoring_benchmark_measures_the_index_against_exact_scoring():
    from benchmarks.scoring import measure

    result = measure(n_items=5000, dim=16, batch=8, settings=Settings(ann_nprobe=64))
    assert result["ivf_lists"] == 282 and result["nprobe"] == 64
    # a quarter of the lists searched: most of the exact top 10
    assert 0.9 <= result["recall_at_10"] <= 1.0
    assert (
        min(
            result[k]
            for k in (
                "exact_us_per_event",
                "ann_us_per_event",
                "upsert_us_per_item",
                "retire_us_per_item",
            )
        )
        > 0
    )


def test_scaling_table_reads_each_run_as_bench_writes_it():
    from benchmarks.plot import row, table

    phase = {"p50_ms": 40.0, "p99_ms": 90.0}
    run = {
        "args": {"users": 100_000, "items": 10_000, "workers": 2},
        "model_work": {"cpu_us_per_event": 130.0},
        "pipeline": {
            "capacity": {"events_per_s": 3000.0, "worker_cpu_us_per_event": 350.0},
            "faust_floor": {"events": 1000, "cpu_s": 0.07},
            "latency": [{"load": 0.1, **phase}, {"load": 0.5, "p50_ms": 150.0, "p99_ms": 400.0}],
        },
    }
    r = row(run)
    assert (r["faust_cpu_us"], r["p99_10"], r["p50_50"]) == (70.0, 90.0, 150.0)
    assert (
        table([r]).splitlines()[-1]
        == "| 100,000 | 10,000 | 2 | 3,000 | 350 | 130 | 70 | 40 / 90 | 150 / 400 |"
    )


def test_hot_user_runs_send_the_same_events_at_the_same_rate_in_both_scenarios():
    from argparse import Namespace

    from benchmarks.hot_user import events

    args = Namespace(others=5, per_user=4, burst=100, items=10)
    burst, spread = events(0, "burst", args), events(1, "spread", args)
    assert len(burst) == len(spread) == 120
    assert (
        Counter(u for u, _ in burst)["hot"] == 100
        and len({u for u, _ in spread if u.startswith("s")}) == 25
    )
    measured = [n for n, (u, _) in enumerate(burst) if u.startswith("m")]
    assert measured[0] < 10 and measured[-1] > 100  # interleaved over the whole run, not bunched


def test_the_sustained_capacity_is_the_highest_rate_kept_up_within_the_search_resolution(
    monkeypatch,
):
    from benchmarks import pipeline

    limit = 1234.0  # a pipeline that keeps up with this rate and no more

    async def keeps_up(fleet, producer, rate, window_s, consumed_before):
        return {"target_events_per_s": rate, "kept_up": rate <= limit}

    class Idle:
        def metric(self, name):
            return 0.0

    monkeypatch.setattr(pipeline, "keeps_up", keeps_up)
    found = asyncio.run(pipeline.sustained_capacity(Idle(), None, 2000.0, 30.0, probes=6))
    assert found["events_per_s"] <= limit < found["events_per_s"] + found["resolution_events_per_s"]
    assert found["resolution_events_per_s"] == pytest.approx(1.25 * 2000 / 2**6)
    assert [p["target_events_per_s"] for p in found["probes"]][:2] == [1250.0, 625.0]
