"""A local Kafka-protocol broker for the demo and the tests: noida-db, a single binary from PyPI."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from state.faults import InterestStreamError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> Path:
    spec = importlib.util.find_spec("noida_db")
    if spec is None or not spec.submodule_search_locations:
        raise InterestStreamError("the local broker needs noida-db: pip install 'interest-stream[local]' (or set INTEREST_BROKER)")
    return Path(next(iter(spec.submodule_search_locations))) / "noida-db"


def wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise InterestStreamError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f}s")


class BrokerProcess:
    """A broker in a child process on ``port`` (a free one if None): ``with X(dir) as b: b.address`` ->
    "127.0.0.1:PORT". Subclasses give the command; its output goes to ``data_dir/broker.log``."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "BrokerProcess":
        # Otherwise wait_for_port below would take another process's listener for this broker.
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                raise InterestStreamError(f"port {self.port} is in use (another broker, or another `interest-stream dev`?)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "broker.log", "ab")
        self._proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        wait_for_port(self.port)
        return self

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGINT)  # lets it save its data
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalBroker(BrokerProcess):
    """noida-db; its data directory survives a restart."""

    def command(self) -> list[str]:
        return [str(_binary()), "start", "--data-dir", str(self.data_dir), "--host", "127.0.0.1", "--only", "kafka",
                "--kafka-port", str(self.port)]
