"""Short-term GRU, fusion with the long-term vector, and the item tower they are scored against.

A user's score for item i is  q_u . v_i + b_i  (+ g f_i(t)) (+ r(W_ui, n_ui) in the re-buy mode), where
- v_i = P e_i + E_i: the item's text embedding e_i through a linear map, plus, for an item seen in training,
  a learned item embedding E_i (zero for any other item: a new item is scored from its text alone);
- b_i = w . e_i + B_i: an item bias, its popularity (the text part generalises it to new items);
- q_u fuses the GRU's short-term state with the long-term average of the user's item embeddings;
- g f_i(t): in a model trained with a trend half-life (``ModelConfig.trend_half_life_s``), a learned weight g
  times the item's share of the recent events of all users (``models.trending``): what is popular this
  week, which the item bias, learned over the training weeks and then frozen, cannot follow;
- r(W, n) = a log(1 + W) + c [W > 0] + d log(1 + n): a re-buy term from W_ui, the decayed weight of the
  user's own clicks and purchases of the item (``models.history``: click or purchase weight x quantity,
  half-life INTEREST_HALF_LIFE_S), and n_ui, how many times they touched it (undecayed, quantity aside): the
  standard repeat signals of next-basket recommendation, recency and frequency of the user's own purchases
  (Hu et al., SIGIR 2020; Li et al., TOIS 2023). Only in a model trained with re-buys as candidates
  (``ModelConfig.rebuys``).

Everything is batched over users: the stream steps all users of a micro-batch at once, training steps
all sequences of a mini-batch at once, through the same ``step``, ``query`` and ``item_space``.
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
# The stream settings a model's inputs are made with (``UpdaterConfig``'s names): how events are
# weighed and decayed.
STREAM_SETTINGS = ("half_life_s", "click_weight", "purchase_weight")


@dataclass(frozen=True)
class ModelConfig:
    embed_dim: int  # encoder output size
    dim: int  # interest space the user query and items meet in
    hidden: int  # GRU hidden size
    encoder: str  # encoder the model was trained against (its embeddings are its input)
    # items with a learned embedding and bias (seen in training; ids in the checkpoint)
    known_items: int = 0
    # trained with the user's own items as candidates: scores add the re-buy term r(W)
    rebuys: bool = False
    # > 0: scores add the trend term g f_i(t) over events of this half-life (models.trending)
    trend_half_life_s: float = 0.0
    # The stream settings it was trained under: they make its long-term inputs and re-buy weights
    # (None: not recorded)
    half_life_s: float | None = None
    click_weight: float | None = None
    purchase_weight: float | None = None

    def stream_mismatch(self, serving: object) -> dict[str, float]:
        """The ``STREAM_SETTINGS`` it was trained under that differ from those of ``serving`` (any object with
        them: ``Settings``, ``UpdaterConfig``), name -> the trained value: they would feed it
        long-term averages
        and re-buy weights of another scale than it learned; {} when they agree or were not recorded."""
        return {
            name: trained
            for name in STREAM_SETTINGS
            if (trained := getattr(self, name)) is not None and trained != getattr(serving, name)
        }


class InterestModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        # item tower: also works for unseen items
        self.item_proj = nn.Linear(config.embed_dim, config.dim)
        self.text_bias = nn.Linear(config.embed_dim, 1)
        nn.init.zeros_(self.text_bias.weight)
        nn.init.zeros_(self.text_bias.bias)
        # Row 0: every item without one (zero, never trained); rows 1..known_items: [E_i, B_i], from zero.
        self.item_id = nn.Embedding(config.known_items + 1, config.dim + 1, padding_idx=0)
        nn.init.zeros_(self.item_id.weight)
        self.item_ids: list[str] = []  # the items of rows 1..known_items
        self._row: dict[str, int] = {}
        self.log_a_rebuy = nn.Parameter(torch.zeros(()))
        self.c_rebuy = nn.Parameter(torch.zeros(()))
        self.d_rebuy = nn.Parameter(torch.zeros(()))
        if config.trend_half_life_s > 0:
            self.trend_weight = nn.Parameter(torch.zeros(()))
        self.gru = nn.GRUCell(config.dim + N_EVENT_TYPES, config.hidden)
        self.out = nn.Linear(config.hidden, config.dim)
        # Fusion: q = a_s * short + a_l * c * long, with confidence c = W / (W + w0) from the
        # decayed weight W.
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

    def learn_items(self, item_ids: list[str]) -> None:
        """Give ``item_ids`` (``known_items`` of them, in row order) their learned embedding rows."""
        if len(item_ids) != self.config.known_items:
            raise ValueError(f"{len(item_ids)} item ids for {self.config.known_items} learned rows")
        self.item_ids = list(item_ids)
        self._row = {item: n + 1 for n, item in enumerate(item_ids)}

    def rows(self, item_ids: list[str]) -> torch.Tensor:
        """int64 [N]: each item's learned row, 0 for an item seen in no training."""
        return torch.tensor([self._row.get(i, 0) for i in item_ids], dtype=torch.long)

    def item_space(
        self, embeddings: torch.Tensor, rows: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encoder vectors [N, embed_dim] and learned rows [N] (None: none) -> [N, dim + 1]: each item's
        vector v_i and, last, its bias b_i; ``scoring_query`` gives the user side of the same product."""
        x = torch.cat([self.item_proj(embeddings), self.text_bias(embeddings)], -1)
        return x if rows is None else x + self.item_id(rows)

    def scoring_query(self, q: torch.Tensor) -> torch.Tensor:
        """User vectors [B, dim] -> [B, dim + 1] (a 1 for the bias): q . v_i + b_i =
        scoring_query(q) . item_space_i."""
        return torch.cat([q, q.new_ones(q.shape[0], 1)], -1)

    def rebuy(self, weight: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """The re-buy term r(W, n) of the module docstring for the user's decayed history weights W and touch
        counts n (the same shape, any; r = 0 where both are 0)."""
        return (
            self.log_a_rebuy.exp() * torch.log1p(weight)
            + self.c_rebuy * (weight > 0)
            + self.d_rebuy * torch.log1p(count)
        )

    def feature_weights(self) -> list[nn.Parameter]:
        """The scalar weights of the score's feature terms (re-buy, trend): ``models.train`` lets
        them learn faster."""
        return [
            self.log_a_rebuy,
            self.c_rebuy,
            self.d_rebuy,
            *([self.trend_weight] if self.config.trend_half_life_s > 0 else []),
        ]

    def trend(self, feature: torch.Tensor) -> torch.Tensor:
        """The trend term g f_i (module docstring) for trend features ``feature`` (any shape,
        ``models.trending``)."""
        return self.trend_weight * feature

    def step(
        self, hidden: torch.Tensor, item_vec: torch.Tensor, event_type: torch.Tensor
    ) -> torch.Tensor:
        """One GRU step for a batch: hidden [B, H], the items' vectors v_i [B, dim] (``item_space`` without
        the bias), event_type [B] (0 click, 1 purchase)."""
        return self.gru(self.step_input(item_vec, event_type), hidden)

    @staticmethod
    def step_input(item_vec: torch.Tensor, event_type: torch.Tensor) -> torch.Tensor:
        """The GRU's input [N, dim + 2] for events' item vectors [N, dim] and types [N]: ``step`` is
        ``gru(step_input(...), hidden)``, and the stream computes the inputs of a micro-batch at once."""
        return torch.cat(
            [item_vec, nn.functional.one_hot(event_type, N_EVENT_TYPES).to(item_vec.dtype)], -1
        )

    def query_parts(
        self, hidden: torch.Tensor, long_term: torch.Tensor, lt_weight: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """The fused user vector's named terms, each [B, dim], from hidden [B, H], long-term average
        [B, embed_dim] and its weight [B]: ``short`` (the GRU's) and ``long`` (the long-term average's).
        ``query`` is their sum, so an item's score splits into the same terms (``models.reasons``)."""
        confidence = (lt_weight / (lt_weight + self.log_w0.exp())).unsqueeze(-1)
        short = self.out(hidden)
        # no history: no long-term term
        long = self.item_proj(long_term) * (lt_weight > 0).unsqueeze(-1)
        return {
            "short": self.log_a_short.exp() * short,
            "long": self.log_a_long.exp() * confidence * long,
        }

    @staticmethod
    def fuse(parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The user vector [B, dim]: the sum of ``query_parts``."""
        return functools.reduce(torch.add, parts.values())

    def query(
        self, hidden: torch.Tensor, long_term: torch.Tensor, lt_weight: torch.Tensor
    ) -> torch.Tensor:
        """Fused user vector [B, dim] from hidden [B, H], long-term average [B, embed_dim] and its
        weight [B]."""
        return self.fuse(self.query_parts(hidden, long_term, lt_weight))

    def save(self, path: Path) -> str:
        """Write a versioned checkpoint; the version is a timestamp plus a hash of the weights."""
        buf = io.BytesIO()
        torch.save(self.state_dict(), buf)
        digest = hashlib.sha256(buf.getvalue()).hexdigest()[:8]
        self.version = f"gru-{time.strftime('%Y%m%d%H%M%S')}-{digest}"
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "config": asdict(self.config),
                "state": self.state_dict(),
                "version": self.version,
                "item_ids": self.item_ids,
            },
            path,
        )
        return self.version

    @classmethod
    def load(cls, path: Path) -> "InterestModel":
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = cls(ModelConfig(**ckpt["config"]))
        # saved before the count term: d = 0 scores as it did
        ckpt["state"].setdefault("d_rebuy", torch.zeros(()))
        try:
            model.load_state_dict(ckpt["state"])
        except RuntimeError as exc:
            raise InterestStreamError(
                f"checkpoint {path} is not of this model's layout (an older version? train again): {exc}"
            ) from None
        model.learn_items(ckpt.get("item_ids", []))
        if not all(torch.isfinite(p).all() for p in model.parameters()):
            raise InterestStreamError(
                f"checkpoint {path} has non-finite weights: every state and score would be NaN"
            )
        model.version = ckpt["version"]
        return model.eval()
