"""FrameDataset: labelled frames for training, with splits, reference energies and batching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols

from ..errors import InputError, where
from ..state import AtomsBatch


def composition_matrix(frames: Sequence[Atoms], elements: Sequence[int]) -> np.ndarray:
    """(frames, elements) counts of each element in each frame."""
    index = {z: k for k, z in enumerate(elements)}
    counts = np.zeros((len(frames), len(elements)))
    for f, atoms in enumerate(frames):
        for z in atoms.numbers:
            counts[f, index[int(z)]] += 1
    return counts


def reference_energies(frames: Sequence[Atoms], elements: Sequence[int],
                       isolated: Sequence[Atoms] | None = None, source: str = "isolated-atom energies") -> np.ndarray:
    """Per-element reference energies E0 in eV, in the order of ``elements``.

    From ``isolated`` single-atom frames (their ``info["energy"]``) when given, else by least
    squares of the frame energies on the composition (minimum-norm solution where the
    compositions do not determine every element, e.g. one molecule). ``source`` names the
    isolated atoms in errors (their file).
    """
    if isolated is not None:
        table = {int(a.numbers[0]): float(a.info["energy"]) for a in isolated if len(a) == 1 and "energy" in a.info}
        missing = [chemical_symbols[z] for z in elements if z not in table]
        if missing:
            raise InputError(f"{source}: no single-atom frame for {', '.join(missing)} (the elements of the training "
                             f"data)")
        return np.array([table[z] for z in elements])
    energies = np.array([a.info["energy"] for a in frames])
    e0, *_ = np.linalg.lstsq(composition_matrix(frames, elements), energies, rcond=None)
    return e0


@dataclass
class Batch:
    """A collated training batch: the atoms plus their labels (eV, eV/Å)."""

    atoms: AtomsBatch
    energy: torch.Tensor  # (B,) float64
    forces: torch.Tensor | None  # (N, 3); None: not every frame of the batch carries forces
    #: (B,) float64: each frame's weight in the loss (its ``info["weight"]``, default 1)
    weight: torch.Tensor
    #: (B, 3, 3) eV/Å³ (ASE sign) where ``has_stress``, zeros elsewhere; None: no frame has one
    stress: torch.Tensor | None = None
    has_stress: torch.Tensor | None = None  # (B,) bool


def virial_per_atom(stress: torch.Tensor, atoms: AtomsBatch) -> torch.Tensor:
    """The virial per atom V σ / N (B, 3, 3) in eV, float64, from a stress (B, 3, 3) in eV/Å³:
    the energy-per-atom scale on which stresses are compared in the loss and the metrics."""
    volume = torch.linalg.det(atoms.cell.to(torch.float64)).abs()
    return stress.to(torch.float64) * (volume / atoms.counts.to(torch.float64)).view(-1, 1, 1)


class FrameDataset:
    """Labelled frames with collation into :class:`Batch` objects."""

    def __init__(self, frames: Sequence[Atoms]) -> None:
        self.frames = list(frames)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def elements(self) -> list[int]:
        """Sorted atomic numbers present."""
        return sorted({int(z) for a in self.frames for z in a.numbers})

    def split(self, valid_fraction: float, seed: int = 0) -> tuple["FrameDataset", "FrameDataset"]:
        """Random train/validation split; at least one frame in each."""
        if not 0.0 < valid_fraction < 1.0:
            raise InputError(f"valid_fraction: {valid_fraction} is not between 0 and 1")
        if len(self) < 2:
            raise InputError(f"need at least 2 frames to make a validation split, have {len(self)}")
        order = np.random.default_rng(seed).permutation(len(self))
        n_valid = min(max(1, int(round(valid_fraction * len(self)))), len(self) - 1)
        return (FrameDataset([self.frames[k] for k in order[n_valid:]]),
                FrameDataset([self.frames[k] for k in order[:n_valid]]))

    def collate(self, indices: Sequence[int], dtype: torch.dtype = torch.float32) -> Batch:
        """Stack the frames at ``indices`` into one Batch."""
        frames = [self.frames[k] for k in indices]
        atoms = AtomsBatch.from_atoms(frames, dtype=torch.float64).to(dtype=dtype)
        energy = torch.tensor([a.info["energy"] for a in frames], dtype=torch.float64)
        forces = (torch.as_tensor(np.concatenate([a.arrays["forces"] for a in frames]), dtype=dtype)
                  if all("forces" in a.arrays for a in frames) else None)
        weight = torch.tensor([float(a.info.get("weight", 1.0)) for a in frames], dtype=torch.float64)
        has_stress = torch.tensor(["stress" in a.info for a in frames])
        if not has_stress.any():
            return Batch(atoms, energy, forces, weight)
        stress = torch.as_tensor(np.stack([np.asarray(a.info.get("stress", np.zeros((3, 3))), dtype=float)
                                           for a in frames]), dtype=torch.float64)
        return Batch(atoms, energy, forces, weight, stress, has_stress)

    def batches(self, batch_size: int, order: Sequence[int] | None = None,
                dtype: torch.dtype = torch.float32) -> Iterator[Batch]:
        """Yield batches in ``order`` (default: file order)."""
        order = list(range(len(self))) if order is None else list(order)
        for start in range(0, len(order), batch_size):
            yield self.collate(order[start : start + batch_size], dtype)

    def has_forces(self, source: str = "input") -> bool:
        """True if every frame carries forces, False if none does; InputError naming ``source``
        and the first frame without forces if only some do."""
        have = ["forces" in a.arrays for a in self.frames]
        if all(have):
            return True
        if any(have):
            raise InputError(f"{where(source, have.index(False), 'forces')}: missing while other frames have "
                             f"forces; give forces on every frame or on none")
        return False

    def shortest_distances(self, elements: Sequence[int], within: float = 3.0) -> np.ndarray:
        """(S, S) shortest distance in Å between atoms of each pair of ``elements`` over all
        frames (periodic images included); inf for pairs never closer than ``within`` Å."""
        import vesin

        index = {z: k for k, z in enumerate(elements)}
        shortest = np.full((len(elements), len(elements)), np.inf)
        for atoms in self.frames:
            periodic = bool(atoms.pbc.any())
            i, j, d = vesin.NeighborList(cutoff=within, full_list=True).compute(
                points=atoms.positions, box=atoms.cell.array if periodic else np.zeros((3, 3)),
                periodic=periodic, quantities="ijd")
            species = np.array([index[int(z)] for z in atoms.numbers])
            np.minimum.at(shortest, (species[i], species[j]), d)
        return shortest

    def force_rms(self) -> float:
        """RMS of all force components in eV/Å."""
        return float(np.sqrt(np.mean(np.concatenate([a.arrays["forces"].ravel() for a in self.frames]) ** 2)))

    def mean_residual_per_atom(self, elements: Sequence[int], e0: np.ndarray) -> float:
        """Mean of (E - sum E0) / n_atoms in eV."""
        counts = composition_matrix(self.frames, elements)
        energies = np.array([a.info["energy"] for a in self.frames])
        return float(np.mean((energies - counts @ e0) / counts.sum(1)))
