"""End to end over TCP: real broker (noida-db), a faust worker process with RocksDB tables, a real
(tiny) BERT encoder; events in with kafka-python, recommendations and dead letters out with kafka-python."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from kafka import KafkaProducer

from cli.client import publish_catalogue, replay
from cli.worker_process import WorkerProcess
from models.catalogue import Catalogue
from models.encoder import ItemEncoder
from models.interest import InterestModel
from models.updater import InterestUpdater
from state.item_store import ItemStore
from streams.connection import client_options
from streams.user_table import load_user_states
from tests.conftest import SAMPLE
from tests.helpers import (
    dead_letters,
    latest_recommendations,
    metric_sum,
    run_sample,
    scrape,
    to_jsonl,
    wait_until,
)

pytestmark = pytest.mark.e2e


def test_replay_produces_recommendations_consistent_with_table_state(
    settings, sample_events, tmp_path
):
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        publish_catalogue(settings, SAMPLE / "catalogue.jsonl", progress=False)
        worker.wait_ready(min_items=96)

        first = sample_events[0]
        log = tmp_path / "events.jsonl"
        log.write_text(
            to_jsonl(
                sample_events + [{**first, "item_id": "no-such-item", "event_id": "x-unknown"}]
            )
        )
        replay(settings, log, progress=False)
        # malformed input and a re-sent duplicate, straight onto the topics
        raw = KafkaProducer(**client_options(settings))
        bad = [
            b"{not json",
            json.dumps({"event_id": "x-missing", "user_id": "user-01", "ts": first["ts"]}).encode(),
            json.dumps({**first, "type": "click"}).encode(),
        ]
        for value in bad:
            raw.send(
                settings.clicks_topic,
                key=b"user-01" if b"user-01" in value else first["user_id"].encode(),
                value=value,
            )
        raw.flush()
        raw.close()
        sent = len(sample_events) + 1 + len(bad)

        wait_until(
            lambda: (
                metric_sum(scrape(settings.metrics_port), "interest_events_consumed_total") >= sent
            ),
            what="all events consumed",
        )
        recs = latest_recommendations(settings)
        letters = dead_letters(settings)
        metrics = scrape(settings.metrics_port)
        assert worker.alive, worker.log_tail()
    finally:
        worker.stop()
    assert worker.exit_code == 0, (
        f"the worker did not stop cleanly on SIGTERM:\n{worker.log_tail()}"
    )

    reasons = Counter(d["reason"] for d in letters)
    assert reasons == {"bad_json": 1, "missing_field": 1, "unknown_item": 1, "duplicate": 1}, (
        letters
    )
    assert all(
        d["source"].startswith(settings.clicks_topic)
        or d["source"].startswith(settings.purchases_topic)
        for d in letters
    )
    assert b"{not json" in [d["value"] for d in letters]  # the original bytes are kept
    assert metric_sum(metrics, "interest_events_dead_lettered_total") == 4
    assert metric_sum(metrics, "interest_recommendations_published_total") >= len(recs)

    states = load_user_states(settings.data_dir)
    per_user = Counter((e["user_id"], e["type"]) for e in sample_events)
    assert set(states) == {e["user_id"] for e in sample_events}
    for user, state in states.items():  # every good event applied exactly once, bad ones not at all
        assert (state.clicks, state.purchases) == (
            per_user[(user, "click")],
            per_user[(user, "purchase")],
        )

    # Recompute each user's top-k from the stored state, catalogue and model: it must be what was published.
    updater = stored_updater(settings)
    assert set(recs) == set(states)
    users = sorted(states)
    for user, expected in zip(users, updater.recommend([states[u] for u in users])):
        published = recs[user]
        assert [i.item_id for i in published.items] == [i.item_id for i in expected]
        assert np.allclose(
            [i.score for i in published.items], [i.score for i in expected], atol=1e-5
        )
        assert len(published.items) == settings.top_k
        # seen items excluded
        assert not set(states[user].recent_items) & {i.item_id for i in published.items}
        assert published.model_version == updater.model.version


def test_with_reasons_each_published_item_is_explained_by_one_of_the_users_events(
    settings, sample_events, tmp_path
):
    settings = replace(settings, reasons=True)
    users = sorted({e["user_id"] for e in sample_events})[:3]
    events = [e for e in sample_events if e["user_id"] in users]
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        run_sample(settings, worker, events, tmp_path)
        recs = latest_recommendations(settings)
        assert worker.alive, worker.log_tail()
    finally:
        worker.stop()
    assert worker.exit_code == 0, worker.log_tail()

    assert set(recs) == set(users)
    for user, rec in recs.items():
        touched = {e["item_id"] for e in events if e["user_id"] == user}
        assert len(rec.items) == settings.top_k
        for item in rec.items:
            assert item.reason is not None and item.reason.nearest in touched, (user, item)
            assert -1.0 <= item.reason.similarity <= 1.0
            assert sum(item.reason.parts.values()) == pytest.approx(item.score, rel=1e-5, abs=1e-6)
    # What was published is what the model side computes from the stored state.
    updater = stored_updater(settings)
    states = load_user_states(settings.data_dir)
    for user, expected in zip(users, updater.recommend([states[u] for u in users])):
        assert [i.item_id for i in recs[user].items] == [i.item_id for i in expected]
        for got, want in zip(recs[user].items, expected):
            assert got.reason.nearest == want.reason.nearest
            assert got.reason.parts == pytest.approx(want.reason.parts, abs=1e-5)


def stored_updater(settings) -> InterestUpdater:
    """The updater a worker with ``settings`` serves with (the untrained default), over the
    catalogue in its item store."""
    encoder = ItemEncoder(settings.encoder_path, "cpu")
    store = ItemStore(settings.data_dir / "items")
    catalogue = Catalogue(encoder.dim)
    catalogue.upsert(list(store))
    store.close()
    return InterestUpdater(
        InterestModel.untrained(encoder.dim, settings.hidden_size, encoder.name),
        catalogue,
        settings.updater_config(),
    )
