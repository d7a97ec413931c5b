"""Analytic potentials for engine tests (exactly known Boltzmann distributions)."""

from __future__ import annotations

import torch

from neuralmd.models.base import Potential
from neuralmd.state import AtomsBatch


class HarmonicWell(Potential):
    """Each atom in an isotropic well 0.5 k |x - centre|² (k in eV/Å²)."""

    def __init__(self, k_eV_per_A2: float, centre=(0.0, 0.0, 0.0)) -> None:
        super().__init__()
        self.k = k_eV_per_A2
        self.register_buffer("centre", torch.tensor(centre, dtype=torch.float64))

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        return 0.5 * self.k * (batch.positions - self.centre).pow(2).sum(-1)


class SpringNetwork(Potential):
    """Springs 0.5 k (|r_i - r_j| - d0)² between every pair of atoms of a system (k in eV/Å²,
    d0 in Å): translation- and rotation-invariant, anharmonic in Cartesian coordinates."""

    def __init__(self, k_eV_per_A2: float = 2.0, d0_A: float = 1.5) -> None:
        super().__init__()
        self.k, self.d0 = k_eV_per_A2, d0_A

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        x = batch.positions
        same = batch.system.unsqueeze(0) == batch.system.unsqueeze(1)
        same = same & ~torch.eye(len(x), dtype=torch.bool, device=x.device)
        diff = x.unsqueeze(0) - x.unsqueeze(1)
        r = torch.sqrt(diff.pow(2).sum(-1) + torch.eye(len(x), dtype=x.dtype, device=x.device))
        pair = torch.where(same, 0.5 * self.k * (r - self.d0) ** 2, torch.zeros_like(r))
        return 0.5 * pair.sum(-1)  # each pair counted once per atom, half to each


class IdealGas(Potential):
    """No interactions at all (zero energy, forces and stress): the NPT ensemble's analytic case."""

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        return 0.0 * batch.positions.sum(-1)


class CellSprings(Potential):
    """No forces between atoms; the cell's lattice vectors are springs, energy
    Σ_α ½ K_α (|a_α| - L0_α)² (eV, K in eV/Å², L0 in Å), and optionally springs on the cosines of
    the angles between them, Σ ½ K_θ (cos θ - cos θ_0)² (K_θ in eV; pairs bc, ac, ab), carried
    by each system's first atom: a box with a different stiffness along each axis (and a
    preferred shape), the anisotropic and triclinic barostats' analytic case. Rotation
    invariant, so its stress is symmetric."""

    def __init__(self, k_eV_per_A2: tuple[float, float, float], l0_A: tuple[float, float, float],
                 k_angle_eV: float = 0.0, cos0: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> None:
        super().__init__()
        self.k, self.l0 = torch.tensor(k_eV_per_A2), torch.tensor(l0_A)
        self.k_angle, self.cos0 = k_angle_eV, torch.tensor(cos0)

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        lengths = torch.linalg.vector_norm(batch.cell, dim=-1)  # (B, 3)
        k, l0 = self.k.to(lengths), self.l0.to(lengths)
        per_system = (0.5 * k * (lengths - l0) ** 2).sum(-1)
        if self.k_angle:
            unit = batch.cell / lengths.unsqueeze(-1)
            cos = torch.stack([(unit[:, i] * unit[:, j]).sum(-1) for i, j in ((1, 2), (0, 2), (0, 1))], -1)
            per_system = per_system + (0.5 * self.k_angle * (cos - self.cos0.to(cos)) ** 2).sum(-1)
        first = torch.cumsum(batch.counts, 0) - batch.counts
        energies = 0.0 * batch.positions.sum(-1)
        return energies.index_add(0, first, per_system)


class TiltedDoubleWell(Potential):
    """Each atom in barrier·(x² − 1)² + tilt·x along x (Å; barrier in eV, tilt in eV/Å, a
    learnable parameter) and a harmonic well ½k(y² + z²) across: two wells whose population
    ratio the tilt sets."""

    def __init__(self, barrier_eV: float = 0.06, tilt_eV_per_A: float = 0.0, k_eV_per_A2: float = 1.0) -> None:
        super().__init__()
        self.barrier, self.k = barrier_eV, k_eV_per_A2
        self.tilt = torch.nn.Parameter(torch.tensor(float(tilt_eV_per_A), dtype=torch.float64))

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        x = batch.positions
        return (self.barrier * (x[:, 0] ** 2 - 1) ** 2 + self.tilt * x[:, 0]
                + 0.5 * self.k * x[:, 1:].pow(2).sum(-1))


class LennardJones(Potential):
    """A periodic Lennard-Jones fluid, 4ε((σ/r)¹² − (σ/r)⁶) shifted to zero at ``cutoff_A``,
    all pairs of each system by the minimum image (orthorhombic cells); σ (Å) and ε (eV) are
    learnable parameters."""

    def __init__(self, sigma_A: float = 3.4, epsilon_eV: float = 0.0104, cutoff_A: float = 8.5) -> None:
        super().__init__()
        self.sigma = torch.nn.Parameter(torch.tensor(float(sigma_A), dtype=torch.float64))
        self.epsilon = torch.nn.Parameter(torch.tensor(float(epsilon_eV), dtype=torch.float64))
        self.cut = cutoff_A

    def _pair(self, r: torch.Tensor) -> torch.Tensor:
        s6 = (self.sigma / r) ** 6
        return 4 * self.epsilon * (s6 * s6 - s6)

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        n = batch.n_atoms // batch.n_systems  # systems of equal size
        x = batch.positions.view(batch.n_systems, n, 3)
        box = torch.diagonal(batch.cell, dim1=1, dim2=2).unsqueeze(1).unsqueeze(1)
        d = x.unsqueeze(1) - x.unsqueeze(2)
        d = d - box * torch.round(d / box)
        eye = torch.eye(n, dtype=torch.bool)
        r = torch.sqrt(d.pow(2).sum(-1) + eye.to(x.dtype))
        inside = (r < self.cut) & ~eye
        shift = self._pair(torch.tensor(self.cut, dtype=x.dtype))
        pair = torch.where(inside, self._pair(r) - shift, torch.zeros_like(r))
        return 0.5 * pair.sum(-1).reshape(-1)
