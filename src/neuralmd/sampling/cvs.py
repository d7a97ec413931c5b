"""Collective variables: differentiable torch modules from positions to CV values.

A CV module maps positions of shape (B, n, 3) in Å (B replicas of the same n-atom system) to
values of shape (B, d); a periodic system passes its cells (B, 3, 3) Å (rows lattice vectors)
as well, which CVs between molecules use for the minimum image (positions are never wrapped,
so a molecule stays whole). Atom indices are 0-based within one system. Distances are in Å, angles
and torsions in radians. Modules compose: :class:`Stack` concatenates CVs, and any torch
module after them (a learned network) makes a new CV.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..errors import InputError
from ..geometry import angles, dihedrals, displacement


class CV(nn.Module):
    """Base class: ``forward(positions (B, n, 3), cell (B, 3, 3) or None) -> (B, dim)``;
    ``names`` (a list of str set by each subclass) label the outputs. CV modules compile with
    ``torch.jit.script``."""

    __jit_unused_properties__ = ["dim", "periods"]  # noqa: RUF012 (TorchScript's own hook)

    @property
    def dim(self) -> int:
        return len(self.names)

    @property
    def periods(self) -> list[float]:
        """Period of each output (2π for torsions), 0 where the output is not periodic."""
        return [0.0] * self.dim

    def check_atoms(self, n_atoms: int) -> None:
        """InputError if the CV refers to atoms beyond ``n_atoms``."""
        for buf in self.buffers():
            if buf.dtype == torch.long and buf.numel() and int(buf.max()) >= n_atoms:
                raise InputError(f"CV {self.names}: atom index {int(buf.max())} but the system has {n_atoms} atoms")


class Distance(CV):
    """|x_j - x_i| in Å (the minimum image in a periodic cell)."""

    def __init__(self, i: int, j: int) -> None:
        super().__init__()
        self.register_buffer("idx", torch.tensor([i, j]))
        self.names = [f"d{i}-{j}"]

    def forward(self, x: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        return torch.linalg.vector_norm(displacement(x[:, self.idx[0]], x[:, self.idx[1]], cell), dim=-1, keepdim=True)


class Angle(CV):
    """Angle i-j-k at j, in radians."""

    def __init__(self, i: int, j: int, k: int) -> None:
        super().__init__()
        self.register_buffer("idx", torch.tensor([i, j, k]))
        self.names = [f"a{i}-{j}-{k}"]

    def forward(self, x: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        return angles(x, self.idx.view(1, 3))


class Torsion(CV):
    """Dihedral angle i-j-k-l in radians, in (-π, π] (IUPAC sign, as PLUMED's TORSION)."""

    def __init__(self, i: int, j: int, k: int, l: int, name: str | None = None) -> None:  # noqa: E741
        super().__init__()
        self.register_buffer("idx", torch.tensor([i, j, k, l]))
        self.names = [name or f"t{i}-{j}-{k}-{l}"]

    @property
    def periods(self) -> list[float]:
        return [2 * math.pi]

    def forward(self, x: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        return dihedrals(x, self.idx.view(1, 4))


class PairwiseDistances(CV):
    """All distances between the given atoms (i < j), in Å (minimum images in a periodic cell):
    the usual descriptor set of learned CVs."""

    def __init__(self, atoms: Sequence[int]) -> None:
        super().__init__()
        atoms = [int(a) for a in atoms]
        self.atoms = atoms
        pairs = [(a, b) for n, a in enumerate(atoms) for b in atoms[n + 1 :]]
        if not pairs:
            raise InputError("PairwiseDistances needs at least two atoms")
        self.register_buffer("pairs", torch.tensor(pairs))
        self.names = [f"d{a}-{b}" for a, b in pairs]

    def forward(self, x: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        return torch.linalg.vector_norm(displacement(x[:, self.pairs[:, 0]], x[:, self.pairs[:, 1]], cell), dim=-1)


class Position(CV):
    """Cartesian coordinates (Å) of one atom along the given axes (0=x, 1=y, 2=z)."""

    def __init__(self, atom: int, axes: Sequence[int] = (0, 1, 2)) -> None:
        super().__init__()
        self.register_buffer("atom", torch.tensor(atom))
        self.register_buffer("axes", torch.tensor(list(axes)))
        self.names = [f"{'xyz'[a]}{atom}" for a in axes]

    def forward(self, x: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        return x[:, self.atom][:, self.axes]


class Stack(CV):
    """Several CVs side by side."""

    def __init__(self, cvs: Sequence[CV]) -> None:
        super().__init__()
        self.cvs = nn.ModuleList(cvs)
        self.names = [name for cv in cvs for name in cv.names]

    @property
    def periods(self) -> list[float]:
        return [p for cv in self.cvs for p in cv.periods]

    def forward(self, x: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        return torch.cat([cv(x, cell) for cv in self.cvs], dim=-1)
