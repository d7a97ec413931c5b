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
        """Label every frame; failures are recorded, never raised."""
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
