"""Bad input never kills a worker and never disappears: fuzzed in-process, and a corpus through a
real worker."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from kafka import KafkaProducer

from cli.client import publish_catalogue
from cli.worker_process import WorkerProcess
from models.catalogue import Catalogue
from models.interest import InterestModel
from models.records import Event, Recommendation, Rejection
from models.updater import Delivered, InterestUpdater, UpdaterConfig
from state.item_store import ItemVector
from state.user_state import decode
from streams.connection import client_options
from streams.ingest import EventStep
from streams.schemas import EventLimits, parse_event
from tests.conftest import SAMPLE
from tests.helpers import dead_letters, metric_sum, scrape, wait_until

NOW = 1_800_000_000.0
LIMITS = EventLimits()
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
event_like = st.fixed_dictionaries(
    {},
    optional={
        k: json_values
        for k in ("event_id", "user_id", "item_id", "ts", "type", "quantity", "price")
    },
)


@hsettings(deadline=None)
@given(st.binary(max_size=300))
def test_parse_never_raises_on_arbitrary_bytes(raw):
    assert isinstance(parse_event(raw, "click", NOW, LIMITS), (Event, Rejection))


@hsettings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(event_like)
def test_parse_never_raises_on_arbitrary_json_and_accepts_only_valid_events(obj):
    try:
        raw = json.dumps(obj).encode()
    except ValueError:
        return
    result = parse_event(raw, "purchase", NOW, LIMITS)
    if isinstance(result, Event):
        assert (
            result.ts > 0
            and result.ts <= NOW + 300
            and result.user_id
            and result.item_id
            and result.quantity >= 1
        )
    else:
        assert result.reason and result.detail


# Raw JSON text for one field: valid values, and what producers send that json.dumps would not write.
VALID = {
    "event_id": ['"e1"', '"e2"', "7"],
    "user_id": ['"u1"', '"u2"'],
    "item_id": ['"i0"', '"i1"', '"missing"'],
    "ts": [str(NOW - 5), str(int(NOW - 3600))],
    "type": ['"click"', '"purchase"'],
    "quantity": ["1", "3"],
    "price": ["9.5", "0"],
}
ADVERSARIAL = [
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1" + "0" * 400,
    "18446744073709551616",
    '"\\ud800"',
    '"u\\udfff"',
    '"\\u0000"',
    '"\\n"',
    "[" * 3000 + "]" * 3000,
    '"' + "x" * 70_000 + '"',
    "null",
    "true",
    "[]",
    "{}",
    '{"a": [1]}',
    "-1",
    "0",
    "1e308",
    "4.9e-324",
    '""',
    '"' + "é" * 129 + '"',
]
field_text = st.sampled_from(ADVERSARIAL) | st.builds(json.dumps, json_values)
adversarial_event = st.dictionaries(
    st.sampled_from([*VALID, "extra"]),
    st.one_of(*(st.sampled_from(v) for v in VALID.values()), field_text),
    max_size=8,
).map(lambda fields: ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode())
message_values = (
    st.none()
    | st.binary(max_size=300)
    | adversarial_event
    | st.sampled_from([b"[" * 50_000 + b"]" * 50_000, b"{" + b"x" * 999_900])
)


@dataclass
class Msg:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float = NOW


@hsettings(
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    deadline=None,
    max_examples=300,
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["clicks", "purchases"]),
            st.sampled_from([b"u1", b"u2", b"", None]),
            message_values,
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_message_is_rejected_with_a_reason_or_gives_a_finite_encodable_state_and_recommendation(
    messages,
):
    """The whole per-message path of the event agent (parse, admit, advance, encode the state, encode
    the recommendation), in process: it never raises, whatever the bytes."""
    step = EventStep(
        make_updater(), {"clicks": "click", "purchases": "purchase"}, LIMITS, 1_000_000
    )
    store: dict[bytes, bytes] = {}
    batch = [
        Msg(topic, 0, offset, key, value) for offset, (topic, key, value) in enumerate(messages)
    ]
    out = step(batch, lambda keys: {k: store.get(k) for k in keys}, NOW)
    applied = sum(decode(v).clicks + decode(v).purchases for _, v in out.states.values())
    event("some applied" if applied else "all rejected")
    assert applied + len(out.rejected) == len(batch)
    for r in out.rejected:
        assert r.rejection.reason and 0 < len(r.rejection.detail) <= 500
        r.rejection.detail.encode()  # a dead letter's detail header must encode
    for key, (_, value) in out.states.items():
        state = decode(value)
        assert (
            key.decode().isprintable()
            and np.isfinite(state.hidden).all()
            and np.isfinite(state.lt_sum).all()
        )
        assert all(i.isprintable() for i in state.recent_items + state.recent_event_ids)
    for key, value, _ in out.recommendations:
        assert Recommendation.from_json(value).user_id == key.decode()


def make_updater(n_items: int = 5, dim: int = 8, **settings) -> InterestUpdater:
    catalogue = Catalogue(dim)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(n_items, dim)).astype(np.float32)
    catalogue.upsert(
        [ItemVector(f"i{i}", b"\0" * 16, v / np.linalg.norm(v)) for i, v in enumerate(vectors)]
    )
    return InterestUpdater(
        InterestModel.untrained(dim, 6, "t"),
        catalogue,
        UpdaterConfig(**{"max_lateness_s": 100.0, "top_k": 3, **settings}),
    )


deliveries = st.lists(
    st.tuples(
        st.sampled_from(["u1", "u2", "u3"]),
        st.sampled_from(["i0", "i1", "i4", "missing"]),
        st.sampled_from(["click", "purchase"]),
        st.floats(1_000.0, 2_000.0),
        st.integers(0, 30),
        st.integers(0, 1),
        st.integers(0, 8),
    ),
    max_size=40,
)


@hsettings(suppress_health_check=[HealthCheck.too_slow], deadline=None, max_examples=60)
@given(st.lists(deliveries, min_size=1, max_size=4))
def test_updater_survives_any_batch_sequence_and_accounts_for_every_event(batches):
    """Unknown items, re-sent event ids, late events, redelivered offsets in any mix: nothing raises, every
    delivered event is applied, rejected or skipped as redelivered, and states stay finite."""
    updater = make_updater()
    store: dict = {}
    for batch in batches:
        delivered = [
            Delivered(Event(f"e{eid}", u, i, t, ts), f"{t}s:{p}", off)
            for u, i, t, ts, off, p, eid in batch
        ]
        states = {d.event.user_id: store.get(d.event.user_id) for d in delivered}
        before = {u: (s.clicks + s.purchases if s else 0) for u, s in states.items()}
        result = updater.apply(delivered, states)
        store.update(result.states)
        applied = sum(s.clicks + s.purchases for u, s in result.states.items()) - sum(
            before[u] for u in result.states
        )
        assert applied + len(result.rejected) + result.redelivered == len(delivered)
        for _, rejection in result.rejected:
            assert rejection.reason in {"unknown_item", "duplicate", "too_late"}
        for s in result.states.values():
            assert np.isfinite(s.hidden).all() and np.isfinite(s.lt_sum).all() and s.lt_weight >= 0
        for rec in result.recommendations:
            assert len(rec.items) <= 3 and not set(store[rec.user_id].recent_items) & {
                i.item_id for i in rec.items
            }


@pytest.mark.e2e
def test_a_corpus_of_bad_events_goes_to_the_dead_letter_topic_and_good_ones_around_it_are_applied(
    settings, tmp_path
):
    now = time.time()
    good = [
        {
            "event_id": f"g{n}",
            "user_id": f"user-{n % 3}",
            "item_id": "run-000",
            "ts": now - 1000 + n,
        }
        for n in range(30)
    ]
    bad: list[tuple[bytes, bytes, str]] = [
        (b"user-0", b"{oops", "bad_json"),
        (b"user-0", b"\x00\xff garbage", "bad_json"),
        (b"user-0", b'"just a string"', "bad_schema"),
        (
            b"user-0",
            json.dumps({"event_id": "b1", "user_id": "user-0", "ts": now}).encode(),
            "missing_field",
        ),
        (
            b"user-0",
            json.dumps(
                {"event_id": "b2", "user_id": "user-0", "item_id": {"x": 1}, "ts": now}
            ).encode(),
            "bad_type",
        ),
        (
            b"user-0",
            json.dumps(
                {"event_id": "b3", "user_id": "user-0", "item_id": "run-000", "ts": "now"}
            ).encode(),
            "bad_type",
        ),
        (
            b"user-0",
            json.dumps(
                {"event_id": "b4", "user_id": "u" * 200_000, "item_id": "run-000", "ts": now}
            ).encode(),
            "bad_value",
        ),
        (
            b"user-0",
            json.dumps(
                {"event_id": "b4b", "user_id": "u" * 200, "item_id": "run-000", "ts": now}
            ).encode(),
            "bad_value",
        ),
        (
            b"user-0",
            json.dumps(
                {"event_id": "b5", "user_id": "user-0", "item_id": "run-000", "ts": -5}
            ).encode(),
            "bad_timestamp",
        ),
        (
            b"user-0",
            json.dumps(
                {"event_id": "b6", "user_id": "user-0", "item_id": "run-000", "ts": now + 86400}
            ).encode(),
            "future_timestamp",
        ),
        (
            b"user-1",
            json.dumps(
                {"event_id": "b7", "user_id": "user-1", "item_id": "nope", "ts": now}
            ).encode(),
            "unknown_item",
        ),
        (b"user-2", json.dumps({**good[2], "ts": good[2]["ts"]}).encode(), "duplicate"),
        (
            b"user-1",
            json.dumps(
                {
                    "event_id": "b8",
                    "user_id": "user-1",
                    "item_id": "run-000",
                    "ts": now - 40 * 86400,
                }
            ).encode(),
            "too_late",
        ),
        (
            b"user-9",
            json.dumps(
                {"event_id": "b9", "user_id": "user-2", "item_id": "run-000", "ts": now}
            ).encode(),
            "bad_key",
        ),
    ]
    worker = WorkerProcess(settings, tmp_path / "worker.log").start()
    try:
        publish_catalogue(settings, SAMPLE / "catalogue.jsonl", progress=False)
        worker.wait_ready(min_items=96)
        out = KafkaProducer(**client_options(settings), max_request_size=2_000_000)
        for n, event in enumerate(good):  # bad events interleaved between good ones
            out.send(
                settings.clicks_topic,
                key=event["user_id"].encode(),
                value=json.dumps(event).encode(),
            )
            if n % 2 == 1 and bad[n // 2 :]:
                key, value, _ = bad[n // 2]
                out.send(settings.clicks_topic, key=key, value=value)
        out.flush()
        out.close()
        total = len(good) + len(bad)
        wait_until(
            lambda: (
                metric_sum(scrape(settings.metrics_port), "interest_events_consumed_total") >= total
            ),
            what="corpus consumed",
        )
        wait_until(lambda: len(dead_letters(settings)) >= len(bad), what="all dead letters")
        metrics = scrape(settings.metrics_port)
        assert worker.alive, worker.log_tail()
    finally:
        worker.stop()
    letters = dead_letters(settings)
    assert Counter(d["reason"] for d in letters) == Counter(reason for _, _, reason in bad)
    # original bytes, nothing lost
    assert sorted(d["value"] for d in letters) == sorted(value for _, value, _ in bad)
    for reason, n in Counter(reason for _, _, reason in bad).items():
        assert metric_sum(metrics, "interest_events_dead_lettered_total", reason=reason) == n
    from streams.user_table import load_user_states

    states = load_user_states(settings.data_dir)
    assert {u: s.clicks for u, s in states.items()} == {f"user-{k}": 10 for k in range(3)}
