"""`interest-stream dev`: a local broker and a worker that stay up, answer the client commands from
another process, stop in order on Ctrl-C and go on from the same state at the next start."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from cli import kafka_broker
from cli.client import inspect_user, send_events
from cli.local_broker import LOCAL_BROKERS, free_port
from tests.helpers import wait_until

pytestmark = pytest.mark.e2e


def start_dev(settings, folder, port: int, kind: str) -> tuple[subprocess.Popen, str]:
    """The dev command as a user runs it (on a local broker of ``kind``); returns it and the broker address
    from its export line."""
    env = {**os.environ, **settings.env(), "INTEREST_BROKER": "", "PYTHONUNBUFFERED": "1"}
    # Started as a script's `dev &` starts it (a shell without job control ignores SIGINT in background
    # commands): Ctrl-C's SIGINT must stop it either way.
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli.main",
            "dev",
            "--dir",
            str(folder),
            "--port",
            str(port),
            "--broker",
            kind,
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    deadline = time.monotonic() + 180
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.strip().startswith("export INTEREST_BROKER="):
            return proc, line.strip().removeprefix("export INTEREST_BROKER=")
        assert time.monotonic() < deadline, "dev printed no export line"
    raise AssertionError(f"dev exited with {proc.wait()} before printing its export line")


def interrupt(proc: subprocess.Popen) -> int:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    return proc.wait(60)


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("kind", LOCAL_BROKERS)
def test_dev_stays_up_for_other_commands_and_keeps_its_state_across_restarts(
    settings, tmp_path, kind
):
    if kind == "apache-kafka" and (why := kafka_broker.unavailable()):
        pytest.skip(why)
    port, folder = free_port(), tmp_path / "dev"
    proc, address = start_dev(settings, folder, port, kind)
    try:
        assert address == f"127.0.0.1:{port}"
        client = replace(settings, broker=address)  # what the export line gives another terminal
        send_events(
            client,
            [
                {
                    "event_id": "e1",
                    "user_id": "u1",
                    "item_id": "run-000",
                    "type": "purchase",
                    "ts": time.time(),
                }
            ],
            progress=False,
        )
        assert (
            wait_until(lambda: inspect_user(client, "u1"), what="u1's event applied")["purchases"]
            == 1
        )
        # A second dev on the same port stops at once, naming it, instead of taking this broker for its own.
        env = {**os.environ, **settings.env(), "INTEREST_BROKER": ""}
        second = subprocess.run(
            [
                sys.executable,
                "-m",
                "cli.main",
                "dev",
                "--dir",
                str(tmp_path / "other"),
                "--port",
                str(port),
                "--broker",
                kind,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1 and f"port {port} is in use" in second.stderr, (
            second.stdout + second.stderr
        )
    finally:
        code = interrupt(proc)
    # broker and worker stopped
    assert code == 0 and not listening(port) and not listening(settings.web_port)

    proc, address = start_dev(settings, folder, port, kind)
    try:
        client = replace(settings, broker=address)
        assert inspect_user(client, "u1")["purchases"] == 1  # the same state, from the same folder
    finally:
        assert interrupt(proc) == 0
