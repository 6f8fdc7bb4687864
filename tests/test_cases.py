"""Every poison message of tests/fixtures/README.md (its input files in tests/fixtures/poison/), and the
other shapes of the same kinds, through one real worker on a real broker: each poison message becomes
one dead letter with the expected reason, the good events around it are applied, no NaN or infinity
reaches a state or an output, dead letters fit the broker, and null values retire catalogue items."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer

from cli.client import publish_catalogue
from cli.worker_process import WorkerProcess
from state.item_store import ItemStore
from state.user_state import decode
from streams.connection import client_options
from streams.topics import ensure_topics
from streams.user_table import iter_raw, load_user_states, table_files
from tests.conftest import SAMPLE, settings_for
from tests.helpers import consume_all, dead_letters, metric_sum, scrape, wait_until

pytestmark = pytest.mark.e2e

POISON = Path(__file__).parent / "fixtures" / "poison"
T0 = 1_795_000_000  # the event time of the case files
HUGE = "1" + "0" * 400  # a 401-digit integer


def event(event_id: str, user: str = "u1", item: str = "run-001", **fields) -> dict:
    return {"event_id": event_id, "user_id": user, "item_id": item, "ts": T0, **fields}


def raw(obj: dict, **replacements: str) -> bytes:
    """``obj`` as JSON, with each ``"@name@"`` placeholder replaced by raw JSON text (what
    json.dumps cannot write)."""
    text = json.dumps(obj)
    for name, value in replacements.items():
        text = text.replace(f'"@{name}@"', value)
    return text.encode()


@dataclass(frozen=True)
class Case:
    name: str
    topic: str  # a Settings field naming the topic
    key: bytes | None
    value: bytes | None
    reason: str


CASES = [
    Case(
        "deep_nesting",
        "clicks_topic",
        b"u1",
        (POISON / "deep_nesting.bin").read_bytes(),
        "bad_json",
    ),
    Case(
        "huge_integer_ts",
        "clicks_topic",
        b"u1",
        (POISON / "huge_integer_ts.json").read_bytes(),
        "bad_value",
    ),
    Case(
        "huge_integer_quantity",
        "purchases_topic",
        b"u1",
        raw(event("q", type="purchase", quantity="@n@"), n=HUGE),
        "bad_value",
    ),
    Case(
        "huge_integer_price",
        "purchases_topic",
        b"u1",
        raw(event("p", type="purchase", price="@n@"), n=HUGE),
        "bad_value",
    ),
    Case(
        "lone_surrogate_event_id",
        "clicks_topic",
        b"u1",
        (POISON / "lone_surrogate_event_id.json").read_bytes(),
        "bad_value",
    ),
    Case(
        "lone_surrogate_user_id",
        "clicks_topic",
        b"u1",
        raw(event("s1", user="@u@"), u='"u\\udfff"'),
        "bad_value",
    ),
    Case(
        "lone_surrogate_item_id",
        "clicks_topic",
        b"u1",
        raw(event("s2", item="@i@"), i='"run-\\ud800"'),
        "bad_value",
    ),
    Case(
        "huge_quantity",
        "purchases_topic",
        b"u1",
        (POISON / "huge_quantity.json").read_bytes(),
        "bad_value",
    ),
    Case("nan_literal", "clicks_topic", b"u1", raw(event("nan", ts="@t@"), t="NaN"), "bad_value"),
    Case(
        "infinity_price",
        "purchases_topic",
        b"u1",
        raw(event("inf", type="purchase", price="@p@"), p="1e999"),
        "bad_value",
    ),
    Case(
        "control_character_user_id",
        "clicks_topic",
        b"u1",
        raw(event("c", user="u1\u0000")),
        "bad_value",
    ),
    Case("wrong_type_in_a_field", "clicks_topic", b"u1", raw(event("w", ts=[T0])), "bad_type"),
    Case("near_the_size_limit", "clicks_topic", b"u1", b"{" + b"x" * 999_900, "bad_json"),
    Case(
        "huge_string_field", "clicks_topic", b"u1", raw(event("h", type="x" * 600_000)), "bad_value"
    ),
    Case("null_event", "clicks_topic", b"u1", None, "bad_json"),
    Case(
        "lone_surrogate_catalogue_id",
        "items_topic",
        b"bad-item",
        b'{"item_id": "x\\ud800", "text": "a tent"}',
        "bad_value",
    ),
    Case(
        "lone_surrogate_catalogue_text",
        "items_topic",
        b"run-900",
        b'{"item_id": "run-900", "text": "a \\udc00 tent"}',
        "bad_value",
    ),
    Case("null_item_with_an_empty_key", "items_topic", b"", None, "bad_key"),
]
# a null value on each of these topics
RETIRED = {"run-005": "items_topic", "run-006": "item_vectors_topic"}
READDED = "run-008"  # two nulls, then its record again, back to back on items


@dataclass
class Run:
    settings: object
    offsets: dict[str, str]  # case name -> its "topic:partition:offset"
    goods: list[dict]
    letters: list[dict]
    # every record on the recommendations topic, parsed by the standard library
    recommendations: list[dict]
    metrics: dict
    alive: bool
    exit_code: int | None
    log: str


@pytest.fixture(scope="module")
def run(broker, tiny_encoder, tmp_path_factory) -> Run:
    tmp = tmp_path_factory.mktemp("cases")
    s = settings_for(broker.address, tiny_encoder, tmp / "state", "shared-cases")
    worker = WorkerProcess(s, tmp / "worker.log").start()
    try:
        publish_catalogue(s, SAMPLE / "catalogue.jsonl", progress=False)
        worker.wait_ready(min_items=96)
        out = KafkaProducer(**client_options(s), max_request_size=2_000_000)

        def send(topic: str, key: bytes | None, value: bytes | None) -> str:
            meta = out.send(topic, key=key, value=value).get(timeout=30)
            return f"{topic}:{meta.partition}:{meta.offset}"

        goods = [event(f"good-{n}", ts=T0 + n) for n in range(len(CASES) + 2)]
        offsets = {}
        send(s.clicks_topic, b"u1", json.dumps(goods[0]).encode())
        for n, case in enumerate(CASES, 1):  # a good event of the same user before and after each
            offsets[case.name] = send(getattr(s, case.topic), case.key, case.value)
            send(s.clicks_topic, b"u1", json.dumps(goods[n]).encode())
        for item, topic in RETIRED.items():
            send(getattr(s, topic), item.encode(), None)
        readded = next(
            i
            for i in (
                json.loads(line) for line in (SAMPLE / "catalogue.jsonl").read_text().splitlines()
            )
            if i["item_id"] == READDED
        )
        # deleted twice, then published again: it is back
        for value in (None, None, json.dumps(readded).encode()):
            send(s.items_topic, READDED.encode(), value)
        wait_until(
            lambda: (worker.readiness() or {}).get("catalogue_items") == 96 - len(RETIRED),
            what="both items retired",
            timeout_s=60,
            explain=worker.log_tail,
        )
        for item in [*RETIRED, READDED]:
            offsets[f"event_for_{item}"] = send(
                s.clicks_topic,
                b"u2",
                json.dumps(event(f"after-{item}", user="u2", item=item)).encode(),
            )
        send(s.clicks_topic, b"u1", json.dumps(goods[-1]).encode())
        out.close()
        expected = len(CASES) + len(RETIRED)
        wait_until(
            lambda: len(dead_letters(s)) >= expected,
            what=f"{expected} dead letters",
            explain=worker.log_tail,
        )
        last = goods[-1]["event_id"]
        wait_until(
            lambda: any(
                json.loads(m.value)["event_id"] == last
                for m in consume_all(s, s.recommendations_topic, idle_s=1.0)
            ),
            what="the last good event's recommendation",
            explain=worker.log_tail,
        )
        recommendations = [json.loads(m.value) for m in consume_all(s, s.recommendations_topic)]
        letters, metrics, alive = dead_letters(s), scrape(s.metrics_port), worker.alive
    finally:
        worker.stop()
    return Run(
        s,
        offsets,
        goods,
        letters,
        recommendations,
        metrics,
        alive,
        worker.exit_code,
        worker.log_tail(80),
    )


def test_the_worker_survives_every_case_and_stops_cleanly(run):
    assert run.alive, run.log
    assert run.exit_code == 0, run.log


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_a_poison_message_becomes_one_dead_letter_with_its_reason(run, case):
    mine = [d for d in run.letters if d["source"] == run.offsets[case.name]]
    assert [d["reason"] for d in mine] == [case.reason], mine
    assert 0 < len(mine[0]["detail"]) <= 500
    topic = getattr(run.settings, case.topic)
    assert (
        metric_sum(
            run.metrics, "interest_events_dead_lettered_total", reason=case.reason, topic=topic
        )
        >= 1
    )


def test_the_good_events_around_them_are_all_applied_once(run):
    states = load_user_states(run.settings.data_dir)
    assert (states["u1"].clicks, states["u1"].purchases) == (len(run.goods), 0)
    # u2's events go to another partition: only u1's own recommendations are in its order
    u1 = [r for r in run.recommendations if r["user_id"] == "u1"]
    assert u1[-1]["event_id"] == run.goods[-1]["event_id"]
    assert Counter(d["reason"] for d in run.letters) == Counter(
        [c.reason for c in CASES] + ["unknown_item"] * len(RETIRED)
    )


def test_no_nan_or_infinity_reaches_a_state_or_an_output(run):
    for user, state in load_user_states(run.settings.data_dir).items():
        assert (
            np.isfinite(state.hidden).all()
            and np.isfinite(state.lt_sum).all()
            and math.isfinite(state.lt_weight)
        ), user
    scores = [i["score"] for rec in run.recommendations for i in rec["items"]]
    assert scores and all(isinstance(x, float) and math.isfinite(x) for x in scores)


def test_a_dead_letter_always_fits_and_says_what_was_cut(run):
    limit = run.settings.max_message_bytes
    for d in run.letters:
        headers = sum(len(k) + len(v) for k, v in d.items() if k not in ("key", "value"))
        assert len(d["key"] or b"") + len(d["value"] or b"") + headers <= limit, d["source"]
    (cut,) = [d for d in run.letters if d["source"] == run.offsets["near_the_size_limit"]]
    assert (
        cut["truncated"] == "true"
        and cut["original-value-bytes"] == "999901"
        and cut["original-key-bytes"] == "2"
    )
    # as much as fits
    assert cut["key"] == b"u1" and cut["value"].startswith(b"{xxxx") and len(cut["value"]) > 900_000
    (whole,) = [d for d in run.letters if d["source"] == run.offsets["huge_string_field"]]
    assert "truncated" not in whole and len(whole["value"]) > 600_000  # fits whole: not cut


def test_a_null_value_retires_the_item_on_every_path(run):
    letters = {d["source"]: d["reason"] for d in run.letters}
    for item in RETIRED:  # later events for it are rejected
        assert letters[run.offsets[f"event_for_{item}"]] == "unknown_item"
    assert run.offsets[f"event_for_{READDED}"] not in letters  # the last record of an item wins
    # sent after both retirements
    after = [rec for rec in run.recommendations if rec["event_id"] == run.goods[-1]["event_id"]]
    assert after and not {i["item_id"] for rec in after for i in rec["items"]} & set(RETIRED)
    store = ItemStore(run.settings.data_dir / "items")
    try:
        assert all(store.get(item) is None for item in RETIRED) and store.get("run-007") is not None
        assert store.get(READDED) is not None
    finally:
        store.close()
    tombstones = [
        m for m in consume_all(run.settings, run.settings.item_vectors_topic) if m.value is None
    ]
    assert {m.key for m in tombstones} == {item.encode() for item in RETIRED}
    assert metric_sum(run.metrics, "interest_catalogue_items") == 96 - len(RETIRED)
    assert metric_sum(run.metrics, "interest_items_retired_total") == len(RETIRED)


def test_subscribe_shows_good_recommendations_and_skips_records_it_cannot_read(settings):
    ensure_topics(settings)
    good = {
        "user_id": "u1",
        "items": [{"item_id": "run-001", "score": 0.5}],
        "event_id": "e1",
        "event_time": T0,
        "model_version": "untrained",
        "produced_at": T0,
    }
    out = KafkaProducer(**client_options(settings))
    for value in (
        b"not json",
        json.dumps({**good, "items": [{"item_id": "run-002", "score": None}]}).encode(),
        json.dumps(good).encode(),
    ):
        out.send(settings.recommendations_topic, key=b"u1", value=value)
    out.close()
    env = {**settings.env(), "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run(
        [sys.executable, "-m", "cli.main", "subscribe", "--from-beginning", "--timeout", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("user u1") == 1 and "run-001 (0.500)" in done.stdout
    assert done.stderr.count("skipped") == 2, done.stderr
    as_json = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli.main",
            "subscribe",
            "--from-beginning",
            "--count",
            "1",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert json.loads(as_json.stdout) == good  # the record as published, every field


@pytest.mark.broker_bug("tansu-list-offsets")
def test_an_exception_anywhere_on_a_messages_path_dead_letters_that_message_only(
    settings, tmp_path
):
    """A stored state the worker cannot decode (written by someone else into the changelog) makes applying
    that user's event raise: it becomes an internal_error dead letter, the rest of its batch is applied."""
    s = replace(settings, batch_wait_s=0.5)  # everything below in one micro-batch
    worker = WorkerProcess(s, tmp_path / "first.log").start()  # faust creates the changelog topic
    publish_catalogue(s, SAMPLE / "catalogue.jsonl", progress=False)
    worker.wait_ready(min_items=96)
    worker.stop()
    out = KafkaProducer(**client_options(s))  # the key's partition, as the worker's table has it
    out.send(
        f"{s.app_id}-user-state-changelog", key=b"u-corrupt", value=b"\x09 not a user state"
    ).get(timeout=30)
    # recovers that record into its table
    worker = WorkerProcess(s, tmp_path / "worker.log").start()
    try:
        worker.wait_ready(min_items=96)
        users = ["u-a", "u-b", "u-corrupt", "u-c", "u-d"]
        for n, user in enumerate(users * 3):
            out.send(
                s.clicks_topic,
                key=user.encode(),
                value=json.dumps(event(f"x{n}", user=user, ts=T0 + n)).encode(),
            )
        out.close()
        wait_until(
            lambda: metric_sum(scrape(s.metrics_port), "interest_events_consumed_total") >= 15,
            what="all consumed",
        )
        wait_until(
            lambda: len(dead_letters(s)) >= 3, what="three dead letters", explain=worker.log_tail
        )
        metrics = scrape(s.metrics_port)
    finally:
        worker.stop()
    letters = dead_letters(s)
    assert [d["reason"] for d in letters] == ["internal_error"] * 3 and all(
        b"u-corrupt" in d["value"] for d in letters
    )
    # the exception's type
    assert all(d["detail"].startswith(("error:", "ValueError:")) for d in letters), letters
    stored = {
        key.decode(): value for path in table_files(s.data_dir) for key, value in iter_raw(path)
    }
    # left as it was, for an operator to look at
    assert stored.pop("u-corrupt") == b"\x09 not a user state"
    assert {u: decode(v).clicks for u, v in stored.items()} == {
        u: 3 for u in users if u != "u-corrupt"
    }
    assert metric_sum(metrics, "interest_batch_splits_total") >= 1
    # decay skips it, ticks go on
    assert metric_sum(metrics, "interest_decay_states_unreadable_total") >= 1
