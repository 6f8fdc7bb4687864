"""Offsets become durable in batch order, only after every record of their batch is acknowledged."""

import asyncio

import pytest
from faust.types import TP

from streams.durability import AcksInOrder

CLICKS = TP("clicks", 0)


class Failed(Exception):
    pass


def test_a_batch_is_durable_after_its_records_and_every_earlier_batch():
    async def scenario():
        durable: list[dict] = []
        acks = AcksInOrder(durable.append, lambda exc: None, in_flight=3)
        first, second = (
            asyncio.get_running_loop().create_future(),
            asyncio.get_running_loop().create_future(),
        )
        await acks.add([first], {CLICKS: 10})
        await acks.add([second], {CLICKS: 20})
        second.set_result(None)  # the later batch is acknowledged first
        await asyncio.sleep(0.01)
        assert durable == []  # it waits for the earlier one
        first.set_result(None)
        await acks.drain()
        assert durable == [{CLICKS: 10}, {CLICKS: 20}]

    asyncio.run(scenario())


def test_adding_waits_while_too_many_batches_are_in_flight():
    async def scenario():
        durable: list[dict] = []
        acks = AcksInOrder(durable.append, lambda exc: None, in_flight=1)
        record = asyncio.get_running_loop().create_future()
        await acks.add([record], {CLICKS: 10})
        blocked = asyncio.ensure_future(acks.add([], {CLICKS: 20}))
        await asyncio.sleep(0.01)
        assert not blocked.done()
        record.set_result(None)
        await blocked
        await acks.drain()
        assert durable == [{CLICKS: 10}, {CLICKS: 20}]

    asyncio.run(scenario())


def test_a_record_that_failed_makes_nothing_durable_and_calls_on_failure():
    async def scenario():
        durable: list[dict] = []
        failures: list[BaseException] = []
        acks = AcksInOrder(durable.append, failures.append)
        record = asyncio.get_running_loop().create_future()
        record.set_exception(Failed("broker said no"))
        await acks.add([record], {CLICKS: 10})
        await acks.drain()
        assert durable == [] and [type(f) for f in failures] == [Failed]

    asyncio.run(scenario())


@pytest.mark.parametrize("in_flight", [1, 2])
def test_drain_waits_for_every_batch(in_flight):
    async def scenario():
        durable: list[dict] = []
        acks = AcksInOrder(durable.append, lambda exc: None, in_flight=in_flight)
        loop = asyncio.get_running_loop()
        records = [loop.create_future() for _ in range(3)]
        for n, record in enumerate(records):
            loop.call_later(0.01 * (3 - n), record.set_result, None)
            await acks.add([record], {CLICKS: n})
        await acks.drain()
        assert durable == [{CLICKS: 0}, {CLICKS: 1}, {CLICKS: 2}]

    asyncio.run(scenario())
