"""The faust worker the `worker` command runs: its stop is bounded in time, and repeated log lines are
folded (``streams.logs``).

faust's stop waits on the broker (a last commit, the producer's flush, leaving the group). With the
broker gone that wait has no end, and an orchestrator would kill the worker at the end of its grace
period anyway. Once a stop begins (SIGTERM, SIGINT or a crash), a watchdog thread ends the process
with status 1 after ``stop_timeout_s``: nothing uncommitted is lost by that, since offsets are committed
only once what they cover is durable, and the restarted worker reads from the last commit.
"""

from __future__ import annotations

import logging
import os
import threading

import faust

from streams.logs import RepeatFilter

log = logging.getLogger(__name__)


class Worker(faust.Worker):
    def __init__(self, app: faust.App, stop_timeout_s: float, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self.stop_timeout_s = stop_timeout_s

    def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
        """mode's hook once the root logger has its handlers."""
        super().on_setup_root_logger(logger, level)
        for handler in logger.handlers:
            handler.addFilter(RepeatFilter())

    async def on_stop(self) -> None:
        """mode's hook at the start of a stop, before the app and its consumer are stopped."""
        watchdog = threading.Timer(self.stop_timeout_s, self._give_up)
        watchdog.daemon = True
        watchdog.start()
        await super().on_stop()

    def _give_up(self) -> None:
        log.critical("the worker did not stop within %.0f s (is the broker reachable?); exiting with status 1",
                     self.stop_timeout_s)
        logging.shutdown()
        os._exit(1)
