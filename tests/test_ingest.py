"""The business rules of a micro-batch, in the pure steps (no Kafka, no faust): an event's key must be its
user, watermarks are the newest event time applied per partition, outputs must fit a record, a null
catalogue value retires its item, an unchanged text is not embedded again."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from models.records import Event
from models.updater import Delivered
from state.faults import OutputTooLarge
from state.item_store import ItemVector, text_hash
from streams.ingest import EventStep, LastPublished, fits, item_step
from streams.schemas import EventLimits
from tests.test_bad_input import Msg, make_updater


def click(offset: int, user: str, ts: float, key: bytes | None = None, partition: int = 0) -> Msg:
    value = json.dumps(
        {"event_id": f"e{offset}", "user_id": user, "item_id": "i1", "ts": ts}
    ).encode()
    return Msg("clicks", partition, offset, user.encode() if key is None else key, value)


def run(messages: list[Msg]):
    step = EventStep(make_updater(), {"clicks": "click"}, EventLimits(), 1_000_000)
    return step(messages, lambda keys: dict.fromkeys(keys), time.time())


def test_an_event_whose_key_is_not_its_user_is_rejected_as_bad_key():
    now = time.time()
    out = run([click(0, "u1", now - 10), click(1, "u2", now - 9, key=b"u1")])
    assert [(r.message.offset, r.rejection.reason) for r in out.rejected] == [(1, "bad_key")]
    assert set(out.states) == {b"u1"}


def test_watermarks_are_the_newest_event_time_applied_on_each_partition():
    now = time.time()
    out = run(
        [
            click(0, "u1", now - 50, partition=0),
            click(1, "u1", now - 60, partition=0),
            click(2, "u2", now - 5, partition=3),
        ]
    )
    assert out.watermarks == {0: now - 50, 3: now - 5}


def test_an_output_too_large_for_a_record_is_the_messages_fault():
    assert fits(b"x" * 100, 1000) == b"x" * 100
    with pytest.raises(OutputTooLarge):
        fits(b"x" * 1000, 1000)


def item(offset: int, key: bytes, value: dict | None) -> Msg:
    return Msg("items", 0, offset, key, None if value is None else json.dumps(value).encode())


def test_catalogue_rules():
    known = {"kept": text_hash("a tent")}
    embedded: list[list[str]] = []

    def encode(texts: list[str]) -> np.ndarray:
        embedded.append(texts)
        return np.ones((len(texts), 4), np.float32) / 2

    out = item_step(
        [
            item(
                0, b"kept", {"item_id": "kept", "text": "a tent"}
            ),  # unchanged: not embedded again
            item(1, b"new", {"item_id": "new", "text": "a stove"}),
            item(2, b"gone", None),  # a null value retires the item of its key
            # retired, then published again
            item(3, b"back", None),
            item(4, b"back", {"item_id": "back", "text": "a mug"}),
            item(5, b"other", {"item_id": "mismatch", "text": "a pan"}),  # key must be the item id
            item(6, b"", None),
        ],
        known.get,
        encode,
    )
    assert embedded == [["a stove", "a mug"]] and out.embedded == 2
    assert [k for k, _ in out.vectors] == [b"new", b"back"] and out.retired == [b"gone"]
    assert ItemVector.decode("new", out.vectors[0][1], 4).text_hash == text_hash("a stove")
    assert [(r.message.offset, r.rejection.reason) for r in out.rejected] == [
        (5, "bad_key"),
        (6, "bad_key"),
    ]


def test_a_user_gets_a_recommendation_for_applied_and_redelivered_events_but_not_for_rejected_ones():
    updater = make_updater()
    now = time.time()
    first = updater.apply(
        [Delivered(Event("e1", "u1", "i1", "click", now - 50), "clicks:0", 0)], {"u1": None}
    )
    state = first.states["u1"]
    again = updater.apply(
        [Delivered(Event("e1", "u1", "i1", "click", now - 50), "clicks:0", 0)], {"u1": state}
    )
    # may have been lost: sent again
    assert again.redelivered == 1 and [r.user_id for r in again.recommendations] == ["u1"]
    rejected = updater.apply(
        [Delivered(Event("e2", "u1", "missing", "click", now - 40), "clicks:0", 1)], {"u1": state}
    )
    assert [rejection.reason for _, rejection in rejected.rejected] == ["unknown_item"]
    # its applied offset still moves
    assert rejected.recommendations == [] and "u1" in rejected.states


def test_an_items_last_record_wins_in_every_order_within_and_across_batches():
    """Every sequence of up to three records of one item (upsert text a, upsert text b, delete), split into
    micro-batches every way, the item store following item-vectors as slowly as it can (nothing of this
    run applied) and with the item first absent or present as "a": the last vector or tombstone published,
    or else the store, says what the last record says. Seen: delete, delete, re-add left it retired."""
    import itertools

    records = {"a": {"item_id": "x", "text": "a"}, "b": {"item_id": "x", "text": "b"}, "d": None}

    def encode(texts: list[str]) -> np.ndarray:
        return np.ones((len(texts), 4), np.float32) / 2

    for n in (1, 2, 3):
        for sequence in itertools.product("abd", repeat=n):
            for cuts in itertools.product((False, True), repeat=n - 1):
                for before in (None, "a"):
                    stored = {} if before is None else {"x": text_hash("a")}
                    published = LastPublished(stored.get)
                    # item-vectors' records of x, as published: a text hash or None
                    topic: list[bytes | None] = []
                    batch: list = []
                    for offset, (record, cut) in enumerate(zip(sequence, (*cuts, True))):
                        batch.append(item(offset, b"x", records[record]))
                        if cut:
                            out = item_step(batch, published.known_hash, encode)
                            topic += [out.hashes["x"] for key, _ in out.vectors] + [
                                None for key in out.retired
                            ]
                            # one record per item and batch
                            assert len(out.vectors) + len(out.retired) <= 1
                            published.published(out)
                            batch = []
                    holds = topic[-1] if topic else stored.get("x")
                    want = None if sequence[-1] == "d" else text_hash(sequence[-1])
                    assert holds == want, (sequence, cuts, before, topic)
