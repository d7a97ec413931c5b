"""Kernel widths of OPES and metadynamics: the CV's fluctuation in an unbiased probe
(:func:`estimate_sigma`), widened where a bias that narrow would curve faster than the timestep
integrates (:func:`integrable_sigma`); :func:`probe_sigma` does both, :func:`run_sigma` on the
frames of a finished unbiased run."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from .cvs import CV
from .fes import kT_kjmol


def estimate_sigma(values: np.ndarray, periods: list[float]) -> list[float]:
    """Kernel widths from CV fluctuations (OPES's advice: the standard deviation in a basin);
    circular standard deviation for periodic CVs."""
    out = []
    for k, p in enumerate(periods):
        x = values[:, k]
        if p > 0:
            angle = x * 2 * np.pi / p
            r = np.hypot(np.cos(angle).mean(), np.sin(angle).mean())
            std = np.sqrt(-2 * np.log(max(r, 1e-12))) * p / (2 * np.pi)
        else:
            std = x.std()
        out.append(float(max(std, 1e-6)))
    return out


#: the largest ω·Δt of the bias (see :func:`bias_omega_per_fs`, on frames of the starting basin)
#: for which kernel widths are kept. Alanine dipeptide, OPES on Deep-TICA CVs at 2 fs: runs at
#: 0.42-0.50 reweighted to ΔF 2.8-12.5 kJ/mol off (the integrator's error, not the CV: the same CV
#: at 1 fs, or with 3x wider kernels, gave ΔF within 0.7 kJ/mol), and learned CVs steepen 1.6-2.5x
#: between the basins, where a probe of the starting basin does not look.
MAX_BIAS_OMEGA_DT = 0.15


def bias_omega_per_fs(cv: CV, positions: np.ndarray, masses: np.ndarray, sigma: list[float],
                      temperature_K: float, cells: np.ndarray | None = None) -> float:
    """Angular frequency (1/fs) of the stiffest motion a kernel bias of widths ``sigma`` along
    ``cv`` imposes on frames ``positions`` (n, N, 3) Å, 99th percentile over the frames:
    ω² = k_BT Σ_k Σ_i |∂s_k/∂x_i|² / (σ_k² m_i), since an OPES (or well-tempered) bias curves
    by about k_BT/σ² along the CV where its kernel estimate is resolved. ``masses`` in amu;
    ``cells`` (n, 3, 3) Å for a periodic system."""
    x = torch.as_tensor(np.asarray(positions), dtype=torch.float64).requires_grad_(True)
    inv_mass = torch.as_tensor(np.where(masses > 0, 1.0 / np.maximum(masses, 1e-12), 0.0), dtype=torch.float64)
    s = cv(x, None if cells is None else torch.as_tensor(np.asarray(cells), dtype=torch.float64))
    total = torch.zeros(len(x), dtype=torch.float64)
    for k in range(s.shape[1]):
        (grad,) = torch.autograd.grad(s[:, k].sum(), x, retain_graph=k + 1 < s.shape[1])
        total += (grad.pow(2).sum(-1) * inv_mass).sum(-1) / sigma[k] ** 2
    omega2 = kT_kjmol(temperature_K) * float(np.percentile(total.detach().numpy(), 99)) * 1e26  # kJ/mol/(Å² amu) -> 1/s²
    return float(np.sqrt(omega2)) * 1e-15


def integrable_sigma(cv: CV, positions: np.ndarray, masses: np.ndarray, sigma: list[float], temperature_K: float,
                     timestep_fs: float, cells: np.ndarray | None = None) -> list[float]:
    """``sigma`` widened by one common factor until the bias's ω·Δt on ``positions`` (in
    ``cells``) is at most :data:`MAX_BIAS_OMEGA_DT` (unchanged if it already is); warns when it
    widens."""
    omega_dt = bias_omega_per_fs(cv, positions, masses, sigma, temperature_K, cells) * timestep_fs
    if omega_dt <= MAX_BIAS_OMEGA_DT:
        return list(sigma)
    wider = [float(v * omega_dt / MAX_BIAS_OMEGA_DT) for v in sigma]
    warnings.warn(f"kernel widths {[round(v, 4) for v in sigma]} -> {[round(v, 4) for v in wider]}: with the probe's "
                  f"widths the bias along {cv.names} would curve faster than a {timestep_fs:g} fs step integrates "
                  f"(ω·Δt = {omega_dt:.2f} > {MAX_BIAS_OMEGA_DT}); give --sigma to override", stacklevel=2)
    return wider


def probe_sigma(cv: CV, values: np.ndarray, positions: np.ndarray, masses: np.ndarray, temperature_K: float,
                timestep_fs: float, cells: np.ndarray | None = None) -> list[float]:
    """The kernel widths ``sample`` chooses from an unbiased probe (CV ``values`` (n, d) at
    ``positions`` (n, N, 3) Å, in ``cells`` (n, 3, 3) Å if periodic): the CV's fluctuation
    (:func:`estimate_sigma`), widened by :func:`integrable_sigma` where that bias would be too
    stiff for the timestep."""
    return integrable_sigma(cv, positions, masses, estimate_sigma(values, cv.periods), temperature_K, timestep_fs,
                            cells)


def run_sigma(cv_spec: str, run_dir: str | Path, temperature_K: float, timestep_fs: float) -> tuple[list[float],
                                                                                                  list[float]]:
    """The kernel widths :func:`probe_sigma` gives for the CV ``cv_spec`` (a specification or an
    exported-CV folder) over the frames of the unbiased run in ``run_dir`` (its first replica's
    trajectory), for ``timestep_fs`` steps, and the CV's plain fluctuation there (before any
    widening)."""
    from ..md.reporters import read_h5md
    from .spec import parse_cv

    frames = read_h5md(Path(run_dir) / "traj_000.h5md")
    cv = parse_cv(str(cv_spec), frames[0].numbers)
    positions = np.stack([f.positions for f in frames])
    cells = np.stack([f.cell.array for f in frames]) if frames[0].pbc.any() else None
    with torch.no_grad():
        values = cv(torch.as_tensor(positions), None if cells is None else torch.as_tensor(cells)).numpy()
    return (probe_sigma(cv, values, positions, frames[0].get_masses(), temperature_K, timestep_fs, cells),
            estimate_sigma(values, cv.periods))
