"""Repeated log lines folded: with the broker unreachable, aiokafka logs every reconnect attempt of
every client (~110 lines/s here), which buries everything else and fills the disk."""

from __future__ import annotations

import logging
import time


class RepeatFilter(logging.Filter):
    """Lets the first record of each (logger, message template) through, then at most one per
    ``interval_s``, telling how many were held back since."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        # key -> (last shown, held back since)
        self._last: dict[tuple[str, object], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.CRITICAL:
            return True
        key = (record.name, record.msg)
        now = time.monotonic()
        shown, held = self._last.get(key, (float("-inf"), 0))
        if now - shown < self.interval_s:
            self._last[key] = (shown, held + 1)
            return False
        self._last[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {now - shown:.0f} s)"
        return True
