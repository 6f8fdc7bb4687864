"""Item encoder throughput by device and batch size, and whether the GPU's vectors rank like the CPU's.

    python -m benchmarks.encoder                                  # packaged MiniLM, every device torch sees
    python -m benchmarks.encoder --items 50000 --batches 64,256,1024 --path DIR

Per device (cpu, and cuda when present) and batch size: items/s after a warm-up batch, with the share of
the time spent tokenizing (on the CPU whatever the device). For cuda, the cosine between its vectors and
the CPU's for the same texts, and how many of each item's ten nearest neighbours the two agree on: the
GPU path (bf16) must rank items as the CPU path does. Writes results/encoder.json.
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

from benchmarks.workload import catalogue
from models.encoder import ItemEncoder, agreement


def throughput(
    texts: list[str], path: str = "", device: str = "cpu", batch: int = 64
) -> tuple[dict, np.ndarray]:
    """Items/s of ``encoder.encode`` over ``texts``, after a warm-up batch, with tokenizing timed on its
    own; and the vectors."""
    start = time.perf_counter()
    encoder = ItemEncoder(path, device, batch)
    load_s = time.perf_counter() - start
    encoder.encode(texts[:batch])
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        encoder.tokenize(texts[i : i + batch])
    tokenize_s = time.perf_counter() - start
    start = time.perf_counter()
    vectors = encoder.encode(texts)
    seconds = time.perf_counter() - start
    hardware = (
        torch.cuda.get_device_name(encoder.device)
        if encoder.device.type == "cuda"
        else f"{torch.get_num_threads()} threads"
    )
    return {
        "encoder": encoder.name,
        "device": encoder.device.type,
        "hardware": hardware,
        "dtype": str(encoder.model.dtype),
        "batch": batch,
        "items": len(texts),
        "load_s": load_s,
        "items_per_s": len(texts) / seconds,
        "tokenize_share": tokenize_s / seconds,
    }, vectors


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.encoder",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--path", default="", help="model directory (default: the packaged all-MiniLM-L6-v2)"
    )
    p.add_argument("--items", type=int, default=5000, help="item texts to embed")
    p.add_argument("--batches", default="64,256", help="batch sizes, comma-separated")
    p.add_argument(
        "--devices", default="", help="comma-separated; default: cpu, and cuda when present"
    )
    p.add_argument(
        "--compare", type=int, default=2000, help="texts compared between cuda and the CPU"
    )
    p.add_argument("--out", default="results/encoder.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    texts = [i["text"] for i in catalogue(args.items, seed=2)]
    devices = (
        args.devices.split(",")
        if args.devices
        else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    )
    batches = [int(b) for b in args.batches.split(",")]
    runs, cpu_vectors = [], None
    for device in devices:
        for batch in batches:
            run, vectors = throughput(texts, args.path, device, batch)
            if device == "cpu" and cpu_vectors is None:
                cpu_vectors = vectors[: args.compare]
            elif device != "cpu" and cpu_vectors is not None:
                run["vs_cpu"] = agreement(vectors[: len(cpu_vectors)], cpu_vectors)
            runs.append(run)
            vs = run.get("vs_cpu", {})
            print(
                f"{run['device']:>4} ({run['hardware']}, {run['dtype']}) batch {batch:>5}: "
                f"{run['items_per_s']:>9,.0f} items/s, "
                f"tokenizing {run['tokenize_share']:.0%} of it"
                + (
                    f"; vs CPU cosine min {vs['cosine_min']:.4f}, "
                    f"neighbours@10 overlap {vs['neighbours@10_overlap']:.3f}"
                    if vs
                    else ""
                ),
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"items": args.items, "runs": runs}, indent=2))
    print(f"wrote {out}")
    return runs


if __name__ == "__main__":
    main()
