"""Prometheus metrics, in base units with conventional names, and never labelled by user."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Finer, for where the latency goes: the benchmark estimates each stage's quantiles from these.
STAGE_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

EVENTS_CONSUMED = Counter(
    "interest_events_consumed_total", "Event messages consumed", ["topic", "type"]
)
EVENTS_DEAD_LETTERED = Counter(
    "interest_events_dead_lettered_total",
    "Messages sent to the dead-letter topic, by reason and source topic",
    ["reason", "topic"],
)
EVENTS_REDELIVERED = Counter(
    "interest_events_redelivered_total", "Redelivered events skipped as already applied"
)
BATCH_SPLITS = Counter(
    "interest_batch_splits_total",
    "Micro-batches that failed and were retried in halves to find the message at fault",
    ["topic"],
)
ITEM_VECTORS_IGNORED = Counter(
    "interest_item_vectors_ignored_total",
    "item-vectors records that are not a vector of this encoder's size, or are another encoder's (skipped)",
)
UNDECODABLE_BATCHES = Counter(
    "interest_undecodable_batches_total",
    "Record batches the consumer could not decode (a codec missing, a failed CRC), by topic; "
    "each of their offsets is an undecodable_batch dead letter",
    ["topic"],
)
ITEMS_RETIRED = Counter(
    "interest_items_retired_total",
    "Catalogue items removed by a null value (tombstone) on the items topic",
)
STORE_REBUILDS = Counter(
    "interest_local_store_rebuilds_total",
    "Damaged local stores set aside at start and rebuilt from the broker",
    ["store"],
)
STATES_UNREADABLE = Counter(
    "interest_decay_states_unreadable_total",
    "Stored user states the decay timer found that do not decode (left as they are)",
)
PARTITION_REREADS = Counter(
    "interest_partition_rereads_total", "Event partitions re-read from an offset the consumer lost"
)
USERS_ERASED = Counter(
    "interest_users_erased_total",
    "Users erased: on request (`erase`) or expired (INTEREST_USER_TTL_S)",
    ["cause"],
)
RECOMMENDATIONS = Counter("interest_recommendations_published_total", "Recommendations published")
LATENCY = Histogram(
    "interest_event_to_recommendation_seconds",
    "Event produce time to recommendation publish time",
    buckets=LATENCY_BUCKETS,
)
STAGE = Histogram(
    "interest_event_stage_seconds",
    "Where an event's latency goes, per event: queued (produce time to its micro-batch taken by the agent), "
    "applied (taken to its recommendation handed to the producer), acknowledged (handed to "
    "acknowledged by the broker)",
    ["stage"],
    buckets=STAGE_BUCKETS,
)
BATCH_SIZE = Histogram(
    "interest_batch_size",
    "Events per micro-batch",
    buckets=(1, 4, 16, 64, 128, 256, 512, 1024, 4096),
)
BATCH_DURATION = Histogram(
    "interest_batch_duration_seconds", "Micro-batch processing time", buckets=LATENCY_BUCKETS
)
ENCODER_BATCH_DURATION = Histogram(
    "interest_encoder_batch_duration_seconds",
    "Time to embed one batch of items",
    buckets=LATENCY_BUCKETS,
)
ENCODER_ITEMS = Counter("interest_encoder_items_total", "Items embedded")
ENCODER_ITEMS_PER_SECOND = Gauge(
    "interest_encoder_items_per_second", "Items per second of the last encoder batch"
)
DECAY_DURATION = Histogram(
    "interest_decay_duration_seconds",
    "Time of one partition's decay tick pass (decay and long-term refresh)",
    buckets=LATENCY_BUCKETS,
)
LONGTERM_REFRESHED = Counter(
    "interest_longterm_refreshed_total",
    "Users' long-term vectors recomputed from their history, by cause: item_vectors (an item's "
    "vector changed or it was retired), encoder (the state was in another encoder's space)",
    ["cause"],
)
CONSUMER_LAG = Gauge(
    "interest_consumer_lag_messages",
    "Messages behind the end of each partition",
    ["topic", "partition"],
)
CONSUMER_LAG_SECONDS = Gauge(
    "interest_consumer_lag_seconds",
    "Age of the last processed message while behind (0 when caught up)",
    ["topic", "partition"],
)
TABLE_USERS = Gauge("interest_table_users", "User states held by this worker's active partitions")
CATALOGUE_ITEMS = Gauge("interest_catalogue_items", "Embedded items available for scoring")
MODEL_INFO = Gauge(
    "interest_model_info",
    "Model and encoder in use, and where the encoder runs (value 1)",
    ["version", "encoder", "encoder_device"],
)
READY = Gauge("interest_ready", "1 once the catalogue has caught up and events are processed")
