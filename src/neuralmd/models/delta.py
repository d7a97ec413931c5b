"""Δ-learning: a cheap quantum-chemistry baseline plus a learned correction (hybrid QM/ML).

E(x) = E_baseline(x) + E_correction(x). The baseline (GFN2-xTB or GFN1-xTB through tblite) is
not a torch model: :class:`_BaselineEnergy` is an autograd function whose forward returns the
baseline energies and whose backward returns its analytic forces, so the Δ-potential is an
ordinary :class:`~.base.Potential` (forces exactly minus the gradient of its energy) and works
wherever one does (MD, sampling, active learning, the ASE calculator). The baseline's energy is
spread evenly over a system's atoms in ``atom_energy``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ase import Atoms

from ..errors import InputError
from ..state import AtomsBatch
from .base import Potential

BASELINES = {"xtb": "GFN2-xTB", "gfn1": "GFN1-xTB"}


class XTBBaseline:
    """Energies (eV) and forces (eV/Å) from tblite, one system at a time."""

    def __init__(self, method: str = "GFN2-xTB", charge: float = 0.0, uhf: int = 0) -> None:
        from ..reference.xtb import XTBLabeler

        self.labeler = XTBLabeler(method, charge=charge, uhf=uhf)

    def settings(self) -> dict[str, Any]:
        return {"kind": "xtb", **self.labeler.settings()}

    def __call__(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        return self.labeler.compute(atoms)


def make_baseline(settings: dict[str, Any]) -> XTBBaseline:
    """The baseline described by a model file's ``baseline`` entry."""
    if settings.get("kind") != "xtb":
        raise InputError(f"baseline: kind {settings.get('kind')!r} is not known (expected 'xtb')")
    return XTBBaseline(settings.get("method", "GFN2-xTB"), settings.get("charge", 0.0), settings.get("uhf", 0))


class _BaselineEnergy(torch.autograd.Function):
    """positions (N, 3) -> baseline energy per system (B,), float64; backward uses its forces."""

    @staticmethod
    def forward(ctx, positions: torch.Tensor, baseline: XTBBaseline, batch: AtomsBatch) -> torch.Tensor:
        energies, forces = [], []
        for atoms in batch.replace(positions=positions.detach().to(torch.float64)).to_atoms():
            e, f = baseline(atoms)
            energies.append(e)
            forces.append(f)
        f = torch.as_tensor(np.concatenate(forces), dtype=positions.dtype)
        ctx.save_for_backward(f, batch.system)
        return torch.tensor(energies, dtype=torch.float64)

    @staticmethod
    def backward(ctx, grad_energy: torch.Tensor):
        forces, system = ctx.saved_tensors
        return -forces * grad_energy.to(forces.dtype)[system].unsqueeze(-1), None, None


class DeltaPotential(Potential):
    """``baseline`` + ``correction`` (a trained :class:`~.neural.NeuralPotential`)."""

    def __init__(self, baseline: XTBBaseline, correction: Potential) -> None:
        super().__init__()
        self.baseline = baseline
        self.correction = correction
        self.cutoff = correction.cutoff
        self.max_atoms_per_chunk = correction.max_atoms_per_chunk

    @property
    def dtype(self) -> torch.dtype:
        return self.correction.dtype

    def check_elements(self, numbers, where: str = "input") -> None:
        self.correction.check_elements(numbers, where)

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        if batch.periodic:
            raise InputError("Δ-potential: the xTB baseline here handles molecules, not periodic cells")
        base = _BaselineEnergy.apply(batch.positions, self.baseline, batch)
        per_atom = (base / batch.counts.to(torch.float64))[batch.system]
        return self.correction.atomic_energies(batch) + per_atom
