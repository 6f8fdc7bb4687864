"""Local brokers in a child process for the demo, `dev` and the tests: ``BrokerProcess`` (start, ready,
stop, its log in its data directory) and noida-db, a single binary from PyPI that needs nothing but Python.
Apache Kafka itself is ``cli.kafka_broker.ApacheKafka``."""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import time
from dataclasses import replace
from pathlib import Path

from state.faults import InterestStreamError
from streams.settings import Settings, variable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> Path:
    spec = importlib.util.find_spec("noida_db")
    if spec is None or not spec.submodule_search_locations:
        raise InterestStreamError(
            "the local broker needs noida-db: pip install 'interest-stream[local]' (or set INTEREST_BROKER)"
        )
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
    "127.0.0.1:PORT". Subclasses give the command (and may prepare the data directory first, or wait for
    more than an open port); its output goes to ``data_dir/broker.log``. ``stop_signal``: the signal that
    makes it shut down cleanly; ``worker_settings``: the settings a worker needs on this broker to make up
    for one of its faults (none on Apache Kafka)."""

    name = "broker"
    stop_signal = signal.SIGINT
    worker_settings: dict[str, object] = {}

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self._proc: subprocess.Popen | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "broker.log"

    def ports(self) -> list[int]:
        """Every port the broker listens on."""
        return [self.port]

    def command(self) -> list[str]:
        raise NotImplementedError

    def prepare(self) -> None:
        """Make the data directory ready for ``command`` (it exists when this is called)."""

    def wait_ready(self) -> None:
        wait_for_port(self.port)

    def start(self) -> "BrokerProcess":
        # Otherwise wait_ready below would take another process's listener for this broker.
        for port in self.ports():
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    raise InterestStreamError(
                        f"port {port} is in use (another broker, or another `interest-stream dev`?)"
                    )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.prepare()
        log = open(self.log_path, "ab")
        self._proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no {self.name} log)"

    @property
    def pid(self) -> int:
        assert self._proc is not None, "not started"
        return self._proc.pid

    def stop(self, timeout_s: float = 15.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(self.stop_signal)  # lets it save its data
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
    """noida-db; its data directory survives a restart. It answers an empty fetch at once instead of holding
    it (Kafka's long polling): an idle consumer would re-fetch in a tight loop without a back-off."""

    name = "noida-db"
    worker_settings = {"fetch_backoff_s": 0.01}

    def command(self) -> list[str]:
        return [
            str(_binary()),
            "start",
            "--data-dir",
            str(self.data_dir),
            "--host",
            "127.0.0.1",
            "--only",
            "kafka",
            "--kafka-port",
            str(self.port),
        ]


LOCAL_BROKERS = ("noida-db", "apache-kafka")  # what `demo` and `dev` can start (--broker)


def local_broker(kind: str, data_dir: Path, port: int | None = None) -> BrokerProcess:
    """A broker of ``kind`` (one of ``LOCAL_BROKERS``) keeping its data in ``data_dir``, not started."""
    if kind == "apache-kafka":
        from cli.kafka_broker import ApacheKafka  # it builds on this module

        return ApacheKafka(data_dir, port)
    if kind == "noida-db":
        return LocalBroker(data_dir, port)
    raise InterestStreamError(f"no local broker {kind!r}: {', '.join(LOCAL_BROKERS)}")


def on_broker(settings: Settings, broker: BrokerProcess) -> Settings:
    """``settings`` pointed at ``broker``, with the worker settings it needs unless the environment
    sets them."""
    needed = {
        name: value
        for name, value in broker.worker_settings.items()
        if variable(name) not in os.environ
    }
    return replace(settings, broker=broker.address, **needed)  # type: ignore[arg-type]
