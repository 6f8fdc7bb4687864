"""`interest-stream`: one entry point for the worker, the client tools, the demo, training and
evaluation. Each group of commands is a module of ``cli.commands``."""

from __future__ import annotations

import argparse
import os
import sys

from cli.commands import offline, records, running, users
from state.faults import InterestStreamError
from streams.settings import Settings

GROUPS = (records, users, running, offline)  # in the order `--help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interest-stream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run the command of ``argv`` (the process's arguments by default) with the settings of the
    environment. An error the user can act on (``InterestStreamError``: a setting, a broker that does
    not answer, a record not acknowledged) prints its message, without a traceback, and exits 1."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.command_line = ["interest-stream", *argv]  # for reports
    try:
        args.run(args, Settings.from_env())
    except InterestStreamError as exc:
        print(f"interest-stream {args.command}: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    except BrokenPipeError:  # the reader left (`... | head`): nothing more, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise SystemExit(0) from None


if __name__ == "__main__":
    main()
