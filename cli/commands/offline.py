"""Offline commands on a recorded log: `movielens` (write the built-in log as files), `train`,
`evaluate` and `quality` (docs/quality.md). The training flags take their defaults from
``models.train.TrainConfig``, written once there."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.quality import QualityConfig
from models.train_config import TrainConfig
from state.faults import InterestStreamError
from streams.settings import Settings, stream_settings

if TYPE_CHECKING:
    import numpy as np

    from models.data import EventLog
    from models.encoder import ItemEncoder

TEST_FRACTION = 0.2  # the held-out last part of a log by time
CACHE = "results/cache"
# `train`'s, `evaluate`'s and `quality`'s torch threads: on the busy 2-core machine the peers were
# measured on, one was faster and steadier than two for EASE, SASRec+ and training (small tensors: a
# second thread mostly waits; SASRec+ on the sample log: 1 s against 37 s), and a fixed count keeps runs
# comparable across machines (BLAS may split a sum differently with another thread count).
THREADS = 1
# TrainConfig field -> its flag's help; type and default come from the field
TRAIN_FLAGS = {
    "dim": "interest space size",
    "hidden": "GRU hidden size",
    "epochs": "at most this many epochs (early stopping on validation NDCG@10)",
    "patience": "epochs without validation improvement before stopping",
    "lr": "Adam learning rate",
    "dropout": "dropout on the GRU input and on the hidden state entering the fusion, while training",
    "lanes": "users trained side by side (session-parallel mini-batches)",
    "window": "steps per mini-batch (truncated backpropagation through time)",
    "seed": "seeds the initial weights, dropout and the order users are trained in",
}


def at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def movielens(args: argparse.Namespace, settings: Settings) -> None:
    from models.data import load_movielens, write_log

    for name, path in write_log(load_movielens(), Path(args.out), args.test_fraction).items():
        print(f"{name}: {path}")


def train(args: argparse.Namespace, settings: Settings) -> None:
    from models.train import train as fit

    offline_compute(args.threads)
    log = event_log(args)
    train_events, _, cutoff = log.split(args.test_fraction)
    encoder, embeddings = embedded(args, settings, log)
    config = TrainConfig(
        **{name: getattr(args, name) for name in TRAIN_FLAGS},
        refit=not args.no_refit,
        exclude_seen=not args.rebuys,
        trend_half_life_s=args.trend_half_life,
    )
    index = {item.item_id: n for n, item in enumerate(log.items)}
    model, report = fit(
        train_events,
        index,
        embeddings,
        encoder.name,
        settings.updater_config(),
        config,
        progress=True,
    )
    out = Path(args.out)
    version = model.save(out)
    summary = {
        "version": version,
        "checkpoint": str(out),
        "encoder": encoder.name,
        "data": log.describe(),
        "events": len(train_events),
        "train_before": cutoff,
        "config": asdict(config),
        "epochs": report.epochs,
        "settings": model_settings(settings),
        "seconds": round(report.seconds, 1),
        "history": report.history,
        "calibration": report.calibration,
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    validated = [r for r in report.history if "val_ndcg@10" in r]
    best = max(validated, key=lambda r: r["val_ndcg@10"], default={})
    fitted = sum(1 for r in report.history if not r.get("refit"))
    refit = f", refit {report.epochs}" if fitted < len(report.history) else ""
    epochs = (
        f"best at epoch {report.epochs} of {fitted}{refit}"
        if validated
        else f"{report.epochs} epochs"
    )
    calibrated = "".join(
        f", {name} x{scale:g} (calibrated)" for name, scale in report.calibration.items()
    )
    print(
        f"saved {out} ({version}): {epochs}, {report.seconds:.0f}s, "
        f"validation NDCG@10 {best.get('val_ndcg@10', float('nan')):.4f}{calibrated}"
    )


def evaluate(args: argparse.Namespace, settings: Settings) -> None:
    from models.evaluate import EvalConfig, ablate, chosen_params, format_table
    from models.evaluate import evaluate as replay
    from models.interest import InterestModel
    from models.peers import default_peers, with_params

    offline_compute(args.threads)
    log = event_log(args)
    train_events, test_events, cutoff = log.split(args.test_fraction)
    encoder, embeddings = embedded(args, settings, log)
    models = {}
    if args.checkpoint:
        fused = InterestModel.load(Path(args.checkpoint))
        check_checkpoint(fused, encoder, settings, args.keep_seen)
        models = {
            "fused": fused,
            "long-term only": ablate(fused, "long"),
            "GRU only": ablate(fused, "short"),
        }
    models["untrained default"] = InterestModel.untrained(
        encoder.dim, settings.hidden_size, encoder.name
    )
    config = EvalConfig(exclude_seen=not args.keep_seen)
    peers = with_params(
        default_peers([i.item_id for i in log.items], config.exclude_seen, args.seed),
        given_params(args),
    )
    results = replay(
        train_events,
        test_events,
        log.items,
        embeddings,
        models,
        settings.updater_config(),
        config,
        peers,
        progress=True,
    )
    print(format_table(results))
    report = {
        "data": log.describe(),
        "test_from": cutoff,
        "train_events": len(train_events),
        "test_events": len(test_events),
        "checkpoint": args.checkpoint or None,
        "versions": {name: m.version for name, m in models.items()},
        "encoder": encoder.name,
        "settings": model_settings(settings),
        "config": asdict(config),
        "seed": args.seed,
        "threads": args.threads,
        "params_given": args.peer_params or None,
        "params": chosen_params(results),
        "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


def check_checkpoint(fused, encoder: ItemEncoder, settings: Settings, keep_seen: bool) -> None:
    """Raise ``InterestStreamError`` if a checkpoint cannot be evaluated as it learned: another
    encoder, other stream settings, or the other re-buy mode."""
    if (fused.config.encoder, fused.config.embed_dim) != (encoder.name, encoder.dim):
        raise InterestStreamError(
            f"checkpoint was trained on {fused.config.encoder} ({fused.config.embed_dim}-d), not "
            f"{encoder.name}"
        )
    if trained := fused.config.stream_mismatch(settings):
        raise InterestStreamError(
            f"the checkpoint was trained with {stream_settings(trained)}: set the same to evaluate it "
            "as it learned"
        )
    if fused.config.rebuys != keep_seen:
        mode = (
            "with re-buys as candidates: evaluate it with --keep-seen"
            if fused.config.rebuys
            else "with seen items excluded: evaluate it without --keep-seen (train with --rebuys for that)"
        )
        raise InterestStreamError(f"the checkpoint was trained {mode}")


def quality(args: argparse.Namespace, settings: Settings) -> None:
    from cli.quality import markdown, measure
    from models.data import DEFAULT_DATASET

    offline_compute(args.threads)
    log = event_log(args)
    train_events, test_events, cutoff = log.split(args.test_fraction)
    encoder, embeddings = embedded(args, settings, log)
    config = QualityConfig(
        args.seeds, not args.keep_seen, args.epochs, given_params(args), args.trend_half_life
    )
    measured = measure(
        train_events,
        test_events,
        log.items,
        embeddings,
        encoder.name,
        settings.updater_config(),
        config,
        progress=True,
    )
    name = args.dataset or (Path(args.events).stem if args.events else DEFAULT_DATASET)
    mode = "keep-seen" if args.keep_seen else "seen-excluded"
    out = Path(args.out or f"results/quality/{name}-{mode}.json")
    described = "re-buys count (`--keep-seen`)" if args.keep_seen else "items the user had excluded"
    table = markdown(measured, f"{name}, {described}")
    report = {
        "command": args.command_line,
        "data": log.describe(),
        "test_from": cutoff,
        "train_events": len(train_events),
        "test_events": len(test_events),
        "encoder": encoder.name,
        "settings": model_settings(settings),
        "config": {
            "seeds": args.seeds,
            "exclude_seen": not args.keep_seen,
            "epochs": args.epochs,
            "threads": args.threads,
            "trend_half_life_s": args.trend_half_life,
        },
        "params_given": args.peer_params or None,
        **measured,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    out.with_suffix(".md").write_text(table)
    print(table)
    print(f"wrote {out} and {out.with_suffix('.md')}")


# -- what the offline commands share ----------------------------------------------------------------------


def event_log(args: argparse.Namespace) -> EventLog:
    """The log the command reads: a built-in dataset, or the user's catalogue and events files."""
    from models.data import DATASETS, DEFAULT_DATASET, load_files

    if args.catalogue is None and args.events is None:
        log = DATASETS[args.dataset or DEFAULT_DATASET].load()
    elif args.dataset is not None or args.catalogue is None or args.events is None:
        raise InterestStreamError("give --catalogue and --events together, or --dataset, not both")
    else:
        log = load_files(Path(args.catalogue), Path(args.events))
    print(f"log: {log.summary()}")
    return log


def embedded(
    args: argparse.Namespace, settings: Settings, log: EventLog
) -> tuple[ItemEncoder, np.ndarray]:
    """The encoder in effect, and the log's catalogue embedded by it (cached in --cache)."""
    from models.data import embed_items
    from models.encoder import ItemEncoder

    encoder = ItemEncoder(
        settings.encoder_path,
        settings.encoder_device,
        settings.encoder_batch,
        settings.encoder_max_tokens,
    )
    return encoder, embed_items(encoder, log.items, Path(args.cache))


def model_settings(settings: Settings) -> dict[str, Any]:
    """The settings a report's numbers depend on: how the stream weighs and decays events."""
    from models.interest import STREAM_SETTINGS

    return {k: getattr(settings, k) for k in STREAM_SETTINGS}


def given_params(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """--peer-params: the "params" of an earlier `evaluate` or `quality` report, each peer's, not tuned
    again."""
    if not args.peer_params:
        return {}
    try:
        report = json.loads(Path(args.peer_params).read_text())
        params, exclude_seen = report["params"], report["config"]["exclude_seen"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InterestStreamError(
            f"{args.peer_params}: no peer params ({exc!r}): give the JSON report of `evaluate` or `quality`"
        ) from None
    if exclude_seen == args.keep_seen:  # params tuned for the other mode are not this mode's
        wanted = "without --keep-seen" if exclude_seen else "with --keep-seen"
        tuned = "with seen items excluded" if exclude_seen else "with re-buys as candidates"
        raise InterestStreamError(f"{args.peer_params} was tuned {tuned}: give it {wanted}")
    return params


def offline_compute(threads: int) -> None:
    """``threads`` torch threads, and freed tensor memory kept for reuse (``hardware.keep_freed_memory``:
    these commands allocate the same large tensors mini-batch after mini-batch)."""
    import torch

    from models.hardware import keep_freed_memory

    torch.set_num_threads(threads)
    keep_freed_memory()


def log_arguments(p: argparse.ArgumentParser) -> None:
    """--dataset, or --catalogue and --events: the log the command splits by time; and --cache."""
    from models.data import DATASETS, DEFAULT_DATASET

    g = p.add_argument_group("the log: a built-in dataset, or your own catalogue and events")
    g.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        help=f"a built-in dataset (default {DEFAULT_DATASET}): "
        + "; ".join(f"{name}: {d.about}" for name, d in sorted(DATASETS.items())),
    )
    g.add_argument(
        "--catalogue",
        metavar="FILE",
        help="your catalogue, as `catalogue` publishes it: JSON lines {item_id, text}; a repeated item_id "
        "replaces the earlier line",
    )
    g.add_argument(
        "--events",
        metavar="FILE",
        help="your events, as `replay` sends them: JSON lines {event_id, user_id, item_id, type, ts[, "
        "quantity, price]}; events of items not in the catalogue are skipped and counted",
    )
    g.add_argument(
        "--test-fraction",
        type=float,
        default=TEST_FRACTION,
        help=f"the held-out last part of the log by time (default {TEST_FRACTION}): never trained on, "
        "replayed by `evaluate` (give both commands the same)",
    )
    p.add_argument(
        "--cache",
        default=CACHE,
        help=f"folder for the cached catalogue embeddings (default {CACHE})",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help=f"torch threads (default {THREADS}: faster and steadier than more on a busy machine, and "
        "comparable across machines)",
    )


def trend_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trend-half-life",
        type=float,
        default=TrainConfig.trend_half_life_s,
        metavar="SECONDS",
        help="learn a trend term: each item's share of all users' recent events, decayed with this "
        "half-life (e.g. 86400; default 0: none), for catalogues whose demand moves week to week",
    )


def peer_arguments(p: argparse.ArgumentParser) -> None:
    """--keep-seen and --peer-params: which mode `evaluate` and `quality` run, and the peers' params."""
    p.add_argument(
        "--peer-params",
        metavar="FILE",
        help="the JSON report of an earlier `evaluate` or `quality` run: its peers' params are taken as "
        "given, not tuned again (tuning SASRec+ trains it once per grid point)",
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "movielens",
        help="write MovieLens-100K (from the recbole package) as catalogue and event logs",
    )
    p.add_argument(
        "--out",
        default="results/ml-100k",
        help="folder for catalogue.jsonl, events.jsonl, train.jsonl, test.jsonl (default results/ml-100k)",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=TEST_FRACTION,
        help=f"the last part of the events by time that is test.jsonl (default {TEST_FRACTION})",
    )
    p.set_defaults(run=movielens)

    p = sub.add_parser(
        "train",
        help="train the GRU, item tower and fusion on a log's training period (default: MovieLens-100K)",
    )
    log_arguments(p)
    p.add_argument(
        "--out",
        default="results/model.pt",
        help="checkpoint path (set INTEREST_CHECKPOINT to it for the worker; default results/model.pt); a "
        ".json with the training history is written beside it",
    )
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    for name, text in TRAIN_FLAGS.items():
        kind = at_least_one if name == "epochs" else type(defaults[name])
        p.add_argument(
            f"--{name}",
            type=kind,
            default=defaults[name],
            help=f"{text} (default {defaults[name]:g})",
        )
    p.add_argument(
        "--no-refit",
        action="store_true",
        help="keep the early-stopped model instead of refitting on the whole training period",
    )
    p.add_argument(
        "--rebuys",
        action="store_true",
        help="re-buys are candidates (groceries): learn the re-buy term from the user's own history; serve "
        "with INTEREST_EXCLUDE_SEEN=false and evaluate with --keep-seen",
    )
    trend_argument(p)
    p.set_defaults(run=train)

    p = sub.add_parser(
        "evaluate",
        help="prequential replay of a log's held-out period (default: MovieLens-100K): models vs popular "
        "items, item-kNN, EASE, SASRec+ (and with --keep-seen own re-buys), tuned on the training period's "
        "last 10%%",
    )
    log_arguments(p)
    p.add_argument(
        "--checkpoint",
        default="",
        help="trained checkpoint (`train` writes it); empty: only the untrained default and baselines",
    )
    p.add_argument(
        "--out", default="results/eval.json", help="JSON report path (default results/eval.json)"
    )
    p.add_argument(
        "--keep-seen",
        action="store_true",
        help="do not exclude items the user already had (for every recommender alike): a re-bought item "
        "can be a hit",
    )
    p.add_argument("--seed", type=int, default=TrainConfig.seed, help="SASRec+'s seed (default 0)")
    peer_arguments(p)
    p.set_defaults(run=evaluate)

    p = sub.add_parser(
        "quality",
        help="train the model with several seeds and replay it beside the peers (as `evaluate`): mean ± std "
        "per recommender, as JSON and a markdown table for docs/quality.md",
    )
    log_arguments(p)
    p.add_argument(
        "--keep-seen",
        action="store_true",
        help="re-buys count: nothing is excluded, the model is trained with --rebuys, and own re-buys join "
        "the peers",
    )
    p.add_argument(
        "--seeds",
        type=at_least_one,
        default=QualityConfig.seeds,
        help=f"train and replay with seeds 0..N-1 (default {QualityConfig.seeds})",
    )
    p.add_argument(
        "--epochs",
        type=at_least_one,
        default=QualityConfig.epochs,
        help=f"at most this many epochs per training (default {QualityConfig.epochs})",
    )
    trend_argument(p)
    p.add_argument(
        "--out",
        help="JSON report path, the markdown beside it as .md (default "
        "results/quality/<dataset>-<mode>.json)",
    )
    peer_arguments(p)
    p.set_defaults(run=quality)
