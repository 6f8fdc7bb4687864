"""How ``models.train`` trains: one dataclass, each default written once (the `train` command's flags
take theirs from it). No torch here: the CLI builds its parser from it without importing the model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainConfig:
    dim: int = 64
    hidden: int = 128
    epochs: int = 30  # upper bound: early stopping usually ends sooner
    patience: int = 3  # epochs without a better validation NDCG@10 before stopping
    lr: float = 3e-3
    # Adam moves a parameter by about lr a step: a few hundred steps (grocery's ~80 a epoch) would hold a
    # re-buy or trend weight under ~1, where they need several (their features span 0-8)
    feature_lr_scale: float = 10.0
    # on the item vectors entering the GRU and the hidden state entering the fusion, while training
    dropout: float = 0.2
    lanes: int = 32  # users processed side by side
    window: int = 32  # steps per mini-batch (truncated backpropagation through time)
    val_fraction: float = 0.1  # last part of the training period (by time) used for early stopping
    refit: bool = True  # retrain on the whole training period for the best number of epochs
    # as served: items the user already had are not candidates; False: re-buys are, with the re-buy term
    exclude_seen: bool = True
    # > 0: the model learns the trend term over recent events of this half-life (models.trending)
    trend_half_life_s: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs={self.epochs}: at least one epoch is trained")
