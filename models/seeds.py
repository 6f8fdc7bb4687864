"""Several evaluation runs (one per seed) summarised: per recommender, part and metric, the spread
over runs."""

from __future__ import annotations

import numpy as np

from models.evaluate import METRICS

PARTS = ("all", "users_with_history", "new_users")
PART_LABELS = {"users_with_history": "users with history", "new_users": "new users"}
# docs/quality.md's tables: (part, metric) per column
TABLE_COLUMNS = (
    *(
        ("all", m)
        for m in ("NDCG@10", "HR@10", "MRR@20", "Recall@20", "Precision@10", "F1@10", "AUC")
    ),
    ("users_with_history", "NDCG@10"),
    ("new_users", "NDCG@10"),
)


def summarise(
    runs: list[dict[str, dict]],
) -> dict[str, dict[str, dict[str, dict[str, float] | None]]]:
    """``runs``: ``models.evaluate.evaluate`` results, one per seed, of the same recommenders. Returns
    ``[recommender][part][metric]`` -> {"mean", "std", "min", "max", "runs"}, std the sample standard
    deviation (n - 1; 0 for one run); None where a run has no value (no event of that part). Raises
    ``ValueError`` for no runs, or runs of different recommenders."""
    if not runs:
        raise ValueError("no runs to summarise")
    names = list(runs[0])
    if any(list(r) != names for r in runs):
        raise ValueError(f"the runs are of different recommenders: {[list(r) for r in runs]}")
    out: dict[str, dict[str, dict[str, dict[str, float] | None]]] = {}
    for name in names:
        out[name] = {}
        for part in PARTS:
            out[name][part] = {}
            for metric in METRICS:
                values = [r[name][part][metric] for r in runs]
                if any(v is None for v in values):
                    out[name][part][metric] = None
                    continue
                v = np.array(values, float)
                out[name][part][metric] = {
                    "mean": float(v.mean()),
                    "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                    "min": float(v.min()),
                    "max": float(v.max()),
                    "runs": len(v),
                }
    return out


def spread(value: dict[str, float] | None) -> str:
    """One summarised value as "mean ± std", the mean alone where one run measured no spread, "-" for
    none."""
    if value is None:
        return "-"
    if value["runs"] < 2:
        return f"{value['mean']:.4f}"
    return f"{value['mean']:.4f} ± {value['std']:.4f}"


def markdown_table(
    summary: dict[str, dict], columns: tuple[tuple[str, str], ...] = TABLE_COLUMNS
) -> str:
    """A markdown table of ``summary`` (``summarise``): one row per recommender, mean ± std per (part, metric)
    column, a part other than "all" named in its header."""
    names = [m if part == "all" else f"{m}, {PART_LABELS[part]}" for part, m in columns]
    lines = ["| recommender | " + " | ".join(names) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [
        f"| {name} | " + " | ".join(spread(parts[part][m]) for part, m in columns) + " |"
        for name, parts in summary.items()
    ]
    return "\n".join(lines)
