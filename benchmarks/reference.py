"""The reference: the plainest consume-and-produce loop a Kafka client can run, one output message per
event (the input bytes passed through), a flush and a commit per fetched batch. Nothing in the pipeline
can be faster than this on the same broker and machine."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from kafka import KafkaConsumer, KafkaProducer

from streams.connection import client_options
from streams.settings import Settings

PRODUCER = {"linger_ms": 5}
MAX_RECORDS = 2000


async def fill(settings: Settings, topic: str, messages: list[tuple[bytes, bytes]]) -> float:
    """Produce ``messages`` (key, value) as fast as aiokafka can; returns messages/s."""
    producer = AIOKafkaProducer(**client_options(settings), max_batch_size=256 * 1024, **PRODUCER)
    await producer.start()
    try:
        start = time.perf_counter()
        for key, value in messages:
            # waits only for buffer space, not for the broker
            await producer.send(topic, value, key=key)
        await producer.flush()
        return len(messages) / (time.perf_counter() - start)
    finally:
        await producer.stop()


async def aiokafka_loop(
    settings: Settings, src: str, dst: str, n: int, group: str, value_sizes: tuple[int, ...] = ()
) -> tuple[float, float]:
    """(events/s, CPU seconds of this process), timed from the first fetched batch (group join excluded)
    to the last flush. Each event's value is passed through, or with ``value_sizes`` replaced by one
    message of each size (what the pipeline writes per event: a user state, a recommendation)."""
    payloads = [bytes(size) for size in value_sizes]
    consumer = AIOKafkaConsumer(
        src,
        **client_options(settings),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = AIOKafkaProducer(**client_options(settings), max_batch_size=256 * 1024, **PRODUCER)
    await consumer.start()
    await producer.start()
    try:
        seen, start, cpu = 0, 0.0, 0.0
        while seen < n:
            batches = await consumer.getmany(timeout_ms=200, max_records=MAX_RECORDS)
            records = [r for batch in batches.values() for r in batch]
            if not records:
                continue
            if not start:
                start, cpu = time.perf_counter(), time.process_time()
            futures = [
                await producer.send(dst, value, key=r.key)
                for r in records
                for value in payloads or [r.value]
            ]
            await asyncio.gather(*futures)
            await consumer.commit()
            seen += len(records)
        return seen / (time.perf_counter() - start), time.process_time() - cpu
    finally:
        await producer.stop()
        await consumer.stop()


def kafka_python_loop(
    settings: Settings, src: str, dst: str, n: int, group: str
) -> tuple[float, float]:
    consumer = KafkaConsumer(
        src,
        **client_options(settings),
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    producer = KafkaProducer(**client_options(settings), batch_size=256 * 1024, **PRODUCER)
    try:
        seen, start, cpu = 0, 0.0, 0.0
        while seen < n:
            records = [
                r
                for batch in consumer.poll(timeout_ms=200, max_records=MAX_RECORDS).values()
                for r in batch
            ]
            if not records:
                continue
            if not start:
                start, cpu = time.perf_counter(), time.process_time()
            for r in records:
                producer.send(dst, r.value, key=r.key)
            producer.flush()
            consumer.commit()
            seen += len(records)
        return seen / (time.perf_counter() - start), time.process_time() - cpu
    finally:
        producer.close()
        consumer.close()
