"""`interest-stream quality`: the product's model beside the peers on one replay, over several seeds.

For each seed the model is trained afresh (``models.train.train``, ``TrainConfig(seed=...)``) and replayed
as "fused" and "GRU only" (``ablate``: the fusion's long-term side off). Peers without randomness (popular,
item-kNN, EASE, own re-buys) are tuned and replayed at seed 0 only: their rows at the other seeds are seed
0's, their spread 0 by construction. A seeded peer (SASRec+) is tuned at seed 0 and retrained with the
chosen params at each further seed. ``models.seeds.summarise`` gives mean ± sample std over the seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from models.train_config import TrainConfig

if (
    TYPE_CHECKING
):  # the CLI builds its parser from QualityConfig: the model stays unimported until a run
    import numpy as np

    from models.records import CatalogueItem, Event
    from models.updater import UpdaterConfig


@dataclass(frozen=True)
class QualityConfig:
    seeds: int = 3
    exclude_seen: bool = True  # False (--keep-seen): re-buys count, and own re-buys join the peers
    epochs: int = TrainConfig.epochs  # the model's upper bound (early stopping)
    # given (not tuned) params by peer name
    peer_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the model's trend term (``TrainConfig.trend_half_life_s``); 0: none
    trend_half_life_s: float = 0.0


def measure(
    train_events: list[Event],
    test_events: list[Event],
    items: list[CatalogueItem],
    embeddings: np.ndarray,
    encoder: str,
    serving: UpdaterConfig,
    config: QualityConfig,
    progress: bool = False,
) -> dict[str, Any]:
    """The runs of the module docstring. Returns "runs" (per seed: "seed" and ``evaluate``'s "results", every
    run's recommenders in seed 0's order), "training" (per seed: "seconds", training "events", "epochs" of
    the final model), "params" (each peer's, chosen at seed 0 or given), "deterministic" (the peers whose
    rows are seed 0's) and "summary" (``summarise`` of the runs)."""
    from models.evaluate import EvalConfig, ablate, chosen_params, evaluate
    from models.peers import default_peers, with_params
    from models.seeds import summarise
    from models.train import train

    ids = [i.item_id for i in items]
    index = {item_id: n for n, item_id in enumerate(ids)}
    runs: list[dict[str, Any]] = []
    training: list[dict[str, Any]] = []
    params: dict[str, dict[str, Any]] = {}
    deterministic: list[str] = []
    for seed in range(config.seeds):
        model, report = train(
            train_events,
            index,
            embeddings,
            encoder,
            serving,
            TrainConfig(
                epochs=config.epochs,
                exclude_seen=config.exclude_seen,
                trend_half_life_s=config.trend_half_life_s,
                seed=seed,
            ),
            progress,
        )
        training.append(
            {
                "seed": seed,
                "seconds": round(report.seconds, 1),
                "events": len(train_events),
                "epochs": report.epochs,
                "calibration": report.calibration,
            }
        )
        peers = with_params(
            default_peers(ids, config.exclude_seen, seed),
            config.peer_params if seed == 0 else params,
        )
        if seed > 0:
            peers = [p for p in peers if p.seeded]  # the others: seed 0's rows
        models = {"fused": model, "GRU only": ablate(model, "short")}
        results = evaluate(
            train_events,
            test_events,
            items,
            embeddings,
            models,
            serving,
            EvalConfig(config.exclude_seen),
            peers,
            progress,
        )
        if seed == 0:
            params, deterministic = chosen_params(results), [p.name for p in peers if not p.seeded]
        else:
            results = {
                name: results[name] if name in results else runs[0]["results"][name]
                for name in runs[0]["results"]
            }
        runs.append({"seed": seed, "results": results})
    return {
        "runs": runs,
        "training": training,
        "params": params,
        "deterministic": deterministic,
        "summary": summarise([r["results"] for r in runs]),
    }


def markdown(report: dict[str, Any], title: str) -> str:
    """``title``, the summary as a table of docs/quality.md, then what it rests on: seeds, the
    deterministic peers, the model's training time and events, the peers' params."""
    from models.seeds import markdown_table

    seeds, training = len(report["runs"]), report["training"]
    seconds = [t["seconds"] for t in training]
    params = "; ".join(
        f"{name}: " + (", ".join(f"{k}={v}" for k, v in p.items()) or "defaults")
        for name, p in report["params"].items()
    )
    return (
        "\n".join(
            [
                f"### {title}",
                "",
                markdown_table(report["summary"]),
                "",
                (
                    f"Mean ± sample standard deviation over {seeds} seeds (0..{seeds - 1}). "
                    f"{', '.join(report['deterministic'])}: deterministic, "
                    "replayed once (seed 0), spread 0 by construction. "
                    if seeds > 1
                    else "One seed (0): no spread measured. "
                )
                + "The model trained on "
                f"{training[0]['events']:,} events in "
                f"{sum(seconds) / len(seconds):.1f} s a seed "
                f"({min(seconds):.1f}-{max(seconds):.1f} s). Peers' params: {params}.",
            ]
        )
        + "\n"
    )
