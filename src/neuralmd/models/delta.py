"""Δ-learning: a cheap baseline plus a learned correction (hybrid QM/ML).

E(x) = E_baseline(x) + E_correction(x). The baseline is any
:class:`~neuralmd.reference.base.Labeler` that a model file can rebuild: GFN2-xTB or GFN1-xTB
through tblite, or a classical force field (an OpenMM System, stored in the model file as XML).
It is not a torch model: :class:`_BaselineEnergy` is an autograd function whose forward returns
the baseline energies and whose backward returns its analytic forces, so the Δ-potential is an
ordinary :class:`~.base.Potential` (forces exactly minus the gradient of its energy) and works
wherever one does (MD, sampling, active learning, the ASE calculator). The baseline's energy is
spread evenly over a system's atoms in ``atom_energy``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..reference.base import Labeler
from ..state import AtomsBatch
from .base import Potential

def baseline_from_spec(spec: str) -> Labeler:
    """The baseline named on the command line: ``xtb`` (GFN2-xTB), ``gfn1`` (GFN1-xTB), or
    ``openmm:FILE`` (a classical force field: a serialised OpenMM System .xml, or a .pdb
    topology with amber99sb-ildn)."""
    from ..reference.factory import XTB_METHODS, make_labeler
    from ..reference.openmm_ff import OpenMMLabeler

    if spec in XTB_METHODS:
        return make_labeler(spec)
    if spec.startswith("openmm:"):
        return OpenMMLabeler.from_file(spec.removeprefix("openmm:"))
    raise InputError(f"baseline: {spec!r}; expected one of {sorted(XTB_METHODS)} or openmm:SYSTEM.xml|TOPOLOGY.pdb")


def baseline_settings(baseline: Labeler) -> dict[str, Any]:
    """What a model file records of its baseline (enough to rebuild it with :func:`make_baseline`)."""
    from ..reference.openmm_ff import OpenMMLabeler

    return {"kind": "openmm" if isinstance(baseline, OpenMMLabeler) else "xtb", **baseline.settings()}


def make_baseline(settings: dict[str, Any]) -> Labeler:
    """The baseline described by a model file's ``baseline`` entry."""
    from ..reference.openmm_ff import OpenMMLabeler
    from ..reference.xtb import XTBLabeler

    if settings.get("kind") == "xtb":
        return XTBLabeler(settings.get("method", "GFN2-xTB"), settings.get("charge", 0.0), settings.get("uhf", 0))
    if settings.get("kind") == "openmm":
        return OpenMMLabeler(settings["system_xml"])
    raise InputError(f"baseline: kind {settings.get('kind')!r} is not known (expected 'xtb' or 'openmm')")


class _BaselineEnergy(torch.autograd.Function):
    """positions (N, 3) -> baseline energy per system (B,), float64; backward uses its forces."""

    @staticmethod
    def forward(ctx, positions: torch.Tensor, baseline: Labeler, batch: AtomsBatch) -> torch.Tensor:
        energies, forces = [], []
        for atoms in batch.replace(positions=positions.detach().to(torch.float64)).to_atoms():
            e, f = baseline.compute(atoms)
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

    def __init__(self, baseline: Labeler, correction: Potential) -> None:
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
            raise InputError("Δ-potential: the baselines here handle molecules, not periodic cells")
        base = _BaselineEnergy.apply(batch.positions, self.baseline, batch)
        per_atom = (base / batch.counts.to(torch.float64))[batch.system]
        return self.correction.atomic_energies(batch) + per_atom
