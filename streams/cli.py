"""`interest-stream`: one entry point for the worker, the client tools, the demo, training and evaluation."""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid

from streams.settings import Settings, describe


def _produce(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools import read_jsonl, send_events

    if args.file:
        events = read_jsonl(args.file)
    elif args.user and args.item:
        event = {"event_id": args.event_id or uuid.uuid4().hex, "user_id": args.user, "item_id": args.item,
                 "type": args.type, "ts": args.ts or time.time()}
        events = iter([event])
    else:
        raise SystemExit("produce: give --user and --item, or --file")
    print(f"sent {send_events(settings, events, progress=bool(args.file))} events")


def _replay(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools import replay

    print(f"replayed {replay(settings, args.log, args.speed)} events")


def _catalogue(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools import publish_catalogue

    print(f"published {publish_catalogue(settings, args.file)} items")


def _subscribe(args: argparse.Namespace, settings: Settings) -> None:
    from streams.tools import format_recommendation, recommendations

    shown = 0
    for rec in recommendations(settings, args.from_beginning, args.timeout):
        if args.user and rec.user_id != args.user:
            continue
        print(json.dumps({"user_id": rec.user_id, "items": [i.item_id for i in rec.items]}) if args.json else format_recommendation(rec), flush=True)
        shown += 1
        if args.count and shown >= args.count:
            break


def _worker(args: argparse.Namespace, settings: Settings) -> None:
    from streams.worker import run_worker

    run_worker(settings)


def _demo(args: argparse.Namespace, settings: Settings) -> None:
    from streams.demo import run_demo

    run_demo(settings, show_users=args.users)


def _config(args: argparse.Namespace, settings: Settings) -> None:
    for name, default, meaning in describe():
        print(f"{name}={default!s:<28} {meaning}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interest-stream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("produce", help="send click/purchase events (arguments or a JSON-lines file)")
    p.add_argument("--file", help="JSON lines of events ('-' for stdin); each has a type: click or purchase")
    p.add_argument("--user")
    p.add_argument("--item")
    p.add_argument("--type", choices=["click", "purchase"], default="click")
    p.add_argument("--ts", type=float, help="event time, unix seconds (default: now)")
    p.add_argument("--event-id", help="default: a random id")
    p.set_defaults(run=_produce)

    p = sub.add_parser("replay", help="replay a recorded JSON-lines event log in event-time order")
    p.add_argument("log")
    p.add_argument("--speed", type=float, default=0.0, help="0: as fast as possible; N: real time x N")
    p.set_defaults(run=_replay)

    p = sub.add_parser("catalogue", help="publish catalogue items (JSON lines: item_id, text) to be embedded")
    p.add_argument("file")
    p.set_defaults(run=_catalogue)

    p = sub.add_parser("subscribe", help="print recommendations as they arrive")
    p.add_argument("--user", help="only this user")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--count", type=int, default=0, help="stop after this many (0: never)")
    p.add_argument("--timeout", type=float, default=None, help="stop after this many seconds without one")
    p.add_argument("--json", action="store_true", help="one JSON object a line")
    p.set_defaults(run=_subscribe)

    p = sub.add_parser("worker", help="run a stream worker (settings from INTEREST_* variables)")
    p.set_defaults(run=_worker)

    p = sub.add_parser("demo", help="local broker + worker + bundled sample, then print recommendations")
    p.add_argument("--users", type=int, default=4, help="users to print")
    p.set_defaults(run=_demo)

    p = sub.add_parser("config", help="list every setting: variable, default, meaning")
    p.set_defaults(run=_config)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.run(args, Settings.from_env())
    except RuntimeError as exc:  # our clear errors (no broker, no model) without a traceback
        print(f"interest-stream {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
