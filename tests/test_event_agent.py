"""The event agent's write order, in process: a rejected event's dead letter is on the broker before the
state that counts the event applied is written, so a crash in between cannot lose it."""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from streams.dead_letters import DeadLetterWriter
from streams.event_agent import EventAgent
from streams.ingest import EventStep
from streams.schemas import EventLimits
from streams.settings import Settings
from tests.test_bad_input import Msg, make_updater


@dataclass
class Producer:
    """Records what is sent; each send's delivery future stays pending until ``acknowledge``."""

    sent: list[tuple[str, bytes | None]] = field(default_factory=list)
    futures: list[asyncio.Future] = field(default_factory=list)

    async def send(self, topic, key, value, partition, timestamp, headers):
        self.sent.append((topic, key))
        future = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future

    def acknowledge(self) -> None:
        for f in self.futures:
            if not f.done():
                f.set_result(None)


@dataclass
class App:
    producer: Producer = field(default_factory=Producer)


@dataclass
class Table:
    stored: dict[bytes, bytes] = field(default_factory=dict)
    writes: list[dict] = field(default_factory=list)

    def get_many(self, keys):
        return {k: self.stored.get(k) for k in keys}

    def set_many(self, values):
        self.writes.append(values)
        self.stored.update({k: v for k, (_, v) in values.items()})


class Runtime:
    def __init__(self) -> None:
        self.events = EventStep(make_updater(), {"clicks": "click"}, EventLimits(), 1_000_000)
        self.watermarks: dict[int, float] = {}
        self.thread = ThreadPoolExecutor(1)

    async def in_model_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn, *args)


def event(n: int, item: str) -> Msg:
    # the agent's clock
    value = {"event_id": f"e{n}", "user_id": "u1", "item_id": item, "ts": time.time() - 100 + n}
    return Msg("clicks", 0, n, b"u1", json.dumps(value).encode())


def test_a_rejected_events_dead_letter_is_acknowledged_before_its_users_state_is_written():
    async def scenario():
        app, table = App(), Table()
        agent = EventAgent(
            app,
            Settings(dead_letter_topic="dlq", recommendations_topic="recs"),
            table,
            None,
            Runtime(),
            None,
            DeadLetterWriter(app, "dlq", 1_000_000),
        )
        sent: list = []
        applying = asyncio.ensure_future(
            agent.apply([event(0, "i0"), event(1, "no-such-item")], sent, time.time())
        )
        await asyncio.sleep(0.2)
        # waiting for the dead letter's ack
        assert app.producer.sent == [("dlq", b"u1")] and table.writes == []
        app.producer.acknowledge()
        await applying
        # then the state, counting both events applied
        assert [list(w) for w in table.writes] == [[b"u1"]]
        assert app.producer.sent == [("dlq", b"u1"), ("recs", b"u1")]

    asyncio.run(scenario())


def test_without_a_rejection_nothing_waits_for_the_broker():
    async def scenario():
        app, table = App(), Table()
        agent = EventAgent(
            app,
            Settings(recommendations_topic="recs"),
            table,
            None,
            Runtime(),
            None,
            DeadLetterWriter(app, "dlq", 1_000_000),
        )
        sent: list = []
        await asyncio.wait_for(agent.apply([event(0, "i0"), event(1, "i1")], sent, time.time()), 5)
        assert (
            len(table.writes) == 1
            and [topic for topic, _ in app.producer.sent] == ["recs"]
            and len(sent) == 1
        )

    asyncio.run(scenario())
