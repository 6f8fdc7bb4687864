"""In-process measurements: the decay timer, the size of a user state, the model's work per event."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rocksdict import Options, Rdict, WriteBatch

from benchmarks.workload import EventSource
from models import history
from models.catalogue import Catalogue
from models.hardware import pick_device
from models.interest import InterestModel
from models.updater import InterestUpdater
from state.item_store import ItemVector
from state.user_state import UserState, decode, encode
from streams import heap
from streams.ingest import EventStep
from streams.settings import Settings


def full_state(
    rng: np.random.Generator, hidden: int, dim: int, settings: Settings, n: int
) -> UserState:
    """A user with a full history: every list at its cap (the long-term history too), offsets on
    both event topics."""
    state = UserState.new(hidden, dim, "untrained")
    state.hidden = rng.standard_normal(hidden, np.float32)
    state.lt_sum = rng.standard_normal(dim, np.float32)
    state.lt_weight, state.lt_time, state.last_event_time = (
        float(rng.uniform(1, 50)),
        1.79e9,
        1.79e9,
    )
    state.clicks, state.purchases, state.last_event_id = 900, 100, f"e{n}-999"
    state.applied = {
        f"{settings.clicks_topic}:{n % 4}": 10_000_000 + n,
        f"{settings.purchases_topic}:{n % 4}": 1_000_000 + n,
    }
    for j in range(64):
        state.remember(f"e{n}-{j}", f"i{rng.integers(100_000)}", settings.recent_items)
    for j in range(settings.history_items):  # a week of touches, none yet pruned
        history.record(
            state.history,
            f"i{rng.integers(100_000)}",
            state.lt_time - 604_800 + 6_000 * j,
            float(rng.choice([1.0, 3.0])),
            int(rng.integers(2**32)),
            settings.half_life_s,
        )
    return state


def decay_cost(n_users: int, dim: int, hidden: int, settings: Settings) -> dict:
    """What one decay tick costs for ``n_users`` users, step by step, as the worker runs it: read the
    partition's RocksDB, decode, decay (batched numpy), encode, write back. Then a refresh's worst case,
    an encoder rollout's: every user's long-term vector recomputed from a full history on the encoder's
    device (``InterestUpdater.refresh``, 100,000 items in the catalogue)."""
    rng = np.random.default_rng(0)
    states = [full_state(rng, hidden, dim, settings, n) for n in range(n_users)]
    encoded = [encode(s) for s in states]
    catalogue = Catalogue(dim)
    updater = InterestUpdater(
        InterestModel.untrained(dim, hidden, "bench"), catalogue, settings.updater_config()
    )
    # the worker's heap policy
    with tempfile.TemporaryDirectory(prefix="bench-decay-") as tmp, heap.settled():
        db = Rdict(str(Path(tmp) / "db"), options=Options(raw_mode=True))
        for n, raw in enumerate(encoded):
            db[f"u{n}".encode()] = raw
        t = [time.perf_counter()]
        rows = list(db.items())
        t.append(time.perf_counter())
        decoded = {k.decode(): decode(v) for k, v in rows}
        t.append(time.perf_counter())
        changed = updater.decay(decoded, 1.79e9 + settings.half_life_s)
        t.append(time.perf_counter())
        blobs = {u.encode(): encode(s) for u, s in changed.items()}
        t.append(time.perf_counter())
        for k, v in blobs.items():
            db[k] = v
        t.append(time.perf_counter())
        db.close()
    catalogue.upsert(
        [
            ItemVector(f"i{n}", b"\0" * 16, v)
            for n, v in enumerate(rng.standard_normal((100_000, dim), np.float32))
        ]
    )
    start = time.perf_counter()
    updater.refresh(decoded.values(), pick_device(settings.encoder_device))
    refresh_s = time.perf_counter() - start
    per_100k = 100_000 / n_users
    steps = dict(
        zip(("read_s", "decode_s", "decay_s", "encode_s", "write_s"), np.diff(t) * per_100k)
    )
    return {
        "users": n_users,
        **steps,
        "total_s_per_100k_users": (t[-1] - t[0]) * per_100k,
        "full_state_bytes": float(np.mean([len(b) for b in encoded])),
        "refresh_s_per_100k_users": refresh_s * per_100k,
    }


def model_work(
    n_users: int, n_items: int, n_events: int, dim: int, settings: Settings, seed: int = 0
) -> dict:
    """The worker's per-event work without Kafka and faust, on one thread as in the worker: the worker's own
    micro-batch step (``streams.ingest.EventStep``: parse and validate, decode, apply (GRU, long-term,
    top-k over the whole catalogue), encode the states and the recommendations) between one RocksDB
    multi-get and one WriteBatch per batch. Micro-batches of ``settings.batch_max`` events; the first
    ``n_users`` events create the users, untimed."""
    rng = np.random.default_rng(seed)
    catalogue = Catalogue(dim)
    vectors = rng.standard_normal((n_items, dim), np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    catalogue.upsert([ItemVector(f"i{n}", b"\0" * 16, v) for n, v in enumerate(vectors)])
    updater = InterestUpdater(
        InterestModel.untrained(dim, settings.hidden_size, "bench"),
        catalogue,
        settings.updater_config(),
    )
    step = EventStep(
        updater,
        {"click": "click", "purchase": "purchase"},
        settings.limits(),
        settings.max_message_bytes,
    )
    source = EventSource(n_users, n_items, seed)
    messages = [
        Record(kind, 0, offset, key, value, time.time())
        for offset, (kind, key, value) in enumerate(source.take(n_users + n_events))
    ]
    threads = torch.get_num_threads()
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)  # as in the worker
    # the worker's heap policy
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp, heap.settled():
        db = Rdict(str(Path(tmp) / "db"), options=Options(raw_mode=True))

        def read(keys: dict[bytes, int]) -> dict[bytes, bytes | None]:
            return dict(zip(keys, db.get(list(keys))))

        timed = state_bytes = rec_bytes = 0
        start = cpu = 0.0
        for first in range(0, len(messages), settings.batch_max):
            if first >= n_users and not start:  # every user has state from here on
                start, cpu = time.perf_counter(), time.process_time()
            batch = messages[first : first + settings.batch_max]
            out = step(batch, read, time.time())
            assert not out.rejected, out.rejected[:1]
            writes = WriteBatch(raw_mode=True)
            for key, (_, blob) in out.states.items():
                writes.put(key, blob)
            db.write(writes)
            if start:
                timed += len(batch)
                state_bytes += sum(len(blob) for _, blob in out.states.values())
                rec_bytes += sum(len(value) for _, value, _ in out.recommendations)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        db.close()
    torch.set_num_threads(threads)
    return {
        "events": timed,
        "events_per_s": timed / seconds,
        "cpu_us_per_event": 1e6 * cpu / timed,
        "state_bytes_per_event": state_bytes / timed,
        "recommendation_bytes_per_event": rec_bytes / timed,
    }


@dataclass(frozen=True)
class Record:
    """A consumed message, as the step reads one (``streams.ingest.Message``)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: float
