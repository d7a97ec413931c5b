"""AtomsBatch: many atomic systems as one flat set of atoms plus a system index.

Like torch-sim's ``SimState`` and PyG's ``batch``: every per-atom quantity is one tensor of
shape (N, ...) over all atoms of all systems, and ``system[i]`` says which system atom ``i``
belongs to. Atoms of one system are contiguous. Units: positions and cell in Å, masses in amu,
velocities in Å per ASE time unit.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Sequence

import numpy as np
import torch
from ase import Atoms


@dataclass(frozen=True)
class AtomsBatch:
    """A batch of B systems with N atoms in all.

    positions: (N, 3) Å; numbers: (N,) atomic numbers; system: (N,) system index in [0, B);
    cell: (B, 3, 3) Å, rows are lattice vectors (zeros where not periodic); pbc: (B, 3) bool;
    masses: (N,) amu; velocities: (N, 3) Å/ASE-time or None.
    """

    positions: torch.Tensor
    numbers: torch.Tensor
    system: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor
    masses: torch.Tensor
    velocities: torch.Tensor | None = None

    @property
    def n_systems(self) -> int:
        return int(self.cell.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[0])

    @property
    def counts(self) -> torch.Tensor:
        """Number of atoms of each system, shape (B,)."""
        return torch.bincount(self.system, minlength=self.n_systems)

    @property
    def periodic(self) -> bool:
        """True when any system is periodic in any direction."""
        return bool(self.pbc.any())

    def replace(self, **changes: torch.Tensor | None) -> "AtomsBatch":
        """A copy with some fields replaced (the batch itself is immutable)."""
        return replace(self, **changes)

    def slice_systems(self, start: int, stop: int, atom_start: int, atom_stop: int) -> "AtomsBatch":
        """Systems ``start:stop`` (whose atoms are ``atom_start:atom_stop``) as a batch."""
        return AtomsBatch(
            positions=self.positions[atom_start:atom_stop],
            numbers=self.numbers[atom_start:atom_stop],
            system=self.system[atom_start:atom_stop] - start,
            cell=self.cell[start:stop],
            pbc=self.pbc[start:stop],
            masses=self.masses[atom_start:atom_stop],
            velocities=None if self.velocities is None else self.velocities[atom_start:atom_stop],
        )

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "AtomsBatch":
        """Move to a device; floating-point fields are cast to ``dtype`` when given."""
        out = {}
        for f in fields(self):
            t = getattr(self, f.name)
            if t is None:
                out[f.name] = None
            elif t.is_floating_point() and dtype is not None:
                out[f.name] = t.to(device=device, dtype=dtype)
            else:
                out[f.name] = t.to(device=device)
        return AtomsBatch(**out)

    @classmethod
    def from_atoms(
        cls,
        frames: Sequence[Atoms],
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
        with_velocities: bool = False,
    ) -> "AtomsBatch":
        """Stack ASE frames into one batch (positions and cell in Å)."""
        if len(frames) == 0:
            raise ValueError("AtomsBatch.from_atoms needs at least one frame")
        pos = np.concatenate([a.positions for a in frames])
        numbers = np.concatenate([a.numbers for a in frames])
        system = np.repeat(np.arange(len(frames)), [len(a) for a in frames])
        cell = np.stack([a.cell.array for a in frames])
        pbc = np.stack([a.pbc for a in frames])
        masses = np.concatenate([a.get_masses() for a in frames])
        kw = dict(dtype=dtype, device=device)
        velocities = None
        if with_velocities:
            velocities = torch.as_tensor(np.concatenate([a.get_velocities() for a in frames]), **kw)
        return cls(
            positions=torch.as_tensor(pos, **kw),
            numbers=torch.as_tensor(numbers, dtype=torch.long, device=device),
            system=torch.as_tensor(system, dtype=torch.long, device=device),
            cell=torch.as_tensor(cell, **kw),
            pbc=torch.as_tensor(pbc, dtype=torch.bool, device=device),
            masses=torch.as_tensor(masses, **kw),
            velocities=velocities,
        )

    def to_atoms(self) -> list[Atoms]:
        """Split back into ASE frames (velocities included when present; masses where they are
        not the elements' standard ones, e.g. isotopes)."""
        counts = self.counts.tolist()
        masses = self.masses.detach().cpu().double().split(counts)
        pos = self.positions.detach().cpu().double().split(counts)
        num = self.numbers.cpu().split(counts)
        vel = self.velocities.detach().cpu().double().split(counts) if self.velocities is not None else None
        frames = []
        for b in range(self.n_systems):
            atoms = Atoms(
                numbers=num[b].numpy(),
                positions=pos[b].numpy(),
                cell=self.cell[b].detach().cpu().double().numpy(),
                pbc=self.pbc[b].cpu().numpy(),
            )
            if not np.allclose(masses[b].numpy(), atoms.get_masses()):
                atoms.set_masses(masses[b].numpy())
            if vel is not None:
                atoms.set_velocities(vel[b].numpy())
            frames.append(atoms)
        return frames
