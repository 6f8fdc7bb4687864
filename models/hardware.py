"""What the machine can do fast: asked by the scorer and the encoder, without importing either."""

from __future__ import annotations

import ctypes
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


# mallopt(3) parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for the next allocation instead of giving it back to the kernel
    (``mallopt``: no mmap'd blocks, trim the heap only past 1 GiB free). Training and the evaluation replay
    allocate and free [events, catalogue] tensors (tens of MB) every mini-batch; by default glibc maps each
    afresh and the kernel zero-fills its every page on first touch: grocery training with re-buys spent 414 of
    its 993 CPU seconds in the kernel (230 million page faults); 12 of its mini-batches take 2.8 s with this
    instead of 5.0 s (and the whole run, with validation since made cheaper too, 7 kernel seconds of 265).
    The PyTorch CPU tuning guide's advice, another allocator (jemalloc, tcmalloc), keeps memory the same way.
    For processes that do only this: the memory stays with the process until it exits. False where the C
    library is not glibc (nothing changed)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):
        return False
