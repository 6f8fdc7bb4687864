"""A micro-batch of raw messages -> the records it writes, without Kafka or faust.

The agents run these steps inside the ingestion boundary (``streams.boundary``), so whatever one message
makes them raise stays with that message. They compute everything before anything is written; the
agents then write what they return: dead letters, then user states, then recommendations.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from models.records import CatalogueItem, EventType, Rejection
from models.updater import Delivered, InterestUpdater
from state.faults import OutputTooLarge
from state.item_store import ItemVector, text_hash
from state.user_state import UserState, decode, encode
from streams.dead_letters import RECORD_OVERHEAD
from streams.erasure import marker
from streams.schemas import EventLimits, check_id, parse_event, parse_item


class Message(Protocol):
    """What the steps read of a consumed message (faust's ``Message`` has these)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float  # when it was produced, unix seconds

    @property
    # faust's HeadersArg
    def headers(self) -> Sequence[tuple[str, bytes]] | Mapping[str, bytes] | None: ...


@dataclass(frozen=True)
class Rejected:
    message: Message
    rejection: Rejection


@dataclass
class Admitted:
    """Events that passed validation, in arrival order, and the messages rejected on the way."""

    delivered: list[Delivered] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    # (source, offset) -> its message
    message_of: dict[tuple[str, int], Message] = field(default_factory=dict)
    # user -> their last message: its partition is theirs
    origin: dict[str, Message] = field(default_factory=dict)

    @property
    def users(self) -> dict[bytes, int]:
        """Each user's key and partition: what to read from the user table."""
        return {user.encode(): msg.partition for user, msg in self.origin.items()}


@dataclass
class EventsOutput:
    # user key -> (partition, encoded state)
    states: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    # key, value, the event's message
    recommendations: list[tuple[bytes, bytes, Message]] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    redelivered: int = 0  # already applied before a crash or rebalance: skipped
    # long-term vectors recomputed, by cause
    refreshed: Counter[str] = field(default_factory=Counter)
    # partition -> newest event time applied
    watermarks: dict[int, float] = field(default_factory=dict)


def fits(record: bytes, max_bytes: int) -> bytes:
    """``record`` if a broker that takes ``max_bytes`` per record takes it, else ``OutputTooLarge``."""
    if len(record) + RECORD_OVERHEAD > max_bytes:
        raise OutputTooLarge(
            f"an output of {len(record):,} bytes exceeds the {max_bytes:,}-byte record limit"
        )
    return record


class EventStep:
    """Events -> user states and recommendations (``InterestUpdater``), from raw message bytes."""

    def __init__(
        self,
        updater: InterestUpdater,
        event_types: dict[str, EventType],
        limits: EventLimits,
        max_record_bytes: int,
    ) -> None:
        self.updater = updater
        self.event_types = event_types  # topic -> the event type it carries
        self.limits = limits
        self.max_record_bytes = max_record_bytes

    def __call__(
        self,
        messages: Sequence[Message],
        read: Callable[[dict[bytes, int]], dict[bytes, bytes | None]],
        now: float,
    ) -> EventsOutput:
        """The whole step: ``read`` gives the stored state of each user key (key -> its partition)."""
        admitted = self.admit(messages, now)
        return self.apply(admitted, read(admitted.users))

    def admit(self, messages: Sequence[Message], now: float) -> Admitted:
        """Parse and validate each message of a micro-batch; no state is read.

        Args:
            messages: the micro-batch's event messages (clicks and purchases), key the user id.
            now: the wall clock, seconds since the epoch, for ``EventLimits.max_future_s``.

        Returns:
            The events that passed, in order, with their sources and messages, and the rejected
            messages with their reasons (``bad_json``, ``bad_type``, ``bad_value``, ``bad_key``...).
        """
        admitted = Admitted()
        for msg in messages:
            event = parse_event(msg.value, self.event_types[msg.topic], now, self.limits)
            if isinstance(event, Rejection):
                admitted.rejected.append(Rejected(msg, event))
            elif msg.key != event.user_id.encode():
                admitted.rejected.append(
                    Rejected(
                        msg,
                        Rejection(
                            "bad_key", "message key must be the user id (it picks the partition)"
                        ),
                    )
                )
            else:
                d = Delivered(event, f"{msg.topic}:{msg.partition}", msg.offset)
                admitted.delivered.append(d)
                admitted.message_of[(d.source, d.offset)] = admitted.origin[event.user_id] = msg
        return admitted

    def apply(self, admitted: Admitted, stored: dict[bytes, bytes | None]) -> EventsOutput:
        """Apply the admitted events to their users' states (``InterestUpdater.apply``).

        Args:
            admitted: what ``admit`` returned.
            stored: user key -> the encoded state in the table, None for a user it does not hold.

        Returns:
            The new encoded states by partition, the recommendations to publish, every rejected
            message (``admit``'s and the updater's: unknown item, duplicate, too late), the redelivered
            count, the refresh causes and each partition's newest event time.
        """
        out = EventsOutput(rejected=list(admitted.rejected))
        if not admitted.delivered:
            return out
        origin = admitted.origin
        states = {
            user: None if (raw := stored[user.encode()]) is None else decode(raw) for user in origin
        }
        result = self.updater.apply(admitted.delivered, states)
        out.redelivered, out.refreshed = result.redelivered, result.refreshed
        out.rejected += [
            Rejected(admitted.message_of[(d.source, d.offset)], rejection)
            for d, rejection in result.rejected
        ]
        for user, state in result.states.items():
            out.states[user.encode()] = (
                origin[user].partition,
                fits(encode(state), self.max_record_bytes),
            )
        for rec in result.recommendations:
            out.recommendations.append(
                (
                    rec.user_id.encode(),
                    fits(rec.to_json(), self.max_record_bytes),
                    origin[rec.user_id],
                )
            )
        for d in admitted.delivered:
            p = origin[d.event.user_id].partition
            out.watermarks[p] = max(out.watermarks.get(p, 0.0), d.event.ts)
        return out


@dataclass
class ItemsOutput:
    # item key -> encoded ItemVector
    vectors: list[tuple[bytes, bytes]] = field(default_factory=list)
    retired: list[bytes] = field(default_factory=list)  # item keys to tombstone on item-vectors
    rejected: list[Rejected] = field(default_factory=list)
    embedded: int = 0  # texts the encoder embedded
    # item id -> text hash of each vector in ``vectors``
    hashes: dict[str, bytes] = field(default_factory=dict)


def item_step(
    messages: Sequence[Message],
    known_hash: Callable[[str], bytes | None],
    encode_texts: Callable[[list[str]], np.ndarray],
) -> ItemsOutput:
    """Catalogue messages -> item vectors to publish. Each item ends as its last record says: a null value
    retires the item of its key (Kafka's delete on a compacted topic), an item record (re)adds it; an item
    whose text is what ``known_hash`` says item-vectors holds is not embedded again."""
    out = ItemsOutput()
    # item id -> its last valid record in ``messages`` (None: deleted)
    last: dict[str, CatalogueItem | None] = {}
    for msg in messages:
        if msg.value is None:
            item_id = _key_id(msg.key, "the key of a deleted item")
            if isinstance(item_id, Rejection):
                out.rejected.append(Rejected(msg, item_id))
            else:
                last[item_id] = None
            continue
        item = parse_item(msg.value)
        if isinstance(item, Rejection):
            out.rejected.append(Rejected(msg, item))
        elif msg.key != item.item_id.encode():
            out.rejected.append(
                Rejected(
                    msg,
                    Rejection(
                        "bad_key",
                        "message key must be the item id (compaction keeps the last value per key)",
                    ),
                )
            )
        else:
            last[item.item_id] = item
    out.retired = [item_id.encode() for item_id, item in last.items() if item is None]
    changed = [
        item
        for item in last.values()
        if item is not None and known_hash(item.item_id) != text_hash(item.text)
    ]
    if changed:
        vectors = encode_texts([item.text for item in changed])
        out.vectors = [
            (item.item_id.encode(), ItemVector(item.item_id, text_hash(item.text), vec).encode())
            for item, vec in zip(changed, vectors)
        ]
        out.hashes = {item.item_id: text_hash(item.text) for item in changed}
        out.embedded = len(changed)
    return out


class LastPublished:
    """What item-vectors holds for each item as this worker knows it: what it published there itself (a
    text hash; None for a tombstone) before what its item store has followed (``stored``). The store
    applies the topic a moment later than the agent writes it: a delete and a re-add of an item in two
    batches found the old vector still stored, skipped the re-add as unchanged, and the delete's tombstone
    retired the item for good."""

    def __init__(self, stored: Callable[[str], bytes | None]) -> None:
        self.stored = stored
        self._sent: dict[str, bytes | None] = {}

    def known_hash(self, item_id: str) -> bytes | None:
        return self._sent[item_id] if item_id in self._sent else self.stored(item_id)

    def published(self, out: ItemsOutput) -> None:
        """Call once ``out``'s vectors and tombstones are sent (in that order per item: one or the other)."""
        self._sent.update(out.hashes)
        self._sent.update(dict.fromkeys((key.decode() for key in out.retired), None))


def _key_id(key: bytes | None, name: str) -> str | Rejection:
    """The id a message's key names (a deleted item's, an erased user's)."""
    try:
        checked = check_id((key or b"").decode(), name)
    except UnicodeDecodeError:
        return Rejection("bad_key", f"{name} must be UTF-8")
    return Rejection("bad_key", checked.detail) if isinstance(checked, Rejection) else checked


@dataclass
class ErasuresOutput:
    # user key -> (partition, erasure marker)
    states: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    # user key -> partition: a null on the recommendations topic each
    erased: dict[bytes, int] = field(default_factory=dict)
    rejected: list[Rejected] = field(default_factory=list)


def erasure_step(
    messages: Sequence[Message],
    read: Callable[[dict[bytes, int]], dict[bytes, bytes | None]],
    new_state: Callable[[], UserState],
) -> ErasuresOutput:
    """Erasure requests (the user id is the key; the value is not read) -> the users' erasure markers
    (``streams.erasure``). A request already applied to the user's state (read again after a crash) is
    skipped: it must not erase what came after it. A stored state that does not decode is erased too."""
    out = ErasuresOutput()
    requests: dict[bytes, Message] = {}
    for msg in messages:
        user = _key_id(msg.key, "the key of an erasure request (the user id)")
        if isinstance(user, Rejection):
            out.rejected.append(Rejected(msg, user))
        else:
            requests[msg.key] = msg  # type: ignore[index]  # a valid id: not None
    stored = read({key: msg.partition for key, msg in requests.items()})
    for key, msg in requests.items():
        out.erased[key] = msg.partition
        raw, source = stored[key], f"{msg.topic}:{msg.partition}"
        if raw is None:
            continue
        try:
            state = decode(raw)
        except Exception:  # noqa: BLE001 - any way a stored state can fail to decode: erase it all the same
            state = new_state()
        if not state.is_applied(source, msg.offset):
            out.states[key] = (msg.partition, encode(marker(state, (source, msg.offset))))
    return out
