"""What the worker reports beside its counters (``streams.metrics``): consumer lag per partition, in
messages and in seconds, and the users its active table partitions hold. faust's own sensor has no
lag metric."""

from __future__ import annotations

import time
from contextlib import suppress

import faust

from streams import metrics
from streams.runtime import Runtime
from streams.user_table import UserTable


class LagReporter:
    def __init__(self, app: faust.App, runtime: Runtime, table: UserTable) -> None:
        self.app = app
        self.runtime = runtime
        self.table = table

    async def report(self) -> None:
        """Timer: lag of every assigned partition from its high watermark and the last message processed."""
        now = time.time()
        consumer = self.app.consumer
        assigned = {(tp.topic, tp.partition) for tp in consumer.assignment()}
        positions = self.runtime.positions
        for topic, partition in list(positions):
            # moved to another worker: it reports that lag now
            if (topic, partition) not in assigned:
                del positions[(topic, partition)]
                for gauge in (metrics.CONSUMER_LAG, metrics.CONSUMER_LAG_SECONDS):
                    with suppress(KeyError):  # never reported if no highwater was known yet
                        gauge.remove(topic, str(partition))
        for tp in consumer.assignment():
            seen = positions.get((tp.topic, tp.partition))
            highwater = consumer.highwater(tp)
            if seen is None or highwater is None:
                continue
            offset, timestamp = seen
            behind = max(highwater - offset - 1, 0)
            metrics.CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(behind)
            metrics.CONSUMER_LAG_SECONDS.labels(tp.topic, str(tp.partition)).set(
                now - timestamp if behind else 0.0
            )
        # The table's active partitions are those of the event topics (co-partitioned); standbys are
        # not counted.
        active = {
            tp.partition for tp in consumer.assignment() if tp.topic in self.runtime.event_types
        }
        metrics.TABLE_USERS.set(self.table.users(active))
