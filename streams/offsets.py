"""Events are applied in offset order, none skipped, and no offset is committed before it is applied.

faust alone does not ensure this. Around a recovery or rebalance it drops fetched messages (queues are
cleared when the flow resumes, messages of a stale generation are skipped *and acked*) and relies on
seeking back to the committed offset, which aiokafka does not do when there is none; it also counts
offset gaps as done. Seen here: a worker restarted after kill -9 applied its backlog from offset 305 of
a partition it had left at 135, and committed past the rest.

So the worker keeps, per event partition, the next offset to apply. An event further on means faust lost
the ones in between: it is held back and the partition is re-read from the missing offset; so is a
partition that stays behind its end with nothing arriving (faust lost all it fetched). A hole that is
really in the log (transaction markers, deleted records) shows up again after every re-read and is
accepted after ``HOLE_CONFIRMATIONS`` of them. faust may commit an event partition only up to what the
worker has made durable (``durable``; ``faust_compat.cap_commits`` enforces it).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from faust.types import TP

HOLE_CONFIRMATIONS = 3


class Verdict(enum.Enum):
    APPLY = "apply"  # the next offset of its partition
    SEEN = "seen"  # before it: delivered again after a re-read
    MISSING_BEFORE = "missing_before"  # after it: earlier offsets were lost, re-read the partition


@dataclass
class Gap:
    expected: int  # the first missing offset
    first_after: int  # the first offset delivered after it
    confirmations: int = 0  # re-reads that came back with ``first_after`` again
    re_read: bool = False  # a re-read was started since the last confirmation


class PartitionProgress:
    def __init__(self, topics: Iterable[str]) -> None:
        self.topics = frozenset(topics)
        self.next_offset: dict[TP, int] = {}  # decided so far (this batch included)
        # next offset after everything whose effects are on the broker
        self.durable: dict[TP, int] = {}
        self.gaps: dict[TP, Gap] = {}
        # for stalled(): where each partition behind its end was
        self._behind_at: dict[TP, int] = {}

    def knows(self, tp: TP) -> bool:
        return tp in self.next_offset

    def start(self, tp: TP, offset: int) -> None:
        """Where the partition's processing starts: its committed offset (or the log's first)."""
        self.next_offset[tp] = self.durable[tp] = offset

    def admit(self, tp: TP, offset: int) -> Verdict:
        expected = self.next_offset[tp]
        if offset < expected:
            return Verdict.SEEN
        if offset > expected:
            gap = self.gaps.get(tp)
            if gap is None or gap.expected != expected or offset < gap.first_after:
                gap = self.gaps[tp] = Gap(expected, offset)
            elif offset == gap.first_after and gap.re_read:
                gap.confirmations, gap.re_read = gap.confirmations + 1, False
            if gap.confirmations < HOLE_CONFIRMATIONS:
                return Verdict.MISSING_BEFORE
        self.gaps.pop(tp, None)
        self.next_offset[tp] = offset + 1
        return Verdict.APPLY

    def re_reading(self, tp: TP) -> int | None:
        """Where to re-read ``tp`` from; None if the missing offsets arrived meanwhile."""
        gap = self.gaps.get(tp)
        if gap is None:
            return None
        gap.re_read = True
        return self.next_offset[tp]

    def position(self, tps: Iterable[TP]) -> dict[TP, int]:
        """The next offset to apply of each known partition of ``tps``: what is admitted so far."""
        return {tp: self.next_offset[tp] for tp in tps if tp in self.next_offset}

    def made_durable(self, offsets: dict[TP, int]) -> None:
        """Call once the effects of every event before these offsets (from ``position``) are on the broker."""
        for tp, offset in offsets.items():
            if tp in self.next_offset:
                self.durable[tp] = offset

    def stalled(self, highwaters: dict[TP, int]) -> dict[TP, int]:
        """Partitions behind their high watermark with no event admitted since the previous call (faust
        dropped what it fetched, and nothing later arrives to reveal the gap), with their next offset."""
        behind = {
            tp: self.next_offset[tp]
            for tp, end in highwaters.items()
            if tp in self.next_offset and end > self.next_offset[tp]
        }
        stuck = {tp: offset for tp, offset in behind.items() if self._behind_at.get(tp) == offset}
        self._behind_at = behind
        return stuck

    def forget(self, tps: Iterable[TP]) -> None:
        """Partitions revoked: a later assignment starts again from the committed offset."""
        for tp in tps:
            for d in (self.next_offset, self.durable, self.gaps):
                d.pop(tp, None)
