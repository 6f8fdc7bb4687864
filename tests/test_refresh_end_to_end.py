"""The long-term refresh through a real worker: an edited item's new vector replaces its old one in the
long-term vectors of the users who touched it, at the next decay tick; and a new encoder is rolled out
(docs/refresh.md, Rolling out a new encoder) without any long-term vector, short-term state or recommendation
made of both encoders' vectors."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from kafka import KafkaProducer

from cli.client import send_events
from cli.local_broker import free_port
from cli.reembed import reembed
from cli.worker_process import WorkerProcess
from models.catalogue import Catalogue, fingerprint
from models.encoder import ItemEncoder
from models.interest import InterestModel
from models.tiny_bert import build_tiny_bert
from models.updater import InterestUpdater
from state.item_store import ItemStore
from state.user_state import UserState
from streams.connection import client_options
from streams.settings import Settings
from streams.user_table import load_user_states
from tests.helpers import latest_recommendations, metric_sum, run_sample, scrape, wait_until

pytestmark = pytest.mark.e2e


def stored_vectors(settings: Settings) -> dict[str, np.ndarray]:
    store = ItemStore(settings.data_dir / "items")
    try:
        return {v.item_id: v.vector for v in store}
    finally:
        store.close()


def from_history(
    state: UserState, vectors: dict[str, np.ndarray], half_life_s: float
) -> tuple[np.ndarray, float]:
    """The long-term sum and weight that ``state``'s history makes with ``vectors`` (models.history's
    formula, written out again)."""
    h = state.history
    decayed = np.array(h.weights, np.float64) * 2.0 ** (
        -(state.lt_time - np.array(h.times)) / half_life_s
    )
    return sum(w * vectors[i].astype(np.float64) for i, w in zip(h.items, decayed)), float(
        decayed.sum()
    )


def refreshed(settings: Settings, cause: str) -> float:
    return metric_sum(
        scrape(settings.metrics_port), "interest_longterm_refreshed_total", cause=cause
    )


def test_an_edited_item_is_refreshed_in_its_users_long_term_vectors_at_the_next_tick(
    settings, sample_events, sample_catalogue, tmp_path
):
    edited = "yog-072"
    touched = {e["user_id"] for e in sample_events if e["item_id"] == edited}
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        run_sample(settings, worker, sample_events, tmp_path)
        new_text = "Driftwood cast iron skillet with a walnut handle"
        producer = KafkaProducer(**client_options(settings))
        producer.send(
            settings.items_topic,
            key=edited.encode(),
            value=json.dumps({"item_id": edited, "text": new_text}).encode(),
        )
        producer.flush()
        producer.close()
        wait_until(
            lambda: refreshed(settings, "item_vectors") >= len(touched),
            what="the refresh of the edited item's users",
            explain=worker.log_tail,
        )
        passes = metric_sum(scrape(settings.metrics_port), "interest_decay_duration_seconds_count")
        wait_until(
            lambda: (
                metric_sum(scrape(settings.metrics_port), "interest_decay_duration_seconds_count")
                >= passes + 8
            ),
            what="two more ticks",
        )  # nobody else is refreshed on later ticks
        count = refreshed(settings, "item_vectors")
        assert worker.alive, worker.log_tail()
    finally:
        worker.stop()
    assert count == len(touched)

    vectors = stored_vectors(settings)
    old = ItemEncoder(settings.encoder_path, "cpu").encode(
        [next(i["text"] for i in sample_catalogue if i["item_id"] == edited)]
    )[0]
    assert not np.allclose(vectors[edited], old, atol=1e-3)
    states = load_user_states(settings.data_dir)
    assert set(states) == {e["user_id"] for e in sample_events}
    for user, state in states.items():
        lt_sum, lt_weight = from_history(state, vectors, settings.half_life_s)
        # those who touched the edited item: recomputed with its new vector; the others: the incremental sum
        # the worker kept, which their history makes too
        assert np.allclose(state.lt_sum, lt_sum, rtol=1e-4, atol=1e-4), user
        assert state.lt_weight == pytest.approx(lt_weight, rel=1e-5)
        if user in touched:
            assert state.history.fingerprints[state.history.items.index(edited)] == fingerprint(
                vectors[edited]
            )
            before, _ = from_history(state, {**vectors, edited: old}, settings.half_life_s)
            assert not np.allclose(state.lt_sum, before, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def encoder_b(tmp_path_factory, sample_catalogue):
    """Another encoder of the same size: its vectors would mix with the first one's without an error."""
    return build_tiny_bert(
        tmp_path_factory.mktemp("tiny-bert-b"), [i["text"] for i in sample_catalogue], seed=1
    )


# worker B reads the table's changelog from where A's local copy stopped
@pytest.mark.broker_bug("tansu-list-offsets")
def test_a_new_encoder_is_rolled_out_without_mixing_spaces(
    settings, encoder_b, sample_events, sample_catalogue, tmp_path
):
    a = WorkerProcess(settings, tmp_path / "a.log").start()
    try:
        run_sample(settings, a, sample_events, tmp_path)
    finally:
        a.stop()
    before = load_user_states(settings.data_dir)
    space_a = ItemEncoder(settings.encoder_path, "cpu").space
    assert {x.space for x in before.values()} == {space_a}

    # The procedure: the catalogue embedded by B into a topic of its own, then the workers switched to both.
    b_settings = replace(
        settings,
        encoder_path=str(encoder_b),
        item_vectors_topic=f"{settings.item_vectors_topic}-b",
        web_port=free_port(),
        metrics_port=free_port(),
    )
    assert reembed(b_settings, progress=False).embedded == len(sample_catalogue)
    # a second run publishes only what changed
    assert reembed(b_settings, progress=False).embedded == 0
    b = WorkerProcess(b_settings, tmp_path / "b.log").start()
    users = sorted(before)
    try:
        b.wait_ready(min_items=len(sample_catalogue))
        wait_until(
            lambda: refreshed(b_settings, "encoder") >= len(users),
            what="every user recomputed in B's space",
            explain=b.log_tail,
        )
        ts = max(e["ts"] for e in sample_events) + 60.0
        news = [
            {
                "event_id": f"after-{n}",
                "user_id": user,
                "item_id": sample_catalogue[n]["item_id"],
                "type": "click",
                "ts": ts + n,
            }
            for n, user in enumerate(users[:3])
        ]
        send_events(b_settings, news, progress=False)
        recs = wait_until(
            lambda: (
                (r := latest_recommendations(b_settings))
                and all(
                    r.get(e["user_id"]) and r[e["user_id"]].event_id == e["event_id"] for e in news
                )
                and r
            ),
            what="recommendations after B",
        )
        assert b.alive, b.log_tail()
    finally:
        b.stop()
    assert b.exit_code == 0, b.log_tail()

    encoder = ItemEncoder(str(encoder_b), "cpu")
    vectors = stored_vectors(b_settings)
    texts = {i["item_id"]: i["text"] for i in sample_catalogue}
    # B's only
    assert np.allclose(
        np.stack([vectors[i] for i in texts]), encoder.encode(list(texts.values())), atol=1e-5
    )
    vectors_a = dict(
        zip(texts, ItemEncoder(settings.encoder_path, "cpu").encode(list(texts.values())))
    )
    states = load_user_states(b_settings.data_dir)
    assert {x.space for x in states.values()} == {encoder.space}
    model = InterestModel.untrained(encoder.dim, settings.hidden_size, encoder.name)
    for user, state in states.items():
        lt_sum, lt_weight = from_history(state, vectors, settings.half_life_s)
        assert np.allclose(state.lt_sum, lt_sum, rtol=1e-4, atol=1e-4), user
        assert not np.allclose(
            state.lt_sum,
            from_history(state, vectors_a, settings.half_life_s)[0],
            rtol=1e-2,
            atol=1e-2,
        )
        new = [e for e in news if e["user_id"] == user]
        if not new:
            # the whole history recomputed
            assert state.lt_weight == pytest.approx(before[user].lt_weight, rel=1e-5)
        hidden = torch.zeros(1, settings.hidden_size)  # the short-term state restarted in B's space
        with torch.inference_mode():
            for e in new:
                item_vec = model.item_space(
                    torch.from_numpy(vectors[e["item_id"]][None]), model.rows([e["item_id"]])
                )[:, :-1]
                hidden = model.step(hidden, item_vec, torch.tensor([0]))
        assert np.allclose(state.hidden, hidden[0].numpy(), atol=1e-5), user

    # What B published after the switch is what B's catalogue and the stored (B-only) states make.
    catalogue = Catalogue(encoder.dim, encoder.space)
    store = ItemStore(b_settings.data_dir / "items")
    catalogue.upsert(list(store))
    store.close()
    updater = InterestUpdater(model, catalogue, settings.updater_config())
    for e, expected in zip(news, updater.recommend([states[e["user_id"]] for e in news])):
        published = recs[e["user_id"]]
        assert [i.item_id for i in published.items] == [i.item_id for i in expected]
        assert np.allclose(
            [i.score for i in published.items], [i.score for i in expected], atol=1e-5
        )
