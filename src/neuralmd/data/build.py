"""Periodic boxes for condensed-phase runs: :func:`replicate` a periodic frame into an a×b×c
supercell (a run larger than the training cells), or :func:`pack` molecules into a cubic box at
a target density (a liquid or a solution from its molecules, as packmol does)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from ..errors import InputError
from ..units import AMU_PER_A3_IN_G_PER_CM3


def replicate(frame: Atoms, repeat: Sequence[int], where: str = "frame") -> Atoms:
    """``frame`` repeated ``repeat`` = (a, b, c) times along its cell vectors (positions in Å,
    cell rows the lattice vectors); labels (energy, forces) are dropped, since they belong to
    the original cell. InputError naming ``where`` unless the frame is periodic in all three
    directions with a cell of positive volume and every count is a positive integer."""
    counts = [int(n) for n in repeat]
    if len(counts) != 3 or min(counts) < 1 or list(repeat) != counts:
        raise InputError(f"repeat: {list(repeat)}; expected three positive integers, e.g. 2,2,2")
    if not frame.pbc.all() or not abs(frame.cell.volume) > 0:
        raise InputError(f"{where}: not periodic in all three directions with a cell (pbc {frame.pbc.tolist()}, "
                         f"volume {abs(frame.cell.volume):.3g} Å³); only a periodic frame can be replicated")
    bare = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=True,
                 masses=frame.get_masses())
    box = bare.repeat(counts)
    box.info["replicated_from"] = where
    box.info["repeat"] = " ".join(map(str, counts))
    assert np.isclose(box.cell.volume, np.prod(counts) * frame.cell.volume)
    return box


#: packmol's default minimum distance between atoms of different molecules (Å)
PACK_TOLERANCE_A = 2.0


def pack_box_length(molecules: Sequence[tuple[Atoms, int]], density_g_cm3: float) -> float:
    """Edge (Å) of the cubic box that holds ``molecules`` ((molecule, copies) pairs) at
    ``density_g_cm3``."""
    if not 0 < density_g_cm3 < 30:
        raise InputError(f"density: {density_g_cm3} g/cm³; expected a value in (0, 30) (water 0.997)")
    mass = sum(m.get_masses().sum() * count for m, count in molecules)
    return float((mass * AMU_PER_A3_IN_G_PER_CM3 / density_g_cm3) ** (1 / 3))


def pack(molecules: Sequence[tuple[Atoms, int]], box_A: float, tolerance_A: float = PACK_TOLERANCE_A,
         seed: int = 0, max_iterations: int = 3000) -> Atoms:
    """Copies of each molecule packed into a periodic cubic box of edge ``box_A`` (Å) with no two
    atoms of different copies closer than ``tolerance_A`` (Å, minimum image), each copy rigid.

    As packmol: the copies start with random orientations on the sites of a simple cubic lattice
    (in random order), and their centres and rotations are then moved to minimise the overlap
    penalty Σ max(0, tol² − d²)² over pairs of atoms of different copies, until it is zero
    (Adam on the rigid-body coordinates; pairs from a periodic k-d tree). Atoms are kept whole
    around each copy's centre. InputError when ``max_iterations`` do not remove every overlap
    (the density is too high for the tolerance: lower one of them)."""
    import torch

    if not box_A > 0 or not tolerance_A > 0:
        raise InputError(f"box {box_A} Å, tolerance {tolerance_A} Å: expected both > 0")
    for k, (molecule, count) in enumerate(molecules):
        if count < 0:
            raise InputError(f"molecule {k} ({molecule.get_chemical_formula()}): {count} copies; expected >= 0")
        extent = np.linalg.norm(molecule.positions - molecule.get_center_of_mass(), axis=1).max()
        if 2 * extent + tolerance_A >= box_A:
            raise InputError(f"molecule {molecule.get_chemical_formula()}: larger than the {box_A:.2f} Å box")
    copies = [m for m, count in molecules for _ in range(count)]
    if not copies:
        raise InputError("pack: no molecules to pack")
    rng = np.random.default_rng(seed)
    side = int(np.ceil(len(copies) ** (1 / 3) - 1e-9))
    sites = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)
    sites = sites[rng.permutation(len(sites))[: len(copies)]]
    local = torch.as_tensor(np.concatenate([m.positions - m.get_center_of_mass() for m in copies]))
    owner = torch.as_tensor(np.repeat(np.arange(len(copies)), [len(m) for m in copies]))
    centres = torch.as_tensor((sites + 0.5) * box_A / side).requires_grad_(True)
    rotations = torch.as_tensor(Rotation.random(len(copies), random_state=rng).as_rotvec()).requires_grad_(True)
    optimizer = torch.optim.Adam([centres, rotations], lr=0.02)
    for iteration in range(max_iterations):
        positions = _rotate(local, rotations[owner]) + centres[owner]
        if iteration % 10 == 0:  # pairs that may overlap within the next steps (moves are < 0.1 Å each)
            i, j = _close_pairs(positions.detach().numpy(), owner.numpy(), box_A, tolerance_A + 1.0)
        d = positions[j] - positions[i]
        d = d - box_A * torch.round(d.detach() / box_A)
        penalty = torch.relu(tolerance_A**2 - d.pow(2).sum(-1)).pow(2).sum()
        if float(penalty.detach()) == 0.0:
            break
        optimizer.zero_grad()
        penalty.backward()
        optimizer.step()
    else:
        raise InputError(f"pack: {len(copies)} molecules in a {box_A:.2f} Å box still overlap at {tolerance_A} Å "
                         f"after {max_iterations} iterations; lower the density or --tolerance")
    positions = positions.detach().numpy()
    box = Atoms(np.concatenate([m.numbers for m in copies]), positions=positions, cell=np.eye(3) * box_A, pbc=True,
                masses=np.concatenate([m.get_masses() for m in copies]))
    box.info["packed_tolerance_A"] = tolerance_A
    return box


def _rotate(vectors, rotvecs):
    """Rodrigues rotation of (n, 3) ``vectors`` by (n, 3) rotation vectors (radians), in torch."""
    import torch

    angle = torch.linalg.vector_norm(rotvecs, dim=-1, keepdim=True).clamp_min(1e-12)
    axis = rotvecs / angle
    cos, sin = torch.cos(angle), torch.sin(angle)
    return (vectors * cos + torch.cross(axis, vectors, dim=-1) * sin
            + axis * (axis * vectors).sum(-1, keepdim=True) * (1 - cos))


def _close_pairs(positions: np.ndarray, owner: np.ndarray, box_A: float, radius_A: float):
    """Pairs (i < j) of atoms of different copies within ``radius_A`` (minimum image)."""
    import torch

    tree = cKDTree(np.mod(positions, box_A), boxsize=box_A)
    pairs = tree.query_pairs(radius_A, output_type="ndarray")
    pairs = pairs[owner[pairs[:, 0]] != owner[pairs[:, 1]]]
    return torch.as_tensor(pairs[:, 0]), torch.as_tensor(pairs[:, 1])
