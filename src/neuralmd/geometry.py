"""Geometry of batches of replicas: positions as (B, n, 3), angles and dihedrals.

Shared by the CVs (:mod:`neuralmd.sampling.cvs`) and the coarse-grained model
(:mod:`neuralmd.models.coarse_grain`). Lengths in Å, angles in radians.
"""

from __future__ import annotations

import torch

from .errors import InputError
from .state import AtomsBatch


def replica_positions(batch: AtomsBatch) -> torch.Tensor:
    """(B, n, 3) view of a batch whose systems all have the same number of atoms."""
    n = batch.n_atoms // batch.n_systems
    if n * batch.n_systems != batch.n_atoms:
        raise InputError("collective variables need replicas of one system (equal atom counts)")
    return batch.positions.view(batch.n_systems, n, 3)


def replica_cells(batch: AtomsBatch) -> torch.Tensor | None:
    """The cells (B, 3, 3) Å of a batch whose replicas are periodic, None if none is."""
    return batch.cell if bool(batch.pbc.any()) else None


def minimum_image(d: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Displacements ``d`` (B, ..., 3) Å of replicas in cells (B, 3, 3) (rows lattice vectors)
    wrapped by rounding their fractional coordinates: the nearest image in an orthorhombic cell
    (in a triclinic one, for displacements shorter than half the cell's shortest height)."""
    flat = d.reshape(d.shape[0], -1, 3)
    frac = torch.linalg.solve(cell.transpose(1, 2), flat.transpose(1, 2)).transpose(1, 2)
    return torch.bmm(frac - torch.round(frac), cell).reshape(d.shape)


def narrowest_box(cell: torch.Tensor, cutoff: float) -> tuple[int, float] | None:
    """The first replica whose cell (B, 3, 3) is narrower than twice ``cutoff`` (Å) between
    some pair of opposite faces (V / |b × c| etc.), with that width; None if none is."""
    widths = (torch.linalg.det(cell).abs().unsqueeze(-1) / torch.linalg.vector_norm(
        torch.cross(cell[:, [1, 2, 0]], cell[:, [2, 0, 1]], dim=-1), dim=-1)).min(-1).values
    narrow = torch.nonzero(widths < 2 * cutoff)
    return (int(narrow[0, 0]), float(widths[narrow[0, 0]])) if len(narrow) else None


def displacement(a: torch.Tensor, b: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
    """b - a (B, ..., 3) Å, the minimum image where ``cell`` (B, 3, 3) is given."""
    d = b - a
    if cell is None:
        return d
    return minimum_image(d, cell)


def angles(x: torch.Tensor, triplets: torch.Tensor) -> torch.Tensor:
    """Angles i-j-k at j (rad) of positions (B, n, 3) for index rows (k, 3): (B, k)."""
    a = x[:, triplets[:, 0]] - x[:, triplets[:, 1]]
    b = x[:, triplets[:, 2]] - x[:, triplets[:, 1]]
    cos = (a * b).sum(-1) / (torch.linalg.vector_norm(a, dim=-1) * torch.linalg.vector_norm(b, dim=-1))
    return torch.acos(cos.clamp(-1 + 1e-12, 1 - 1e-12))


def dihedrals(x: torch.Tensor, quadruplets: torch.Tensor) -> torch.Tensor:
    """Dihedral angles i-j-k-l (rad, in (-π, π], IUPAC sign) of positions (B, n, 3) for index
    rows (k, 4): (B, k)."""
    b0 = x[:, quadruplets[:, 1]] - x[:, quadruplets[:, 0]]
    b1 = x[:, quadruplets[:, 2]] - x[:, quadruplets[:, 1]]
    b2 = x[:, quadruplets[:, 3]] - x[:, quadruplets[:, 2]]
    n1, n2 = torch.linalg.cross(b0, b1), torch.linalg.cross(b1, b2)
    m1 = torch.linalg.cross(b1 / torch.linalg.vector_norm(b1, dim=-1, keepdim=True), n1)
    return torch.atan2((m1 * n2).sum(-1), (n1 * n2).sum(-1))
