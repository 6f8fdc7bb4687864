"""`interest-stream`: one entry point for the worker, the client tools, the demo, training and evaluation."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from state.faults import InterestStreamError
from streams.settings import Settings, describe, in_effect, stream_settings

if TYPE_CHECKING:
    import numpy as np

    from models.data import EventLog
    from models.encoder import ItemEncoder


def _produce(args: argparse.Namespace, settings: Settings) -> None:
    from cli.client import send_events
    from models.data import read_jsonl

    if args.file:
        events = read_jsonl(args.file)
    elif args.user and args.item:
        event = {
            "event_id": args.event_id or uuid.uuid4().hex,
            "user_id": args.user,
            "item_id": args.item,
            "type": args.type,
            "ts": args.ts or time.time(),
        }
        events = iter([event])
    else:
        raise InterestStreamError("give --user and --item, or --file")
    print(
        f"sent {send_events(settings, events, progress=bool(args.file))} events (acknowledged by the broker)"
    )


def _replay(args: argparse.Namespace, settings: Settings) -> None:
    from cli.client import replay

    print(f"replayed {replay(settings, args.log, args.speed)} events (acknowledged by the broker)")


def _catalogue(args: argparse.Namespace, settings: Settings) -> None:
    from cli.client import publish_catalogue

    print(f"published {publish_catalogue(settings, args.file)} items (acknowledged by the broker)")


def _reembed(args: argparse.Namespace, settings: Settings) -> None:
    from cli.reembed import reembed

    done = reembed(settings)
    print(
        f"{settings.item_vectors_topic}: {done.embedded} items embedded, {done.retired} retired"
        + (
            f"; {done.rejected} catalogue records are not valid items (skipped)"
            if done.rejected
            else ""
        )
    )


def _subscribe(args: argparse.Namespace, settings: Settings) -> None:
    from cli.client import Erased, format_recommendation, recommendations

    shown = 0
    for rec in recommendations(settings, args.from_beginning, args.timeout):
        if args.user and rec.user_id != args.user:
            continue
        if isinstance(rec, Erased):
            print(
                json.dumps({"user_id": rec.user_id, "erased": True})
                if args.json
                else f"user {rec.user_id} erased",
                flush=True,
            )
        else:
            print(rec.to_json().decode() if args.json else format_recommendation(rec), flush=True)
        shown += 1
        if args.count and shown >= args.count:
            break


def _inspect(args: argparse.Namespace, settings: Settings) -> None:
    from cli.client import format_user, inspect_user

    view = inspect_user(settings, args.user)
    if view is None:
        raise InterestStreamError(f"no state for user {args.user!r} (never seen, or erased)")
    print(json.dumps(view, indent=2) if args.json else format_user(view))


def _erase(args: argparse.Namespace, settings: Settings) -> None:
    from cli.client import Erasure, request_erasure, wait_erased

    requests = request_erasure(settings, args.users)
    print(f"erasure of {len(args.users)} user(s) requested on {settings.erasures_topic}")
    if args.wait <= 0:
        return
    state = wait_erased(settings, requests, args.wait)
    again = [user for user, s in state.items() if s is Erasure.MADE_AGAIN]
    if erased := [user for user, s in state.items() if s is Erasure.ERASED]:
        print(
            f"erased: {', '.join(erased)}: no worker holds their state or recommendations; their "
            "changelog tombstones follow "
            "once the group has committed past their events"
        )
    if again:
        print(
            f"erased, then made again by their later events: {', '.join(again)} (the request was "
            "applied in order with "
            "their events: what came after it is kept)"
        )
    if pending := [user for user, s in state.items() if s is Erasure.PENDING]:
        raise InterestStreamError(
            f"not applied after {args.wait:.0f}s: {', '.join(pending)} (the request stays queued for the "
            "worker holding them)"
        )


def _redrive(args: argparse.Namespace, settings: Settings) -> None:
    from cli.redrive import Selection, Window, redrive

    selection = Selection(frozenset(args.reason or ()), Window.parse(args.since, args.until))
    print("\n".join(redrive(settings, selection, args.dry_run).lines()))


def _worker(args: argparse.Namespace, settings: Settings) -> None:
    from streams.worker import run_worker

    run_worker(settings)


def _demo(args: argparse.Namespace, settings: Settings) -> None:
    from cli.demo import run_demo

    run_demo(settings, show_users=args.users, broker_kind=args.broker)


def _dev(args: argparse.Namespace, settings: Settings) -> None:
    from cli.dev import run_dev

    run_dev(
        settings,
        Path(args.dir or f"var/dev/{args.broker}"),
        args.port,
        sample=not args.no_sample,
        broker_kind=args.broker,
    )


def _config(args: argparse.Namespace, settings: Settings) -> None:
    meanings = {name: meaning for name, _, meaning in describe()}
    for name, value, source in in_effect(settings):
        print(
            f"{name + '=' + value:<44} {source:<12} {meanings[name] if args.help_text else ''}".rstrip()
        )


def _movielens(args: argparse.Namespace, settings: Settings) -> None:
    from models.data import load_movielens, write_log

    for name, path in write_log(load_movielens(), Path(args.out), args.test_fraction).items():
        print(f"{name}: {path}")


def _event_log(args: argparse.Namespace) -> EventLog:
    """The log ``train`` and ``evaluate`` read: a built-in dataset, or the user's catalogue and
    events files."""
    from models.data import DATASETS, DEFAULT_DATASET, load_files

    if args.catalogue is None and args.events is None:
        log = DATASETS[args.dataset or DEFAULT_DATASET].load()
    elif args.dataset is not None or args.catalogue is None or args.events is None:
        raise InterestStreamError("give --catalogue and --events together, or --dataset, not both")
    else:
        log = load_files(Path(args.catalogue), Path(args.events))
    print(f"log: {log.summary()}")
    return log


def _embedded(
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


def _model_settings(settings: Settings) -> dict[str, Any]:
    """The settings a report's numbers depend on: how the stream weighs and decays events."""
    from models.interest import STREAM_SETTINGS

    return {k: getattr(settings, k) for k in STREAM_SETTINGS}


def _given_params(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """--peer-params: the "params" of an earlier `evaluate` or `quality` report, each peer's, not
    tuned again."""
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
        raise InterestStreamError(
            f"{args.peer_params} was tuned "
            + (
                "with seen items excluded: give it without --keep-seen"
                if exclude_seen
                else "with re-buys as candidates: give it with --keep-seen"
            )
        )
    return params


def _train(args: argparse.Namespace, settings: Settings) -> None:
    from dataclasses import asdict

    from models.train import TrainConfig, train

    _offline_compute(args.threads)
    log = _event_log(args)
    train_events, _, cutoff = log.split(args.test_fraction)
    encoder, embeddings = _embedded(args, settings, log)
    config = TrainConfig(
        dim=args.dim,
        hidden=args.hidden,
        epochs=args.epochs,
        patience=args.patience,
        lr=args.lr,
        dropout=args.dropout,
        lanes=args.lanes,
        window=args.window,
        refit=not args.no_refit,
        exclude_seen=not args.rebuys,
        trend_half_life_s=args.trend_half_life,
        seed=args.seed,
    )
    index = {item.item_id: n for n, item in enumerate(log.items)}
    model, report = train(
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
        "settings": _model_settings(settings),
        "seconds": round(report.seconds, 1),
        "history": report.history,
        "calibration": report.calibration,
    }
    out.with_suffix(".json").write_text(json.dumps(summary, indent=2))
    best = max(
        (r for r in report.history if "val_ndcg@10" in r),
        key=lambda r: r["val_ndcg@10"],
        default={},
    )
    fitted = sum(1 for r in report.history if not r.get("refit"))
    refit = f", refit {report.epochs}" if fitted < len(report.history) else ""
    epochs = (
        f"best at epoch {report.epochs} of {fitted}{refit}"
        if "val_ndcg@10" in report.history[0]
        else f"{report.epochs} epochs"
    )
    print(
        f"saved {out} ({version}): {epochs}, {report.seconds:.0f}s, "
        f"validation NDCG@10 {best.get('val_ndcg@10', float('nan')):.4f}"
        + "".join(f", {name} x{scale:g} (calibrated)" for name, scale in report.calibration.items())
    )


def _evaluate(args: argparse.Namespace, settings: Settings) -> None:
    from dataclasses import asdict

    from models.evaluate import EvalConfig, ablate, chosen_params, evaluate, format_table
    from models.interest import InterestModel
    from models.peers import default_peers, with_params

    _offline_compute(args.threads)
    log = _event_log(args)
    train_events, test_events, cutoff = log.split(args.test_fraction)
    encoder, embeddings = _embedded(args, settings, log)
    models = {}
    if args.checkpoint:
        fused = InterestModel.load(Path(args.checkpoint))
        if (fused.config.encoder, fused.config.embed_dim) != (encoder.name, encoder.dim):
            raise InterestStreamError(
                f"checkpoint was trained on {fused.config.encoder} ({fused.config.embed_dim}-d), "
                f"not {encoder.name}"
            )
        if trained := fused.config.stream_mismatch(settings):
            raise InterestStreamError(
                f"the checkpoint was trained with {stream_settings(trained)}: set the same to "
                "evaluate it as it learned"
            )
        if fused.config.rebuys != args.keep_seen:
            raise InterestStreamError(
                "the checkpoint was trained "
                + (
                    "with re-buys as candidates: evaluate it with --keep-seen"
                    if fused.config.rebuys
                    else "with seen items excluded: evaluate it without --keep-seen (train with "
                    "--rebuys for that)"
                )
            )
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
        _given_params(args),
    )
    results = evaluate(
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
        "settings": _model_settings(settings),
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


def _quality(args: argparse.Namespace, settings: Settings) -> None:
    from cli.quality import QualityConfig, markdown, measure
    from models.data import DEFAULT_DATASET

    _offline_compute(args.threads)
    log = _event_log(args)
    train_events, test_events, cutoff = log.split(args.test_fraction)
    encoder, embeddings = _embedded(args, settings, log)
    config = QualityConfig(
        args.seeds, not args.keep_seen, args.epochs, _given_params(args), args.trend_half_life
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
    table = markdown(
        measured,
        f"{name}, "
        + ("re-buys count (`--keep-seen`)" if args.keep_seen else "items the user had excluded"),
    )
    report = {
        "command": args.command_line,
        "data": log.describe(),
        "test_from": cutoff,
        "train_events": len(train_events),
        "test_events": len(test_events),
        "encoder": encoder.name,
        "settings": _model_settings(settings),
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


# `train`'s, `evaluate`'s and `quality`'s torch threads: on the busy 2-core machine the peers were
# measured on, one was
# faster and steadier than two for EASE, SASRec+ and training (small tensors: a second thread mostly waits;
# SASRec+ on the sample log: 1 s against 37 s), and a fixed count keeps runs comparable across machines (BLAS
# may split a sum differently with another thread count).
THREADS = 1


def _offline_compute(threads: int) -> None:
    """`train`, `evaluate` and `quality`: ``threads`` torch threads, and freed tensor memory kept for reuse
    (``hardware.keep_freed_memory``: these commands allocate the same large tensors mini-batch
    after mini-batch)."""
    import torch

    from models.hardware import keep_freed_memory

    torch.set_num_threads(threads)
    keep_freed_memory()


def _threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--threads",
        type=int,
        default=THREADS,
        help=f"torch threads (default {THREADS}: faster and steadier than more on a busy "
        "machine, and comparable across machines)",
    )


def _trend_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--trend-half-life",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="learn a trend term: each item's share of all users' recent events, decayed with this half-life "
        "(e.g. 86400; default 0: none), for catalogues whose demand moves week to week (promotions, seasons)",
    )


def _local_broker_argument(p: argparse.ArgumentParser) -> None:
    from cli.local_broker import LOCAL_BROKERS

    p.add_argument(
        "--broker",
        choices=LOCAL_BROKERS,
        default=LOCAL_BROKERS[0],
        help="the local broker started when INTEREST_BROKER is empty: noida-db (default, needs "
        "nothing but Python) "
        "or apache-kafka (Apache Kafka from the jars `make install` resolves; needs Java 17+)",
    )


def _peer_arguments(p: argparse.ArgumentParser) -> None:
    """--threads and --peer-params: how `evaluate` and `quality` run the peers."""
    _threads_argument(p)
    p.add_argument(
        "--peer-params",
        metavar="FILE",
        help="the JSON report of an earlier `evaluate` or `quality` run: its peers' params are "
        "taken as given, not tuned again (tuning SASRec+ trains it once per grid point)",
    )


def _log_arguments(p: argparse.ArgumentParser) -> None:
    """--dataset, or --catalogue and --events: the log ``train``, ``evaluate`` and ``quality``
    split by time."""
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
        help="your catalogue, as `catalogue` publishes it: JSON lines {item_id, text}; a repeated "
        "item_id replaces "
        "the earlier line",
    )
    g.add_argument(
        "--events",
        metavar="FILE",
        help="your events, as `replay` sends them: JSON lines "
        "{event_id, user_id, item_id, type, ts[, quantity, "
        "price]}; events of items not in the catalogue are skipped and counted",
    )
    g.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="the held-out last part of the log by time: never trained on, "
        "replayed by `evaluate` (give both commands the same)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interest-stream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "produce", help="send click/purchase events (arguments or a JSON-lines file)"
    )
    p.add_argument(
        "--file", help="JSON lines of events ('-' for stdin); each has a type: click or purchase"
    )
    p.add_argument("--user")
    p.add_argument("--item")
    p.add_argument("--type", choices=["click", "purchase"], default="click")
    p.add_argument("--ts", type=float, help="event time, unix seconds (default: now)")
    p.add_argument("--event-id", help="default: a random id")
    p.set_defaults(run=_produce)

    p = sub.add_parser("replay", help="replay a recorded JSON-lines event log in event-time order")
    p.add_argument("log")
    p.add_argument(
        "--speed", type=float, default=0.0, help="0: as fast as possible; N: real time x N"
    )
    p.set_defaults(run=_replay)

    p = sub.add_parser(
        "catalogue", help="publish catalogue items (JSON lines: item_id, text) to be embedded"
    )
    p.add_argument("file")
    p.set_defaults(run=_catalogue)

    p = sub.add_parser(
        "reembed",
        help="embed the whole catalogue (the items topic) with INTEREST_ENCODER_PATH into "
        "INTEREST_ITEM_VECTORS_TOPIC: only what that topic lacks (docs/refresh.md, Rolling out a "
        "new encoder)",
    )
    p.set_defaults(run=_reembed)

    p = sub.add_parser("subscribe", help="print recommendations as they arrive")
    p.add_argument("--user", help="only this user")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    p.add_argument(
        "--timeout", type=float, default=None, help="stop after this many seconds without one"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="each recommendation as published: one JSON object a line",
    )
    p.set_defaults(run=_subscribe)

    p = sub.add_parser(
        "inspect",
        help="one user's state and latest recommendations, from the worker that holds them",
    )
    p.add_argument("user")
    p.add_argument("--json", action="store_true", help="as the worker returns it")
    p.set_defaults(run=_inspect)

    p = sub.add_parser(
        "erase",
        help="erase users everywhere the product keeps them (state, changelog, latest recommendations)",
    )
    p.add_argument("users", nargs="+", metavar="user")
    p.add_argument(
        "--wait",
        type=float,
        default=60.0,
        help="seconds to wait for a worker to confirm (0: do not wait)",
    )
    p.set_defaults(run=_erase)

    p = sub.add_parser(
        "redrive",
        help="publish dead letters again to their source topics, each once (e.g. once the catalogue "
        "has their item)",
    )
    p.add_argument(
        "--reason",
        action="append",
        metavar="REASON",
        help="only dead letters of this reason, e.g. unknown_item (repeatable; default: every "
        "reason but duplicate)",
    )
    p.add_argument(
        "--since",
        help="only dead letters written at or after this time: unix seconds or ISO-8601 (UTC unless "
        "it has an offset)",
    )
    p.add_argument(
        "--until", help="only dead letters written before this time (unix seconds or ISO-8601)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="only print the summary: publish and record nothing"
    )
    p.set_defaults(run=_redrive)

    p = sub.add_parser("worker", help="run a stream worker (settings from INTEREST_* variables)")
    p.set_defaults(run=_worker)

    p = sub.add_parser(
        "demo", help="local broker + worker + bundled sample, then print recommendations"
    )
    p.add_argument("--users", type=int, default=4, help="users to print")
    _local_broker_argument(p)
    p.set_defaults(run=_demo)

    p = sub.add_parser(
        "dev",
        help="a local broker + worker that stay up until Ctrl-C, for the client commands from "
        "another terminal",
    )
    p.add_argument(
        "--dir",
        help="broker data, worker state and log; kept across restarts (default var/dev/<broker>)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=19092,
        help="the local broker's port (the same one on every start)",
    )
    p.add_argument(
        "--no-sample",
        action="store_true",
        help="do not publish the bundled sample catalogue on the first start",
    )
    _local_broker_argument(p)
    p.set_defaults(run=_dev)

    p = sub.add_parser(
        "movielens",
        help="write MovieLens-100K (from the recbole package) as catalogue and event logs",
    )
    p.add_argument(
        "--out",
        default="results/ml-100k",
        help="folder for catalogue.jsonl, events.jsonl, train.jsonl, test.jsonl",
    )
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="the last part of the events by time that is test.jsonl",
    )
    p.set_defaults(run=_movielens)

    p = sub.add_parser(
        "train",
        help="train the GRU, item tower and fusion on a log's training period (default: MovieLens-100K)",
    )
    _log_arguments(p)
    p.add_argument(
        "--out",
        default="results/model.pt",
        help="checkpoint path (set INTEREST_CHECKPOINT to it for the worker); "
        "a .json with the training history is written beside it",
    )
    p.add_argument(
        "--cache", default="results/cache", help="folder for the cached catalogue embeddings"
    )
    p.add_argument("--dim", type=int, default=64, help="interest space size")
    p.add_argument("--hidden", type=int, default=128, help="GRU hidden size")
    p.add_argument(
        "--epochs",
        type=int,
        default=30,
        help="at most this many epochs (early stopping on validation NDCG@10)",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=3,
        help="epochs without validation improvement before stopping",
    )
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument(
        "--dropout",
        type=float,
        default=0.2,
        help="dropout on the GRU input and on the hidden state entering the fusion, while training",
    )
    p.add_argument(
        "--lanes",
        type=int,
        default=32,
        help="users trained side by side (session-parallel mini-batches)",
    )
    p.add_argument(
        "--window",
        type=int,
        default=32,
        help="steps per mini-batch (truncated backpropagation through time)",
    )
    p.add_argument(
        "--no-refit",
        action="store_true",
        help="keep the early-stopped model instead of refitting on the whole training period",
    )
    p.add_argument(
        "--rebuys",
        action="store_true",
        help="re-buys are candidates (groceries): learn the re-buy term from the user's own "
        "history; serve with INTEREST_EXCLUDE_SEEN=false and evaluate with --keep-seen",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the initial weights, dropout and the order users are trained in",
    )
    _trend_argument(p)
    _threads_argument(p)
    p.set_defaults(run=_train)

    p = sub.add_parser(
        "evaluate",
        help="prequential replay of a log's held-out period (default: MovieLens-100K): models vs "
        "popular items, item-kNN, EASE, SASRec+ (and with --keep-seen own re-buys), tuned on the "
        "training period's last 10%%",
    )
    _log_arguments(p)
    p.add_argument(
        "--checkpoint",
        default="",
        help="trained checkpoint (`train` writes it); empty: only the untrained default and baselines",
    )
    p.add_argument("--out", default="results/eval.json", help="JSON report path")
    p.add_argument(
        "--cache", default="results/cache", help="folder for the cached catalogue embeddings"
    )
    p.add_argument(
        "--keep-seen",
        action="store_true",
        help="do not exclude items the user already had (for every recommender alike): "
        "a re-bought item can be a hit",
    )
    p.add_argument("--seed", type=int, default=0, help="SASRec+'s seed")
    _peer_arguments(p)
    p.set_defaults(run=_evaluate)

    p = sub.add_parser(
        "quality",
        help="train the model with several seeds and replay it beside the peers (as `evaluate`): "
        "mean ± std per recommender, as JSON and a markdown table for docs/quality.md",
    )
    _log_arguments(p)
    p.add_argument(
        "--keep-seen",
        action="store_true",
        help="re-buys count: nothing is excluded, the model is trained with --rebuys, and own "
        "re-buys join the peers",
    )
    p.add_argument("--seeds", type=int, default=3, help="train and replay with seeds 0..N-1")
    p.add_argument(
        "--epochs",
        type=int,
        default=30,
        help="at most this many epochs per training (early stopping on validation NDCG@10)",
    )
    _trend_argument(p)
    p.add_argument(
        "--out",
        help="JSON report path, the markdown beside it as .md (default "
        "results/quality/<dataset>-<mode>.json)",
    )
    p.add_argument(
        "--cache", default="results/cache", help="folder for the cached catalogue embeddings"
    )
    _peer_arguments(p)
    p.set_defaults(run=_quality)

    p = sub.add_parser(
        "config",
        help="every setting: the value in effect and where it came from (environment or default)",
    )
    p.add_argument("--help-text", action="store_true", help="add each setting's meaning")
    p.set_defaults(run=_config)
    return parser


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = ["interest-stream", *argv]  # for reports
    try:
        args.run(args, Settings.from_env())
    except InterestStreamError as exc:  # an error the user can act on: its message, no traceback
        print(f"interest-stream {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    # the reader left (`... | head`): nothing more to print, and no traceback
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


if __name__ == "__main__":
    main()
