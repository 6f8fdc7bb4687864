"""Shared fixtures: a real local broker, a tiny real BERT encoder, worker processes."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from models.tiny_bert import build_tiny_bert
from streams.broker import LocalBroker, free_port
from streams.settings import Settings

SAMPLE = Path(__file__).resolve().parents[1] / "streams" / "sample"


@pytest.fixture(scope="session")
def sample_catalogue() -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / "catalogue.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def sample_events() -> list[dict]:
    return [json.loads(line) for line in (SAMPLE / "events.jsonl").read_text().splitlines()]


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory, sample_catalogue) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), [i["text"] for i in sample_catalogue])


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    with LocalBroker(tmp_path_factory.mktemp("broker")) as b:
        yield b


@pytest.fixture
def settings(broker, tiny_encoder, tmp_path, request) -> Settings:
    """Settings for one test: its own app id (consumer group, changelog) and topic names on the shared broker."""
    # Truncated for readability, hashed for uniqueness: parametrized variants share a long prefix.
    digest = hashlib.sha1(request.node.name.encode()).hexdigest()[:6]
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40] + "-" + digest
    return Settings(
        broker=broker.address, app_id=f"t-{name}", data_dir=tmp_path / "state", partitions=4,
        clicks_topic=f"{name}-clicks", purchases_topic=f"{name}-purchases", items_topic=f"{name}-items",
        item_vectors_topic=f"{name}-item-vectors", recommendations_topic=f"{name}-recs",
        dead_letter_topic=f"{name}-dlq", ticks_topic=f"{name}-ticks",
        encoder_path=str(tiny_encoder), web_port=free_port(), metrics_port=free_port(),
        batch_wait_s=0.05, session_timeout_s=6.0, decay_interval_s=2.0, max_lateness_s=10 * 86400.0,
    )
