"""The README's first command: `interest-stream demo` (here on the test broker and the tiny encoder)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cli import kafka_broker
from cli.demo import run_demo

pytestmark = pytest.mark.e2e


def test_demo_prints_recommendations_for_every_sample_user(settings, sample_events, capsys):
    latest = run_demo(settings, show_users=2, timeout_s=120)
    out = capsys.readouterr().out
    users = {e["user_id"] for e in sample_events}
    assert set(latest) == users
    events_of = {u: {e["event_id"] for e in sample_events if e["user_id"] == u} for u in users}
    for user, rec in latest.items():
        assert len(rec.items) == settings.top_k and rec.event_id in events_of[user]
    assert "24 users received recommendations" in out and out.count(" recently: ") == 2


def test_demo_starts_apache_kafka_of_its_own_with_broker_apache_kafka(
    settings, sample_events, capsys
):
    if why := kafka_broker.unavailable():
        pytest.skip(why)
    latest = run_demo(
        replace(settings, broker=""), show_users=0, timeout_s=120, broker_kind="apache-kafka"
    )
    assert set(latest) == {e["user_id"] for e in sample_events}
    assert "started a local broker (apache-kafka)" in capsys.readouterr().out
