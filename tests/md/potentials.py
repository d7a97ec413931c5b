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
