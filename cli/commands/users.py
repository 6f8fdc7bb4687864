"""Commands about one user: `inspect` (their state, from the worker that holds them) and `erase`."""

from __future__ import annotations

import argparse
import json

from state.faults import InterestStreamError
from streams.settings import Settings

ERASE_WAIT_S = 60.0


def inspect(args: argparse.Namespace, settings: Settings) -> None:
    from cli.client import format_user, inspect_user

    view = inspect_user(settings, args.user)
    if view is None:
        raise InterestStreamError(f"no state for user {args.user!r} (never seen, or erased)")
    print(json.dumps(view, indent=2) if args.json else format_user(view))


def erase(args: argparse.Namespace, settings: Settings) -> None:
    from cli.client import Erasure, request_erasure, wait_erased

    requests = request_erasure(settings, args.users)
    print(f"erasure of {len(args.users)} user(s) requested on {settings.erasures_topic}")
    if args.wait <= 0:
        return
    state = wait_erased(settings, requests, args.wait)
    users = {kind: [user for user, s in state.items() if s is kind] for kind in Erasure}
    if erased := users[Erasure.ERASED]:
        print(
            f"erased: {', '.join(erased)}: no worker holds their state or recommendations; their "
            "changelog tombstones follow once the group has committed past their events"
        )
    if again := users[Erasure.MADE_AGAIN]:
        print(
            f"erased, then made again by their later events: {', '.join(again)} (the request was "
            "applied in order with their events: what came after it is kept)"
        )
    if pending := users[Erasure.PENDING]:
        raise InterestStreamError(
            f"not applied after {args.wait:.0f}s: {', '.join(pending)} (the request stays queued for "
            "the worker holding them)"
        )


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="one user's state and latest recommendations, from the worker that holds them",
    )
    p.add_argument("user")
    p.add_argument("--json", action="store_true", help="as the worker returns it")
    p.set_defaults(run=inspect)

    p = sub.add_parser(
        "erase",
        help="erase users everywhere the product keeps them (state, changelog, latest recommendations)",
    )
    p.add_argument("users", nargs="+", metavar="user")
    p.add_argument(
        "--wait",
        type=float,
        default=ERASE_WAIT_S,
        help=f"seconds to wait for a worker to confirm (default {ERASE_WAIT_S:g}; 0: do not wait)",
    )
    p.set_defaults(run=erase)
