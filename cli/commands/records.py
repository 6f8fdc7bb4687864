"""Commands that write and read the topics: `produce`, `replay`, `catalogue`, `reembed`, `subscribe`
and `redrive`. Each write counts what the broker acknowledged (``cli.delivery``)."""

from __future__ import annotations

import argparse
import json
import time
import uuid

from state.faults import InterestStreamError
from streams.settings import Settings

ACKNOWLEDGED = "(acknowledged by the broker)"


def produce(args: argparse.Namespace, settings: Settings) -> None:
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
    print(f"sent {send_events(settings, events, progress=bool(args.file))} events {ACKNOWLEDGED}")


def replay(args: argparse.Namespace, settings: Settings) -> None:
    from cli.client import replay as send_log

    print(f"replayed {send_log(settings, args.log, args.speed)} events {ACKNOWLEDGED}")


def catalogue(args: argparse.Namespace, settings: Settings) -> None:
    from cli.client import publish_catalogue

    print(f"published {publish_catalogue(settings, args.file)} items {ACKNOWLEDGED}")


def reembed(args: argparse.Namespace, settings: Settings) -> None:
    from cli.reembed import reembed as embed_catalogue

    done = embed_catalogue(settings)
    skipped = (
        f"; {done.rejected} catalogue records are not valid items (skipped)"
        if done.rejected
        else ""
    )
    print(
        f"{settings.item_vectors_topic}: {done.embedded} items embedded, {done.retired} retired{skipped}"
    )


def subscribe(args: argparse.Namespace, settings: Settings) -> None:
    from cli.client import Erased, format_recommendation, recommendations

    shown = 0
    for rec in recommendations(settings, args.from_beginning, args.timeout):
        if args.user and rec.user_id != args.user:
            continue
        if isinstance(rec, Erased):
            erased = {"user_id": rec.user_id, "erased": True}
            print(json.dumps(erased) if args.json else f"user {rec.user_id} erased", flush=True)
        else:
            print(rec.to_json().decode() if args.json else format_recommendation(rec), flush=True)
        shown += 1
        if args.count and shown >= args.count:
            break


def redrive(args: argparse.Namespace, settings: Settings) -> None:
    from cli.redrive import Selection, Window
    from cli.redrive import redrive as send_again

    selection = Selection(frozenset(args.reason or ()), Window.parse(args.since, args.until))
    print("\n".join(send_again(settings, selection, args.dry_run).lines()))


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "produce", help="send click/purchase events (arguments or a JSON-lines file)"
    )
    p.add_argument(
        "--file", help="JSON lines of events ('-' for stdin); each has a type: click or purchase"
    )
    p.add_argument("--user")
    p.add_argument("--item")
    p.add_argument("--type", choices=["click", "purchase"], default="click", help="(default click)")
    p.add_argument("--ts", type=float, help="event time, unix seconds (default: now)")
    p.add_argument("--event-id", help="(default: a random id)")
    p.set_defaults(run=produce)

    p = sub.add_parser("replay", help="replay a recorded JSON-lines event log in event-time order")
    p.add_argument("log")
    p.add_argument(
        "--speed",
        type=float,
        default=0.0,
        help="0 (default): as fast as possible; N: real time x N",
    )
    p.set_defaults(run=replay)

    p = sub.add_parser(
        "catalogue", help="publish catalogue items (JSON lines: item_id, text) to be embedded"
    )
    p.add_argument("file")
    p.set_defaults(run=catalogue)

    p = sub.add_parser(
        "reembed",
        help="embed the whole catalogue (the items topic) with INTEREST_ENCODER_PATH into "
        "INTEREST_ITEM_VECTORS_TOPIC: only what that topic lacks (docs/refresh.md)",
    )
    p.set_defaults(run=reembed)

    p = sub.add_parser("subscribe", help="print recommendations as they arrive")
    p.add_argument("--user", help="only this user")
    p.add_argument("--from-beginning", action="store_true")
    p.add_argument("--count", type=int, default=0, help="stop after this many (default 0: never)")
    p.add_argument(
        "--timeout", type=float, default=None, help="stop after this many seconds without one"
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="each recommendation as published: one JSON object a line",
    )
    p.set_defaults(run=subscribe)

    p = sub.add_parser(
        "redrive",
        help="publish dead letters again to their source topics, each once (e.g. once the catalogue "
        "has their item)",
    )
    p.add_argument(
        "--reason",
        action="append",
        metavar="REASON",
        help="only dead letters of this reason, e.g. unknown_item (repeatable; default: every reason "
        "but duplicate)",
    )
    p.add_argument(
        "--since",
        help="only dead letters written at or after this time: unix seconds or ISO-8601 (UTC unless it "
        "has an offset)",
    )
    p.add_argument(
        "--until", help="only dead letters written before this time (unix seconds or ISO-8601)"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="only print the summary: publish and record nothing"
    )
    p.set_defaults(run=redrive)
