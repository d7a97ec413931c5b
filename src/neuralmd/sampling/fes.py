"""Free energies from (biased) samples: reweighting, FES on one or two CVs, basin free-energy
differences and convergence curves ΔF(t) (their errors and the verdict whether they converged:
:mod:`neuralmd.sampling.convergence`).

Weights: for OPES and for metadynamics in its quasi-stationary regime, a frame sampled with
bias V has weight exp(βV) (``weights_from_bias``); unbiased frames have weight 1. Free energies
are returned in kJ/mol (the enhanced-sampling convention) and converted with :func:`to_kT`.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..units import EV_IN_KJMOL, kT_eV


def kT_kjmol(temperature_K: float) -> float:
    """k_B T in kJ/mol."""
    return kT_eV(temperature_K) * EV_IN_KJMOL


def to_kT(value_kjmol: float, temperature_K: float) -> float:
    return value_kjmol / kT_kjmol(temperature_K)


def weights_from_bias(bias_eV: np.ndarray, temperature_K: float) -> np.ndarray:
    """exp(βV) for bias energies V (eV), scaled so the largest weight is 1."""
    b = np.asarray(bias_eV, dtype=float) / kT_eV(temperature_K)
    return np.exp(b - b.max())


def in_region(values: np.ndarray, region: Sequence[tuple[float, float]]) -> np.ndarray:
    values = np.atleast_2d(np.asarray(values, dtype=float).T).T
    mask = np.ones(len(values), dtype=bool)
    for k, (lo, hi) in enumerate(region):
        mask &= (values[:, k] >= lo) & (values[:, k] < hi)
    return mask


def delta_f(values: np.ndarray, weights: np.ndarray, region_a, region_b, temperature_K: float) -> float:
    """F(B) - F(A) in kJ/mol from weighted samples; regions are lists of (low, high) per CV."""
    w = np.asarray(weights, dtype=float)
    pa, pb = w[in_region(values, region_a)].sum(), w[in_region(values, region_b)].sum()
    if pa <= 0 or pb <= 0:
        return float("nan")
    return float(-kT_kjmol(temperature_K) * np.log(pb / pa))


def convergence(values, weights, region_a, region_b, temperature_K: float, points: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """ΔF (kJ/mol) from the first fraction of the samples, at ``points`` fractions in (0, 1]
    (fewer, each at least one sample, when there are fewer samples than points)."""
    n = len(values)
    ends = np.unique(np.clip(np.linspace(n / points, n, points).astype(int), 1, n))
    return ends, np.array([delta_f(values[:e], weights[:e], region_a, region_b, temperature_K) for e in ends])


def fes(values: np.ndarray, weights: np.ndarray, bins: int | Sequence[int], ranges, temperature_K: float):
    """Free-energy surface on a 1D or 2D grid: (bin centres per CV, F in kJ/mol with min 0,
    NaN where no sample fell)."""
    values = np.atleast_2d(np.asarray(values, dtype=float).T).T
    hist, edges = np.histogramdd(values, bins=bins, range=ranges, weights=weights)
    with np.errstate(divide="ignore"):
        f = -kT_kjmol(temperature_K) * np.log(hist / hist.sum())
    f[~np.isfinite(f)] = np.nan
    f -= np.nanmin(f)
    return [0.5 * (e[1:] + e[:-1]) for e in edges], f


def parse_region(text: str, names: Sequence[str]) -> list[tuple[float, float]]:
    """A basin from text such as ``phi>0``, ``-2<phi<0`` or ``phi<0&psi>1`` (CV names from
    ``names``): one (low, high) per CV, unbounded where not mentioned."""
    import re

    from ..errors import InputError

    region = [(-np.inf, np.inf)] * len(names)
    number = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
    for part in text.replace(" ", "").split("&"):
        m = re.fullmatch(rf"(?:({number})<)?([A-Za-z_][\w-]*)(?:([<>])({number}))?", part)
        if not m or m.group(2) not in names or (m.group(1) is None and m.group(3) is None):
            raise InputError(f"basin {text!r}: cannot read {part!r}; expected e.g. 'phi>0', '-2<phi<0' with a CV "
                             f"among {list(names)}")
        k = names.index(m.group(2))
        lo, hi = region[k]
        if m.group(1) is not None:
            lo = float(m.group(1))
        if m.group(3) == "<":
            hi = float(m.group(4))
        elif m.group(3) == ">":
            lo = float(m.group(4))
        region[k] = (lo, hi)
    return region


def metad_ct(bias, steps: np.ndarray, walkers: int, temperature_K: float, points: int = 80) -> np.ndarray:
    """c(t) (eV) of well-tempered metadynamics (Tiwary & Parrinello 2015) at each of ``steps``,
    for the bias a frame recorded at that step felt: the kernels deposited *before* it (the
    bias's own kernels, never merged, stored in deposition order: ``walkers`` kernels after every
    ``bias.pace``-th step, once that step is recorded), on a grid over the CV (one period where
    periodic, else the span of the kernel centres ± 3 widths):

        c(t) = k_BT log[ ∫ exp(γ/(γ-1) βV(s,t)) ds / ∫ exp(βV(s,t)/(γ-1)) ds ]

    so that exp(β(V(s,t) - c(t))) reweights every frame onto the unbiased ensemble."""
    import torch

    beta = 1.0 / kT_eV(temperature_K)
    gamma = bias.biasfactor
    axes = []
    for k, period in enumerate(bias.periods.tolist()):
        if period > 0:
            axes.append(torch.linspace(-period / 2, period / 2, points, dtype=torch.float64)[:-1])
        else:
            c, w = bias.centres[:, k], bias.widths[:, k]
            axes.append(torch.linspace(float((c - 3 * w).min()), float((c + 3 * w).max()), points, dtype=torch.float64))
    grid = torch.stack([m.reshape(-1) for m in torch.meshgrid(*axes, indexing="ij")], dim=-1)
    v = torch.zeros(len(grid), dtype=torch.float64)
    out, added = np.zeros(len(steps)), 0
    order = np.argsort(steps, kind="stable")
    for i in order:
        n = min(walkers * max(0, (int(steps[i]) - 1) // bias.pace), len(bias.heights))
        if n > added:
            v += bias.kernels(grid, bias.centres[added:n], bias.widths[added:n], bias.heights[added:n])
            added = n
        bv = beta * v
        num = torch.logsumexp(gamma / (gamma - 1) * bv, 0)
        den = torch.logsumexp(bv / (gamma - 1), 0)
        out[i] = float(num - den) / beta
    return out
