"""Topic layout, created up front with kafka-python's admin client.

Every tool calls ``ensure_topics`` first: a producer that auto-created ``clicks`` with one partition
would break co-partitioning of events, ticks and the user table.
"""

from __future__ import annotations

import time
from typing import Any

from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient, NewTopic
from kafka.errors import (
    InvalidReplicationFactorError,
    KafkaConnectionError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
)

from state.faults import InterestStreamError
from streams.connection import client_options
from streams.settings import ConfigError, Settings

# on item-vectors records: the space (``ItemEncoder.space``) the vector is in
ENCODER_HEADER = "encoder"


def encoder_of(record: Any) -> str | None:
    """The ``encoder`` header of an item-vectors record (aiokafka's or kafka-python's); None on records
    written before it existed."""
    return next(
        (
            value.decode(errors="replace")
            for key, value in record.headers or ()
            if key == ENCODER_HEADER
        ),
        None,
    )


def topic_specs(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """name -> (partitions, configs). Event topics, ticks, erasures and the user table share one
    partition count."""
    p = settings.partitions
    return {
        settings.clicks_topic: (p, {}),
        settings.purchases_topic: (p, {}),
        settings.ticks_topic: (p, {"retention.ms": str(3600_000)}),
        settings.items_topic: (p, {"cleanup.policy": "compact"}),
        settings.item_vectors_topic: (p, {"cleanup.policy": "compact"}),
        settings.erasures_topic: (p, {"retention.ms": str(7 * 86400_000)}),
        # Compacted as well: a user's erasure (a null value) removes their earlier recommendations from it.
        settings.recommendations_topic: (p, {"cleanup.policy": "compact,delete"}),
        settings.dead_letter_topic: (1, {}),
    }


def admin_client(settings: Settings, wait_s: float = 30.0) -> KafkaAdminClient:
    """Connect, retrying while the broker starts; a clear error if it never answers."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return KafkaAdminClient(
                **client_options(settings), client_id=f"{settings.app_id}-admin"
            )
        except (KafkaConnectionError, KafkaTimeoutError):
            if time.monotonic() > deadline:
                raise InterestStreamError(
                    f"no Kafka broker answers at {settings.broker} after {wait_s:.0f}s"
                ) from None
            time.sleep(0.5)


def topic_partitions(settings: Settings, topics: list[str]) -> dict[str, int]:
    """The partition count of each of ``topics`` that exists on the broker (a metadata request; a missing
    topic is left out, never created)."""
    admin = admin_client(settings)
    try:
        described = admin.describe_topics(topics)
    finally:
        admin.close()
    return {t["name"]: len(t["partitions"]) for t in described if t["error_code"] == 0}


def ensure_topics(
    settings: Settings, specs: dict[str, tuple[int, dict[str, str]]] | None = None
) -> None:
    """Create the topics of ``specs`` (name -> (partitions, configs); default: ``topic_specs``) that do
    not exist; an existing topic is left as it is."""
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        for name, (partitions, configs) in (
            topic_specs(settings) if specs is None else specs
        ).items():
            if name in existing:
                continue
            try:
                admin.create_topics(
                    [NewTopic(name, partitions, settings.replication_factor, topic_configs=configs)]
                )
            except TopicAlreadyExistsError:  # another tool created it meanwhile
                pass
            except InvalidReplicationFactorError:
                raise ConfigError(
                    f"INTEREST_REPLICATION_FACTOR={settings.replication_factor}: the brokers cannot "
                    f"create {name} "
                    "with it: at most the number of brokers"
                ) from None
    finally:
        admin.close()


def check_record_limit(settings: Settings) -> None:
    """Raise ``ConfigError`` if a topic the worker writes whole input records to (dead letters) or large
    outputs (recommendations) takes smaller records than ``INTEREST_MAX_MESSAGE_BYTES``: the worker sizes
    what it writes by the setting, and the broker would refuse a record between the two (the worker stops)."""
    names = [settings.dead_letter_topic, settings.recommendations_topic]
    admin = admin_client(settings)
    try:
        described = admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, t) for t in names], config_filter="all"
        )
    finally:
        admin.close()
    limits = {
        name: int(config["max.message.bytes"]["value"])
        for name, config in described.get("topic", {}).items()
        if "max.message.bytes" in config
    }
    smaller = {name: limit for name, limit in limits.items() if limit < settings.max_message_bytes}
    if smaller:
        found = ", ".join(f"{name} takes {limit:,}" for name, limit in smaller.items())
        raise ConfigError(
            f"INTEREST_MAX_MESSAGE_BYTES={settings.max_message_bytes}, but {found} bytes per record "
            "(max.message.bytes): "
            f"set INTEREST_MAX_MESSAGE_BYTES={min(smaller.values())} or raise the topics' limit"
        )


def check_partitions(settings: Settings) -> None:
    """Raise ``ConfigError`` unless the topics that must be co-partitioned with the user table (events,
    erasures, decay ticks, the table's changelog) all have ``INTEREST_PARTITIONS`` partitions: a user's
    events, requests and state must meet on one partition, and the worker finds a user's state by
    ``partition = murmur2(user id) % INTEREST_PARTITIONS``. Topics not created yet are left out."""
    from streams.faust_compat import changelog_topic

    s = settings
    names = [
        s.clicks_topic,
        s.purchases_topic,
        s.erasures_topic,
        s.ticks_topic,
        changelog_topic(s.app_id),
    ]
    found = topic_partitions(settings, names)
    wrong = {name: n for name, n in found.items() if n != s.partitions}
    if not wrong:
        return
    counts = ", ".join(f"{name} has {n}" for name, n in wrong.items())
    if len(set(found.values())) == 1:
        fix = f"set INTEREST_PARTITIONS={next(iter(found.values()))}, the topics' count"
    else:
        fix = (
            "they must all have the same count: add partitions to the smaller ones (kafka-topics "
            "--alter; users then "
            "move between partitions) or start with new topics"
        )
    raise ConfigError(f"INTEREST_PARTITIONS={s.partitions}, but {counts} partitions: {fix}")
