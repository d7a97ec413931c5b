"""Thread and allocator settings. Two busy torch processes on 2 threads each slow each other
down up to 50x, so every entry point sets its thread count deliberately."""

from __future__ import annotations

import ctypes
import os

import torch

from .errors import InputError


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (None: all cores, at most 8) and one inter-op thread.
    Returns the count used. Also keeps freed memory in the process (see :func:`keep_freed_memory`)."""
    if threads is not None and threads < 1:
        raise InputError(f"threads: {threads}; expected >= 1 (or 0 for all cores)")
    keep_freed_memory()
    n = threads or min(os.cpu_count() or 1, 8)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # can be set only once per process, before any parallel work
        pass
    return n


def keep_freed_memory() -> None:
    """Let glibc's malloc reuse freed blocks of up to 32 MiB instead of unmapping them.

    By default glibc serves blocks above a dynamic threshold (128 KiB up to 32 MiB) with fresh
    ``mmap`` pages and returns them on free, so a training step of a small molecule page-faults
    on its edge tensors ((edges, 3F) floats, ~0.5 MB each): a step of the 2-layer PaiNN on rMD17
    ethanol (batch 8, 2 threads) took 14.3 ms instead of 12.4. No effect (and no error) on a C
    library other than glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
        libc.mallopt(m_mmap_threshold, 32 << 20)
        libc.mallopt(m_trim_threshold, 256 << 20)
    except (OSError, AttributeError):
        pass
