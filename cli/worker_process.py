"""A worker in a child process (demo, tests, benchmarks): started with its own settings, watched
through its readiness endpoint, stopped cleanly (SIGTERM) or killed (a crash)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from state.faults import InterestStreamError
from streams.settings import Settings


class WorkerProcess:
    """A worker in a child process with its own settings; ``kill()`` is a crash (SIGKILL),
    ``stop()`` is clean."""

    def __init__(
        self, settings: Settings, log_path: Path, environ: dict[str, str] | None = None
    ) -> None:
        self.settings = settings
        self.log_path = log_path
        # more environment variables (not settings), e.g. CUDA_VISIBLE_DEVICES
        self.environ = environ or {}
        self._proc: subprocess.Popen | None = None

    def start(self) -> "WorkerProcess":
        env = {**os.environ, **self.environ, **self.settings.env(), "PYTHONUNBUFFERED": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT,
            # a terminal's Ctrl-C reaches the parent only, which stops the worker in order
            start_new_session=True,
        )
        return self

    def readiness(self) -> dict | None:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.settings.web_port}/ready", timeout=1
            ) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
            return None

    def wait_ready(self, min_items: int = 0, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise InterestStreamError(
                    f"worker exited with {self._proc.returncode}:\n{self.log_tail()}"
                )
            status = self.readiness()
            if status and status.get("pid") not in (None, self.pid):
                raise InterestStreamError(
                    f"another worker (pid {status['pid']}) answers on "
                    f"INTEREST_WEB_PORT={self.settings.web_port}"
                )
            if status and status.get("ready") and status.get("catalogue_items", 0) >= min_items:
                return
            time.sleep(0.25)
        raise InterestStreamError(
            f"worker not ready with {min_items} items after {timeout_s:.0f}s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no worker log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    @property
    def exit_code(self) -> int | None:
        """None while running; negative: killed by that signal (``stop()`` kills a worker that hangs)."""
        return None if self._proc is None else self._proc.poll()

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
