"""SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018) trained as SASRec+: a full
softmax over the catalogue with cross-entropy instead of one sampled negative with binary cross-entropy
(Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better than SASRec?", RecSys 2023).

Sequences here are of item numbers 1..M (0 pads); mapping catalogue ids to them is the caller's job.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from state.faults import InterestStreamError


@dataclass(frozen=True)
class SASRecConfig:
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    max_len: int = 50  # the last items of a user the model reads
    epochs: int = 200  # upper bound: early stopping usually ends far sooner
    patience: int = 3  # epochs without a better validation NDCG@10 before stopping
    batch_size: int = 128  # windows of max_len items
    lr: float = 1e-3
    val_fraction: float = 0.1  # last part (by time) of the events given, for early stopping
    refit: bool = True  # retrain on all events for the best number of epochs
    seed: int = 0


@dataclass
class FitReport:
    epochs: int  # epochs of the final model
    # per epoch: train loss, validation NDCG@10, seconds so far
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


class _Block(nn.Module):
    """Pre-LayerNorm causal self-attention and a point-wise feed-forward layer, each with a residual."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.ff = nn.Sequential(
            nn.Linear(dim, dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, w, d = x.shape
        q, k, v = (
            self.qkv(self.norm1(x))
            .view(b, w, 3, self.heads, d // self.heads)
            .permute(2, 0, 3, 1, 4)
        )
        a = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.dropout if self.training else 0.0
        )
        x = x + F.dropout(self.out(a.transpose(1, 2).reshape(b, w, d)), self.dropout, self.training)
        return x + self.ff(self.norm2(x))


class SASRec(nn.Module):
    """Item + position embeddings, causal transformer blocks, a final LayerNorm; the output for position t
    scores item j by its dot product with item j's input embedding (tied, as in the paper).

    Positions count from the end of the window (left padding), so the newest item always has the same one.
    """

    def __init__(self, n_items: int, config: SASRecConfig) -> None:
        super().__init__()
        self.max_len, self.scale = config.max_len, config.dim**0.5
        self.item = nn.Embedding(n_items + 1, config.dim, padding_idx=0)
        # N(0, 1/dim): the scaled inputs have unit entries and the tied output's first logits are O(1)
        nn.init.normal_(self.item.weight, std=config.dim**-0.5)
        with torch.no_grad():
            self.item.weight[0].zero_()
        self.position = nn.Embedding(config.max_len, config.dim)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            _Block(config.dim, config.heads, config.dropout) for _ in range(config.blocks)
        )
        self.norm = nn.LayerNorm(config.dim)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq`` [B, W] item numbers, left-padded with 0, W <= max_len; returns hidden states [B,
        W, dim]."""
        w = seq.shape[1]
        valid = (seq > 0).unsqueeze(-1)
        x = (
            self.drop(
                self.item(seq) * self.scale
                + self.position(torch.arange(self.max_len - w, self.max_len))
            )
            * valid
        )
        # causal, padding keys hidden; a padding query sees itself (its output is never used) so no
        # row is empty
        allowed = torch.ones(w, w, dtype=torch.bool).tril() & (
            valid.transpose(1, 2) | torch.eye(w, dtype=torch.bool)
        )
        for block in self.blocks:
            x = block(x, allowed.unsqueeze(1)) * valid
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[..., dim] -> [..., M]: scores of items 1..M."""
        return hidden @ self.item.weight[1:].T

    @torch.no_grad()
    def last_logits(self, seqs: list[list[int]], batch: int = 256) -> torch.Tensor:
        """Scores [len(seqs), M] for the item after each sequence's last max_len items (each non-empty)."""
        self.eval()
        out = []
        for start in range(0, len(seqs), batch):
            out.append(
                self.logits(
                    self(_left_pad([s[-self.max_len :] for s in seqs[start : start + batch]]))[
                        :, -1
                    ]
                )
            )
        return torch.cat(out)


def _left_pad(seqs: list[list[int]]) -> torch.Tensor:
    width = max(len(s) for s in seqs)
    return torch.tensor([[0] * (width - len(s)) + s for s in seqs], dtype=torch.long)


def windows(seqs: list[list[int]], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training windows: each sequence cut from its end into pieces of max_len + 1 items overlapping by one,
    so every item but a sequence's first is a target once. Returns inputs and targets [W, max_len],
    left-padded."""
    inputs, targets = [], []
    for s in seqs:
        for end in range(len(s), 1, -max_len):
            piece = s[max(0, end - max_len - 1) : end]
            inputs.append(piece[:-1])
            targets.append(piece[1:])
    pad = [[0] * max_len]  # fixes the width at max_len
    return _left_pad(inputs + pad)[:-1], _left_pad(targets + pad)[:-1]


def ndcg_at_10(
    model: SASRec, inputs: torch.Tensor, targets: torch.Tensor, batch: int = 256
) -> float:
    """Mean NDCG@10 over the targets > 0 of windows ``inputs``/``targets`` [W, max_len] (raw scores, nothing
    excluded)."""
    model.eval()
    gains = []
    with torch.no_grad():
        for start in range(0, len(inputs), batch):
            x, y = inputs[start : start + batch], targets[start : start + batch]
            logits = model.logits(model(x)[y > 0])
            target = (y[y > 0] - 1)[:, None]
            rank = (logits > logits.gather(1, target)).sum(1) + 1
            gains.append(torch.where(rank <= 10, 1.0 / torch.log2(rank + 1.0), 0.0))
    return float(torch.cat(gains).mean())


def _train(
    seqs: list[list[int]],
    n_items: int,
    config: SASRecConfig,
    epochs: int,
    validation: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[SASRec, list[dict]]:
    """``epochs`` of Adam on next-item cross-entropy; with ``validation`` windows (inputs,
    targets), stop after
    ``patience`` epochs without a better NDCG@10 and keep the best epoch's weights."""
    torch.manual_seed(config.seed)
    model = SASRec(n_items, config)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    inputs, targets = windows(seqs, config.max_len)
    history: list[dict] = []
    best, best_epoch, best_state = -1.0, 0, None
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for batch in torch.randperm(len(inputs)).split(config.batch_size):
            x, y = inputs[batch], targets[batch]
            # windows are left-padded: the leading all-padding columns go
            width = int((x > 0).sum(1).max())
            x, y = x[:, -width:], y[:, -width:]
            mask = y > 0
            loss = F.cross_entropy(model.logits(model(x)[mask]), y[mask] - 1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * int(mask.sum())
        row = {
            "epoch": epoch,
            "train_loss": total / int((targets > 0).sum()),
            "seconds": time.perf_counter() - started,
        }
        history.append(row)
        if validation is not None:
            row["val_ndcg@10"] = ndcg_at_10(model, *validation)
            if row["val_ndcg@10"] > best:
                best, best_epoch, best_state = (
                    row["val_ndcg@10"],
                    epoch,
                    copy.deepcopy(model.state_dict()),
                )
            elif epoch - best_epoch >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval(), history


def fit(
    seqs: list[list[int]], times: list[list[float]], n_items: int, config: SASRecConfig
) -> tuple[SASRec, FitReport]:
    """Train on users' time-ordered sequences of item numbers 1..n_items (``times`` their event times, unix
    seconds): early stopping on the events of the last ``val_fraction`` of the time span (each predicted from
    the user's items before it, up to max_len), then, with ``refit``, a new model trained on all events for
    the best number of epochs. Raises ``InterestStreamError`` when no event lies before the validation part.
    """
    started = time.perf_counter()
    cutoff = float(
        np.quantile(np.concatenate([np.asarray(t, float) for t in times]), 1 - config.val_fraction)
    )
    fit_seqs = [[i for i, t in zip(s, ts) if t < cutoff] for s, ts in zip(seqs, times)]
    if sum(len(s) > 1 for s in fit_seqs) == 0:
        raise InterestStreamError(
            f"too few events to train SASRec on: no user has two events before the validation "
            f"part (the last {config.val_fraction:.0%} of the time span)"
        )
    # one window per user with validation events, their last max_len + 1 items, scored on those events only
    # (of a user with more than max_len, the last max_len: cheap, and it only picks an epoch)
    val_users = [
        (s, len(s) - max(len(f), 1)) for s, f in zip(seqs, fit_seqs) if len(s) > max(len(f), 1)
    ]
    val_inputs, val_targets = windows(
        [s[-config.max_len - 1 :] for s, _ in val_users], config.max_len
    )
    for row, (_, n_val) in enumerate(val_users):
        val_targets[row, : max(config.max_len - n_val, 0)] = 0
    model, history = _train(
        fit_seqs, n_items, config, config.epochs, (val_inputs, val_targets) if val_users else None
    )
    best = (
        max(history, key=lambda r: r.get("val_ndcg@10", 0.0))["epoch"]
        if val_users
        else len(history)
    )
    if config.refit:
        model, refit_history = _train(seqs, n_items, config, best, None)
        history += [{**r, "refit": True} for r in refit_history]
    return model, FitReport(best, history, time.perf_counter() - started)
