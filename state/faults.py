"""The project's errors: what a user can act on, and whose fault a failure is.

``InterestStreamError`` is an error a user can act on (a setting, a missing file or package, a broker
that does not answer): the CLI prints its message, without a traceback. Any other exception is a bug
or the environment's and keeps its traceback.

Whose fault a failure is: one message's, or the infrastructure's.

The worker contains every failure caused by one message (it becomes a dead letter and the worker goes
on) and stops only for the infrastructure (broker, disk). Exceptions raised on purpose say which:
``MessageFault`` subclasses carry the dead-letter reason; ``StoreFailure`` wraps a local store's error
(rocksdict raises a plain ``Exception``, which says nothing of the cause).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

# The exit status of a worker stopped by the broker or the disk: nothing not durable was committed, a
# restart resumes from the last commit (sysexits' EX_SOFTWARE; any other non-zero status is a defect).
INFRASTRUCTURE_EXIT = 70


class InterestStreamError(Exception):
    """An error the user can act on; its message says what to do."""


class MessageFault(ValueError):
    """A message produced something that must not be written; ``reason`` is its dead-letter reason."""

    reason = "internal_error"


class NonFinite(MessageFault):
    """A NaN or an infinity about to reach a state, a vector, a score or an output."""

    reason = "non_finite"


class OutputTooLarge(MessageFault):
    """An output record larger than the broker would take."""

    reason = "output_too_large"


class StoreFailure(Exception):
    """The local RocksDB store failed (disk): not any one message's fault, so the worker stops."""


def require_finite(what: str, *values: np.ndarray | float) -> None:
    """Raise ``NonFinite`` unless every number in ``values`` is finite (the last guard before a write)."""
    for value in values:
        finite = (
            math.isfinite(value)
            if isinstance(value, float | int)
            else bool(np.isfinite(value).all())
        )
        if not finite:
            raise NonFinite(f"{what} is not finite")


@contextmanager
def store_errors(store: str) -> Iterator[None]:
    """Re-raise whatever a RocksDB call raises as ``StoreFailure`` of ``store``."""
    try:
        yield
    except Exception as exc:
        raise StoreFailure(f"{store}: {exc}") from exc
