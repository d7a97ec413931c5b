"""ML/MM with mechanical embedding, as openmm-ml's ``createMixedSystem`` builds it: the guest's
internal energy from a neuralmd potential, everything else from the force field.

E = E_MM(all) − E_MM(guest internal) + E_ML(guest)

The guest-internal MM terms removed are the bonds, angles and torsions (impropers included)
whose atoms all lie in the guest, and its guest–guest nonbonded pairs (Coulomb and Lennard-Jones,
1-4 pairs included, zeroed as exceptions). Guest–environment nonbonded terms stay, and so does
the implicit-solvent term (the guest's solvation is its interaction with the environment; GB
energies do not split into pairs). The potential sees the guest's atoms only, through an
``openmm.PythonForce``.
"""

from __future__ import annotations

from itertools import combinations
from typing import Sequence

import numpy as np
import openmm
import torch
from ase import Atoms
from openmm import unit

from ..errors import InputError
from ..md.openmm_engine import FixedTerm
from ..models.base import Potential
from ..state import AtomsBatch
from ..units import EV_IN_KJMOL, NM_IN_A

#: bonded forces whose guest-internal terms are removed: (count, get, add, atoms per term)
BONDED = {openmm.HarmonicBondForce: ("getNumBonds", "getBondParameters", "addBond", 2),
          openmm.HarmonicAngleForce: ("getNumAngles", "getAngleParameters", "addAngle", 3),
          openmm.PeriodicTorsionForce: ("getNumTorsions", "getTorsionParameters", "addTorsion", 4)}
#: forces kept as they are (environment terms and the implicit solvent)
KEPT = (openmm.NonbondedForce, openmm.GBSAOBCForce, openmm.CustomGBForce, openmm.CMMotionRemover,
        openmm.MonteCarloBarostat, openmm.PythonForce)


def bonded_terms(force: openmm.Force, guest: set[int], internal: bool) -> openmm.Force:
    """A copy of a bonded force (one of :data:`BONDED`) with only the terms whose atoms all lie
    in the guest (``internal``) or only the others."""
    count, get, add, n = BONDED[type(force)]
    out = type(force)()
    out.setForceGroup(force.getForceGroup())
    out.setUsesPeriodicBoundaryConditions(force.usesPeriodicBoundaryConditions())
    for k in range(getattr(force, count)()):
        params = getattr(force, get)(k)
        if (set(params[:n]) <= guest) == internal:
            getattr(out, add)(*params)
    return out


def remove_guest_internal(system: openmm.System, guest: Sequence[int]) -> None:
    """Remove the guest's internal MM energy from ``system`` in place (see the module docstring)."""
    guest_set = {int(i) for i in guest}
    for k in reversed(range(system.getNumForces())):
        force = system.getForce(k)
        if type(force) in BONDED:
            replacement = bonded_terms(force, guest_set, internal=False)
            system.removeForce(k)
            system.addForce(replacement)
        elif isinstance(force, openmm.NonbondedForce):
            for i, j in combinations(sorted(guest_set), 2):
                force.addException(i, j, 0.0, 1.0, 0.0, True)
        elif not isinstance(force, KEPT):
            raise InputError(f"ML/MM: the force field has a {type(force).__name__}, which the mechanical embedding "
                             f"cannot split into guest-internal and environment terms")


class _GuestEnergy:
    """``PythonForce`` callback (picklable, as a force inside a ``CustomCVForce`` must be): the
    potential's energy (kJ/mol) of the guest's atoms and its forces, zero on the other atoms."""

    def __init__(self, potential: Potential, template: AtomsBatch, guest: np.ndarray, n_atoms: int) -> None:
        self.potential, self.template, self.guest, self.n_atoms = potential, template, guest, n_atoms

    def __call__(self, state: openmm.State) -> tuple[float, np.ndarray]:
        pos = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer))[self.guest] * NM_IN_A
        out = self.potential(self.template.replace(positions=torch.as_tensor(pos, dtype=torch.float64)))
        forces = np.zeros((self.n_atoms, 3))
        forces[self.guest] = out["forces"].detach().to(torch.float64).numpy() * EV_IN_KJMOL * NM_IN_A
        return float(out["energy"][0].detach()) * EV_IN_KJMOL, forces


def guest_force(potential: Potential, numbers: Sequence[int], guest: Sequence[int], n_atoms: int,
                masses: Sequence[float]) -> openmm.PythonForce:
    """An ``openmm.PythonForce`` with ``potential``'s energy of the guest atoms (kJ/mol), its
    forces on them and zero on every other atom."""
    guest = np.asarray(guest, dtype=int)
    potential.check_elements([int(numbers[i]) for i in guest], where="the guest")
    atoms = Atoms(numbers=[int(numbers[i]) for i in guest], masses=[float(masses[i]) for i in guest])
    template = AtomsBatch.from_atoms([atoms], dtype=torch.float64)
    force = openmm.PythonForce(_GuestEnergy(potential, template, guest, n_atoms))
    force.setName("neuralmd-ml-guest")
    return force


def embed_guest(system: openmm.System, guest: Sequence[int], numbers: Sequence[int], potential: Potential) -> None:
    """Turn ``system`` into the ML/MM system in place: its guest-internal MM terms removed and
    ``potential`` on the guest added (openmm-ml's mechanical embedding)."""
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(system.getNumParticles())]
    force = guest_force(potential, numbers, guest, system.getNumParticles(), masses)  # checks the elements first
    remove_guest_internal(system, guest)
    system.addForce(force)


class MLGuestTerm(FixedTerm):
    """ML/MM as an :class:`~neuralmd.md.openmm_engine.OpenMMTerm`: :meth:`add_to` turns the
    run's MM system into the mixed one (the stored system.xml stays MM, so a resumed run rebuilds
    the same mixture from the stored model)."""

    def __init__(self, potential: Potential, guest: Sequence[int], numbers: Sequence[int]) -> None:
        self.potential, self.guest, self.numbers = potential, list(guest), list(numbers)

    def add_to(self, system: openmm.System) -> None:
        embed_guest(system, self.guest, self.numbers, self.potential)
