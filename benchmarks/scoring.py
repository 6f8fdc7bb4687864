"""Scoring the catalogue at scale: exact against the approximate index, by catalogue size.

    python -m benchmarks.scoring                          # 10k, 100k, 1M items (~4 min on 2 cores)
    python -m benchmarks.scoring --items 100000 --dim 64

For each size, on one thread as in the worker (``INTEREST_TORCH_THREADS``), with the worker's own
``models.scorer.Scorer``:
  - the cost per event of scoring a micro-batch of users (``--batch`` queries) exactly (bf16 where the CPU
    has it) and with the ANN index (faiss IVF-SQ8, rescored exactly), in us per event;
  - recall@10 of the index against exact scoring, over the same queries (the share of the exact top 10
    it returns; scores of what it returns are exact);
  - what the index costs to build (train and add) and to follow the catalogue: 1,000 items upserted and
    1,000 retired, per item.

Items are synthetic: unit vectors scattered around 1,000 centres (item embeddings cluster by topic;
uniform random vectors are the index's worst case and no catalogue's shape); users' queries are averages
of five items' vectors, as a long-term interest is. Writes results/scoring.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from models.catalogue import Catalogue
from models.interest import InterestModel
from models.scorer import Scorer, ScoringConfig
from state.item_store import ItemVector
from streams.settings import Settings

K = 10


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """[n, dim] unit vectors around ``centres``."""
    x = centres[rng.integers(len(centres), size=n)] + 0.35 * rng.standard_normal((n, dim)).astype(
        np.float32
    )
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def timed(fn, repeat: int) -> tuple[float, object]:
    """Median seconds of ``repeat`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times)), out


def measure(n_items: int, dim: int, batch: int, settings: Settings, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, dim)).astype(np.float32)
    vectors = clustered(n_items, dim, rng, centres)
    catalogue = Catalogue(dim)
    catalogue.upsert([ItemVector(f"i{n}", b"", v) for n, v in enumerate(vectors)])
    # identity item tower: the space is the vectors
    model = InterestModel.untrained(dim, 8, "bench")
    # [B, dim + 1]: the bias's 1
    queries = model.scoring_query(
        torch.from_numpy(vectors[rng.integers(n_items, size=(8 * batch, 5))].mean(1))
    )
    # exclude_seen
    seen = [list(map(int, row)) for row in rng.integers(n_items, size=(len(queries), 20))]
    config = ScoringConfig(settings.bf16_scoring, n_items + 1, settings.ann_nprobe)

    exact = Scorer(config)
    exact.sync(catalogue, model)
    ann = Scorer(ScoringConfig(config.bf16, 1, config.ann_nprobe))
    built = time.perf_counter()
    ann.sync(catalogue, model)
    built = time.perf_counter() - built

    def score(scorer: Scorer) -> np.ndarray:
        return np.concatenate(
            [
                scorer.top_k(queries[b : b + batch], K, seen[b : b + batch])[1].numpy()
                for b in range(0, len(queries), batch)
            ]
        )

    repeat = 3 if n_items <= 100_000 else 1
    exact_s, want = timed(lambda: score(exact), repeat)
    ann_s, got = timed(lambda: score(ann), 3)
    recall = float(np.mean([len(set(a) & set(b)) / K for a, b in zip(got, want)]))  # type: ignore[call-overload]

    fresh = clustered(1000, dim, rng, centres)
    upsert_s, _ = timed(
        lambda: (
            catalogue.upsert([ItemVector(f"new{n}", b"", v) for n, v in enumerate(fresh)]),
            ann.sync(catalogue, model),
        ),
        1,
    )
    retire_s, _ = timed(
        lambda: (catalogue.remove([f"i{n}" for n in range(1000)]), ann.sync(catalogue, model)), 1
    )
    per_event = 1e6 / len(queries)
    return {
        "items": n_items,
        "dim": dim,
        "batch": batch,
        "exact_us_per_event": exact_s * per_event,
        "ann_us_per_event": ann_s * per_event,
        "recall_at_10": recall,
        "ivf_lists": ann.index.nlist if ann.index else 0,
        "nprobe": config.ann_nprobe,
        "index_build_s": built,
        "upsert_us_per_item": upsert_s * 1e3,
        "retire_us_per_item": retire_s * 1e3,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.scoring",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--items", default="10000,100000,1000000", help="catalogue sizes, comma-separated"
    )
    p.add_argument(
        "--dim", type=int, default=64, help="interest space size (a trained model's default)"
    )
    p.add_argument(
        "--batch",
        type=int,
        default=64,
        help="users scored together (a micro-batch's distinct users)",
    )
    p.add_argument("--out", default="results/scoring.json")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)  # as in the worker
    rows = []
    print(
        f"{'items':>9} {'exact us/ev':>12} {'ANN us/ev':>10} {'recall@10':>10} {'build s':>8} "
        f"{'upsert us/item':>15} {'retire us/item':>15}"
    )
    for n in map(int, args.items.split(",")):
        r = measure(n, args.dim, args.batch, settings)
        rows.append(r)
        print(
            f"{n:>9,} {r['exact_us_per_event']:>12,.0f} {r['ann_us_per_event']:>10,.0f} "
            f"{r['recall_at_10']:>10.3f} "
            f"{r['index_build_s']:>8.1f} {r['upsert_us_per_item']:>15,.0f} {r['retire_us_per_item']:>15,.0f}",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
