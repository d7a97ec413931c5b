"""Observables of condensed-phase runs, read from a run's H5MD trajectory (``traj_XXX.pdb`` +
``traj_XXX.h5md``) with MDAnalysis: partial radial distribution functions (``InterRDF``), density
and the self-diffusion coefficient from the mean-squared displacement (``EinsteinMSD``) with the
finite-size correction of Yeh & Hummer (J. Phys. Chem. B 108, 15873 (2004)); errors from blocks
(:mod:`neuralmd.analysis.blocking`). :func:`soft_rdf` is the differentiable (torch) RDF that
fitting a potential to a measured RDF needs, checked against the histogram one.

Units: Å, ps, g/cm³, diffusion in 10⁻⁹ m²/s.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..geometry import minimum_image
from ..units import AMU_PER_A3_IN_G_PER_CM3
from .blocking import mean_error

#: Yeh & Hummer's constant for a cubic box: D_∞ = D_PBC + ξ k_BT / (6πηL)
YEH_HUMMER_XI = 2.837297
#: the RDF's error comes from this many contiguous blocks of frames
RDF_BLOCKS = 5


def universe(run_dir: str | Path, replica: int = 0, skip_ps: float = 0.0):
    """The MDAnalysis Universe of one replica's trajectory, and the index of its first frame at
    or after ``skip_ps``. InputError naming the file when it is missing or holds no periodic box."""
    import MDAnalysis as mda

    run_dir = Path(run_dir)
    pdb, h5md = run_dir / f"traj_{replica:03d}.pdb", run_dir / f"traj_{replica:03d}.h5md"
    for path in (pdb, h5md):
        if not path.is_file():
            raise InputError(f"{path}: not found (a neuralmd md run directory holds traj_XXX.pdb and .h5md)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Reader has no dt information": frames carry their own times
        u = mda.Universe(str(pdb), str(h5md))
    if u.dimensions is None or not np.all(u.dimensions[:3] > 0):
        raise InputError(f"{h5md}: no periodic box; observables of liquids and solids need one")
    times = np.array([ts.time for ts in u.trajectory])
    start = int(np.searchsorted(times, skip_ps - 1e-9))
    if len(times) - start < 2 * RDF_BLOCKS:
        raise InputError(f"{h5md}: {len(times) - start} frames after {skip_ps:g} ps; need at least {2 * RDF_BLOCKS}")
    return u, start


def _group(u, element: str, where: str):
    group = u.select_atoms(f"element {element}")
    if not len(group):
        raise InputError(f"{where}: no atoms of element {element!r} (the system has "
                         f"{sorted(set(u.atoms.elements))})")
    return group


def rdf(u, pair: str, start: int = 0, r_max: float = 6.0, bins: int = 120) -> dict:
    """The partial RDF g_AB(r) of ``pair`` ("O-H") over frames ``start:``: bin centres (Å),
    g and its standard error over :data:`RDF_BLOCKS` blocks of frames, and the first peak
    (height and position). An atom is never its own neighbour."""
    from MDAnalysis.analysis.rdf import InterRDF

    a, b = (pair.split("-") + [""])[:2]
    if not a or not b:
        raise InputError(f"rdf: {pair!r}; expected a pair of elements such as O-H")
    ga, gb = _group(u, a, f"rdf {pair}"), _group(u, b, f"rdf {pair}")
    half = 0.5 * float(min(u.dimensions[:3]))
    if not 0 < r_max <= half:
        raise InputError(f"r_max: {r_max} Å; expected > 0 and at most half the box ({half:.2f} Å)")
    n = len(u.trajectory)
    edges = np.linspace(start, n, RDF_BLOCKS + 1).astype(int)

    def run(first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        calc = InterRDF(ga, gb, nbins=bins, range=(0.0, r_max), exclusion_block=(1, 1) if a == b else None)
        calc.run(start=first, stop=stop)
        return calc.results.bins, calc.results.rdf

    r, g = run(start, n)
    parts = np.array([run(lo, hi)[1] for lo, hi in zip(edges[:-1], edges[1:])])
    err = parts.std(axis=0, ddof=1) / math.sqrt(RDF_BLOCKS)
    peak = int(np.argmax(g))
    return {"r_A": r.tolist(), "g": g.tolist(), "g_err": err.tolist(),
            "first_peak": {"height": float(g[peak]), "position_A": float(r[peak])}}


def density(u, start: int = 0) -> dict:
    """Mass density (g/cm³) per frame: its mean with the block error, and the series."""
    mass = float(u.atoms.masses.sum())
    values = np.array([mass / ts.volume * AMU_PER_A3_IN_G_PER_CM3 for ts in u.trajectory[start:]])
    mean, err, independent = mean_error(values)
    return {"mean": mean, "err": err, "error_from_independent_blocks": independent}


def msd(u, element: str, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Lag times (ps) and the mean-squared displacement (Å²) of ``element``'s atoms over frames
    ``start:`` (unwrapped coordinates, as neuralmd writes them), averaged over time origins."""
    from MDAnalysis.analysis.msd import EinsteinMSD

    _group(u, element, f"msd {element}")
    calc = EinsteinMSD(u, select=f"element {element}", msd_type="xyz", fft=False)
    calc.run(start=start)
    times = np.array([ts.time for ts in u.trajectory[start:]])
    return times - times[0], np.asarray(calc.results.timeseries)


def diffusion(lags_ps: np.ndarray, msd_A2: np.ndarray, temperature_K: float, box_A: float,
              viscosity_mpa_s: float | None = None, window: tuple[float, float] = (0.2, 0.8)) -> dict:
    """Self-diffusion coefficient (10⁻⁹ m²/s) from the slope of MSD = 6Dt over the ``window``
    fractions of the lag range, and with ``viscosity_mpa_s`` its Yeh-Hummer value for an
    infinite system, D + ξ k_BT/(6πηL) (L the cubic box edge)."""
    lo, hi = (int(f * (len(lags_ps) - 1)) for f in window)
    if hi - lo < 2:
        raise InputError(f"diffusion: {len(lags_ps)} frames; need more to fit the MSD's slope")
    slope = np.polyfit(lags_ps[lo:hi + 1], msd_A2[lo:hi + 1], 1)[0]  # Å²/ps
    d_pbc = slope / 6 * 10.0  # 1 Å²/ps = 1e-8 m²/s = 10 × 1e-9 m²/s
    out = {"raw": float(d_pbc), "fit_ps": [float(lags_ps[lo]), float(lags_ps[hi])]}
    if viscosity_mpa_s is not None:
        from scipy import constants

        correction = YEH_HUMMER_XI * constants.k * temperature_K / (6 * math.pi * viscosity_mpa_s * 1e-3 * box_A * 1e-10)
        out.update({"corrected": float(d_pbc + correction * 1e9), "viscosity_mpa_s": viscosity_mpa_s})
    return out


def soft_rdf_frames(positions: torch.Tensor, cell: torch.Tensor, index_a: torch.Tensor, index_b: torch.Tensor,
                    r: torch.Tensor, sigma_A: float = 0.05) -> torch.Tensor:
    """A differentiable partial RDF g_AB (T, R) of each frame of ``positions`` (T, N, 3) Å in
    its orthorhombic or triclinic ``cell`` (T, 3, 3), at radii ``r`` (R,) Å: each pair distance
    (minimum image; ``r`` must stay below half the box) contributes a Gaussian of width
    ``sigma_A`` instead of a histogram count, normalised as InterRDF normalises:
    g(r) = V/(N_A N_B) · n(r) / (4πr²), with V the frame's own volume (NPT frames differ)."""
    vec = minimum_image(positions[:, index_a].unsqueeze(2) - positions[:, index_b].unsqueeze(1), cell)  # (T, A, B, 3)
    dist = torch.sqrt(vec.pow(2).sum(-1) + 1e-12)  # (T, A, B)
    same = index_a.unsqueeze(1) == index_b.unsqueeze(0)
    weights = (~same).to(dist.dtype)
    kernel = torch.exp(-0.5 * ((r.view(1, 1, 1, -1) - dist.unsqueeze(-1)) / sigma_A) ** 2) / (
        math.sqrt(2 * math.pi) * sigma_A)
    counts = (kernel * weights.unsqueeze(0).unsqueeze(-1)).sum((1, 2))  # (T, R): pairs per Å at r
    volume = torch.linalg.det(cell).abs().unsqueeze(-1)
    n_pairs = float(weights.sum())
    return volume * counts / (n_pairs * 4 * math.pi * r.pow(2).clamp(min=1e-12))


def soft_rdf(positions: torch.Tensor, cell: torch.Tensor, index_a: torch.Tensor, index_b: torch.Tensor,
             r: torch.Tensor, sigma_A: float = 0.05) -> torch.Tensor:
    """The frames' mean of :func:`soft_rdf_frames`: g_AB (R,) at radii ``r`` (Å)."""
    return soft_rdf_frames(positions, cell, index_a, index_b, r, sigma_A).mean(0)
