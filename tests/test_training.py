import importlib.util
import json
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
from models.train import TrainConfig, build_sequences, lanes, train, window_logits
from models.updater import Delivered, InterestUpdater, UpdaterConfig

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
    events = [Event(f"u{u}-{n}", f"u{u}", rng.choice(ids[:5]) if rng.random() < 0.7 else rng.choice(ids), "click", 1000.0 + 60 * n + u)
              for u in range(users) for n in range(per_user)]
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
    assert loaded.version == version and loaded.config == ModelConfig(32, 16, 16, "tiny")
    updater = InterestUpdater(loaded, build_catalogue(items, emb), SETTINGS)
    result = updater.apply([Delivered(e, "t:0", n) for n, e in enumerate(events[:20])], {})
    assert result.recommendations and all(len(r.items) == SETTINGS.top_k for r in result.recommendations)


def test_early_stopping_then_refit_on_the_whole_period(embedded):
    items, emb = embedded
    config = TrainConfig(dim=8, hidden=8, epochs=3, patience=1, lanes=8, window=10, val_fraction=0.2)
    _, report = train(popular_log(items), {i.item_id: n for n, i in enumerate(items)}, emb, "tiny", SETTINGS, config)
    fit = [r for r in report.history if not r.get("refit")]
    assert {"val_loss", "val_hr@10", "val_ndcg@10"} <= set(fit[0])
    assert report.epochs == max(fit, key=lambda r: r["val_ndcg@10"])["epoch"]
    assert len(report.history) - len(fit) == report.epochs  # refit rows


def test_training_sees_the_states_the_stream_holds(embedded, sample_events):
    """Long-term inputs and the scores of every catalogue item before each event: training path vs stream path.
    Three users share one lane and the window cuts through them: restarts and carried state are both checked."""
    items, emb = embedded
    events = events_of(sample_events)
    index = {i.item_id: n for n, i in enumerate(items)}
    torch.manual_seed(1)
    model = InterestModel(ModelConfig(32, 16, 16, "tiny")).eval()
    seqs = build_sequences(events, index, emb, SETTINGS)
    users = list(dict.fromkeys(e.user_id for e in events))  # build_sequences numbers users by first event
    grid = lanes(seqs, [2, 0, 1], np.diff(seqs.start).tolist(), 1)
    h, logits = torch.zeros(1, 16), []
    with torch.no_grad():
        for w in range(0, grid.shape[1], 7):
            out, h = window_logits(model, torch.from_numpy(emb), seqs, grid[:, w : w + 7], h, exclude_seen=False)
            logits.append(out[0])
    logits = torch.cat(logits)

    updater = InterestUpdater(model, build_catalogue(items, emb), replace(SETTINGS, exclude_seen=False, top_k=len(items)))
    row = 0
    for u in [2, 0, 1]:
        state = updater.new_state()
        for t, e in enumerate(e for e in events if e.user_id == users[u]):
            n = seqs.start[u] + t
            assert grid[0, row] == n
            assert np.allclose(seqs.lt_avg[n].numpy(), state.long_term, atol=1e-6) and seqs.lt_weight[n].item() == pytest.approx(state.lt_weight)
            scores = {i.item_id: i.score for i in updater.recommend([state])[0]}
            assert np.allclose([scores[i.item_id] for i in items], logits[row].numpy(), atol=1e-4)
            state = updater.apply([Delivered(e, "t:0", t)], {e.user_id: state}).states[e.user_id]
            row += 1


def test_training_excludes_seen_items_but_never_the_target():
    model = InterestModel(ModelConfig(4, 3, 3, "t")).eval()
    emb = torch.nn.functional.normalize(torch.randn(5, 4), dim=-1)
    ev = [Event(f"e{n}", "u", f"i{i}", "click", float(n + 1)) for n, i in enumerate([0, 1, 0, 2])]
    seqs = build_sequences(ev, {f"i{n}": n for n in range(5)}, emb.numpy(), SETTINGS)
    with torch.no_grad():
        logits, _ = window_logits(model, emb, seqs, lanes(seqs, [0], [4], 1), torch.zeros(1, 3), exclude_seen=True)
    assert torch.isinf(logits[0]).tolist() == [
        [False] * 5, [True, False, False, False, False],
        [False, True, False, False, False],  # i0 again: the target stays a candidate
        [True, True, False, False, False],
    ]


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
    assert embed_items(enc, [CatalogueItem("ab", "alpha\nbeta")], tmp_path).shape == (1, 3)  # one text, not the two above


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="MovieLens-100K ships with recbole")
def test_movielens_becomes_an_event_log_split_by_global_time(tmp_path):
    log = load_movielens()
    assert len(log.events) == 100_000 and len(log.items) == 1682
    assert all(a.ts <= b.ts for a, b in zip(log.events, log.events[1:]))
    first = next(e for e in log.events if e.event_id == "ml-0")  # 196 242 3 881250949: rating 3 is a click
    assert (first.user_id, first.item_id, first.type, first.ts) == ("196", "242", "click", 881250949.0)
    assert log.items[0] == CatalogueItem("1", "Toy Story (1995). Animation, Children's, Comedy")
    train_part, test_part, cutoff = log.split(0.2)
    assert len(train_part) + len(test_part) == 100_000 and abs(len(test_part) - 20_000) < 50
    assert max(e.ts for e in train_part) < cutoff == test_part[0].ts

    paths = write_log(log, tmp_path, 0.2)
    rows = [json.loads(line) for line in paths["test"].read_text().splitlines()]
    assert len(rows) == len(test_part) and set(rows[0]) == {"event_id", "user_id", "item_id", "type", "ts"}
    assert len(paths["catalogue"].read_text().splitlines()) == 1682


def test_train_command_defaults_are_the_train_config_defaults():
    from cli.main import build_parser

    args = build_parser().parse_args(["train"])
    config = TrainConfig()
    for name in ("dim", "hidden", "epochs", "patience", "lr", "dropout", "lanes", "window", "seed"):
        assert getattr(args, name) == getattr(config, name), name
    assert args.no_refit is not config.refit
