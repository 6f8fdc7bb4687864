"""Commands that run the product: `worker`, `demo`, `dev`, and `config` (the settings they run with)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.local_broker import LOCAL_BROKERS
from streams.settings import Settings, configuration_table, describe, in_effect

DEV_PORT = (
    19092  # `dev`'s broker: the same port on every start, so that the printed export stays true
)


def worker(args: argparse.Namespace, settings: Settings) -> None:
    from streams.worker import run_worker

    run_worker(settings)


def demo(args: argparse.Namespace, settings: Settings) -> None:
    from cli.demo import run_demo

    run_demo(settings, show_users=args.users, broker_kind=args.broker)


def dev(args: argparse.Namespace, settings: Settings) -> None:
    from cli.dev import run_dev

    folder = Path(args.dir or f"var/dev/{args.broker}")
    run_dev(settings, folder, args.port, sample=not args.no_sample, broker_kind=args.broker)


def config(args: argparse.Namespace, settings: Settings) -> None:
    if args.table:
        print(configuration_table())
        return
    meanings = {name: meaning for name, _, meaning in describe()}
    for name, value, source in in_effect(settings):
        meaning = meanings[name] if args.help_text else ""
        print(f"{name + '=' + value:<44} {source:<12} {meaning}".rstrip())


def broker_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--broker",
        choices=LOCAL_BROKERS,
        default=LOCAL_BROKERS[0],
        help="the local broker started when INTEREST_BROKER is empty: noida-db (default: needs "
        "nothing but Python) or apache-kafka (from the jars `make install` resolves; Java 17+)",
    )


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("worker", help="run a stream worker (settings from INTEREST_* variables)")
    p.set_defaults(run=worker)

    p = sub.add_parser("demo", help="local broker + worker + bundled sample, then recommendations")
    p.add_argument("--users", type=int, default=4, help="users to print (default 4)")
    broker_argument(p)
    p.set_defaults(run=demo)

    p = sub.add_parser(
        "dev",
        help="a local broker + worker that stay up until Ctrl-C, for the client commands from "
        "another terminal",
    )
    p.add_argument(
        "--dir",
        help="broker data, worker state and log, kept across restarts (default var/dev/<broker>)",
    )
    p.add_argument(
        "--port", type=int, default=DEV_PORT, help=f"the local broker's port (default {DEV_PORT})"
    )
    p.add_argument(
        "--no-sample",
        action="store_true",
        help="do not publish the bundled sample catalogue on the first start",
    )
    broker_argument(p)
    p.set_defaults(run=dev)

    p = sub.add_parser(
        "config",
        help="every setting: the value in effect and where it came from (environment or default)",
    )
    p.add_argument("--help-text", action="store_true", help="add each setting's meaning")
    p.add_argument(
        "--table",
        action="store_true",
        help="the settings as the markdown table of docs/configuration.md (defaults, not values)",
    )
    p.set_defaults(run=config)
