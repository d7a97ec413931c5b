"""Coarse-grained data: the all-atom to bead mapping and the mapped coordinates and forces that
force matching trains on (the CG potential itself is :mod:`neuralmd.models.coarse_grain`).
Lengths in Å, forces converted to eV/Å on reading.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from ase.data import atomic_numbers

from ..errors import InputError
from ..units import force_factor


@dataclass
class Mapping:
    """Beads as groups of all-atom indices (0-based). A bead sits at the (weighted) mean of its
    atoms; its force is the sum of their forces, the consistent force map for beads that share
    no atoms (Noid et al. 2008). ``elements`` give each bead its mass and the number written to
    trajectories."""

    beads: list[list[int]]
    elements: list[str]
    names: list[str]
    weights: list[list[float]] | None = None

    def __post_init__(self) -> None:
        if not self.beads or any(not b for b in self.beads):
            raise InputError("mapping: every bead needs at least one atom")
        flat = [a for b in self.beads for a in b]
        if len(flat) != len(set(flat)):
            raise InputError("mapping: an atom belongs to two beads; beads must not share atoms")
        for name, el in zip(self.names, self.elements):
            if el not in atomic_numbers:
                raise InputError(f"mapping: bead {name!r}: element {el!r} is not a chemical element")

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "Mapping":
        """Read ``[[bead]]`` tables with ``atoms = [...]`` and optional ``name``, ``element``
        (default C) and ``weights`` (default equal)."""
        path = Path(path)
        try:
            beads = tomllib.loads(path.read_text())["bead"]
        except FileNotFoundError:
            raise InputError(f"{path}: mapping file not found") from None
        except (tomllib.TOMLDecodeError, KeyError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: expected [[bead]] tables with atoms = [...] ({exc})") from None
        try:
            return cls([[int(a) for a in b["atoms"]] for b in beads], [b.get("element", "C") for b in beads],
                       [b.get("name", f"B{k}") for k, b in enumerate(beads)],
                       [list(map(float, b["weights"])) for b in beads] if all("weights" in b for b in beads) else None)
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: bead tables need 'atoms' as a list of integers ({exc})") from None

    def check(self, n_atoms: int, source: str) -> None:
        """InputError when a bead refers to an atom the all-atom data does not have."""
        for name, atoms in zip(self.names, self.beads):
            bad = [a for a in atoms if not 0 <= a < n_atoms]
            if bad:
                raise InputError(f"{source}: bead {name!r} references atom(s) {bad}, but the data has {n_atoms} atoms "
                                 f"(indices 0..{n_atoms - 1})")

    def apply(self, coords: np.ndarray, forces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All-atom (T, N, 3) coordinates and forces -> bead (T, n, 3) coordinates and forces."""
        x, f = [], []
        for k, atoms in enumerate(self.beads):
            w = np.full(len(atoms), 1.0 / len(atoms)) if self.weights is None else np.asarray(self.weights[k])
            x.append(np.einsum("a,tad->td", w / w.sum(), coords[:, atoms]))
            f.append(forces[:, atoms].sum(1))
        return np.stack(x, 1), np.stack(f, 1)


@dataclass
class CGData:
    """Mapped frames: coordinates (T, n, 3) Å and forces (T, n, 3) eV/Å, in time order."""

    coords: np.ndarray
    forces: np.ndarray
    elements: list[str]


def load_cg_data(coords_path: str | os.PathLike, forces_path: str | os.PathLike, force_unit: str,
                 mapping: Mapping | None = None, bead_elements: Sequence[str] | None = None) -> CGData:
    """Read .npy coordinates (Å) and forces (in ``force_unit``, e.g. kcal/mol/A), check their
    shapes and values, and map them to beads when a ``mapping`` is given (otherwise they are
    taken as already mapped, one bead per column, with ``bead_elements`` or carbon)."""
    arrays = []
    for path, what in ((coords_path, "coordinates"), (forces_path, "forces")):
        try:
            a = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise InputError(f"{path}: {what} file not found") from None
        except ValueError as exc:
            raise InputError(f"{path}: not a NumPy .npy array of {what} ({exc})") from None
        if a.ndim != 3 or a.shape[-1] != 3:
            raise InputError(f"{path}: {what} of shape {a.shape}; expected (frames, atoms, 3)")
        bad = ~np.isfinite(a).all(axis=(1, 2))
        if bad.any():
            raise InputError(f"{path}: frame {int(np.argmax(bad))}: non-finite {what}")
        arrays.append(a.astype(np.float64))
    coords, forces = arrays
    if coords.shape != forces.shape:
        raise InputError(f"{coords_path} and {forces_path}: coordinates of shape {coords.shape} but forces of shape "
                         f"{forces.shape}; expected the same (frames, atoms, 3)")
    forces = forces * force_factor(force_unit)
    if mapping is not None:
        mapping.check(coords.shape[1], str(coords_path))
        coords, forces = mapping.apply(coords, forces)
        elements = mapping.elements
    else:
        elements = list(bead_elements) if bead_elements else ["C"] * coords.shape[1]
        if len(elements) != coords.shape[1]:
            raise InputError(f"bead_elements: {len(elements)} given for {coords.shape[1]} beads in {coords_path}")
        for el in elements:
            if el not in atomic_numbers:
                raise InputError(f"bead_elements: {el!r} is not a chemical element")
    if coords.shape[1] < 4:
        raise InputError(f"{coords_path}: {coords.shape[1]} beads; a CG model needs at least 4 (one torsion)")
    return CGData(coords, forces, elements)
