"""Short-range nuclear repulsion added to a neural potential, so that atoms pushed together
repel however little the training data saw of it.

The Ziegler-Biersack-Littmark universal screened Coulomb potential (ZBL, 1985; as MACE's
``ZBLBasis`` and LAMMPS's ``pair_style zbl``), switched off smoothly at the sum of the two
atoms' covalent radii (ASE's table; MACE's choice) or at a distance given per pair of elements
(``neuralmd train`` takes the shortest distance of that pair in the training data: the
repulsion then covers what the data never saw), with the same polynomial envelope as the
network's cutoff. Beyond that distance it is exactly zero, so
bonded geometries are left to the network; below, it grows as Z_i Z_j e² / (4πε₀ r) and
dominates any bounded network output.
"""

from __future__ import annotations

import torch
from ase.data import covalent_radii
from torch import nn

from .radial import polynomial_envelope

#: e² / (4π ε₀) in eV·Å
COULOMB_EV_A = 14.399645478425668
#: universal screening length prefactor 0.8854 a₀, in Å, and the exponent of Z in it
_SCREENING_A, _SCREENING_EXP = 0.46850, 0.23
_COEFFICIENTS = torch.tensor([0.18175, 0.50986, 0.28022, 0.02817], dtype=torch.float64)
_EXPONENTS = -torch.tensor([3.19980, 0.94229, 0.40290, 0.20162], dtype=torch.float64)
_ENVELOPE_P = 6


def covalent_switch(elements: list[int]) -> torch.Tensor:
    """(S, S) sums of the two atoms' covalent radii in Å (ASE's table), float64."""
    radii = torch.tensor(covalent_radii[elements], dtype=torch.float64)
    return radii[:, None] + radii[None, :]


class ZBLRepulsion(nn.Module):
    """Per-atom ZBL energies (eV): half of each pair's energy goes to each atom.

    Args:
        elements: atomic numbers, indexed by the model's species index.
        switch_A: (S, S) distance in Å at which the repulsion of each pair of species ends
            (symmetric); None: the sum of the two covalent radii.
    """

    def __init__(self, elements: list[int], switch_A: list[list[float]] | None = None) -> None:
        super().__init__()
        self.register_buffer("z", torch.tensor(elements, dtype=torch.float64), persistent=False)
        if switch_A is None:
            switch = covalent_switch(elements)
        else:
            switch = torch.tensor(switch_A, dtype=torch.float64)
            if switch.shape != (len(elements), len(elements)) or not bool((switch > 0).all()):
                raise ValueError(f"switch_A: expected a {len(elements)}x{len(elements)} matrix of positive "
                                 f"distances, got {switch_A!r}")
        self.register_buffer("switch", switch, persistent=False)
        #: largest distance at which any pair of the model's elements repels, Å
        self.cutoff = float(switch.max())

    def forward(self, species: torch.Tensor, vectors: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """species (N,), pair vectors (E, 3) in Å for receivers i and senders j (each pair
        listed both ways) -> per-atom energies (N,) in eV, float64."""
        si, sj = species[i], species[j]
        r_max = self.switch[si, sj]
        near = torch.nonzero(vectors.detach().norm(dim=-1) < r_max).squeeze(1)
        i, si, sj, r_max = i[near], si[near], sj[near], r_max[near]  # the few pairs close enough to repel
        r = torch.linalg.vector_norm(vectors[near].to(torch.float64), dim=-1)
        zi, zj = self.z[si], self.z[sj]
        x = r * (zi.pow(_SCREENING_EXP) + zj.pow(_SCREENING_EXP)) / _SCREENING_A
        phi = torch.exp(x.unsqueeze(-1) * _EXPONENTS.to(x)) @ _COEFFICIENTS.to(x)
        pair = 0.5 * COULOMB_EV_A * zi * zj / r * phi * polynomial_envelope(r / r_max, _ENVELOPE_P)
        return r.new_zeros(species.shape[0]).index_add_(0, i, pair)
