"""The potential energy of a classical force field as a CV (PLUMED's ``ENERGY``), for OpenMM runs.

Biasing the energy needs no knowledge of the reaction: OPES_EXPLORE on it flattens the energy
distribution, which heats the configurational degrees of freedom where the energy is high
(a multicanonical-like ensemble) and so crosses barriers of any kind. It is the usual first,
"poor" CV that feeds a learned one (``neuralmd cv train`` on the explore run, reweighted by
exp(βV)).

Units: kJ/mol (as PLUMED and OpenMM). Inside OpenMM the CV is a ``CustomCVForce`` summing
copies of the force field's forces, so a grid bias on it stays inside OpenMM; the torch
module (for recording, bias updates and the exact ``PythonForce`` bias) evaluates the same
forces in a private OpenMM Reference context.
"""

from __future__ import annotations

import numpy as np
import openmm
import torch
from openmm import unit

from ..errors import InputError
from ..units import NM_IN_A
from .cvs import CV


def force_field_forces(system: openmm.System) -> list[openmm.Force]:
    """Copies of the energy terms of ``system`` (everything but the centre-of-mass remover and
    forces neuralmd added, whose names start with 'neuralmd')."""
    return [openmm.XmlSerializer.clone(f) for f in system.getForces()
            if not isinstance(f, openmm.CMMotionRemover) and not f.getName().startswith("neuralmd")]


class _Energy(torch.autograd.Function):
    """Energies (B, 1) in kJ/mol of positions (B, n, 3) in Å; gradient from OpenMM's forces."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cv: "PotentialEnergy") -> torch.Tensor:  # type: ignore[override]
        energies, grads = [], []
        for pos in x.detach().cpu().numpy():
            context = cv.context()
            context.setPositions(pos / NM_IN_A)
            state = context.getState(getEnergy=True, getForces=True)
            energies.append(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
            forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
            grads.append(-np.asarray(forces) / NM_IN_A)
        ctx.save_for_backward(torch.as_tensor(np.stack(grads), dtype=x.dtype, device=x.device))
        return torch.tensor(energies, dtype=x.dtype, device=x.device).unsqueeze(-1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        (grad,) = ctx.saved_tensors
        return grad_out.view(-1, 1, 1) * grad, None


class PotentialEnergy(CV):
    """The force-field potential energy (kJ/mol) of an OpenMM system, biases excluded.

    Created unbound by the CV specification ``energy``; :meth:`bind` attaches it to a System
    (the sampling runs do this before adding biases).
    """

    def __init__(self) -> None:
        super().__init__()
        self.names = ["energy"]
        self._xml: str | None = None
        self._context: openmm.Context | None = None
        self.degrees_of_freedom = 0

    def bind(self, system: openmm.System) -> None:
        """Take the energy terms of ``system`` (see :func:`force_field_forces`) and count its
        degrees of freedom (3 per massive particle, less constraints and the centre of mass
        where a remover holds it)."""
        massive = sum(system.getParticleMass(i).value_in_unit(unit.dalton) > 0 for i in range(system.getNumParticles()))
        fixed_com = any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces())
        self.degrees_of_freedom = 3 * massive - system.getNumConstraints() - (3 if fixed_com else 0)
        copy = openmm.System()
        for i in range(system.getNumParticles()):
            copy.addParticle(system.getParticleMass(i))
        copy.setDefaultPeriodicBoxVectors(*system.getDefaultPeriodicBoxVectors())
        for force in force_field_forces(system):
            copy.addForce(force)
        self._xml, self._context = openmm.XmlSerializer.serialize(copy), None

    def equipartition_std_kjmol(self, temperature_K: float) -> float:
        """The potential energy's standard deviation (kJ/mol) of a harmonic system with these
        degrees of freedom at ``temperature_K``: √(f/2) k_BT. Anharmonic systems fluctuate more;
        a probe of a few ps, which sees only the fast vibrations, fluctuates less."""
        from .fes import kT_kjmol

        return float(np.sqrt(max(self.degrees_of_freedom, 1) / 2) * kT_kjmol(temperature_K))

    @property
    def bound(self) -> bool:
        """Whether :meth:`bind` has given this CV a force field."""
        return self._xml is not None

    def _system(self) -> openmm.System:
        if self._xml is None:
            raise InputError("CV 'energy': the force-field energy is a CV of OpenMM runs (--engine openmm); "
                             "it has no system to evaluate here")
        return openmm.XmlSerializer.deserialize(self._xml)

    def context(self) -> openmm.Context:
        """A Reference-platform context of the bound energy terms (built on first use)."""
        if self._context is None:
            self._context = openmm.Context(self._system(), openmm.VerletIntegrator(0.001),
                                           openmm.Platform.getPlatformByName("Reference"))
        return self._context

    def openmm_force(self) -> openmm.CustomCVForce:
        """A force whose energy is this CV: the sum of copies of the bound system's terms."""
        forces = force_field_forces(self._system())
        force = openmm.CustomCVForce("+".join(f"e{k}" for k in range(len(forces))))
        for k, f in enumerate(forces):
            force.addCollectiveVariable(f"e{k}", f)
        force.setName("neuralmd-cv-energy")
        return force

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_context"] = None  # an OpenMM Context does not pickle; it is rebuilt on first use
        return state

    def forward(self, x: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        return _Energy.apply(x, self)


def energy_cvs(cv: CV | None) -> list[PotentialEnergy]:
    """The :class:`PotentialEnergy` CVs inside ``cv`` (itself, or parts of a Stack)."""
    if cv is None:
        return []
    return [m for m in cv.modules() if isinstance(m, PotentialEnergy)]
