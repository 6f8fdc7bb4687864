"""Every write of every client tool is checked: with the broker stopped after the tool has read what it
needed and before its first write, each one says how many records the broker did not acknowledge and
fails (the CLI then exits 1), instead of reporting what it attempted."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from cli import delivery
from cli.client import publish_catalogue, request_erasure, send_events
from cli.redrive import Selection, Window, redrive
from cli.reembed import reembed
from streams.topics import ensure_topics
from tests.brokers import new_broker
from tests.conftest import SAMPLE
from tests.helpers import variant

pytestmark = pytest.mark.e2e

EVENTS = [
    {
        "event_id": f"d{n}",
        "user_id": "u1",
        "item_id": "run-000",
        "type": "click",
        "ts": 1_790_000_000.0 + n,
    }
    for n in range(5)
]


def dead_letter_on_topic(settings) -> None:
    """One unknown_item dead letter, as a worker writes it, for `redrive` to re-publish."""
    with delivery.Delivery(settings, "dead letters") as out:
        out.send(
            settings.dead_letter_topic,
            b"u1",
            json.dumps(EVENTS[0]).encode(),
            label="dead letter",
            headers=[
                ("reason", b"unknown_item"),
                ("detail", b"no such item"),
                ("source", f"{settings.clicks_topic}:0:0".encode()),
            ],
        )


TOOLS = {
    "produce and replay": lambda s: send_events(s, EVENTS, progress=False),
    "catalogue": lambda s: publish_catalogue(s, SAMPLE / "catalogue.jsonl", progress=False),
    "erase": lambda s: request_erasure(s, ["u1"]),
    "redrive": lambda s: redrive(
        s, Selection(frozenset(), Window.parse(None, None)), progress=False
    ),
    "reembed": lambda s: reembed(s, progress=False),
}


@pytest.mark.broker_bug("tansu-memory-only")
@pytest.mark.parametrize("tool", TOOLS)
def test_a_tool_whose_writes_the_broker_does_not_acknowledge_says_so_and_fails(
    settings, tmp_path, broker_kind, monkeypatch, tool
):
    # the broker will not come back: do not wait 30 s
    monkeypatch.setattr(delivery, "DELIVERY_TIMEOUT_S", 3.0)
    monkeypatch.setattr(delivery, "REQUEST_TIMEOUT_S", 1.0)
    monkeypatch.setattr(delivery, "BLOCK_S", 1.0)
    broker = new_broker(broker_kind, tmp_path / "own-broker").start()
    try:
        s = replace(variant(settings, "d", tmp_path / "state"), broker=broker.address)
        ensure_topics(s)
        if tool == "redrive":
            dead_letter_on_topic(s)
        if tool == "reembed":
            publish_catalogue(s, SAMPLE / "catalogue.jsonl", progress=False)
        send = delivery.Delivery.send

        # mid-run: after the tool's reads, at its first write
        def stop_first(self, *args, **kwargs):
            broker.stop()
            return send(self, *args, **kwargs)

        monkeypatch.setattr(delivery.Delivery, "send", stop_first)
        with pytest.raises(delivery.NotDelivered) as failed:
            TOOLS[tool](s)
        assert " acknowledged by the broker; " in str(failed.value) and " not" in str(failed.value)
    finally:
        broker.stop()
