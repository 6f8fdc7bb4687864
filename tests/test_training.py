import importlib.util
import json
import math
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from models.data import embed_items, load_movielens, write_log
from models.encoder import ItemEncoder
from models.evaluate import build_catalogue
from models.interest import InterestModel, ModelConfig
from models.records import CatalogueItem, Event
from models.train import (
    LaneState,
    Sequences,
    TrainConfig,
    _pass,
    build_sequences,
    lanes,
    train,
    window_logits,
)
from models.updater import Delivered, InterestUpdater, UpdaterConfig
from tests.model_helpers import random_model

SETTINGS = UpdaterConfig(half_life_s=3600.0)  # the sample log spans hours: the decay must matter


def events_of(rows: list[dict]) -> list[Event]:
    return [Event(r["event_id"], r["user_id"], r["item_id"], r["type"], r["ts"]) for r in rows]


@pytest.fixture(scope="module")
def embedded(tiny_encoder, sample_catalogue):
    items = [CatalogueItem(i["item_id"], i["text"]) for i in sample_catalogue]
    return items, ItemEncoder(str(tiny_encoder), "cpu").encode([i.text for i in items])


def popular_log(items: list[CatalogueItem], users: int = 40, per_user: int = 20) -> list[Event]:
    """A tiny synthetic log with something to learn: 70% of the events go to five items."""
    rng = random.Random(0)
    ids = [i.item_id for i in items]
    events = [
        Event(
            f"u{u}-{n}",
            f"u{u}",
            rng.choice(ids[:5]) if rng.random() < 0.7 else rng.choice(ids),
            "click",
            1000.0 + 60 * n + u,
        )
        for u in range(users)
        for n in range(per_user)
    ]
    return sorted(events, key=lambda e: e.ts)


def test_training_lowers_the_loss_and_the_checkpoint_serves(embedded, tmp_path):
    items, emb = embedded
    events = popular_log(items)
    index = {i.item_id: n for n, i in enumerate(items)}
    config = TrainConfig(dim=16, hidden=16, epochs=4, lr=1e-2, lanes=8, window=10, val_fraction=0.0)
    model, report = train(events, index, emb, "tiny", SETTINGS, config)
    losses = [r["train_loss"] for r in report.history]
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.5  # ln(96) = 4.56 at the start

    version = model.save(tmp_path / "m.pt")
    loaded = InterestModel.load(tmp_path / "m.pt")
    # a learned row each, in catalogue order
    trained = [i.item_id for i in items if i.item_id in {e.item_id for e in events}]
    # the stream settings it learned under are recorded: a worker or evaluation with others is told
    assert loaded.version == version and loaded.config == ModelConfig(
        32,
        16,
        16,
        "tiny",
        known_items=len(trained),
        rebuys=False,
        half_life_s=3600.0,
        click_weight=1.0,
        purchase_weight=3.0,
    )
    other = replace(SETTINGS, half_life_s=7200.0, purchase_weight=2.0)
    assert loaded.config.stream_mismatch(SETTINGS) == {}
    assert loaded.config.stream_mismatch(other) == {"half_life_s": 3600.0, "purchase_weight": 3.0}
    # a checkpoint from before: not recorded
    assert ModelConfig(32, 16, 16, "tiny").stream_mismatch(other) == {}
    assert loaded.item_ids == trained
    updater = InterestUpdater(loaded, build_catalogue(items, emb), SETTINGS)
    result = updater.apply([Delivered(e, "t:0", n) for n, e in enumerate(events[:20])], {})
    assert result.recommendations and all(
        len(r.items) == SETTINGS.top_k for r in result.recommendations
    )


def test_early_stopping_then_refit_on_the_whole_period(embedded):
    items, emb = embedded
    config = TrainConfig(
        dim=8, hidden=8, epochs=3, patience=1, lanes=8, window=10, val_fraction=0.2
    )
    _, report = train(
        popular_log(items),
        {i.item_id: n for n, i in enumerate(items)},
        emb,
        "tiny",
        SETTINGS,
        config,
    )
    fit = [r for r in report.history if not r.get("refit")]
    assert {"val_loss", "val_hr@10", "val_ndcg@10"} <= set(fit[0])
    assert report.epochs == max(fit, key=lambda r: r["val_ndcg@10"])["epoch"]
    assert len(report.history) - len(fit) == report.epochs  # refit rows


def run_windows(
    model: InterestModel,
    emb: torch.Tensor,
    ids: list[str],
    seqs: Sequences,
    grid: torch.Tensor,
    window: int,
    exclude_seen: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``window_logits`` over the whole of a one-lane ``grid``, ``window`` events at a time, the lane's state
    carried across: (logits [T, N], candidate [T])."""
    lane, logits, candidate = LaneState.empty(1, model.config.hidden), [], []
    with torch.no_grad():
        for w in range(0, grid.shape[1], window):
            out, cand, lane = window_logits(
                model, emb, model.rows(ids), seqs, grid[:, w : w + window], lane, exclude_seen
            )
            logits.append(out)  # one lane: [W, N]
            candidate.append(cand)
    return torch.cat(logits), torch.cat(candidate)


@pytest.mark.parametrize(
    ("rebuys", "half_life_s"),
    [
        (False, SETTINGS.half_life_s),
        # users span up to 9.4 h: the stream's history keeps every item (6.6 half-lives)
        (True, 10 * SETTINGS.half_life_s),
        # the stream's history drops items untouched for 6.6 half-lives: so does training's
        (True, SETTINGS.half_life_s),
    ],
    ids=["seen-excluded", "rebuys", "rebuys-pruned-history"],
)
def test_training_sees_the_states_the_stream_holds(embedded, sample_events, rebuys, half_life_s):
    """Long-term inputs, the scores of every catalogue item before each event and whether its item
    is a candidate:
    training path vs stream path, with learned rows and biases, excluding seen items (the default)
    or adding the
    re-buy term instead. Three users share one lane and the window cuts through them: restarts and
    carried state
    are both checked."""
    items, emb = embedded
    ids = [i.item_id for i in items]
    # users re-buy: the seen masks and re-buy terms are put to work
    events = events_of(sample_events)
    index = {item: n for n, item in enumerate(ids)}
    # half the items known
    model = random_model(32, 16, 16, known=ids[::2], rebuys=rebuys, encoder="tiny", seed=1)
    settings = replace(
        SETTINGS,
        half_life_s=half_life_s,
        exclude_seen=not rebuys,
        top_k=len(items),
        recent_items=len(items),
    )
    seqs = build_sequences(events, index, emb, settings, rebuys=rebuys)
    # build_sequences numbers users by first event
    users = list(dict.fromkeys(e.user_id for e in events))
    grid = lanes(seqs, [2, 0, 1], np.diff(seqs.start).tolist(), 1)
    logits, candidate = run_windows(model, torch.from_numpy(emb), ids, seqs, grid, 7, not rebuys)

    updater = InterestUpdater(model, build_catalogue(items, emb), settings)
    row = 0
    for u in [2, 0, 1]:
        state = updater.new_state()
        for t, e in enumerate(e for e in events if e.user_id == users[u]):
            n = seqs.start[u] + t
            assert grid[0, row] == n
            assert np.allclose(
                seqs.lt_avg[n].numpy(), state.long_term, atol=1e-6
            ) and seqs.lt_weight[n].item() == pytest.approx(state.lt_weight)
            # an excluded item is not there: -inf
            scores = {i.item_id: i.score for i in updater.recommend([state])[0]}
            assert np.allclose(
                [scores.get(item, -np.inf) for item in ids], logits[row].numpy(), atol=1e-4
            )
            assert candidate[row].item() == (rebuys or e.item_id not in state.recent_items)
            state = updater.apply([Delivered(e, "t:0", t)], {e.user_id: state}).states[e.user_id]
            row += 1
    assert rebuys or not candidate.all()  # a repeated item: the rule was exercised


def one_user(
    items: list[int], times: list[float] | None = None, rebuys: bool = False
) -> tuple[torch.Tensor, Sequences, InterestModel]:
    """Five items' embeddings, one user's clicks of ``items`` (at ``times``, default one a second)
    and a random model."""
    torch.manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    times = times or [float(n + 1) for n in range(len(items))]
    ev = [Event(f"e{n}", "u", f"i{i}", "click", t) for n, (i, t) in enumerate(zip(items, times))]
    return (
        emb,
        build_sequences(ev, {f"i{n}": n for n in range(5)}, emb.numpy(), SETTINGS, rebuys=rebuys),
        random_model(4, 3, 3, rebuys=rebuys),
    )


IDS5 = [f"i{n}" for n in range(5)]


@pytest.mark.parametrize(
    ("exclude_seen", "masked", "candidate"),
    [
        # before each event, the items the user had are masked; i0 again: masked, so not a candidate
        # (a miss, as the evaluation counts it)
        (True, [[], [0], [0, 1], [0, 1]], [True, True, False, True]),
        (False, [[], [], [], []], [True, True, True, True]),  # re-buys are candidates
    ],
    ids=["seen-excluded", "rebuys"],
)
def test_training_masks_the_items_the_user_had_and_a_masked_target_is_a_miss(
    exclude_seen, masked, candidate
):
    emb, seqs, model = one_user([0, 1, 0, 2], rebuys=not exclude_seen)
    grid = lanes(seqs, [0], [4], 1)
    logits, cand = run_windows(model, emb, IDS5, seqs, grid, 4, exclude_seen)
    assert [torch.isinf(row).nonzero().flatten().tolist() for row in logits] == masked
    assert cand.tolist() == candidate
    loss, _, ranks = _pass(
        model,
        emb,
        model.rows(IDS5),
        seqs,
        grid,
        TrainConfig(window=4, dropout=0.0, exclude_seen=exclude_seen),
    )
    # the masked target is left out of the loss: its -inf logit would make it infinite
    assert math.isfinite(loss)
    assert (ranks > 0).tolist() == candidate  # rank 0: a miss


def test_sequences_built_for_one_mode_are_refused_in_the_other():
    # the seen mask's items: no re-buy weights to score with
    emb, seqs, model = one_user([0, 1, 0], rebuys=False)
    with pytest.raises(ValueError, match="without re-buys"):
        run_windows(model, emb, IDS5, seqs, lanes(seqs, [0], [3], 1), 3, exclude_seen=False)


def test_an_event_in_the_same_second_as_the_previous_one_is_predicted_from_the_state_before_both():
    emb, seqs, model = one_user([0, 1, 2, 3], times=[1.0, 2.0, 2.0, 3.0])  # i1 and i2: one basket
    logits, _ = run_windows(model, emb, IDS5, seqs, lanes(seqs, [0], [4], 1), 4, exclude_seen=True)
    # not after i1: i1 is unmasked and the GRU has not stepped with it
    assert torch.equal(logits[2], logits[1])
    assert torch.equal(seqs.lt_avg[2], seqs.lt_avg[1]) and seqs.lt_weight[2] == seqs.lt_weight[1]
    # after the basket: both seen
    assert torch.isinf(logits[3, :3]).all() and not torch.allclose(logits[3, 3:], logits[2, 3:])


def rebuy_log(
    items: list[CatalogueItem], rebuy: bool, users: int = 24, per_user: int = 12
) -> list[Event]:
    """Purchases a minute apart; with ``rebuy`` each user buys three items of their own again and again, else
    never the same item twice."""
    rng = random.Random(0)
    ids = [i.item_id for i in items]
    own = [rng.sample(ids, 3) for _ in range(users)]
    events = [
        Event(
            f"u{u}-{n}",
            f"u{u}",
            rng.choice(own[u]) if rebuy else ids[(7 * u + n) % len(ids)],
            "purchase",
            1000.0 + 60 * n + u,
        )
        for u in range(users)
        for n in range(per_user)
    ]
    return sorted(events, key=lambda e: e.ts)


@pytest.mark.parametrize("rebuy", [True, False], ids=["users-rebuy", "users-never-rebuy"])
def test_training_with_rebuys_as_candidates_learns_the_rebuy_term_the_log_calls_for(
    embedded, rebuy
):
    items, emb = embedded
    config = TrainConfig(
        dim=8, hidden=8, epochs=5, lr=3e-2, lanes=8, window=12, val_fraction=0.0, exclude_seen=False
    )
    model, _ = train(
        rebuy_log(items, rebuy),
        {i.item_id: n for n, i in enumerate(items)},
        emb,
        "tiny",
        SETTINGS,
        config,
    )
    assert model.config.rebuys
    start = math.log(2.0)  # r(1, 1) of a fresh model: log1p(1)
    with torch.no_grad():
        learned = model.rebuy(torch.tensor(1.0), torch.tensor(1.0)).item()
    assert (learned > start + 0.5) if rebuy else (learned < start - 0.5), learned


def test_item_embeddings_are_cached_per_encoder_and_texts(tmp_path):
    class Counting:
        name, max_tokens, calls = "fake", 8, 0

        def encode(self, texts, progress=False):
            self.calls += 1
            return np.ones((len(texts), 3), np.float32)

    enc = Counting()
    items = [CatalogueItem("a", "alpha"), CatalogueItem("b", "beta")]
    first = embed_items(enc, items, tmp_path)
    assert np.array_equal(embed_items(enc, items, tmp_path), first) and enc.calls == 1
    embed_items(enc, [CatalogueItem("a", "alpha changed"), items[1]], tmp_path)
    assert enc.calls == 2 and len(list(tmp_path.glob("items-fake-*.npy"))) == 2
    # one text, not the two above
    assert embed_items(enc, [CatalogueItem("ab", "alpha\nbeta")], tmp_path).shape == (1, 3)


@pytest.mark.skipif(
    importlib.util.find_spec("recbole") is None, reason="MovieLens-100K ships with recbole"
)
def test_movielens_becomes_an_event_log_split_by_global_time(tmp_path):
    log = load_movielens()
    assert len(log.events) == 100_000 and len(log.items) == 1682
    assert all(a.ts <= b.ts for a, b in zip(log.events, log.events[1:]))
    # 196 242 3 881250949: rating 3 is a click
    first = next(e for e in log.events if e.event_id == "ml-0")
    assert (first.user_id, first.item_id, first.type, first.ts) == (
        "196",
        "242",
        "click",
        881250949.0,
    )
    assert log.items[0] == CatalogueItem("1", "Toy Story (1995). Animation, Children's, Comedy")
    train_part, test_part, cutoff = log.split(0.2)
    assert len(train_part) + len(test_part) == 100_000 and abs(len(test_part) - 20_000) < 50
    assert max(e.ts for e in train_part) < cutoff == test_part[0].ts

    paths = write_log(log, tmp_path, 0.2)
    rows = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    assert len(rows) == len(test_part) and set(rows[0]) == {
        "event_id",
        "user_id",
        "item_id",
        "type",
        "ts",
    }
    assert len(paths["catalogue"].read_text().splitlines()) == 1682


def test_train_command_defaults_are_the_train_config_defaults():
    from cli.main import build_parser

    args = build_parser().parse_args(["train"])
    config = TrainConfig()
    for name in ("dim", "hidden", "epochs", "patience", "lr", "dropout", "lanes", "window", "seed"):
        assert getattr(args, name) == getattr(config, name), name
    assert args.no_refit is not config.refit and args.trend_half_life == config.trend_half_life_s
