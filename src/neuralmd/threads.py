"""Thread settings. Two busy torch processes on 2 threads each slow each other down up to 50x,
so every entry point sets its thread count deliberately."""

from __future__ import annotations

import os

import torch


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads (None: all cores, at most 8) and one inter-op thread.
    Returns the count used."""
    n = threads or min(os.cpu_count() or 1, 8)
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # can be set only once per process, before any parallel work
        pass
    return n
