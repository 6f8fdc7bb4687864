"""`reembed`: the whole catalogue embedded by the configured encoder into the configured item-vectors
topic, so that workers can switch to a new encoder with every item already in its space
(docs/refresh.md, Rolling
out a new encoder).

Reads the items topic from its start to its end (every item's latest text; a null retires it) and the
target item-vectors topic (which items it holds, from which text, by which encoder); embeds, in batches
on the encoder's device (CUDA when present), the items the target lacks or holds from another text or
encoder, and publishes their vectors with the encoder header, and tombstones for the items it holds that
the catalogue no longer has. A second run publishes only what changed since the first. The whole items
topic is held in memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from kafka import KafkaConsumer, TopicPartition

from cli.delivery import Delivery
from models.encoder import ItemEncoder
from state.item_store import ItemVector
from streams.connection import client_options
from streams.ingest import item_step
from streams.settings import Settings
from streams.topics import ENCODER_HEADER, encoder_of, ensure_topics


@dataclass(frozen=True)
class Reembedded:
    embedded: int  # vectors published
    retired: int  # tombstones published
    rejected: int  # catalogue records that are not a valid item (the workers dead-lettered them)


def read_to_end(settings: Settings, topic: str) -> list:
    """Every record of ``topic`` from its start to its end as of now, partition by partition
    (kafka-python's)."""
    consumer = KafkaConsumer(**client_options(settings), group_id=None, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        records: list = []
        while any(consumer.position(tp) < end[tp] for tp in tps):
            for batch in consumer.poll(timeout_ms=1000).values():
                records += batch
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


def held(records: list, space: str) -> dict[str, bytes]:
    """Item-vectors records -> the text hash of each item whose latest vector is of encoder ``space``."""
    out: dict[str, bytes] = {}
    for r in records:
        item_id = r.key.decode(errors="replace")
        out.pop(item_id, None)
        if r.value is not None and encoder_of(r) == space:
            try:
                out[item_id] = ItemVector.decode(item_id, r.value).text_hash
            except ValueError:  # not a vector record: embed the item again
                pass
    return out


def reembed(settings: Settings, progress: bool = True) -> Reembedded:
    encoder = ItemEncoder(
        settings.encoder_path,
        settings.encoder_device,
        settings.encoder_batch,
        settings.encoder_max_tokens,
    )
    ensure_topics(settings)
    known = held(read_to_end(settings, settings.item_vectors_topic), encoder.space)
    items = read_to_end(settings, settings.items_topic)
    # the last record of each key wins
    live = {r.key: r.value is not None for r in items if r.key is not None}
    out = item_step(items, known.get, lambda texts: encoder.encode(texts, progress=progress))
    gone = {item_id.encode() for item_id in known if not live.get(item_id.encode())} | set(
        out.retired
    )
    with Delivery(settings, "item vectors") as sent:
        headers = [(ENCODER_HEADER, encoder.space.encode())]
        for key, value in out.vectors:
            sent.send(
                settings.item_vectors_topic,
                key,
                value,
                label=f"item {key.decode()!r}",
                headers=headers,
            )
        for key in gone:
            sent.send(
                settings.item_vectors_topic,
                key,
                None,
                label=f"the retirement of item {key.decode()!r}",
            )
    return Reembedded(len(out.vectors), len(gone), len(out.rejected))
