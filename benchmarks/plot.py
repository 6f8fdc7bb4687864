"""How cost grows: a table and a plot (PNG) from benchmark results.

    python -m benchmarks.plot results/scale-*.json --scoring results/scoring.json --out docs/scaling.png

Each ``results/*.json`` is one ``benchmarks.bench`` run (its users, items and workers are read from the
file); ``--scoring`` adds the scoring cost by catalogue size (``benchmarks.scoring``). Prints the table as
Markdown (docs/performance.md's) and draws worker CPU per event, latency at 10% and 50% of
capacity, and scoring
cost against catalogue size. Needs matplotlib (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def row(run: dict) -> dict:
    """One bench run -> the figures the table and plot show."""
    a, pipe = run["args"], run["pipeline"]
    by_load = {round(phase["load"], 2): phase for phase in pipe["latency"]}
    lat = {
        load: (by_load[load]["p50_ms"], by_load[load]["p99_ms"])
        if load in by_load
        else (float("nan"),) * 2
        for load in (0.1, 0.5)
    }
    return {
        "users": a["users"],
        "items": a["items"],
        "workers": a["workers"],
        "capacity": pipe["capacity"]["events_per_s"],
        "worker_cpu_us": pipe["capacity"]["worker_cpu_us_per_event"],
        "model_cpu_us": run["model_work"]["cpu_us_per_event"],
        "faust_cpu_us": 1e6 * pipe["faust_floor"]["cpu_s"] / pipe["faust_floor"]["events"],
        "p50_10": lat[0.1][0],
        "p99_10": lat[0.1][1],
        "p50_50": lat[0.5][0],
        "p99_50": lat[0.5][1],
    }


def table(rows: list[dict]) -> str:
    head = (
        "| users | items | workers | capacity, events/s | worker CPU, µs/event | model work alone | "
        "faust floor "
        "| latency p50 / p99 at 10%, ms | at 50%, ms |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {r['users']:,} | {r['items']:,} | {r['workers']} | {r['capacity']:,.0f} | "
        f"{r['worker_cpu_us']:,.0f} | "
        f"{r['model_cpu_us']:,.0f} | {r['faust_cpu_us']:,.0f} | {r['p50_10']:,.0f} / {r['p99_10']:,.0f} | "
        f"{r['p50_50']:,.0f} / {r['p99_50']:,.0f} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def plot(rows: list[dict], scoring: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    labels = [
        f"{r['users'] // 1000}k users\n{r['items'] // 1000:,}k items\n{r['workers']} "
        f"worker{'s' * (r['workers'] > 1)}"
        for r in rows
    ]
    x = range(len(rows))
    ax = axes[0]
    ax.bar([i - 0.27 for i in x], [r["worker_cpu_us"] for r in rows], 0.27, label="worker")
    ax.bar(list(x), [r["model_cpu_us"] for r in rows], 0.27, label="model work alone (floor)")
    ax.bar([i + 0.27 for i in x], [r["faust_cpu_us"] for r in rows], 0.27, label="faust floor")
    ax.set(title="CPU per event (backlog drain)", ylabel="µs", xticks=list(x), xticklabels=labels)
    ax.legend(fontsize=8)
    ax = axes[1]
    for key, style, name in (
        ("p50_10", "o-", "p50 at 10%"),
        ("p99_10", "o--", "p99 at 10%"),
        ("p50_50", "s-", "p50 at 50%"),
        ("p99_50", "s--", "p99 at 50%"),
    ):
        ax.plot(list(x), [r[key] for r in rows], style, label=name)
    ax.set(
        title="Event -> recommendation latency",
        ylabel="ms",
        yscale="log",
        xticks=list(x),
        xticklabels=labels,
    )
    ax.legend(fontsize=8)
    ax = axes[2]
    if scoring:
        items = [s["items"] for s in scoring]
        ax.plot(
            items,
            [s["exact_us_per_event"] for s in scoring],
            "o-",
            label="exact (bf16 + fp32 rescoring)",
        )
        ax.plot(
            items,
            [s["ann_us_per_event"] for s in scoring],
            "s-",
            label="ANN (faiss IVF-SQ8) + exact rescoring",
        )
        for s in scoring:
            ax.annotate(
                f"recall@10 {s['recall_at_10']:.3f}",
                (s["items"], s["ann_us_per_event"]),
                fontsize=7,
                xytext=(4, -10),
                textcoords="offset points",
            )
        ax.set(xscale="log", yscale="log")
    ax.set(title="Scoring one user, one thread", xlabel="catalogue items", ylabel="µs per event")
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.plot",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", type=Path, help="benchmarks.bench result files")
    p.add_argument("--scoring", type=Path, help="a benchmarks.scoring result file")
    p.add_argument("--out", type=Path, default=Path("docs/scaling.png"))
    args = p.parse_args(argv)
    rows = sorted(
        (row(json.loads(path.read_text())) for path in args.runs),
        key=lambda r: (r["workers"], r["items"], r["users"]),
    )
    scoring = json.loads(args.scoring.read_text())["rows"] if args.scoring else []
    print(table(rows))
    plot(rows, scoring, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
