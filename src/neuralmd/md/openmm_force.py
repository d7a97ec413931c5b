"""A Potential (or any energy term of the batch) inside OpenMM through ``openmm.PythonForce``,
so OpenMM's integrators, reporters and barostats can drive it.

OpenMM works in nm and kJ/mol; the conversion happens here, once per call.
"""

from __future__ import annotations

import numpy as np
import openmm
import torch
from ase import Atoms
from openmm import unit

from ..models.base import Potential
from ..state import AtomsBatch
from ..units import EV_IN_KJMOL, NM_IN_A
from .integrators import ForceFn
from .simulation import make_force_fn

def python_force(force_fn: ForceFn, template: AtomsBatch, periodic: bool, name: str) -> openmm.PythonForce:
    """An ``openmm.PythonForce`` evaluating ``force_fn`` on ``template`` (one system) with the
    positions (and, if ``periodic``, the box) of each OpenMM state; nm and kJ/mol converted here."""

    def compute(state: openmm.State):
        pos = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)) * NM_IN_A
        changes = {"positions": torch.as_tensor(pos, dtype=torch.float64)}
        if periodic:
            box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)) * NM_IN_A
            changes["cell"] = torch.as_tensor(box, dtype=torch.float64).unsqueeze(0)
        energy, forces = force_fn(template.replace(**changes))
        return float(energy[0]) * EV_IN_KJMOL, forces.numpy() * EV_IN_KJMOL * NM_IN_A

    force = openmm.PythonForce(compute)
    force.setUsesPeriodicBoundaryConditions(periodic)
    force.setName(name)
    return force


def potential_force(potential: Potential, atoms: Atoms) -> openmm.PythonForce:
    """An ``openmm.PythonForce`` that evaluates ``potential`` on ``atoms``' element types.

    ``potential`` is any :class:`~neuralmd.models.base.Potential`. Periodic cells are taken
    from the OpenMM state each call when ``atoms`` is periodic.
    """
    potential.check_elements(atoms.numbers, where="OpenMM system")
    template = AtomsBatch.from_atoms([atoms], dtype=torch.float64)
    return python_force(make_force_fn(potential), template, bool(atoms.pbc.all()), "neuralmd")


def openmm_system(potential: Potential, atoms: Atoms) -> openmm.System:
    """An OpenMM System of ``atoms`` (masses in amu, box if periodic) whose only force is the
    potential. Add thermostats, barostats or other forces to it as usual."""
    system = openmm.System()
    for mass in atoms.get_masses():
        system.addParticle(mass)
    if atoms.pbc.all():
        a, b, c = (openmm.Vec3(*(v / NM_IN_A)) for v in atoms.cell.array)
        system.setDefaultPeriodicBoxVectors(a, b, c)
    system.addForce(potential_force(potential, atoms))
    return system
