"""Biases: torch modules from a batch to a bias energy per replica (eV), through a CV.

Forces come from autograd like every other energy term, so a bias plugs into the native
engine (``Simulation(..., terms=[bias])``) and, through ``openmm.PythonForce``, into OpenMM.
Adaptive biases have ``update(state)``, called by the engine after every step, and
``get_state()/set_state()`` for restarts; all replicas of a batch are walkers that share one
bias. User-facing energies are in kJ/mol (as PLUMED), internal ones in eV.

- :class:`HarmonicRestraint`, :class:`Wall`
- :class:`WellTemperedMetaD`: Gaussians deposited every ``pace`` steps with heights decaying as
  exp(-V/(k_B ΔT)), ΔT = (γ - 1) T (Barducci, Bussi & Parrinello 2008).
- :class:`OPES`: on-the-fly probability enhanced sampling (Invernizzi & Parrinello 2020):
  ``mode="metad"`` (OPES_METAD: bias from a compressed, reweighted kernel density estimate of
  the unbiased distribution, with BARRIER and BIASFACTOR) or ``mode="explore"`` (OPES_EXPLORE:
  estimate of the sampled, well-tempered distribution).
- :class:`OPESMultithermal`: OPES_EXPANDED with a multithermal expansion on the potential
  energy (Invernizzi, Piaggi & Parrinello 2020): samples the ensembles of T..T_max at once,
  needing no CV of the process.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import InputError
from ..state import AtomsBatch
from ..units import KJMOL, kT_eV
from ..geometry import replica_cells, replica_positions
from .cvs import CV

class Bias(nn.Module):
    """Base class: ``forward(batch) -> (B,)`` bias energy in eV via ``self.cv``.

    Args:
        cv: the collective variable module.
        periods: period of each CV component (2π for torsions), or 0 where not periodic
            (default: the CV's own ``periods``).
    """

    def __init__(self, cv: CV, periods: Sequence[float] | None = None) -> None:
        super().__init__()
        self.cv = cv
        periods = cv.periods if periods is None else list(periods)
        if len(periods) != cv.dim:
            raise InputError(f"periods: {len(periods)} values for a {cv.dim}-dimensional CV")
        self.register_buffer("periods", torch.tensor(periods, dtype=torch.float64))

    def check_atoms(self, n_atoms: int) -> None:
        """InputError if the CV refers to atoms beyond ``n_atoms`` (the engine asks before a run)."""
        self.cv.check_atoms(n_atoms)

    def cv_values(self, batch: AtomsBatch) -> torch.Tensor:
        return self.cv(replica_positions(batch), replica_cells(batch)).to(torch.float64)

    def delta(self, s: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """s (B, d) - centres (K, d) -> (B, K, d), wrapped where the CV is periodic."""
        d = s.unsqueeze(1) - centres.unsqueeze(0)
        p = self.periods
        return torch.where(p > 0, d - p * torch.round(d / torch.where(p > 0, p, 1.0)), d)

    def energy_of_cv(self, s: torch.Tensor) -> torch.Tensor:
        """Bias (eV) at CV values s (M, d)."""
        raise NotImplementedError

    def forward(self, batch: AtomsBatch) -> torch.Tensor:
        return self.energy_of_cv(self.cv_values(batch))


class HarmonicRestraint(Bias):
    """0.5 κ |s - s0|² with κ in kJ/mol per CV unit²."""

    def __init__(self, cv: CV, centre: Sequence[float], kappa_kjmol: float, periods=None) -> None:
        super().__init__(cv, periods)
        self.register_buffer("centre", torch.tensor(list(centre), dtype=torch.float64))
        self.kappa = kappa_kjmol * KJMOL

    def energy_of_cv(self, s: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.kappa * self.delta(s, self.centre.unsqueeze(0)).squeeze(1).pow(2).sum(-1)


class Wall(Bias):
    """Flat-bottom wall on one CV component: κ (s - at)^2 beyond ``at`` (upper) or below it."""

    def __init__(self, cv: CV, at: float, kappa_kjmol: float, upper: bool = True, component: int = 0) -> None:
        super().__init__(cv)
        self.at, self.kappa, self.upper, self.component = at, kappa_kjmol * KJMOL, upper, component

    def energy_of_cv(self, s: torch.Tensor) -> torch.Tensor:
        x = s[:, self.component] - self.at
        return self.kappa * torch.clamp(x if self.upper else -x, min=0.0).pow(2)


class KernelBias(Bias):
    """Shared machinery: a growing list of Gaussian kernels (centres, widths, heights)."""

    def __init__(self, cv: CV, sigma: Sequence[float], pace: int, temperature_K: float, periods=None) -> None:
        super().__init__(cv, periods)
        if len(sigma) != cv.dim or min(sigma) <= 0:
            raise InputError(f"sigma: expected {cv.dim} positive widths, got {list(sigma)}")
        if pace < 1:
            raise InputError(f"pace: {pace}; expected >= 1 step")
        self.register_buffer("sigma0", torch.tensor(list(sigma), dtype=torch.float64))
        self.pace = pace
        self.kT = kT_eV(temperature_K)
        self.centres = torch.zeros(0, cv.dim, dtype=torch.float64)
        self.widths = torch.zeros(0, cv.dim, dtype=torch.float64)
        self.heights = torch.zeros(0, dtype=torch.float64)

    def kernels(self, s: torch.Tensor, centres: torch.Tensor, widths: torch.Tensor,
                heights: torch.Tensor) -> torch.Tensor:
        """Σ_k h_k exp(-|s - c_k|²/2σ_k²) over the given kernels at s (M, d) -> (M,)."""
        if heights.numel() == 0:
            return s.new_zeros(s.shape[0])
        z = self.delta(s, centres) / widths.unsqueeze(0)
        return (heights * torch.exp(-0.5 * z.pow(2).sum(-1))).sum(-1)

    def kernel_sum(self, s: torch.Tensor) -> torch.Tensor:
        """The sum of this bias's kernels at s (M, d) -> (M,)."""
        return self.kernels(s, self.centres, self.widths, self.heights)

    def energy_from_kernel_sum(self, kernel_sum: torch.Tensor) -> torch.Tensor:
        """Bias (eV) from the kernel sum at the same points."""
        raise NotImplementedError

    def energy_of_cv(self, s: torch.Tensor) -> torch.Tensor:
        return self.energy_from_kernel_sum(self.kernel_sum(s))

    def get_state(self) -> dict[str, torch.Tensor]:
        return {"centres": self.centres.clone(), "widths": self.widths.clone(), "heights": self.heights.clone()}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        self.centres, self.widths, self.heights = state["centres"], state["widths"], state["heights"]

    def save(self, path) -> None:
        """Write the bias state (restart file)."""
        from ..io_utils import atomic_save

        atomic_save({"class": type(self).__name__, "state": self.get_state()}, path)

    def load(self, path) -> None:
        payload = torch.load(path, weights_only=True)
        if payload.get("class") != type(self).__name__:
            raise InputError(f"{path}: holds a {payload.get('class')} state, not {type(self).__name__}")
        self.set_state(payload["state"])


class WellTemperedMetaD(KernelBias):
    """Well-tempered metadynamics.

    Args:
        height_kjmol: initial Gaussian height (kJ/mol); sigma: widths (CV units); pace: steps
        between depositions; biasfactor: γ = (T + ΔT)/T; temperature_K: system temperature.
    """

    def __init__(self, cv: CV, sigma: Sequence[float], height_kjmol: float, pace: int, biasfactor: float,
                 temperature_K: float, periods=None) -> None:
        super().__init__(cv, sigma, pace, temperature_K, periods)
        if biasfactor <= 1:
            raise InputError(f"biasfactor: {biasfactor}; expected > 1")
        self.height0 = height_kjmol * KJMOL
        self.biasfactor = biasfactor

    def energy_from_kernel_sum(self, kernel_sum: torch.Tensor) -> torch.Tensor:
        return kernel_sum

    @torch.no_grad()
    def update(self, state) -> None:
        if state.step % self.pace:
            return
        s = self.cv_values(state.batch)
        for row in s:  # walkers deposit one after another into the shared bias
            v = self.kernel_sum(row.unsqueeze(0))[0]
            h = self.height0 * torch.exp(-v / (self.kT * (self.biasfactor - 1)))
            self.centres = torch.cat([self.centres, row.unsqueeze(0)])
            self.widths = torch.cat([self.widths, self.sigma0.unsqueeze(0)])
            self.heights = torch.cat([self.heights, h.reshape(1)])

    def free_energy_of_cv(self, s: torch.Tensor) -> torch.Tensor:
        """Final-bias estimate F(s) = -γ/(γ-1) V(s) (eV, up to a constant)."""
        return -self.biasfactor / (self.biasfactor - 1) * self.kernel_sum(s)


class OPES(KernelBias):
    """OPES_METAD (``mode="metad"``) or OPES_EXPLORE (``mode="explore"``).

    Args:
        barrier_kjmol: ΔE, the barrier to overcome (sets ε and the default γ = ΔE/k_BT).
        sigma: initial kernel widths (CV units); shrunk as the effective sample size grows.
        pace: steps between depositions; biasfactor: γ (default βΔE for metad; required > 1).
        compression_threshold: merge a new kernel into the nearest one closer than this (in σ).
    """

    def __init__(self, cv: CV, sigma: Sequence[float], barrier_kjmol: float, pace: int, temperature_K: float,
                 biasfactor: float | None = None, mode: str = "metad", compression_threshold: float = 1.0,
                 periods=None) -> None:
        super().__init__(cv, sigma, pace, temperature_K, periods)
        if mode not in ("metad", "explore"):
            raise InputError(f"mode: {mode!r}; expected 'metad' or 'explore'")
        if not barrier_kjmol > 0:
            raise InputError(f"barrier_kjmol: {barrier_kjmol}; expected > 0")
        self.mode = mode
        beta_barrier = barrier_kjmol * KJMOL / self.kT
        self.biasfactor = beta_barrier if biasfactor is None else biasfactor
        if self.biasfactor <= 1:
            raise InputError(f"biasfactor: {self.biasfactor}; expected > 1")
        # prefactor of log(P/Z + eps): (1 - 1/γ) k_BT for METAD, (γ - 1) k_BT for EXPLORE
        self.prefactor = (1 - 1 / self.biasfactor if mode == "metad" else self.biasfactor - 1) * self.kT
        self.epsilon = math.exp(-barrier_kjmol * KJMOL / self.prefactor)
        self.threshold = compression_threshold
        self.sum_w = torch.zeros((), dtype=torch.float64)
        self.sum_w2 = torch.zeros((), dtype=torch.float64)
        self.zed = torch.ones((), dtype=torch.float64)
        #: kernel sum at every kernel centre, kept up to date as kernels are added or merged,
        #: so Z costs O(K) per deposition instead of O(K^2)
        self.p_centres = torch.zeros(0, dtype=torch.float64)

    def probability(self, s: torch.Tensor) -> torch.Tensor:
        """The (unnormalised by Z) kernel density estimate P(s) at s (M, d)."""
        if self.heights.numel() == 0:
            return s.new_zeros(s.shape[0])
        return self.kernel_sum(s) / self.sum_w

    def energy_from_kernel_sum(self, kernel_sum: torch.Tensor) -> torch.Tensor:
        if self.heights.numel() == 0:
            return torch.zeros_like(kernel_sum)
        return self.prefactor * torch.log(kernel_sum / self.sum_w / self.zed + self.epsilon)

    def _add_kernel(self, centre: torch.Tensor, width: torch.Tensor, height: torch.Tensor) -> None:
        if self.heights.numel():
            dist = (self.delta(centre.unsqueeze(0), self.centres)[0] / self.widths).pow(2).sum(-1).sqrt()
            k = int(dist.argmin())
            if float(dist[k]) < self.threshold:  # compression: merge into kernel k
                h1, h2 = self.heights[k].clone(), height
                c1, w1 = self.centres[k].clone(), self.widths[k].clone()
                c2 = c1 + self.delta(centre.unsqueeze(0), c1.unsqueeze(0))[0, 0]  # nearest image
                h = h1 + h2
                c = (h1 * c1 + h2 * c2) / h
                var = (h1 * (w1**2 + c1**2) + h2 * (width**2 + c2**2)) / h - c**2
                self.heights[k], self.centres[k], self.widths[k] = h, c, var.clamp(min=1e-30).sqrt()
                self.p_centres += (self.kernels(self.centres, self.centres[k : k + 1], self.widths[k : k + 1],
                                                self.heights[k : k + 1])
                                   - self.kernels(self.centres, c1.unsqueeze(0), w1.unsqueeze(0), h1.reshape(1)))
                self.p_centres[k] = self.kernel_sum(self.centres[k : k + 1])[0]
                return
        self.p_centres += self.kernels(self.centres, centre.unsqueeze(0), width.unsqueeze(0), height.reshape(1))
        self.centres = torch.cat([self.centres, centre.unsqueeze(0)])
        self.widths = torch.cat([self.widths, width.unsqueeze(0)])
        self.heights = torch.cat([self.heights, height.reshape(1)])
        self.p_centres = torch.cat([self.p_centres, self.kernel_sum(centre.unsqueeze(0))])

    @torch.no_grad()
    def update(self, state) -> None:
        if state.step % self.pace:
            return
        s = self.cv_values(state.batch)
        v = self.energy_of_cv(s)  # all walkers see the bias as it was before this deposition
        weights = torch.exp(v / self.kT) if self.mode == "metad" else torch.ones_like(v)
        for row, w in zip(s, weights):
            self.sum_w += w
            self.sum_w2 += w * w
            d = s.shape[1]
            n_eff = self.sum_w**2 / self.sum_w2
            width = self.sigma0 * (n_eff * (d + 2) / 4) ** (-1 / (4 + d))
            height = w * torch.prod(self.sigma0 / width)
            self._add_kernel(row, width, height)
        # Z: the mean of P over the kernel centres, a proxy for its integral over explored space
        self.zed = self.p_centres.mean() / self.sum_w

    def get_state(self) -> dict[str, torch.Tensor]:
        return {**super().get_state(), "sum_w": self.sum_w.clone(), "sum_w2": self.sum_w2.clone(),
                "zed": self.zed.clone(), "p_centres": self.p_centres.clone()}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        super().set_state(state)
        self.sum_w, self.sum_w2, self.zed = state["sum_w"], state["sum_w2"], state["zed"]
        self.p_centres = state["p_centres"] if "p_centres" in state else self.kernel_sum(self.centres)


class OPESMultithermal(Bias):
    """OPES_EXPANDED, multithermal: one run samples the canonical ensembles of N temperatures
    from T to ``tmax_K`` (geometric ladder) through a bias on the potential energy U.

    V(U) = -k_BT log[(1/N) Σ_i exp(-(β_i - β)U + Δf_i)], where Δf_i = -log⟨exp(-(β_i - β)U)⟩_T
    is estimated on the fly from every ``pace``-th configuration, reweighted by exp(βV) (as
    PLUMED's OPES_EXPANDED with ECV_MULTITHERMAL). Converged, the sampled distribution is the
    mean of the N canonical ones, and 1 + dV/dU = Σ_i w_i(U) β_i/β lies in [T/T_max, 1]: the
    bias only scales the force field's forces down, never reverses them.

    Args:
        cv: a one-output CV whose value is the potential energy in kJ/mol (the ``energy`` CV).
        temperature_K: the simulation (thermostat) temperature T.
        tmax_K: the highest temperature of the ladder (> T).
        energy_std_kjmol: the standard deviation of U at T (from a short unbiased probe); sets
            the number of temperatures so that neighbouring energy distributions overlap
            (spacing Δβ σ_U ≈ 1/2).
        pace: steps between updates of Δf.
    """

    def __init__(self, cv: CV, temperature_K: float, tmax_K: float, energy_std_kjmol: float, pace: int) -> None:
        super().__init__(cv)
        if cv.dim != 1:
            raise InputError(f"multithermal bias: the CV must be the energy alone, got {cv.names}")
        if not tmax_K > temperature_K:
            raise InputError(f"tmax_K: {tmax_K}; expected above the temperature {temperature_K} K")
        if not energy_std_kjmol > 0 or pace < 1:
            raise InputError("multithermal bias: energy_std_kjmol must be > 0 and pace >= 1")
        self.pace = pace
        self.kT = kT_eV(temperature_K)
        kT_kjmol = self.kT / KJMOL
        n = int(min(max(math.ceil(2 * math.log(tmax_K / temperature_K) * energy_std_kjmol / kT_kjmol) + 1, 2), 200))
        temperatures = temperature_K * (tmax_K / temperature_K) ** torch.linspace(0, 1, n, dtype=torch.float64)
        #: β_i - β in mol/kJ, for U in kJ/mol
        self.register_buffer("dbeta", (temperature_K / temperatures - 1) / kT_kjmol)
        self.temperatures = temperatures
        self.log_sum = torch.full((n,), -math.inf, dtype=torch.float64)  # log Σ_t exp(βV_t - Δu_i(U_t))
        self.log_norm = torch.tensor(-math.inf, dtype=torch.float64)  # log Σ_t exp(βV_t)

    @property
    def delta_f(self) -> torch.Tensor:
        """Δf_i (units of k_BT), 0 before the first update."""
        if not math.isfinite(float(self.log_norm)):
            return torch.zeros_like(self.log_sum)
        return -(self.log_sum - self.log_norm)

    def energy_of_cv(self, s: torch.Tensor) -> torch.Tensor:
        if not math.isfinite(float(self.log_norm)):
            return s.new_zeros(s.shape[0])
        exponent = -self.dbeta * s[:, :1] + self.delta_f
        return -self.kT * (torch.logsumexp(exponent, dim=-1) - math.log(len(self.dbeta)))

    @torch.no_grad()
    def update(self, state) -> None:
        if state.step % self.pace:
            return
        s = self.cv_values(state.batch)
        beta_v = self.energy_of_cv(s) / self.kT  # all walkers see the bias as it was before this update
        for u, bv in zip(s[:, 0], beta_v):
            self.log_sum = torch.logaddexp(self.log_sum, bv - self.dbeta * u)
            self.log_norm = torch.logaddexp(self.log_norm, bv)

    def get_state(self) -> dict[str, torch.Tensor]:
        return {"log_sum": self.log_sum.clone(), "log_norm": self.log_norm.clone()}

    def set_state(self, state: dict[str, torch.Tensor]) -> None:
        if state["log_sum"].shape != self.log_sum.shape:
            raise InputError(f"multithermal bias state: {state['log_sum'].numel()} temperatures, this bias has "
                             f"{self.log_sum.numel()}")
        self.log_sum, self.log_norm = state["log_sum"].clone(), state["log_norm"].clone()
