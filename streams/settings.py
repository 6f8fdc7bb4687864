"""All configuration: one ``Settings`` object, read once from ``INTEREST_*`` environment variables and
validated at start. A bad value fails with the variable's name and the value (``ConfigError``); an
``INTEREST_*`` variable that is no setting (a misspelling) is warned about, not silently ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from pathlib import Path
from typing import Any

from models.updater import UpdaterConfig
from state.faults import InterestStreamError
from streams.schemas import EventLimits

PREFIX = "INTEREST_"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SASL_SETTINGS = ("sasl_mechanism", "sasl_username", "sasl_password")
TLS_FILES = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")
MASK = "****"  # a secret's value wherever settings are shown
log = logging.getLogger(__name__)


class ConfigError(InterestStreamError):
    pass


def _at_least(low: float) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v >= low), f"at least {low:g}"


POSITIVE = (lambda v: v > 0), "greater than 0"
PORT = (lambda v: 0 < v < 65536), "a port number (1-65535)"
PORT_OR_OFF = (lambda v: 0 <= v < 65536), "a port number, or 0 for off"
NAME = (lambda v: bool(v.strip())), "not empty"


def setting(
    default: Any,
    help: str,
    valid: tuple[Callable[[Any], bool], str] | None = None,
    secret: bool = False,
) -> Any:
    """A field of ``Settings``: its default, its meaning (the configuration table of
    docs/configuration.md) and what a
    valid value is. A ``secret`` is masked wherever settings are shown (``config``, reports) and left out of
    repr; it takes no ``valid``, whose error would print the value."""
    return field(
        default=default, repr=not secret, metadata={"help": help, "valid": valid, "secret": secret}
    )


def _shown(f: Field, value: object) -> str:
    return MASK if f.metadata["secret"] and value else str(value)


@dataclass(frozen=True)
class Settings:
    """One settings object; every field maps to ``INTEREST_<FIELD NAME UPPERCASE>``."""

    broker: str = setting(
        "", "Kafka bootstrap servers (host:port,...). Empty: `demo` starts a local broker."
    )
    security_protocol: str = setting(
        "PLAINTEXT",
        "How every client reaches the broker: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL (SASL over "
        "TLS, as managed Kafka services want).",
        ((lambda v: v in SECURITY_PROTOCOLS), ", ".join(SECURITY_PROTOCOLS)),
    )
    sasl_mechanism: str = setting(
        "",
        "With SASL_PLAINTEXT or SASL_SSL: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.",
        ((lambda v: v in ("", *SASL_MECHANISMS)), ", ".join(SASL_MECHANISMS) + " (or empty)"),
    )
    sasl_username: str = setting("", "SASL user name (with SASL_PLAINTEXT or SASL_SSL).")
    sasl_password: str = setting(
        "",
        "SASL password (with SASL_PLAINTEXT or SASL_SSL). Never shown: `config` prints `****`.",
        secret=True,
    )
    ssl_cafile: str = setting(
        "",
        "With SSL or SASL_SSL: CA certificates (PEM file) the broker's certificate is checked "
        "against. Empty: the "
        "system's CAs.",
    )
    ssl_certfile: str = setting(
        "", "Mutual TLS: this client's certificate (PEM file). Empty: none."
    )
    ssl_keyfile: str = setting(
        "",
        "Mutual TLS: this client's private key (unencrypted PEM file), if not in INTEREST_SSL_CERTFILE.",
    )
    app_id: str = setting(
        "interest-stream", "faust app id = consumer group and changelog topic prefix.", NAME
    )
    partitions: int = setting(
        4,
        "Partitions of the event topics and the user table (upper bound on workers).",
        _at_least(1),
    )
    replication_factor: int = setting(
        1, "Replication of created topics (3 on a production cluster).", _at_least(1)
    )
    data_dir: Path = setting(Path("var"), "Local state: RocksDB tables and the item-vector store.")
    clicks_topic: str = setting("clicks", "Click events topic.", NAME)
    purchases_topic: str = setting("purchases", "Purchase events topic.", NAME)
    items_topic: str = setting("items", "Catalogue topic (item id, text).", NAME)
    item_vectors_topic: str = setting(
        "item-vectors", "Embedded items, shared by all workers (compacted).", NAME
    )
    recommendations_topic: str = setting("recommendations", "Output: top-k per user.", NAME)
    dead_letter_topic: str = setting(
        "dead-letters", "Rejected input, original bytes plus reason headers.", NAME
    )
    ticks_topic: str = setting(
        "decay-ticks", "Internal: timer ticks that decay long-term vectors per partition.", NAME
    )
    erasures_topic: str = setting(
        "erasures", "Requests to erase a user (`interest-stream erase`), keyed by user id.", NAME
    )
    session_timeout_s: float = setting(
        30.0, "Consumer group session timeout: how fast a dead worker's partitions move.", POSITIVE
    )
    commit_interval_s: float = setting(
        2.8,
        "Seconds between offset commits (faust's default). faust flushes the producer before each "
        "commit and latency "
        "spikes follow on a busy broker: 10 cut p99 a lot in the benchmark. Longer: more events "
        "read again after a crash "
        "(skipped as already applied; their recommendations sent again).",
        POSITIVE,
    )
    instance_id: str = setting(
        "",
        "Static group membership id (e.g. the StatefulSet pod name): a restarted worker takes its "
        "partitions back at "
        "once. Empty: dynamic membership.",
    )
    top_k: int = setting(UpdaterConfig.top_k, "Recommendations published per user.", _at_least(1))
    exclude_seen: bool = setting(
        UpdaterConfig.exclude_seen, "Drop the user's recent items from their recommendations."
    )
    reasons: bool = setting(
        UpdaterConfig.reasons,
        "Add a reason to each recommended item: the user's recent item nearest to it, and its score's parts "
        "(short-term, long-term, item bias, re-buy, trend; docs/usage.md).",
    )
    recent_items: int = setting(
        UpdaterConfig.recent_items,
        "Recent items remembered per user (for exclusion).",
        _at_least(0),
    )
    history_items: int = setting(
        UpdaterConfig.history_items,
        "Items a user's long-term history keeps (event time, decayed weight, touches), to recompute "
        "the long-term vector when "
        "item vectors change; the least weighty go first (docs/refresh.md).",
        _at_least(1),
    )
    half_life_s: float = setting(
        UpdaterConfig.half_life_s,
        "Half-life of the long-term interest, seconds of event time.",
        POSITIVE,
    )
    click_weight: float = setting(
        UpdaterConfig.click_weight, "Long-term weight of a click.", _at_least(0)
    )
    purchase_weight: float = setting(
        UpdaterConfig.purchase_weight, "Long-term weight of a purchase.", _at_least(0)
    )
    user_ttl_s: float = setting(
        0.0,
        "Users with no event applied for this long (seconds, wall clock) are erased as on request, "
        "at a decay pass. "
        "0: kept until erased.",
        _at_least(0),
    )
    max_future_s: float = setting(
        EventLimits.max_future_s,
        "Events stamped further ahead of the wall clock are rejected.",
        _at_least(0),
    )
    max_lateness_s: float = setting(
        UpdaterConfig.max_lateness_s,
        "Events older than the user's last event by more are rejected.",
        _at_least(0),
    )
    max_quantity: int = setting(
        EventLimits.max_quantity,
        "Purchases of a larger quantity are rejected (bad_value): quantity scales the long-term weight.",
        _at_least(1),
    )
    max_price: float = setting(
        EventLimits.max_price, "Events with a larger price are rejected (bad_value).", _at_least(0)
    )
    max_message_bytes: int = setting(
        1_000_000,
        "Largest record the worker writes, headers included; a dead letter above it carries a "
        "truncated copy. "
        "At most the broker's message.max.bytes (Kafka: 1,048,588).",
        _at_least(10_000),
    )
    batch_max: int = setting(512, "Largest micro-batch of events.", _at_least(1))
    batch_wait_s: float = setting(0.02, "Longest wait to fill a micro-batch.", _at_least(0))
    decay_interval_s: float = setting(
        60.0, "Timer period for decaying every user's long-term vector.", POSITIVE
    )
    bf16_scoring: bool = setting(
        UpdaterConfig.bf16_scoring,
        "Score catalogues of 2048+ items in bf16 where the CPU has native bf16 (AVX512-BF16/AMX), "
        "rescoring the best "
        "candidates in fp32.",
    )
    ann_min_items: int = setting(
        UpdaterConfig.ann_min_items,
        "From this catalogue size on, candidates come from an approximate index (faiss IVF) and are "
        "rescored exactly; "
        "below it, every item is scored (docs/performance.md).",
        _at_least(1),
    )
    ann_nprobe: int = setting(
        UpdaterConfig.ann_nprobe,
        "IVF lists the approximate index searches per user: recall against cost.",
        _at_least(1),
    )
    scoring_device: str = setting(
        UpdaterConfig.scoring_device,
        "Where the catalogue is scored: auto (cuda if present), cuda or cpu. On cuda every item is scored.",
        (
            (lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:")),
            "auto, cpu, cuda or cuda:N",
        ),
    )
    torch_threads: int = setting(
        1,
        "Threads for the worker's model work (GRU, scoring); more take cores from the event loop "
        "and the broker. "
        "0: torch's default.",
        _at_least(0),
    )
    fetch_backoff_s: float = setting(
        0.0,
        "Wait after a fetch that returned nothing, for a broker that answers an empty fetch at once "
        "instead of holding "
        "it as Kafka does (noida-db: idle consumers would spin; `demo` and `dev` set 0.01 for it). 0: off.",
        _at_least(0),
    )
    encoder_path: str = setting(
        "", "Hugging Face model directory. Empty: the packaged all-MiniLM-L6-v2."
    )
    encoder_device: str = setting(
        "auto",
        "auto (cuda if present), cuda or cpu.",
        (
            (lambda v: v in ("auto", "cpu", "cuda") or v.startswith("cuda:")),
            "auto, cpu, cuda or cuda:N",
        ),
    )
    encoder_batch: int = setting(
        256, "Item texts per encoder batch; a GPU wants 1024 (docs/performance.md).", _at_least(1)
    )
    encoder_max_tokens: int = setting(64, "Item text truncation, tokens.", _at_least(1))
    checkpoint: str = setting(
        "", "Trained model checkpoint (`train` writes it). Empty: untrained defaults."
    )
    hidden_size: int = setting(128, "GRU hidden size when no checkpoint is given.", _at_least(1))
    stop_timeout_s: float = setting(
        20.0,
        "After SIGTERM, a worker still running this long exits with status 70 (e.g. the broker is "
        "gone): keep it "
        "below Kubernetes' grace period (30 s).",
        POSITIVE,
    )
    web_port: int = setting(6066, "faust web port: /health, /ready, /users/<id>.", PORT)
    web_bind: str = setting(
        "127.0.0.1",
        "Address the web port listens on. Beyond loopback (0.0.0.0 for Kubernetes' probes and for user pages "
        "forwarded between workers), /users/<id> is served only with INTEREST_WEB_TOKEN.",
        NAME,
    )
    web_token: str = setting(
        "",
        "Bearer token that /users/<id> requires (`Authorization: Bearer <token>`; `inspect` and "
        "`erase --wait` send it). "
        "Empty: user pages only on a loopback INTEREST_WEB_BIND. /health and /ready are always open.",
        secret=True,
    )
    web_host: str = setting(
        "",
        "This worker's host name as the other workers reach it: a user page asked of any worker is "
        "forwarded to the "
        "one holding the user (e.g. $(POD_NAME).interest-stream in Kubernetes). Empty: the "
        "machine's host name, or "
        "INTEREST_WEB_BIND if that is a loopback address.",
    )
    worker_url: str = setting(
        "",
        "A worker's web address for `inspect` and `erase` (any worker). Empty: "
        "http://127.0.0.1:<INTEREST_WEB_PORT>.",
    )
    metrics_port: int = setting(9100, "Prometheus metrics port (0: off).", PORT_OR_OFF)
    log_level: str = setting(
        "info", "Worker log level.", ((lambda v: v.lower() in LOG_LEVELS), " or ".join(LOG_LEVELS))
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value, valid = getattr(self, f.name), f.metadata["valid"]
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{variable(f.name)}={value!r}: must be a finite number")
            if valid is not None and not valid[0](value):
                raise ConfigError(f"{variable(f.name)}={value!r}: must be {valid[1]}")
        topics = [getattr(self, name) for name in topic_settings()]
        if len(set(topics)) != len(topics):
            raise ConfigError(f"the topics must all differ: {', '.join(topics)}")
        self._check_security()

    def _check_security(self) -> None:
        """SASL needs all of its settings, TLS files must exist, and neither is set for a protocol that would
        ignore it: the client would connect without the credentials it was given."""
        protocol = f"{variable('security_protocol')}={self.security_protocol}"
        sasl, tls = self.uses_sasl, self.uses_tls
        if sasl:
            missing = [variable(name) for name in SASL_SETTINGS if not getattr(self, name)]
            if missing:
                raise ConfigError(f"{protocol} needs {', '.join(missing)}")
        for names, used, what in (
            (SASL_SETTINGS, sasl, "SASL (SASL_PLAINTEXT or SASL_SSL)"),
            (TLS_FILES, tls, "TLS (SSL or SASL_SSL)"),
        ):
            ignored = [variable(name) for name in names if getattr(self, name) and not used]
            if ignored:
                raise ConfigError(f"{', '.join(ignored)} set, but {protocol} uses no {what}")
        for name in TLS_FILES:
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{variable(name)}={path!r}: no such file")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ConfigError(
                f"{variable('ssl_keyfile')} is set without {variable('ssl_certfile')}: the key "
                "needs its certificate"
            )

    @property
    def web_on_loopback(self) -> bool:
        """Whether the web port listens on this machine's loopback only."""
        try:
            return self.web_bind == "localhost" or ipaddress.ip_address(self.web_bind).is_loopback
        except ValueError:  # a host name
            return False

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Settings from ``environ`` (the process's environment by default), then ``overrides``."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(variable(f.name))
            if raw is not None:
                values[f.name] = _parse(variable(f.name), raw, type(f.default))
        for name in unknown_variables(environ):
            close = difflib.get_close_matches(name, [variable(f.name) for f in fields(cls)], n=1)
            log.warning(
                "%s is not a setting; ignored%s",
                name,
                f" (did you mean {close[0]}?)" if close else "",
            )
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]

    def updater_config(self) -> UpdaterConfig:
        return UpdaterConfig(**{f.name: getattr(self, f.name) for f in fields(UpdaterConfig)})

    def limits(self) -> EventLimits:
        return EventLimits(self.max_future_s, self.max_quantity, self.max_price)

    def env(self) -> dict[str, str]:
        """These settings as environment variables, for starting child processes."""
        return {variable(f.name): str(getattr(self, f.name)) for f in fields(self)}


def stream_settings(values: dict[str, float]) -> str:
    """Settings named by field (``ModelConfig.stream_mismatch``) as the environment variables that set them:
    ``INTEREST_HALF_LIFE_S=7776000.0``, comma-separated."""
    return ", ".join(f"{variable(name)}={value}" for name, value in values.items())


def variable(name: str) -> str:
    """The environment variable of setting ``name``."""
    return PREFIX + name.upper()


def _parse(variable: str, raw: str, kind: type) -> object:
    text = raw.strip()
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{variable}={raw!r}: must be true or false (1/0, yes/no, on/off)")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ConfigError(
                f"{variable}={raw!r}: must be {'an integer' if kind is int else 'a number'}"
            ) from None
    return kind(raw)


def topic_settings() -> list[str]:
    """The names of the settings that name a topic (``*_topic``)."""
    return [f.name for f in fields(Settings) if f.name.endswith("_topic")]


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    known = {variable(f.name) for f in fields(Settings)}
    return sorted(name for name in environ if name.startswith(PREFIX) and name not in known)


def describe() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting: the configuration table of docs/configuration.md."""
    return [(variable(f.name), str(f.default), f.metadata["help"]) for f in fields(Settings)]


def configuration_table() -> str:
    """``describe()`` as the markdown table of docs/configuration.md."""
    rows = [f"| `{name}` | `{default}` | {meaning} |" for name, default, meaning in describe()]
    return "\n".join(["| variable | default | meaning |", "|---|---|---|", *rows])


def shown(settings: Settings) -> dict[str, str]:
    """Every setting's value as text to print or write to a report, a secret masked."""
    return {f.name: _shown(f, getattr(settings, f.name)) for f in fields(Settings)}


def in_effect(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> list[tuple[str, str, str]]:
    """(variable, value in effect, where it came from: "environment" or "default") for every setting, a
    secret masked."""
    environ = os.environ if environ is None else environ
    return [
        (variable(name), value, "environment" if variable(name) in environ else "default")
        for name, value in shown(settings).items()
    ]
