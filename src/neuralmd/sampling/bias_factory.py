"""Biases as the command line names them: :class:`BiasSettings` (stored as sample.toml), the
bias they make over a CV (:func:`make_bias`), and the grid ranges of OpenMM's tabulated bias."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .biases import OPES, Bias, OPESMultithermal, WellTemperedMetaD
from .cvs import CV, Stack
from .energy_cv import energy_cvs
from .fes import kT_kjmol
from .spec import ExportedCV

BIASES = ("none", "opes", "opes-explore", "metad", "opes-multithermal")


@dataclass
class BiasSettings:
    """What to bias and how (stored as sample.toml). Energies in kJ/mol, as PLUMED."""

    cv: str = ""
    bias: str = "opes"
    barrier_kjmol: float = 40.0
    biasfactor: float = 0.0  # 0: OPES's βΔE, or 10 for metadynamics
    sigma: list[float] = field(default_factory=list)  # empty: std of the CV in a short unbiased probe,
    # widened where the bias would be too stiff for the timestep (integrable_sigma)
    pace: int = 500
    height_kjmol: float = 1.2
    grid: bool = True
    grid_ranges: list[list[float]] = field(default_factory=list)
    probe_steps: int = 2000
    tmax_K: float = 0.0  # opes-multithermal: highest temperature (0: twice the run's)

    def validate(self) -> None:
        if self.bias not in BIASES:
            raise InputError(f"bias: {self.bias!r}; expected one of {', '.join(BIASES)}")
        if self.bias != "none" and not self.cv:
            raise InputError("bias: a biased run needs --cv")
        if self.bias != "none" and not 0 < self.barrier_kjmol < float("inf"):
            raise InputError(f"barrier_kjmol: {self.barrier_kjmol}; expected > 0")
        if self.biasfactor and not self.biasfactor > 1:
            raise InputError(f"biasfactor: {self.biasfactor}; expected > 1 (or 0 for the default)")
        if self.sigma and not all(0 < s < float("inf") for s in self.sigma):
            raise InputError(f"sigma: {self.sigma}; expected positive widths")
        if not 0 < self.height_kjmol < float("inf"):
            raise InputError(f"height_kjmol: {self.height_kjmol}; expected > 0")
        bad = [r for r in self.grid_ranges if len(r) != 2 or not r[0] < r[1]]
        if bad:
            raise InputError(f"grid_ranges: {bad[0]}; expected LOW:HIGH with LOW < HIGH for each non-periodic CV")
        if self.pace < 1 or self.probe_steps < 100:
            raise InputError("pace must be >= 1 and probe_steps >= 100")
        if not 0 <= self.tmax_K < float("inf"):
            raise InputError(f"tmax_K: {self.tmax_K}; expected > 0 (or 0 for twice the temperature)")


def check_bias_cv(settings: BiasSettings, cv: CV) -> None:
    """InputError unless the bias kind fits the CV: the multithermal bias takes the energy alone,
    kernel biases never take the energy (where their estimate falls off, their slope reverses the
    force field's forces)."""
    on_energy = bool(energy_cvs(cv))
    if settings.bias == "opes-multithermal" and not (on_energy and cv.dim == 1):
        raise InputError(f"bias opes-multithermal: biases the potential energy; use --cv energy (got {cv.names})")
    if on_energy and settings.bias not in ("none", "opes-multithermal"):
        raise InputError("CV 'energy': kernel biases on the energy can reverse the force field's forces where the "
                         "estimate falls off; use --bias opes-multithermal")


def make_bias(settings: BiasSettings, cv: CV, temperature_K: float, sigma: list[float]) -> Bias | None:
    """The bias named by ``settings`` over ``cv``."""
    if settings.bias == "none":
        return None
    check_bias_cv(settings, cv)
    if settings.bias == "opes-multithermal":
        return OPESMultithermal(cv, temperature_K, settings.tmax_K or 2 * temperature_K, sigma[0], settings.pace)
    if len(sigma) != cv.dim:
        raise InputError(f"sigma: {len(sigma)} widths for the {cv.dim} CV outputs {cv.names}")
    if settings.bias == "metad":
        return WellTemperedMetaD(cv, sigma, settings.height_kjmol, settings.pace, settings.biasfactor or 10.0,
                                 temperature_K)
    return OPES(cv, sigma, settings.barrier_kjmol, settings.pace, temperature_K, settings.biasfactor or None,
                mode="explore" if settings.bias == "opes-explore" else "metad")


def grid_ranges(settings: BiasSettings, cv: CV, probe: np.ndarray | None = None,
                temperature_K: float = 300.0) -> list[tuple[float, float] | None]:
    """Grid ranges for the non-periodic CV outputs: given ones, else a learned CV's training
    range widened by half its width on each side, else from ``probe`` (CV values of a short
    unbiased run, mean m, standard deviation σ): m ± (sqrt(2βB) + 3)σ, where a harmonic free
    energy along the CV has risen by the barrier B, plus a margin; for the multithermal bias
    (σ at least the bias's own energy spread, ``settings.sigma``), from m - 6σ to the mean
    energy at T_max (heat capacity σ²/k_BT²) + 6σ T_max/T."""
    if settings.grid_ranges:
        return [tuple(r) for r in settings.grid_ranges]
    out: list[tuple[float, float] | None] = []
    parts = list(cv.cvs) if isinstance(cv, Stack) else [cv]
    column = 0
    for part in parts:
        meta = part.meta if isinstance(part, ExportedCV) else {}
        for k, p in enumerate(part.periods):
            if p > 0:
                out.append(None)
            elif "cv_range" in meta:
                lo, hi = meta["cv_range"][k]
                out.append((lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)))
            elif probe is not None:
                x = probe[:, column]
                mean, std, kT = x.mean(), max(x.std(), 1e-6), kT_kjmol(temperature_K)
                if settings.bias == "opes-multithermal":
                    std = max(std, *settings.sigma)  # the energy's spread as the ladder takes it
                    ratio = (settings.tmax_K or 2 * temperature_K) / temperature_K
                    out.append((float(mean - 6 * std), float(mean + std**2 / kT * (ratio - 1) + 6 * std * ratio)))
                else:
                    half = (np.sqrt(2 * settings.barrier_kjmol / kT) + 3) * std
                    out.append((float(mean - half), float(mean + half)))
            else:
                raise InputError(f"CV {part.names[k]!r} is not periodic: give its grid range (--grid-range LOW:HIGH) "
                                 f"or use --no-grid")
            column += 1
    return out
