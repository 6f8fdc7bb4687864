"""All configuration, read once from ``INTEREST_*`` environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path

from models.updater import UpdaterConfig
from streams.schemas import EventLimits

PREFIX = "INTEREST_"


def _env(name: str, default: str) -> str:
    return os.environ.get(PREFIX + name, default)


@dataclass(frozen=True)
class Settings:
    """One settings object; every field maps to ``INTEREST_<FIELD NAME UPPERCASE>``."""

    broker: str = field(default="", metadata={"help": "Kafka bootstrap servers (host:port,...). Empty: `demo` starts a local broker."})
    app_id: str = field(default="interest-stream", metadata={"help": "faust app id = consumer group and changelog topic prefix."})
    partitions: int = field(default=4, metadata={"help": "Partitions of the event topics and the user table (upper bound on workers)."})
    replication_factor: int = field(default=1, metadata={"help": "Replication of created topics (3 on a production cluster)."})
    data_dir: Path = field(default=Path("var"), metadata={"help": "Local state: RocksDB tables and the item-vector store."})
    clicks_topic: str = field(default="clicks", metadata={"help": "Click events topic."})
    purchases_topic: str = field(default="purchases", metadata={"help": "Purchase events topic."})
    items_topic: str = field(default="items", metadata={"help": "Catalogue topic (item id, text)."})
    item_vectors_topic: str = field(default="item-vectors", metadata={"help": "Embedded items, shared by all workers (compacted)."})
    recommendations_topic: str = field(default="recommendations", metadata={"help": "Output: top-k per user."})
    dead_letter_topic: str = field(default="dead-letters", metadata={"help": "Rejected input, original bytes plus reason headers."})
    ticks_topic: str = field(default="decay-ticks", metadata={"help": "Internal: timer ticks that decay long-term vectors per partition."})
    session_timeout_s: float = field(default=30.0, metadata={"help": "Consumer group session timeout: how fast a dead worker's partitions move."})
    commit_interval_s: float = field(default=2.8, metadata={"help": "Seconds between offset commits (faust's default). faust flushes the producer before each commit and latency spikes follow on a busy broker: 10 cut p99 a lot in the benchmark. Longer: more events read again after a crash (skipped as already applied; their recommendations sent again)."})
    instance_id: str = field(default="", metadata={"help": "Static group membership id (e.g. the StatefulSet pod name): a restarted worker takes its partitions back at once. Empty: dynamic membership."})
    top_k: int = field(default=10, metadata={"help": "Recommendations published per user."})
    exclude_seen: bool = field(default=True, metadata={"help": "Drop the user's recent items from their recommendations."})
    recent_items: int = field(default=50, metadata={"help": "Recent items remembered per user (for exclusion)."})
    half_life_s: float = field(default=7 * 86400.0, metadata={"help": "Half-life of the long-term interest, seconds of event time."})
    click_weight: float = field(default=1.0, metadata={"help": "Long-term weight of a click."})
    purchase_weight: float = field(default=3.0, metadata={"help": "Long-term weight of a purchase."})
    max_future_s: float = field(default=300.0, metadata={"help": "Events stamped further ahead of the wall clock are rejected."})
    max_lateness_s: float = field(default=86400.0, metadata={"help": "Events older than the user's last event by more are rejected."})
    max_quantity: int = field(default=1000, metadata={"help": "Purchases of a larger quantity are rejected (bad_value): quantity scales the long-term weight."})
    max_price: float = field(default=1e9, metadata={"help": "Events with a larger price are rejected (bad_value)."})
    max_message_bytes: int = field(default=1_000_000, metadata={"help": "Largest record the worker writes, headers included; a dead letter above it carries a truncated copy. At most the broker's message.max.bytes (Kafka: 1,048,588)."})
    batch_max: int = field(default=512, metadata={"help": "Largest micro-batch of events."})
    batch_wait_s: float = field(default=0.02, metadata={"help": "Longest wait to fill a micro-batch."})
    decay_interval_s: float = field(default=60.0, metadata={"help": "Timer period for decaying every user's long-term vector."})
    bf16_scoring: bool = field(default=True, metadata={"help": "Score catalogues of 2048+ items in bf16 where the CPU has native bf16 (AVX512-BF16/AMX), rescoring the best candidates in fp32."})
    torch_threads: int = field(default=1, metadata={"help": "Threads for the worker's model work (GRU, scoring); more take cores from the event loop and the broker. 0: torch's default."})
    fetch_backoff_s: float = field(default=0.01, metadata={"help": "Wait after a fetch that returned nothing: brokers that answer at once instead of waiting (noida-db) would make idle consumers spin. 0: off."})
    encoder_path: str = field(default="", metadata={"help": "Hugging Face model directory. Empty: the packaged all-MiniLM-L6-v2."})
    encoder_device: str = field(default="auto", metadata={"help": "auto (cuda if present), cuda or cpu."})
    encoder_batch: int = field(default=256, metadata={"help": "Item texts per encoder batch; a GPU wants 1024 (README, Performance)."})
    encoder_max_tokens: int = field(default=64, metadata={"help": "Item text truncation, tokens."})
    checkpoint: str = field(default="", metadata={"help": "Trained model checkpoint (`train` writes it). Empty: untrained defaults."})
    hidden_size: int = field(default=128, metadata={"help": "GRU hidden size when no checkpoint is given."})
    stop_timeout_s: float = field(default=20.0, metadata={"help": "After SIGTERM, a worker still running this long exits with status 1 (e.g. the broker is gone): keep it below Kubernetes' grace period (30 s)."})
    web_port: int = field(default=6066, metadata={"help": "faust web port: /health, /ready."})
    metrics_port: int = field(default=9100, metadata={"help": "Prometheus metrics port (0: off)."})
    log_level: str = field(default="info", metadata={"help": "Worker log level."})

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = os.environ.get(PREFIX + f.name.upper())
            if raw is None:
                continue
            default = f.default
            if isinstance(default, bool):
                values[f.name] = raw.strip().lower() in {"1", "true", "yes", "on"}
            else:
                values[f.name] = type(default)(raw)
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def updater_config(self) -> UpdaterConfig:
        return UpdaterConfig(**{f.name: getattr(self, f.name) for f in fields(UpdaterConfig)})

    def limits(self) -> EventLimits:
        return EventLimits(self.max_future_s, self.max_quantity, self.max_price)

    @property
    def event_topics(self) -> tuple[str, str]:
        return (self.clicks_topic, self.purchases_topic)

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for starting child processes."""
        return {PREFIX + f.name.upper(): str(getattr(self, f.name)) for f in fields(self)}


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting: the README's configuration table."""
    return [(PREFIX + f.name.upper(), str(f.default), f.metadata["help"]) for f in fields(Settings)]
