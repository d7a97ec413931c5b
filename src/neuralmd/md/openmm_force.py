"""A Potential (or any energy term of the batch) inside OpenMM through ``openmm.PythonForce``,
so OpenMM's integrators, reporters and barostats can drive it.

OpenMM works in nm and kJ/mol; the conversion happens here, once per call.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import openmm
import torch
from ase import Atoms, units
from openmm import unit

from ..state import AtomsBatch

#: 1 eV in kJ/mol.
EV_IN_KJMOL = units.mol / units.kJ
#: 1 nm in Å.
NM_IN_A = 10.0


def potential_force(potential: Callable[..., dict], atoms: Atoms) -> openmm.PythonForce:
    """An ``openmm.PythonForce`` that evaluates ``potential`` on ``atoms``' element types.

    ``potential`` is any :class:`~neuralmd.models.base.Potential`. Periodic cells are taken
    from the OpenMM state each call when ``atoms`` is periodic.
    """
    if hasattr(potential, "check_elements"):
        potential.check_elements(atoms.numbers, where="OpenMM system")
    template = AtomsBatch.from_atoms([atoms], dtype=torch.float64)
    periodic = bool(atoms.pbc.all())

    def compute(state: openmm.State):
        pos = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)) * NM_IN_A
        changes = {"positions": torch.as_tensor(pos, dtype=torch.float64)}
        if periodic:
            box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)) * NM_IN_A
            changes["cell"] = torch.as_tensor(box, dtype=torch.float64).unsqueeze(0)
        out = potential(template.replace(**changes))
        energy = float(out["energy"][0].detach()) * EV_IN_KJMOL
        forces = out["forces"].detach().double().numpy() * EV_IN_KJMOL * NM_IN_A
        return energy, forces

    force = openmm.PythonForce(compute)
    force.setUsesPeriodicBoundaryConditions(periodic)
    force.setName("neuralmd")
    return force


def openmm_system(potential: Callable[..., dict], atoms: Atoms) -> openmm.System:
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
