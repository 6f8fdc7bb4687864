"""The `worker` command: lock the data directory, set damaged stores aside, and run the faust worker."""

from __future__ import annotations

import faulthandler
import logging
import socket
from pathlib import Path

from kafka import KafkaConsumer, TopicPartition

from state.faults import InterestStreamError
from state.local_dir import damaged, lock, set_aside
from streams.connection import client_options
from streams.faust_compat import changelog_topic, table_partition
from streams.settings import Settings
from streams.topics import check_partitions, check_record_limit, ensure_topics
from streams.user_table import changelog_offset, table_files

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    """Lock the data directory, set damaged local stores aside, create the topics, serve metrics, and
    hand over to faust (blocks until stopped). Raises ``DataDirInUse`` if another worker has the
    directory: checked before joining the consumer group, where it would take partitions."""
    # faust's format until faust sets up logging itself (it replaces the root handlers then).
    level = logging.getLevelName(settings.log_level.upper())
    logging.basicConfig(
        level=level, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s"
    )
    # kafka-python's debug log holds its whole configuration and the SASL exchange: the password in clear.
    logging.getLogger("kafka").setLevel(max(level, logging.INFO))
    # a crash in native code (torch, RocksDB) logs every thread's Python stack, not a bare status
    faulthandler.enable()
    held = lock(settings.data_dir)  # noqa: F841 - held open for the life of the process
    # faust binds its web port only once the app runs, and fails there with a traceback naming no setting.
    require_free_port(settings.web_port, "INTEREST_WEB_PORT")
    if settings.metrics_port:
        from prometheus_client import start_http_server

        try:
            start_http_server(settings.metrics_port)
        except OSError as exc:
            raise InterestStreamError(
                f"INTEREST_METRICS_PORT={settings.metrics_port}: {exc.strerror} (another worker here? "
                "give each its own port, or 0 for none)"
            ) from None
    # before creating any topic or joining the group: a wrong count would misroute every user
    check_partitions(settings)
    ensure_topics(settings)
    check_record_limit(settings)
    set_aside_damaged_stores(settings)
    from streams.app import build_app
    from streams.faust_worker import Worker

    worker = build_app(settings)
    try:
        Worker(
            worker.app, settings.stop_timeout_s, loglevel=settings.log_level
        ).execute_from_commandline()
    finally:  # it always ends in SystemExit, with the exit status
        worker.close()


def require_free_port(port: int, variable: str) -> None:
    """Raise ``InterestStreamError`` naming ``variable`` if something listens on ``port`` already."""
    with socket.socket() as probe:
        # as the server will: a port in TIME_WAIT is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise InterestStreamError(
                f"{variable}={port}: {exc.strerror} (another worker here? give each its own port)"
            ) from None


def set_aside_damaged_stores(settings: Settings) -> None:
    """Move every local store that cannot be used aside, to be rebuilt from the broker: one RocksDB
    cannot open (faust recovers a missing user-table partition from its changelog, the item store is
    read again from item-vectors), and a user-table partition further along its changelog than the
    changelog's end (the broker lost records it had acknowledged; faust would stop at every start)."""
    from streams import metrics

    data_dir = settings.data_dir
    tables = table_files(data_dir)
    ends = changelog_ends(settings) if tables else {}
    for path, store in [(path, "user-table") for path in tables] + [(data_dir / "items", "items")]:
        why = damaged(path) if path.exists() else None
        if why is None and store == "user-table":
            why = ahead_of_changelog(path, ends)
        if why is not None:
            moved = set_aside(path, data_dir)
            log.error(
                "local %s store %s cannot be used (%s): moved to %s, rebuilt from the broker",
                store,
                path,
                why,
                moved,
            )
            metrics.STORE_REBUILDS.labels(store).inc()


def ahead_of_changelog(path: Path, ends: dict[int, int]) -> str | None:
    end = ends.get(table_partition(path))
    applied = changelog_offset(path)
    if end is not None and applied >= end:
        return (
            f"it has applied its changelog up to offset {applied}, "
            f"but the changelog ends before offset {end}"
        )
    return None


def changelog_ends(settings: Settings) -> dict[int, int]:
    """End offset of each partition of the user table's changelog ({} if it does not exist yet)."""
    consumer = KafkaConsumer(**client_options(settings), group_id=None)
    try:
        topic = changelog_topic(settings.app_id)
        # asking for its partitions could create it, with the wrong count
        if topic not in consumer.topics():
            return {}
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return {tp.partition: end for tp, end in consumer.end_offsets(tps).items()}
    finally:
        consumer.close()
