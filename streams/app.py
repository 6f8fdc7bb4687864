"""The worker, built by one function from a ``Settings`` object (nothing happens at import).

``build_app`` declares the faust app, its topics and the user table, and wires the jobs, each in its
own module: the event agent (``event_agent``: events -> states -> recommendations, and decay ticks),
the catalogue agents (``catalogue_agents``: items -> item vectors -> every worker's catalogue),
delivery and checkpointing (``checkpoints``), lag reporting (``observability``) and the web pages
(``web``). ``streams.worker.run_worker`` runs what it returns.
"""

from __future__ import annotations

import functools
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

import faust
from aiokafka.errors import KafkaError

from streams import faust_compat, metrics
from streams.catalogue_agents import CatalogueAgents
from streams.checkpoints import Checkpoints
from streams.connection import bootstrap, client_options, faust_credentials
from streams.dead_letters import DeadLetterWriter
from streams.event_agent import EventAgent
from streams.observability import LagReporter
from streams.runtime import Runtime
from streams.settings import Settings
from streams.user_table import UserTable
from streams.web import add_pages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerApp:
    app: faust.App
    settings: Settings
    table: UserTable
    runtime: Runtime
    checkpoints: Checkpoints
    events: EventAgent
    catalogue: CatalogueAgents

    def close(self) -> None:
        """Close the worker's RocksDB stores (item store, user-table partitions) once faust has stopped, in
        this thread: RocksDB wants its databases closed before the process exits, while its background
        threads and static state still exist, not left to the interpreter's teardown."""
        self.runtime.close()
        self.table.close_partitions()


def build_app(settings: Settings) -> WorkerApp:
    """The faust app of a worker: its topics, the user table, the agents, timers and web pages.

    Args:
        settings: the validated settings (``Settings.from_env``); the app keeps them.

    Returns:
        The app and the parts its agents share (``WorkerApp``); nothing connects to the broker
        until the app is started (``streams.faust_worker``).

    Raises:
        IncompatibleLibrary: the installed faust or aiokafka lacks a private part this worker
            relies on (``streams.faust_compat``, checked before anything else).
    """
    faust_compat.check()
    faust_compat.back_off_empty_fetches(settings.fetch_backoff_s)
    faust_compat.stand_in_for_undecodable_batches(report_undecodable)
    s = settings
    app = faust.App(
        s.app_id,
        broker=[f"kafka://{b}" for b in bootstrap(s)],
        broker_credentials=faust_credentials(s),
        store="rocksdb://",
        datadir=str(s.data_dir / "faust"),
        topic_partitions=s.partitions,
        topic_replication_factor=s.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_linger=0.005,
        broker_session_timeout=s.session_timeout_s,
        broker_heartbeat_interval=s.session_timeout_s / 10,
        broker_commit_interval=s.commit_interval_s,
        consumer_group_instance_id=s.instance_id or None,
        web_port=s.web_port,
        web_bind=s.web_bind,
        # The address other workers forward a user's page to (faust's canonical URL), when they do
        # not hold the user.
        web_host=s.web_host or (s.web_bind if s.web_on_loopback else socket.gethostname()),
        # Our pages only (``streams.web``): faust's own views would serve any user's raw state to
        # anyone on the port.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
        autodiscover=False,
        Table=UserTable,
    )
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    events_topic = app.topic(
        s.clicks_topic, s.purchases_topic, s.erasures_topic, s.ticks_topic, **raw
    )
    items_topic = app.topic(s.items_topic, **raw)
    ticks_topic = app.topic(s.ticks_topic, partitions=s.partitions, **raw)
    table = cast(
        UserTable,
        app.Table(
            "user-state",
            partitions=s.partitions,
            key_type=bytes,
            value_type=bytes,
            options={"driver": "rocksdict"},
        ),
    )

    runtime = Runtime(s, {s.clicks_topic: "click", s.purchases_topic: "purchase"})
    # Per input partition: the next offset to apply and what is durable; faust commits no further.
    checkpoints = Checkpoints(
        app,
        s.app_id,
        client_options(s),
        [s.clicks_topic, s.purchases_topic, s.erasures_topic, s.items_topic],
    )
    dead_letters = DeadLetterWriter(app, s.dead_letter_topic, s.max_message_bytes)
    events = EventAgent(app, s, table, ticks_topic, runtime, checkpoints, dead_letters)
    catalogue = CatalogueAgents(app, s, runtime, checkpoints, dead_letters)

    app.agent(events_topic, name="update_interests")(events.run)
    table.on_recover(events.forget_passes)
    app.timer(interval=s.decay_interval_s, on_leader=True, name="tick_all_partitions")(
        skip_without_broker(events.tick_all_partitions)
    )
    app.agent(items_topic, name="embed_items")(catalogue.embed_items)
    app.task(catalogue.follow_item_vectors)

    async def re_read_stalled_partitions() -> None:
        if runtime.ready.is_set():
            await checkpoints.re_read_stalled()

    app.timer(interval=5.0, name="re_read_stalled_partitions")(
        skip_without_broker(re_read_stalled_partitions)
    )
    app.timer(interval=5.0, name="report_lag")(
        skip_without_broker(LagReporter(app, runtime, table).report)
    )
    add_pages(app, runtime, table, s)
    return WorkerApp(app, s, table, runtime, checkpoints, events, catalogue)  # type: ignore[arg-type]


def report_undecodable(tp: Any, first: int, end: int, exc: BaseException) -> None:
    """A record batch the consumer could not decode (called in the consumer's thread): its offsets become
    dead letters, the partition goes on."""
    log.error(
        "%s:%s offsets %d-%d: a record batch that cannot be decoded (%r); each offset becomes a "
        "dead letter and the "
        "partition goes on (docs/guarantees.md)",
        tp.topic,
        tp.partition,
        first,
        end - 1,
        exc,
    )
    metrics.UNDECODABLE_BATCHES.labels(tp.topic).inc()


def skip_without_broker(tick: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """``tick``, a faust timer's body, with a tick that finds the broker unreachable (down, or a connection
    closed by a stop under way: aiokafka's ``KafkaError``) skipped, logged: the next tick tries again. A timer
    that raises stops the worker (faust takes it for a crash), and a missed tick loses nothing: decay ticks,
    stall checks and lag reports are repeated every interval."""

    @functools.wraps(tick)
    async def guarded() -> None:
        try:
            await tick()
        except KafkaError as exc:
            log.warning(
                "timer %s skipped a tick, the broker did not answer (%r); the next tick tries again",
                tick.__name__,
                exc,
            )

    return guarded
