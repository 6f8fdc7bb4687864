"""Shared fixtures: a real local broker, a tiny real BERT encoder, worker processes."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import pytest

from cli.local_broker import free_port
from models.tiny_bert import build_tiny_bert
from streams.settings import Settings, topic_settings
from tests.brokers import BROKER_BUGS, BROKERS, default_broker, new_broker

SAMPLE = Path(__file__).resolve().parents[1] / "cli" / "sample"


@pytest.fixture(scope="session")
def sample_catalogue() -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / "catalogue.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def sample_events() -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory, sample_catalogue) -> Path:
    return build_tiny_bert(
        tmp_path_factory.mktemp("tiny-bert"), [i["text"] for i in sample_catalogue]
    )


def pytest_addoption(parser) -> None:
    parser.addoption(
        "--broker",
        choices=BROKERS,
        default=None,
        help="the Kafka-protocol broker the end-to-end tests run against (default: apache-kafka where "
        "Java 17+ and its jars are present, else noida-db)",
    )


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers",
        "broker_bug(name): impossible on a broker with this known fault (tests/brokers.py)",
    )
    config.addinivalue_line(
        "markers", "apache_kafka(why): runs on Apache Kafka only (why: what the others lack)"
    )
    if config.getoption("--broker") is None:
        config.option.broker, config.broker_reason = default_broker()
    else:
        config.broker_reason = f"{config.getoption('--broker')} (--broker)"


def pytest_report_header(config) -> str:
    return f"end-to-end broker: {config.broker_reason}"


def pytest_collection_modifyitems(config, items) -> None:
    kind = config.getoption("--broker")
    for item in items:
        for mark in item.iter_markers("broker_bug"):
            on, why = BROKER_BUGS[mark.args[0]]
            if on == kind:
                item.add_marker(pytest.mark.skip(reason=f"{mark.args[0]}: {why}"))
        for mark in item.iter_markers("apache_kafka"):
            if kind != "apache-kafka":
                item.add_marker(
                    pytest.mark.skip(
                        reason=f"Apache Kafka only ({config.broker_reason}): {mark.args[0]}"
                    )
                )


@pytest.fixture(scope="session")
def broker_kind(request) -> str:
    return request.config.getoption("--broker")


@pytest.fixture(scope="session")
def broker(tmp_path_factory, broker_kind):
    with new_broker(broker_kind, tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing test's report names the shared broker's log and shows its last lines (the log is kept
    with pytest's temporary directories of the last three runs)."""
    report = yield
    broker = getattr(item, "funcargs", {}).get("broker")
    if report.failed and broker is not None:
        report.sections.append((f"{broker.name} log ({broker.log_path})", broker.log_tail(40)))
    return report


def settings_for(broker_address: str, encoder: Path, state_dir: Path, test_name: str) -> Settings:
    """Settings of their own for one test: app id (consumer group, changelog), topic names, state
    directory and ports, on the shared broker."""
    # Truncated for readability, hashed for uniqueness: parametrized variants share a long prefix.
    digest = hashlib.sha1(test_name.encode()).hexdigest()[:6]
    name = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40] + "-" + digest
    return Settings(
        broker=broker_address,
        app_id=f"t-{name}",
        data_dir=state_dir,
        partitions=4,
        **{topic: f"{name}-{getattr(Settings, topic)}" for topic in topic_settings()},
        encoder_path=str(encoder),
        web_port=free_port(),
        metrics_port=free_port(),
        batch_wait_s=0.05,
        session_timeout_s=6.0,
        decay_interval_s=2.0,
        max_lateness_s=10 * 86400.0,
    )


@pytest.fixture
def settings(broker, tiny_encoder, tmp_path, request) -> Settings:
    return replace(
        settings_for(broker.address, tiny_encoder, tmp_path / "state", request.node.name),
        **broker.worker_settings,
    )
