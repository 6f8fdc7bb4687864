"""The `worker` command: lock the data directory, set damaged stores aside, and run the faust worker."""

from __future__ import annotations

import logging
from pathlib import Path

from state.local_dir import damaged, lock, set_aside
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.user_table import table_files

log = logging.getLogger(__name__)


def run_worker(settings: Settings) -> None:
    """Lock the data directory, set damaged local stores aside, create the topics, serve metrics, and
    hand over to faust (blocks until stopped). Raises ``DataDirInUse`` if another worker has the
    directory: checked before joining the consumer group, where it would take partitions."""
    held = lock(settings.data_dir)  # noqa: F841 - held open for the life of the process
    if settings.metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.metrics_port)
    set_aside_damaged_stores(settings.data_dir)
    ensure_topics(settings)
    from streams.app import build_app
    from streams.faust_worker import Worker

    worker = build_app(settings)
    Worker(worker.app, settings.stop_timeout_s, loglevel=settings.log_level).execute_from_commandline()


def set_aside_damaged_stores(data_dir: Path) -> None:
    """Move every local store RocksDB cannot open aside: faust recovers a missing user-table partition
    from its changelog, and the item store is read again from the item-vectors topic."""
    from streams import metrics

    stores = [(path, "user-table") for path in table_files(data_dir)] + [(data_dir / "items", "items")]
    for path, store in stores:
        why = damaged(path) if path.exists() else None
        if why is not None:
            moved = set_aside(path, data_dir)
            log.error("local %s store %s is damaged (%s): moved to %s, rebuilt from the broker", store, path, why, moved)
            metrics.STORE_REBUILDS.labels(store).inc()
