"""Per-user state held in the RocksDB-backed faust table, and its binary encoding."""

from __future__ import annotations

import struct
from collections.abc import Set
from dataclasses import dataclass, field

import numpy as np
import orjson

from state.faults import require_finite

FORMAT_VERSION = 1
_HEADER = struct.Struct("<BIII")  # format version, json length, hidden size, long-term size


_HISTORY_HEADER = struct.Struct("<dI")  # base time (unix seconds), entries
_ENTRY_BYTES = 16  # time offset, weight, fingerprint, touch count
_SEARCHED_IDS = 16  # ``holds_any`` searches the packed ids for this many ids at most


class History:
    """What the long-term sum is made of, one entry per item, so that it can be recomputed when item
    vectors change (``models.history``): the item, the event time its last touch counted at (unix seconds),
    its touches' weights decayed-summed to that time, the fingerprint of the vector its weight was added
    with, and how many touches it had (undecayed: the re-buy term's purchase frequency). Python lists, not
    arrays: a state holds a few to ~100 entries, read and written per event.

    Packed as one block: the base time (the newest entry's) and the number of entries, float32 offsets
    from the base (seconds), float32 weights, uint32 fingerprints, uint32 touch counts, then the ids in
    UTF-8, NUL-separated (ids hold no control characters: ``streams.schemas``); 16 bytes an entry plus its
    id. A block written before touches were counted has no counts: each entry is read as touched once. A
    decoded history stays packed until it is used: the decay pass decodes every user of a partition, needs
    no history, and writes an unused one back as it was.
    """

    def __init__(
        self,
        items: list[str] | None = None,
        times: list[float] | None = None,
        weights: list[float] | None = None,
        fingerprints: list[int] | None = None,
        counts: list[int] | None = None,
    ) -> None:
        self._items = items if items is not None else []
        self._times = times if times is not None else []
        self._weights = weights if weights is not None else []
        self._fingerprints = fingerprints if fingerprints is not None else []
        self._counts = counts if counts is not None else [1] * len(self._items)
        self._block: bytes | None = None
        self._stride = _ENTRY_BYTES  # bytes an entry takes in ``_block`` before the ids

    @classmethod
    def packed(cls, block: bytes, counted: bool = True) -> History:
        """The history ``pack`` made ``block``, unpacked on first use; ``counted``: False for a block written
        before touches were counted."""
        history = cls()
        history._block = block or None
        history._stride = _ENTRY_BYTES if counted else _ENTRY_BYTES - 4
        return history

    def _unpack(self) -> None:
        block, self._block = self._block, None
        if block is not None:
            base, n = _HISTORY_HEADER.unpack_from(block)
            counted = self._stride == _ENTRY_BYTES
            numbers = struct.unpack_from(
                f"<{n}f{n}f{n}I" + (f"{n}I" if counted else ""), block, _HISTORY_HEADER.size
            )
            self._items = block[_HISTORY_HEADER.size + self._stride * n :].decode().split("\0")
            self._times = [base + offset for offset in numbers[:n]]
            self._weights, self._fingerprints = (
                list(numbers[n : 2 * n]),
                list(numbers[2 * n : 3 * n]),
            )
            self._counts = list(numbers[3 * n :]) if counted else [1] * n
            self._stride = _ENTRY_BYTES

    @property
    def items(self) -> list[str]:
        self._unpack()
        return self._items

    @property
    def times(self) -> list[float]:
        self._unpack()
        return self._times

    @property
    def weights(self) -> list[float]:
        self._unpack()
        return self._weights

    @property
    def fingerprints(self) -> list[int]:
        self._unpack()
        return self._fingerprints

    @property
    def counts(self) -> list[int]:
        self._unpack()
        return self._counts

    def __len__(self) -> int:
        return (
            _HISTORY_HEADER.unpack_from(self._block)[1]
            if self._block is not None
            else len(self._items)
        )

    def holds_any(self, item_ids: Set[str]) -> bool:
        """Whether one of ``item_ids`` has an entry. A few ids are looked for in the packed ids (a byte
        search per id, the block left packed); many, in the unpacked list."""
        if self._block is None or len(item_ids) > _SEARCHED_IDS:
            return not item_ids.isdisjoint(self.items)
        framed = b"\0" + self._block[_HISTORY_HEADER.size + self._stride * len(self) :] + b"\0"
        return any(b"\0" + item_id.encode() + b"\0" in framed for item_id in item_ids)

    def keep(self, kept: list[bool]) -> None:
        """Keep the entries where ``kept`` is true, in their order."""
        self._unpack()
        self._items = [x for x, k in zip(self._items, kept) if k]
        self._times = [x for x, k in zip(self._times, kept) if k]
        self._weights = [x for x, k in zip(self._weights, kept) if k]
        self._fingerprints = [x for x, k in zip(self._fingerprints, kept) if k]
        self._counts = [x for x, k in zip(self._counts, kept) if k]

    def pack(self) -> bytes:
        """The history as bytes (empty if it has no entries); raises ``NonFinite`` for a NaN or infinity."""
        if self._block is not None and self._stride == _ENTRY_BYTES:
            return self._block
        self._unpack()  # a block without counts is written with them
        n = len(self._items)
        if not n:
            return b""
        base = max(self._times)
        offsets = [t - base for t in self._times]
        # any NaN or infinity makes the sum one
        require_finite("the user history", base + sum(offsets) + sum(self._weights))
        return b"".join(
            (
                _HISTORY_HEADER.pack(base, n),
                struct.pack(
                    f"<{n}f{n}f{n}I{n}I",
                    *offsets,
                    *self._weights,
                    *self._fingerprints,
                    *self._counts,
                ),
                "\0".join(self._items).encode(),
            )
        )


@dataclass
class UserState:
    hidden: np.ndarray  # GRU hidden vector (short-term interest), float32 [H]
    lt_sum: np.ndarray  # decayed, weighted sum of item embeddings, float32 [D]
    lt_weight: float = 0.0  # decayed sum of weights; long-term vector = lt_sum / lt_weight
    lt_time: float = 0.0  # event time lt_sum/lt_weight were decayed to
    clicks: int = 0
    purchases: int = 0
    # the user's newest applied event by event time ("" until one is applied)
    last_event_id: str = ""
    last_event_time: float = 0.0  # its event time, unix seconds
    model_version: str = ""  # the GRU that produced ``hidden``; another version restarts it
    # Source "topic:partition" -> last applied offset. Replayed (redelivered) messages are skipped by it,
    # which makes applying an event idempotent across crashes and rebalances.
    applied: dict[str, int] = field(default_factory=dict)
    recent_items: list[str] = field(default_factory=list)  # newest first
    # newest first, to drop re-sent duplicates
    recent_event_ids: list[str] = field(default_factory=list)
    # The last top-k published for the user, (item id, score), and when (unix seconds): what `inspect` shows.
    latest: list[tuple[str, float]] = field(default_factory=list)
    latest_at: float = 0.0
    # The encoder space ``lt_sum`` and the history's fingerprints are in (``ItemEncoder.space``); "" for a
    # state written before spaces were recorded.
    space: str = ""
    history: History = field(default_factory=History)

    @classmethod
    def new(
        cls, hidden_size: int, embed_size: int, model_version: str, space: str = ""
    ) -> "UserState":
        return cls(
            np.zeros(hidden_size, np.float32),
            np.zeros(embed_size, np.float32),
            model_version=model_version,
            space=space,
        )

    @property
    def long_term(self) -> np.ndarray:
        """Time-decayed average embedding of the items the user touched (zeros before any)."""
        if self.lt_weight <= 0.0:
            return np.zeros_like(self.lt_sum)
        return self.lt_sum / np.float32(self.lt_weight)

    def is_applied(self, source: str, offset: int) -> bool:
        return offset <= self.applied.get(source, -1)

    def remember(
        self, event_id: str, item_id: str, recent_items: int, recent_events: int = 64
    ) -> None:
        self.recent_event_ids = [event_id, *self.recent_event_ids[: recent_events - 1]]
        self.recent_items = [item_id, *(i for i in self.recent_items if i != item_id)][
            :recent_items
        ]


def encode(state: UserState) -> bytes:
    """The state as bytes; raises ``NonFinite`` rather than store a NaN or an infinity (the last guard)."""
    require_finite(
        "the user state",
        state.hidden,
        state.lt_sum,
        state.lt_weight,
        state.lt_time,
        state.last_event_time,
        state.latest_at,
        *(score for _, score in state.latest),
    )
    history = state.history.pack()
    meta = {
        "lw": state.lt_weight,
        "lt": state.lt_time,
        "c": state.clicks,
        "p": state.purchases,
        "le": state.last_event_id,
        "let": state.last_event_time,
        "mv": state.model_version,
        "ap": state.applied,
        "ri": state.recent_items,
        "re": state.recent_event_ids,
        "lr": [(item, round(score, 5)) for item, score in state.latest],
        "la": state.latest_at,
        "sp": state.space,
        "hb": len(history),
        "hc": 1,
    }
    blob = orjson.dumps(meta)  # the same compact JSON as json.dumps, ~10x faster
    hidden = np.ascontiguousarray(state.hidden, np.float32)
    lt_sum = np.ascontiguousarray(state.lt_sum, np.float32)
    return b"".join(
        (
            _HEADER.pack(FORMAT_VERSION, len(blob), hidden.size, lt_sum.size),
            blob,
            hidden.tobytes(),
            lt_sum.tobytes(),
            history,
        )
    )


def decode(raw: bytes) -> UserState:
    version, n_blob, n_hidden, n_lt = _HEADER.unpack_from(raw)
    if version != FORMAT_VERSION:
        raise ValueError(f"unknown user state format {version}")
    start = _HEADER.size
    meta = orjson.loads(raw[start : start + n_blob])
    start += n_blob
    hidden = np.frombuffer(raw, np.float32, n_hidden, start).copy()
    lt_sum = np.frombuffer(raw, np.float32, n_lt, start + 4 * n_hidden).copy()
    start += 4 * (n_hidden + n_lt)
    # "hb" is absent before the long-term refresh; "hc" before touches were counted
    history = History.packed(raw[start : start + meta.get("hb", 0)], counted="hc" in meta)
    return UserState(
        hidden=hidden,
        lt_sum=lt_sum,
        lt_weight=meta["lw"],
        lt_time=meta["lt"],
        clicks=meta["c"],
        purchases=meta["p"],
        last_event_id=meta["le"],
        last_event_time=meta["let"],
        model_version=meta["mv"],
        applied=meta["ap"],
        recent_items=meta["ri"],
        recent_event_ids=meta["re"],
        # absent before 0.1.0's inspect
        latest=[(item, score) for item, score in meta.get("lr", ())],
        latest_at=meta.get("la", 0.0),
        space=meta.get("sp", ""),
        history=history,
    )
