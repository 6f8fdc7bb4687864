"""Client-side long polling for brokers that do not wait.

Kafka holds a fetch until data arrives or ``fetch_max_wait_ms`` passes; noida-db (the local broker)
answers at once, so every idle aiokafka consumer re-fetches in a tight loop: ~0.8 core for an idle
worker, taken from the event loop and the broker. Waiting a little after an empty fetch restores what
the broker should do, at the cost of at most that wait in latency for an event arriving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka.consumer.fetcher import Fetcher


def back_off_empty_fetches(delay_s: float) -> None:
    """Make every aiokafka consumer of this process wait ``delay_s`` after a fetch that added no records
    (the node stays in flight meanwhile, so no other fetch is sent to it)."""
    if delay_s <= 0 or getattr(Fetcher._proc_fetch_request, "backs_off", False):
        return
    fetch = Fetcher._proc_fetch_request

    async def fetch_then_back_off(self, assignment, node_id, request) -> bool:
        added = await fetch(self, assignment, node_id, request)
        if not added:
            # Cancelled by close() or an unassignment: return as aiokafka's own fetch does. A CancelledError
            # escaping here fails Fetcher.close(), kills faust's consumer thread, and stop hangs 60 s.
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(delay_s)
        return added

    fetch_then_back_off.backs_off = True  # type: ignore[attr-defined]
    Fetcher._proc_fetch_request = fetch_then_back_off
