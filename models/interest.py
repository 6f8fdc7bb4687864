"""Short-term GRU, fusion with the long-term vector, and the item tower they are scored against.

Everything is batched over users: the stream steps all users of a micro-batch at once, training steps
all sequences of a mini-batch at once, through the same ``step`` and ``query``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from state.faults import InterestStreamError

N_EVENT_TYPES = 2  # click, purchase


@dataclass(frozen=True)
class ModelConfig:
    embed_dim: int  # encoder output size
    dim: int  # interest space the user query and items meet in
    hidden: int  # GRU hidden size
    encoder: str  # encoder the model was trained against (its embeddings are its input)


class InterestModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.item_proj = nn.Linear(config.embed_dim, config.dim)  # item tower: also works for unseen items
        self.gru = nn.GRUCell(config.dim + N_EVENT_TYPES, config.hidden)
        self.out = nn.Linear(config.hidden, config.dim)
        # Fusion: q = a_s * short + a_l * c * long, with confidence c = W / (W + w0) from the decayed weight W.
        self.log_a_short = nn.Parameter(torch.zeros(()))
        self.log_a_long = nn.Parameter(torch.zeros(()))
        self.log_w0 = nn.Parameter(torch.zeros(()))
        self.version = "untrained"

    @classmethod
    def untrained(cls, embed_dim: int, hidden: int, encoder: str, seed: int = 0) -> "InterestModel":
        """Content-based default before any training: identity item tower, long-term interest dominates."""
        torch.manual_seed(seed)
        model = cls(ModelConfig(embed_dim, embed_dim, hidden, encoder))
        with torch.no_grad():
            model.item_proj.weight.copy_(torch.eye(embed_dim))
            model.item_proj.bias.zero_()
            model.log_a_short.fill_(-3.0)
        return model.eval()

    def items(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Encoder vectors [N, embed_dim] -> interest space [N, dim]."""
        return self.item_proj(embeddings)

    def step(self, hidden: torch.Tensor, item_emb: torch.Tensor, event_type: torch.Tensor) -> torch.Tensor:
        """One GRU step for a batch: hidden [B, H], item_emb [B, embed_dim], event_type [B] (0 click, 1 purchase)."""
        x = torch.cat([self.items(item_emb), nn.functional.one_hot(event_type, N_EVENT_TYPES).to(item_emb.dtype)], -1)
        return self.gru(x, hidden)

    def query_parts(self, hidden: torch.Tensor, long_term: torch.Tensor, lt_weight: torch.Tensor) -> dict[str, torch.Tensor]:
        """The fused user vector's named terms, each [B, dim], from hidden [B, H], long-term average
        [B, embed_dim] and its weight [B]: ``short`` (the GRU's) and ``long`` (the long-term average's).
        ``query`` is their sum, so an item's score splits into the same terms (``models.reasons``)."""
        confidence = (lt_weight / (lt_weight + self.log_w0.exp())).unsqueeze(-1)
        short = self.out(hidden)
        long = self.items(long_term) * (lt_weight > 0).unsqueeze(-1)  # no history: no long-term term
        return {"short": self.log_a_short.exp() * short, "long": self.log_a_long.exp() * confidence * long}

    @staticmethod
    def fuse(parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The user vector [B, dim]: the sum of ``query_parts``."""
        return functools.reduce(torch.add, parts.values())

    def query(self, hidden: torch.Tensor, long_term: torch.Tensor, lt_weight: torch.Tensor) -> torch.Tensor:
        """Fused user vector [B, dim] from hidden [B, H], long-term average [B, embed_dim] and its weight [B]."""
        return self.fuse(self.query_parts(hidden, long_term, lt_weight))

    def save(self, path: Path) -> str:
        """Write a versioned checkpoint; the version is a timestamp plus a hash of the weights."""
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        digest = hashlib.sha256(buf.getvalue()).hexdigest()[:8]
        self.version = f"gru-{time.strftime('%Y%m%d%H%M%S')}-{digest}"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"config": asdict(self.config), "state": self.state_dict(), "version": self.version}, path)
        return self.version

    @classmethod
    def load(cls, path: Path) -> "InterestModel":
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = cls(ModelConfig(**ckpt["config"]))
        model.load_state_dict(ckpt["state"])
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise InterestStreamError(f"checkpoint {path} has non-finite weights: every state and score would be NaN")
        model.version = ckpt["version"]
        return model.eval()
