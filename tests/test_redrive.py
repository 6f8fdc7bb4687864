"""`interest-stream redrive`: which dead letters it re-publishes, where to, and only once."""

from __future__ import annotations

import time
from collections import Counter
from datetime import datetime, timezone

import pytest

from cli.client import publish_catalogue, send_events
from cli.main import main
from cli.redrive import (
    ALREADY,
    DUPLICATE,
    FOREIGN,
    NO_PARTITION,
    NO_SOURCE,
    NULL,
    OUTSIDE,
    REASON,
    REDRIVEN_FROM,
    TRUNCATED,
    Letter,
    Selection,
    Source,
    Summary,
    Window,
    parse_time,
    verdict,
)
from cli.worker_process import WorkerProcess
from models.records import Rejection
from state.faults import InterestStreamError
from streams.dead_letters import dead_letter
from streams.user_table import load_user_states
from tests.helpers import consume_all, dead_letters, latest_recommendations, to_jsonl, wait_until

T = 1_793_000_000.0  # 2026-10-26T07:33:20Z
PARTITIONS = {"clicks": 4, "purchases": 4}


def letter(
    reason: str = "unknown_item",
    source: str = "clicks:2:40",
    value: bytes | None = b"{}",
    at: str = "dlq:0:7",
    ts: float = T,
    max_bytes: int = 1_000_000,
) -> Letter:
    """A dead letter as the worker writes it (streams.dead_letters), as read back at ``at``."""
    d = dead_letter(source, b"u1", value, Rejection(reason, "why"), max_bytes)
    return Letter(at, ts, d.key, d.value, dict(d.headers))


def test_times_are_unix_seconds_or_iso_8601_utc_unless_an_offset_is_given():
    assert parse_time("1793000000") == parse_time("1793000000.0") == T
    assert (
        parse_time("2026-10-26T07:33:20Z")
        == parse_time("2026-10-26T08:33:20+01:00")
        == parse_time("2026-10-26T07:33:20")
        == T
    )
    assert parse_time("2026-10-26") == datetime(2026, 10, 26, tzinfo=timezone.utc).timestamp()
    for bad in ("yesterday", "nan", "inf", "26/10/2026", ""):
        with pytest.raises(InterestStreamError):
            parse_time(bad)


def test_the_window_includes_since_and_excludes_until():
    window = Window.parse("1793000000", "2026-10-26T07:33:30Z")
    assert T in window and T + 9.999 in window
    assert T - 0.001 not in window and T + 10 not in window
    assert (
        T in Window.parse(None, None)
        and T in Window.parse(None, "1793000001")
        and T not in Window.parse("1793000001", None)
    )
    with pytest.raises(InterestStreamError, match="before --until"):
        Window.parse("1793000000", "1793000000")


def test_selection_by_reason_and_time_and_duplicates_only_when_named():
    anything = Selection()
    assert anything.why_not("unknown_item", T) is None and anything.why_not("bad_json", T) is None
    assert anything.why_not("duplicate", T) == DUPLICATE
    chosen = Selection(frozenset({"unknown_item", "too_late"}), Window(since=T))
    assert chosen.why_not("unknown_item", T) is None and chosen.why_not("too_late", T + 1) is None
    assert chosen.why_not("bad_json", T) == REASON.format("bad_json")
    assert chosen.why_not("unknown_item", T - 1) == OUTSIDE
    assert Selection(frozenset({"duplicate"})).why_not("duplicate", T) is None


@pytest.mark.parametrize(
    "dead, expected",
    [
        (letter(), Source("clicks", 2, 40)),
        (letter(source="purchases:3:0"), Source("purchases", 3, 0)),
        (letter(at="dlq:0:1"), ALREADY),
        (letter(reason="duplicate"), DUPLICATE),
        (letter(value=b"v" * 20_000, max_bytes=10_000), TRUNCATED),
        (letter(source="items:0:5"), FOREIGN.format("items")),
        (letter(source="decay-ticks:1:9"), FOREIGN.format("decay-ticks")),
        (letter(source="clicks:4:1"), NO_PARTITION.format("clicks:4")),
        (letter(source="clicks-2-40"), NO_SOURCE),
        (Letter("dlq:0:9", T, b"u1", b"{}", {"reason": b"unknown_item"}), NO_SOURCE),
        (letter(value=None), NULL),
    ],
    ids=[
        "click",
        "purchase",
        "already",
        "duplicate",
        "truncated",
        "items",
        "ticks",
        "no-partition",
        "bad-source",
        "no-source",
        "null",
    ],
)
def test_where_a_dead_letter_goes_or_why_it_stays(dead, expected):
    assert verdict(dead, Selection(), {"dlq:0:1"}, PARTITIONS) == expected


def test_the_summary_counts_per_reason_and_topic_and_says_why_the_rest_stayed():
    summary = Summary(
        "dead-letters",
        read=6,
        redriven=Counter({("unknown_item", "clicks"): 2, ("unknown_item", "purchases"): 1}),
        skipped=Counter({ALREADY: 2, TRUNCATED: 1}),
        again=1,
    )
    assert summary.lines() == [
        "read 6 dead letters from dead-letters",
        "re-driven 3",
        "  unknown_item -> clicks: 2",
        "  unknown_item -> purchases: 1",
        "  (1 of them dead letters of earlier re-driven copies: rejected again)",
        "skipped 3",
        f"  {ALREADY}: 2",
        f"  {TRUNCATED}: 1",
    ]
    assert Summary("dead-letters", dry_run=True).lines()[1] == "would re-drive 0"


@pytest.mark.e2e
# redrive reads up to ListOffsets(LATEST), which tansu puts short of the end
@pytest.mark.broker_bug("tansu-list-offsets")
def test_unknown_item_events_apply_once_re_driven_and_a_second_run_sends_nothing(
    settings, sample_catalogue, tmp_path, monkeypatch, capsys
):
    missing, now = sample_catalogue[0], time.time()
    events = [
        {
            "event_id": f"e{n}",
            "user_id": user,
            "item_id": missing["item_id"],
            "type": kind,
            "ts": now + n,
        }
        for n, (user, kind) in enumerate([("u1", "click"), ("u2", "purchase"), ("u1", "click")])
    ]
    (tmp_path / "catalogue.jsonl").write_text(to_jsonl(sample_catalogue[1:]))
    (tmp_path / "fix.jsonl").write_text(to_jsonl([missing]))
    for name, value in settings.env().items():
        monkeypatch.setenv(name, value)

    def redrive(*args: str) -> str:
        main(["redrive", *args])
        return capsys.readouterr().out

    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        publish_catalogue(settings, tmp_path / "catalogue.jsonl", progress=False)
        worker.wait_ready(min_items=len(sample_catalogue) - 1)
        send_events(
            settings, events + [{**events[0], "event_id": "e-bad", "ts": "soon"}], progress=False
        )
        wait_until(
            lambda: len(dead_letters(settings)) == 4, what="4 dead letters", explain=worker.log_tail
        )
        publish_catalogue(settings, tmp_path / "fix.jsonl", progress=False)
        worker.wait_ready(min_items=len(sample_catalogue))

        assert "would re-drive 3" in redrive("--reason", "unknown_item", "--dry-run")
        first = redrive(
            "--reason",
            "unknown_item",
            "--since",
            datetime.fromtimestamp(now - 60, timezone.utc).isoformat(),
        )
        wait_until(
            lambda: (
                {u: r.event_id for u, r in latest_recommendations(settings).items()}
                == {"u1": "e2", "u2": "e1"}
            ),
            what="recommendations after the re-driven events",
            explain=worker.log_tail,
        )
        second = redrive("--reason", "unknown_item")
        time.sleep(1.0)  # a copy sent again would be a duplicate dead letter by now
        letters = dead_letters(settings)
    finally:
        worker.stop()

    assert "re-driven 3" in first and f"unknown_item -> {settings.clicks_topic}: 2" in first, first
    assert "reason not selected (bad_type): 1" in first, first
    assert "re-driven 0" in second and f"{ALREADY}: 3" in second, second
    assert Counter(d["reason"] for d in letters) == {"unknown_item": 3, "bad_type": 1}, letters
    copies = [
        m
        for t in (settings.clicks_topic, settings.purchases_topic)
        for m in consume_all(settings, t, idle_s=1.0)
        if REDRIVEN_FROM in dict(m.headers)
    ]
    origins = {
        f"{settings.dead_letter_topic}:0:{n}"
        for n, d in enumerate(letters)
        if d["reason"] == "unknown_item"
    }
    assert sorted(dict(m.headers)[REDRIVEN_FROM].decode() for m in copies) == sorted(origins)
    states = load_user_states(settings.data_dir)
    assert {u: (s.clicks, s.purchases) for u, s in states.items()} == {"u1": (2, 0), "u2": (0, 1)}
