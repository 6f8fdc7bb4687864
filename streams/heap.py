"""The worker's garbage-collector policy.

Every micro-batch allocates many short-lived objects (events, states, recommendations), so CPython's
collector runs often, and each full collection walks the whole heap, where torch, transformers and faust
leave ~390,000 long-lived objects (counted once the app is imported). A young generation of 10,000
allocations instead of 700 makes every collection rarer (docs/performance.md). Not ``gc.freeze()``: it
was as fast, but the worker then hung for 30 s on SIGTERM after faust's consumer thread had stopped.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

THRESHOLDS = (10_000, 10, 10)  # CPython's default is (700, 10, 10)


def settle() -> None:
    """The worker's collector thresholds, set once at start."""
    gc.set_threshold(*THRESHOLDS)


@contextmanager
def settled() -> Iterator[None]:
    """``settle()`` for a measurement inside another process, undone afterwards."""
    before = gc.get_threshold()
    settle()
    try:
        yield
    finally:
        gc.set_threshold(*before)
