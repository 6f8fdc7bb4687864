"""The trend term: each item's share of the recent events (models.trending), the same in the worker, in
training and in the scores the evaluation ranks, learned where demand moves and saved with the model."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from models.catalogue import Catalogue
from models.evaluate import StreamRecommender, build_catalogue
from models.interest import InterestModel
from models.records import CatalogueItem, Event
from models.train import LaneState, TrainConfig, _pass, build_sequences, lanes, train, window_logits
from models.trending import Trending, feature, snapshots
from models.updater import Delivered, InterestUpdater, UpdaterConfig
from tests.model_helpers import random_model
from tests.test_reasons import catalogue_of
from tests.test_training import SETTINGS, embedded  # noqa: F401  (a fixture)

DAY = 86400.0


def brute_feature(
    items: np.ndarray, times: np.ndarray, n: int, at: float, half_life_s: float
) -> np.ndarray:
    """The module docstring's f_i at time ``at`` from the events strictly before it, summed the plain way."""
    before = times < at
    counts = np.zeros(n)
    np.add.at(counts, items[before], 2.0 ** (-(at - times[before]) / half_life_s))
    return np.log1p(n * counts / counts.sum()) if counts.sum() else np.zeros(n)


def test_the_worker_counts_give_the_decayed_shares_in_any_batching_and_across_a_rescale():
    rng = np.random.default_rng(0)
    n, h = 50, 3600.0
    items = rng.integers(n, size=2000)
    # 2000 half-lives: the forward weights are rescaled on the way
    times = np.sort(rng.uniform(0, 2000 * h, 2000))
    catalogue, whole, batched = (
        catalogue_of(np.eye(n, 4, dtype=np.float32)),
        Trending(h),
        Trending(h),
    )
    whole.add([f"i{j}" for j in items], times)
    # out of order within a batch, as a micro-batch holds several users
    for start in range(0, 2000, 37):
        part = slice(start, start + 37)
        order = rng.permutation(len(items[part]))
        batched.add([f"i{j}" for j in items[part][order]], times[part][order])
        seen = slice(0, start + 37)
        # read after every batch: the rows follow the events added since
        assert np.allclose(
            batched.feature(catalogue),
            brute_feature(items[seen], times[seen], n, times[seen][-1] + 1e-6, h),
            atol=1e-5,
        )
    want = brute_feature(items, times, n, times[-1] + 1e-6, h)
    assert np.allclose(whole.feature(catalogue), want, atol=1e-5) and np.allclose(
        batched.feature(catalogue), want, atol=1e-5
    )
    assert whole.t0 is not None and whole.t0 > 1000 * h  # rescaled, and still exact

    catalogue.remove(["i3"])  # rows move: i49 takes row 3
    batched.add(["i49", "i7"], np.array([times[-1], times[-1]]))
    counts = np.zeros(n)
    np.add.at(counts, items, 2.0 ** (-(times[-1] - times) / h))
    counts[[49, 7]] += 1.0
    counts[3], counts[49] = counts[49], 0.0
    assert np.allclose(
        batched.feature(catalogue), np.log1p(49 * counts[:49] / counts[:49].sum()), atol=1e-5
    )
    # no events: no term
    assert np.array_equal(Trending(h).feature(catalogue), np.zeros(49, np.float32))
    with pytest.raises(ValueError):
        Trending(0.0)


def test_training_snapshots_hold_only_earlier_events_and_lag_at_most_an_eighth_of_the_half_life():
    rng = np.random.default_rng(1)
    n, h = 20, 8 * 3600.0
    items, times = rng.integers(n, size=600), np.sort(rng.uniform(0, 10 * DAY, 600))
    starts, table = snapshots(items, times, n, h)
    at = np.searchsorted(starts, times, "right") - 1
    assert (starts[at] <= times).all() and (times - starts[at] < h / 8 + 1e-6).all()
    for k in (0, 1, len(starts) // 2, len(starts) - 1):
        assert np.allclose(table[k], brute_feature(items, times, n, starts[k], h), atol=1e-5)
    assert (
        np.array_equal(table[0], np.zeros(n, np.float32))
        and feature(np.zeros(4)).tolist() == [0.0] * 4
    )


def test_the_scores_add_the_trend_of_every_users_events_and_rank_as_the_worker_publishes():
    rng = np.random.default_rng(2)
    n, dim, h = 400, 12, 3600.0
    catalogue = build_catalogue(
        [CatalogueItem(f"i{j}", "") for j in range(n)],
        rng.standard_normal((n, dim)).astype(np.float32),
    )
    model = random_model(dim, 8, 6, known=catalogue.ids[::2], trend_half_life_s=h)
    updater = InterestUpdater(model, catalogue, UpdaterConfig(bf16_scoring=False, recent_items=50))
    # 30 users over a day; a fifth of the events go to ten items
    items = np.where(rng.random(600) < 0.2, rng.integers(10, size=600), rng.integers(n, size=600))
    times = np.sort(rng.uniform(0, DAY, 600)) + 1_700_000_000.0
    events = [
        Event(f"e{e}", f"u{e % 30}", f"i{items[e]}", "click", float(times[e])) for e in range(600)
    ]
    states: dict = {}
    for start in range(0, 600, 50):  # micro-batches, in time order
        batch = [Delivered(e, "t:0", start + k) for k, e in enumerate(events[start : start + 50])]
        states.update(
            updater.apply(
                batch, {d.event.user_id: states.get(d.event.user_id) for d in batch}
            ).states
        )
    users = sorted(states)
    got = updater.scores([states[u] for u in users])
    trend = brute_feature(items, times, n, float(times[-1]) + 1e-6, h)
    with torch.inference_mode():
        st = [states[u] for u in users]
        q = model.scoring_query(
            model.query(
                torch.from_numpy(np.stack([s.hidden for s in st])),
                torch.from_numpy(np.stack([s.long_term for s in st])),
                torch.tensor([s.lt_weight for s in st]),
            )
        )
        dense = (q @ model.item_space(catalogue.embeddings, model.rows(catalogue.ids)).T).numpy()
    assert np.allclose(got, dense + 0.7 * trend, atol=1e-4)  # random_model's trend weight
    for row, recs, s in zip(got, updater.recommend(st), st):
        row = row.copy()
        row[[catalogue.index[i] for i in s.recent_items]] = -np.inf
        assert [catalogue.ids[j] for j in np.argsort(-row, kind="stable")[:10]] == [
            i.item_id for i in recs
        ]
    moved = np.mean(
        [set(np.argsort(-a)[:10]) != set(np.argsort(-b)[:10]) for a, b in zip(got, dense)]
    )
    assert moved > 0.5, moved  # the trend changes most lists: the checks above have teeth
    # replayed in time order
    assert not StreamRecommender("m", model, catalogue, UpdaterConfig()).independent_users


def test_training_adds_the_snapshot_trend_to_every_items_logit(embedded):  # noqa: F811
    items, emb = embedded
    ids = [i.item_id for i in items]
    rng = random.Random(3)
    events = sorted(
        (
            Event(f"e{n}", f"u{n % 4}", rng.choice(ids), "click", 1000.0 + 900 * n)
            for n in range(40)
        ),
        key=lambda e: e.ts,
    )
    seqs = build_sequences(
        events, {i: n for n, i in enumerate(ids)}, emb, SETTINGS, trend_half_life_s=3600.0
    )
    plain = build_sequences(events, {i: n for n, i in enumerate(ids)}, emb, SETTINGS)
    model = random_model(32, 8, 8, trend_half_life_s=3600.0)
    grid = lanes(seqs, [0, 1, 2, 3], np.diff(seqs.start).tolist(), 4)
    with torch.no_grad():
        with_trend, _, _ = window_logits(
            model, torch.from_numpy(emb), model.rows(ids), seqs, grid, LaneState.empty(4, 8), True
        )
        without, _, _ = window_logits(
            model, torch.from_numpy(emb), model.rows(ids), plain, grid, LaneState.empty(4, 8), True
        )
    assert seqs.trend is not None and seqs.trend_at is not None
    want = without + 0.7 * seqs.trend[seqs.trend_at[grid.clamp(min=0)]].view(without.shape)
    finite = torch.isfinite(without)
    assert (
        torch.allclose(with_trend[finite], want[finite], atol=1e-5)
        and (seqs.trend[seqs.trend_at] > 0).any()
    )


def hot_item_log(items: list[CatalogueItem], users: int = 40, days: int = 12) -> list[Event]:
    """Each day another item is in fashion: half of that day's purchases are of it, the rest spread evenly."""
    rng = random.Random(4)
    ids = [i.item_id for i in items]
    events = []
    for d in range(days):
        hot = ids[(5 * d) % len(ids)]
        for n in range(4 * users):
            t = 1000.0 + d * DAY + DAY * n / (4 * users)
            events.append(
                Event(
                    f"d{d}-{n}",
                    f"u{rng.randrange(users)}",
                    hot if rng.random() < 0.5 else rng.choice(ids),
                    "purchase",
                    t,
                )
            )
    return events


def test_training_learns_the_trend_where_demand_moves_day_to_day_and_ranks_better_for_it(embedded):  # noqa: F811
    items, emb = embedded
    index = {i.item_id: n for n, i in enumerate(items)}
    log = hot_item_log(items)
    base = TrainConfig(
        dim=8, hidden=8, epochs=4, lr=3e-2, lanes=8, window=16, val_fraction=0.0, exclude_seen=False
    )
    with_trend, _ = train(
        log,
        index,
        emb,
        "tiny",
        SETTINGS,
        TrainConfig(**{**base.__dict__, "trend_half_life_s": DAY / 4}),
    )
    without, _ = train(log, index, emb, "tiny", SETTINGS, base)
    assert with_trend.trend_weight.item() > 0.5  # learned up from 0

    def ndcg(model: InterestModel, config: TrainConfig) -> float:
        seqs = build_sequences(
            log, index, emb, SETTINGS, config.trend_half_life_s, rebuys=not config.exclude_seen
        )
        grid = lanes(seqs, list(range(len(seqs.start) - 1)), np.diff(seqs.start).tolist(), 8)
        _, _, ranks = _pass(
            model, torch.from_numpy(emb), model.rows([i.item_id for i in items]), seqs, grid, config
        )
        hit = (ranks >= 1) & (ranks <= 10)
        return float((hit / torch.log2(ranks.clamp(min=1) + 1.0)).mean())

    assert (
        ndcg(with_trend, TrainConfig(**{**base.__dict__, "trend_half_life_s": DAY / 4}))
        > ndcg(without, base) + 0.05
    )


def test_a_trend_model_round_trips_through_its_checkpoint(tmp_path):
    model = random_model(6, 4, 3, trend_half_life_s=DAY)
    model.save(tmp_path / "m.pt")
    loaded = InterestModel.load(tmp_path / "m.pt")
    assert loaded.config.trend_half_life_s == DAY and loaded.trend_weight.item() == pytest.approx(
        0.7
    )
    # none without a half-life: older checkpoints load as before
    assert not hasattr(random_model(6, 4, 3), "trend_weight")


def test_a_restarted_worker_goes_on_from_the_trend_counts_it_saved(tiny_encoder, tmp_path):
    """Runtime.load restores what save_trending saved in the item store (RocksDB) for a model of the same
    half-life; a damaged record, or another half-life, starts empty instead of stopping the worker."""
    from streams.runtime import Runtime
    from streams.settings import Settings

    def start(half_life_s: float) -> Runtime:
        checkpoint = tmp_path / f"model-{half_life_s}.pt"
        if not checkpoint.exists():
            random_model(32, 8, 8, encoder=tiny_encoder.name, trend_half_life_s=half_life_s).save(
                checkpoint
            )
        runtime = Runtime(
            Settings(
                data_dir=tmp_path / "state",
                encoder_path=str(tiny_encoder),
                encoder_device="cpu",
                torch_threads=0,
                checkpoint=str(checkpoint),
            ),
            {},
        )
        runtime.load()
        return runtime

    runtime = start(DAY)
    assert runtime.updater.trending is not None and runtime.encoder.dim == 32
    runtime.updater.trending.add(["a", "b", "a"], np.array([10.0, 20.0, 30.0]))
    runtime.save_trending()
    runtime.store.close()
    again = start(DAY)
    assert (
        again.updater.trending is not None
        and again.updater.trending.counts == runtime.updater.trending.counts
    )
    again.store.save_trending(b'{"half_life_s": 86400, "t0": 1.0, "counts": {"a": NaN}}')
    again.store.close()
    damaged = start(DAY)
    assert damaged.updater.trending is not None and damaged.updater.trending.counts == {}
    damaged.save_trending()
    damaged.store.close()
    other = start(DAY / 2)
    assert other.updater.trending is not None and other.updater.trending.half_life_s == DAY / 2
    other.store.close()


def test_calibration_scales_each_feature_weight_to_the_best_validation_score_the_smaller_on_ties():
    from models.train import calibrate

    # trend weight 0.7, count weight 0.3
    model = random_model(6, 4, 3, rebuys=True, trend_half_life_s=DAY)
    calls = []

    # best at trend weight 3 and count weight >= 1.2 (flat beyond: a tie)
    def score(m: InterestModel) -> float:
        calls.append((m.trend_weight.item(), m.d_rebuy.item()))
        return -abs(m.trend_weight.item() - 3.0) - max(0.0, 1.2 - m.d_rebuy.item())

    assert calibrate(model, score) == {"trend_weight": 4.0, "d_rebuy": 4.0}
    assert model.trend_weight.item() == pytest.approx(
        2.8
    ) and model.d_rebuy.item() == pytest.approx(1.2)
    # the count weight is scaled with the trend weight chosen
    assert len(calls) == 8 and calls[4][0] == pytest.approx(2.8)
    # no trend, no re-buy term: nothing to calibrate
    assert calibrate(random_model(6, 4, 3), score) == {}


@pytest.mark.e2e
def test_a_trend_models_worker_explains_the_trend_and_keeps_its_counts_across_a_restart(
    settings, sample_events, tmp_path
):
    """A real worker (broker, RocksDB, tiny BERT) serving a trend checkpoint: every published
    item's parts hold
    the trend term and add up to its score; the decay passes save the counts of every applied event in the
    item store, and the next start reads them back."""
    from dataclasses import replace

    from cli.worker_process import WorkerProcess
    from models.encoder import ItemEncoder
    from state.item_store import ItemStore
    from tests.helpers import latest_recommendations, metric_sum, run_sample, scrape, wait_until

    encoder = ItemEncoder(settings.encoder_path, "cpu")
    checkpoint = tmp_path / "trend.pt"
    random_model(
        encoder.dim, 16, settings.hidden_size, encoder=encoder.name, trend_half_life_s=3600.0
    ).save(checkpoint)
    settings = replace(settings, checkpoint=str(checkpoint), reasons=True)
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        run_sample(settings, worker, sample_events, tmp_path)
        passes = metric_sum(scrape(settings.metrics_port), "interest_decay_duration_seconds_count")
        wait_until(
            lambda: (
                metric_sum(scrape(settings.metrics_port), "interest_decay_duration_seconds_count")
                >= passes + 2 * settings.partitions
            ),
            what="two decay passes after the last event (each saves the counts)",
        )
        recs = latest_recommendations(settings)
    finally:
        worker.stop()
    assert worker.exit_code == 0, worker.log_tail()

    trend_parts = [
        item.reason.parts["trend"]
        for rec in recs.values()
        for item in rec.items
        if item.reason is not None
    ]
    assert len(trend_parts) == settings.top_k * len(recs) and max(trend_parts) > 0
    assert all(
        sum(item.reason.parts.values()) == pytest.approx(item.score, rel=1e-5, abs=1e-6)
        for rec in recs.values()
        for item in rec.items
        if item.reason is not None
    )
    store = ItemStore(settings.data_dir / "items")
    raw = store.trending()
    catalogue = Catalogue(encoder.dim)
    catalogue.upsert(list(store))
    store.close()
    assert raw is not None
    index = catalogue.index
    items, times = (
        np.array([index[e["item_id"]] for e in sample_events]),
        np.array([e["ts"] for e in sample_events]),
    )
    assert np.allclose(
        Trending.from_bytes(raw).feature(catalogue),
        brute_feature(items, times, len(catalogue), times.max() + 1e-6, 3600.0),
        atol=1e-4,
    )  # every applied event, once

    again = WorkerProcess(settings, tmp_path / "again.log").start()
    try:
        again.wait_ready(min_items=96)
        assert (
            f"trend counts of {len(set(items.tolist()))} items restored"
            in (tmp_path / "again.log").read_text()
        )
    finally:
        again.stop()
    assert again.exit_code == 0, again.log_tail()
