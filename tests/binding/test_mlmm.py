"""ML/MM by mechanical embedding on CB7–B2: the mixed system's energy is
E_MM(complex) − E_MM(guest alone, its own prmtop, vacuum) + E_ML(guest) to 1e-6 in float64, its
forces are minus the energy's finite differences, and a model without one of the guest's
elements is refused."""

from __future__ import annotations

import numpy as np
import openmm
import pytest
import torch
from ase import Atoms
from openmm import app, unit

from neuralmd.binding.mlmm import embed_guest
from neuralmd.binding.system import host_guest
from neuralmd.errors import InputError
from neuralmd.models import NeuralPotential
from neuralmd.state import AtomsBatch
from neuralmd.units import EV_IN_KJMOL
from tests.binding.cb7 import CB7, cb7_complex



def _model(elements) -> NeuralPotential:
    torch.manual_seed(0)
    return NeuralPotential(elements, scale=0.5, shift=-0.1, architecture="painn", features=8, interactions=1,
                           cutoff=4.0, num_basis=6).double()


@pytest.fixture(scope="module")
def complex_parts():
    parts, spec = cb7_complex(constraints="None")
    return parts, host_guest(parts.topology, spec)[1]


def _energy(system: openmm.System, positions_nm: np.ndarray) -> float:
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions_nm)
    return context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def test_mixed_energy_is_mm_minus_guest_internal_plus_ml_and_forces_match_finite_differences(complex_parts):
    parts, guest = complex_parts
    numbers = parts.numbers
    model = _model(sorted({int(numbers[i]) for i in guest}))
    rng = np.random.default_rng(0)
    x = np.asarray(parts.positions.value_in_unit(unit.nanometer)) + rng.normal(0, 0.002, (len(numbers), 3))
    mm = _energy(parts.system, x)
    ligand = app.AmberPrmtopFile(str(CB7 / "ligand.prmtop")).createSystem(nonbondedMethod=app.NoCutoff,
                                                                           constraints=None)
    guest_internal = _energy(ligand, x[guest])
    batch = AtomsBatch.from_atoms([Atoms(numbers=numbers[guest], positions=x[guest] * 10.0)], dtype=torch.float64)
    ml = float(model(batch)["energy"][0].detach()) * EV_IN_KJMOL
    mixed = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(parts.system))
    embed_guest(mixed, guest, numbers, model)
    e_mixed = _energy(mixed, x)
    assert e_mixed == pytest.approx(mm - guest_internal + ml, abs=1e-6)
    assert abs(guest_internal) > 1.0 and abs(ml) > 1e-3  # both terms are really there
    context = openmm.Context(mixed, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(x)
    forces = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    h = 1e-5
    for atom in (guest[0], guest[5], 3):  # two guest atoms (ML + environment), one host atom (MM)
        for axis in range(3):
            plus, minus = x.copy(), x.copy()
            plus[atom, axis] += h
            minus[atom, axis] -= h
            numeric = -(_energy(mixed, plus) - _energy(mixed, minus)) / (2 * h)
            assert forces[atom, axis] == pytest.approx(numeric, rel=1e-4, abs=1e-3)


def test_a_model_without_a_guest_element_is_refused(complex_parts):
    parts, guest = complex_parts
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(parts.system))
    with pytest.raises(InputError, match="guest"):
        embed_guest(system, guest, parts.numbers, _model([1, 6]))
    assert system.getNumForces() == parts.system.getNumForces()  # nothing changed
