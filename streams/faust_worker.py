"""The faust worker the `worker` command runs: its stop is bounded in time, an infrastructure failure
ends it with status 70, and repeated log lines are folded (``streams.logs``).

faust's stop waits on the broker (a last commit, the producer's flush, leaving the group). With the
broker gone that wait has no end, and an orchestrator would kill the worker at the end of its grace
period anyway. Once a stop begins (SIGTERM, SIGINT or a crash), a watchdog thread ends the process
with status 70 after ``stop_timeout_s``: nothing uncommitted is lost by that, since offsets are committed
only once what they cover is durable, and the restarted worker reads from the last commit.

faust ends a crashed worker with status 1 whatever crashed it. A crash by the broker or the disk
(``INFRASTRUCTURE_EXIT``: a Kafka error, a local store failure, or faust's ``ConsistencyError``, a
changelog shorter than what the local table applied: the broker lost acknowledged records) exits 70, as
the worker's own fail-stop does; any other crash is a defect and keeps status 1.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import NoReturn

import faust
from faust.exceptions import ConsistencyError

from state.faults import INFRASTRUCTURE_EXIT
from streams.boundary import is_infrastructure
from streams.logs import RepeatFilter

log = logging.getLogger(__name__)


def crashed_by_infrastructure(reason: BaseException | None) -> bool:
    return reason is not None and (
        isinstance(reason, ConsistencyError) or is_infrastructure(reason)
    )


class Worker(faust.Worker):
    def __init__(self, app: faust.App, stop_timeout_s: float, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self.stop_timeout_s = stop_timeout_s

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """mode's hook once the root logger has its handlers."""
        super().on_setup_root_logger(logger, level)
        for handler in logger.handlers:
            handler.addFilter(RepeatFilter())

    def execute_from_commandline(self) -> NoReturn:
        try:
            super().execute_from_commandline()
        except SystemExit as exit:
            if exit.code not in (0, None) and crashed_by_infrastructure(self.crash_reason):
                log.critical(
                    "stopped by the infrastructure (%r); exiting with status %d",
                    self.crash_reason,
                    INFRASTRUCTURE_EXIT,
                )
                raise SystemExit(INFRASTRUCTURE_EXIT) from None
            raise

    async def on_stop(self) -> None:
        """mode's hook at the start of a stop, before the app and its consumer are stopped."""
        watchdog = threading.Timer(self.stop_timeout_s, self._give_up)
        watchdog.daemon = True
        watchdog.start()
        await super().on_stop()

    def _give_up(self) -> None:
        log.critical(
            "the worker did not stop within %.0f s (is the broker reachable?); exiting with status %d",
            self.stop_timeout_s,
            INFRASTRUCTURE_EXIT,
        )
        logging.shutdown()
        os._exit(INFRASTRUCTURE_EXIT)
