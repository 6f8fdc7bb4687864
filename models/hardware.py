"""What the machine can do fast: asked by the scorer and the encoder, without importing either."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch


@cache
def cpu_has_bf16() -> bool:
    """bf16 matmuls are fast only with AVX512-BF16 or AMX; elsewhere they are emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_device(requested: str = "auto") -> torch.device:
    """``auto``: the GPU when torch sees one, else the CPU; anything else as torch names it (``cuda:1``)."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)
