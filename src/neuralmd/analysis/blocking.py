"""Block averaging of correlated time series: the error of a mean with the block length chosen
from the data (the shortest L with L³ > 2n(σ_L/σ_1)⁴, Wolff 2004; Lee et al., Phys. Rev. E 83,
066706 (2011), pyblock's "optimal block"), used for ΔF (``sampling.convergence``) and for the
observables of condensed-phase runs."""

from __future__ import annotations

import numpy as np

#: the least number of blocks an error is computed from
MIN_BLOCKS = 4


def optimal_block(curve: list[list[float]], frames: int) -> int | None:
    """Index into ``curve`` ([frames per block, blocks, error] rows, block lengths 1, 2, 4, ...)
    of the shortest block length L with L³ > 2n(σ_L/σ_1)⁴ (n ``frames``), None if none."""
    if not curve or not np.isfinite(curve[0][2]) or curve[0][2] <= 0:
        return None
    for k, (length, _, err) in enumerate(curve):
        if np.isfinite(err) and length**3 > 2 * frames * (err / curve[0][2]) ** 4:
            return k
    return None


def mean_error(x: np.ndarray) -> tuple[float, float, bool]:
    """Mean of the series ``x`` (in time order), its standard error from blocks of the optimal
    length, and whether that length exists (False: the error at the longest blocks, a lower
    bound: the series is shorter than its correlation needs)."""
    x = np.asarray(x, dtype=float)
    curve, length = [], 1
    while len(x) // length >= MIN_BLOCKS:
        m = len(x) // length
        means = x[len(x) - m * length:].reshape(m, length).mean(axis=1)
        curve.append([length, m, float(means.std(ddof=1) / np.sqrt(m))])
        length *= 2
    if not curve:
        return float(x.mean()), float("nan"), False
    k = optimal_block(curve, len(x))
    return float(x.mean()), float(curve[k if k is not None else -1][2]), k is not None
