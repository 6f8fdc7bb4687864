"""A tiny random BERT saved like a hub model: a stand-in encoder for tests and benchmarks, where
MiniLM's cost (or its quality) is not what is being measured."""

from __future__ import annotations

import re
from pathlib import Path


def build_tiny_bert(
    path: Path, corpus: list[str], hidden: int = 32, layers: int = 2, seed: int = 0
) -> Path:
    """A random ``layers``-layer, ``hidden``-wide BertModel (weights drawn with ``seed``) with a word-level
    vocabulary of ``corpus``, saved like a hub model."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    words = sorted({w for text in corpus for w in re.findall(r"\w+", text.lower())})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    BertTokenizer(vocab=vocab).save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
    )
    torch.manual_seed(seed)
    BertModel(config).eval().save_pretrained(path)
    return path
