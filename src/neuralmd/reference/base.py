"""Labeler: frames in, energies and forces out, with failures recorded per frame.

A labeler never drops a frame silently: a frame whose calculation fails (SCF not converged, a
crash in the QM code) is listed in :attr:`LabelResult.failures` with its index and the reason,
and the rest of the batch completes.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from ase import Atoms
from rich.progress import track

from ..errors import InputError

#: atomic numbers of the noble gases (and 0): the closed-shell cores below each element
NOBLE_GAS_Z = (0, 2, 10, 18, 36, 54, 86, 118)


def core_electrons(z: int) -> int:
    """Electrons of the noble-gas core below element ``z`` (an even number)."""
    return max(g for g in NOBLE_GAS_Z if g < z)


def check_electrons(numbers: Sequence[int], charge: int, spin: int, where: str, valence_only: bool = False) -> None:
    """InputError naming ``where`` unless ``charge`` (e) and ``spin`` (2S, unpaired electrons) are
    possible for atoms ``numbers``: at least ``spin`` electrons left after the charge, and an
    electron count of the same parity as ``spin``. With ``valence_only`` the count is that of
    the electrons outside the noble-gas cores (tight binding), an upper bound of a minimal-basis
    method's valence electrons; core electrons are even, so the parity test is exact either way."""
    total = sum(int(z) - (core_electrons(int(z)) if valence_only else 0) for z in numbers)
    left = total - charge
    what = "valence electrons" if valence_only else "electrons"
    if spin < 0:
        raise InputError(f"{where}: spin {spin}; expected the number of unpaired electrons (2S >= 0)")
    if left < spin or (left - spin) % 2:
        raise InputError(f"{where}: charge {charge} and spin {spin} (unpaired electrons) are impossible with "
                         f"{total} {what}: {left} would remain; give a charge and spin of the same parity as the "
                         f"electron count, with no more unpaired electrons than electrons")


@dataclass
class Failure:
    """A frame that could not be labelled: its index in the input and why."""

    index: int
    reason: str


@dataclass
class LabelResult:
    """Labelled copies of the frames that succeeded (input order), their input indices, and
    the failures."""

    frames: list[Atoms] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0


class Labeler(ABC):
    """Base class: subclasses implement :meth:`compute` for one frame."""

    #: Short name written into each labelled frame's ``info["label_method"]``.
    name: str = "labeler"

    @abstractmethod
    def compute(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        """Energy in eV and forces (n, 3) in eV/Å of one frame; raise on failure."""

    def settings(self) -> dict[str, Any]:
        """The options that define the level of theory (recorded with every label)."""
        return {"method": self.name}

    def check_frame(self, atoms: Atoms, where: str) -> None:
        """InputError naming ``where`` if this frame cannot be labelled as asked (an impossible
        charge or spin), found before any calculation; the base accepts every frame."""

    def check_frames(self, frames: Sequence[Atoms], source: str = "input") -> None:
        """:meth:`check_frame` of every frame, named ``source: frame k``."""
        for k, atoms in enumerate(frames):
            self.check_frame(atoms, f"{source}: frame {k}")

    def label_one(self, atoms: Atoms) -> Atoms:
        """A labelled copy of ``atoms`` (raises on failure)."""
        energy, forces = self.compute(atoms)
        if not np.isfinite(energy) or not np.isfinite(forces).all():
            raise RuntimeError(f"{self.name} returned non-finite energy or forces")
        out = atoms.copy()
        out.calc = None
        out.info["energy"] = float(energy)
        out.arrays["forces"] = np.asarray(forces, dtype=float).reshape(len(atoms), 3)
        out.info["label_method"] = self.name
        return out

    def label(self, frames: Sequence[Atoms], progress: bool = False) -> LabelResult:
        """Label every frame; failures of the calculations are recorded, never raised. Frames that
        cannot be labelled as asked (:meth:`check_frame`) raise an InputError before any is."""
        self.check_frames(frames)
        result = LabelResult()
        start = time.perf_counter()
        items = track(enumerate(frames), total=len(frames), description=f"labelling ({self.name})",
                      disable=not progress)
        for k, atoms in items:
            try:
                labelled = self.label_one(atoms)
            except Exception as exc:  # a QM code can fail in many ways; record every one
                result.failures.append(Failure(k, f"{type(exc).__name__}: {exc}".strip()))
                continue
            result.frames.append(labelled)
            result.indices.append(k)
        result.seconds = time.perf_counter() - start
        return result
