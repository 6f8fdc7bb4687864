"""In-process measurements: the decay timer, the size of a user state."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from rocksdict import Options, Rdict

from models.catalogue import Catalogue
from models.interest import InterestModel
from state.user_state import UserState, decode, encode
from streams.settings import Settings
from streams.updater import InterestUpdater


def full_state(rng: np.random.Generator, hidden: int, dim: int, settings: Settings, n: int) -> UserState:
    """A user with a full history: every list at its cap, offsets on both event topics."""
    state = UserState.new(hidden, dim, "untrained")
    state.hidden = rng.standard_normal(hidden, np.float32)
    state.lt_sum = rng.standard_normal(dim, np.float32)
    state.lt_weight, state.lt_time, state.last_event_time = float(rng.uniform(1, 50)), 1.79e9, 1.79e9
    state.clicks, state.purchases, state.last_event_id = 900, 100, f"e{n}-999"
    state.applied = {f"{settings.clicks_topic}:{n % 4}": 10_000_000 + n, f"{settings.purchases_topic}:{n % 4}": 1_000_000 + n}
    for j in range(64):
        state.remember(f"e{n}-{j}", f"i{rng.integers(100_000)}", settings.recent_items)
    return state


def decay_cost(n_users: int, dim: int, hidden: int, settings: Settings) -> dict:
    """What one decay tick costs for ``n_users`` users, step by step, as the worker runs it: read the
    partition's RocksDB, decode, decay (batched numpy), encode, write back."""
    rng = np.random.default_rng(0)
    states = [full_state(rng, hidden, dim, settings, n) for n in range(n_users)]
    encoded = [encode(s) for s in states]
    catalogue = Catalogue(dim)
    updater = InterestUpdater(InterestModel.untrained(dim, hidden, "bench"), catalogue, settings)
    with tempfile.TemporaryDirectory(prefix="bench-decay-") as tmp:
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
    per_100k = 100_000 / n_users
    steps = dict(zip(("read_s", "decode_s", "decay_s", "encode_s", "write_s"), np.diff(t) * per_100k))
    return {"users": n_users, **steps, "total_s_per_100k_users": (t[-1] - t[0]) * per_100k,
            "full_state_bytes": float(np.mean([len(b) for b in encoded]))}
