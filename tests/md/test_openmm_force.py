"""The potential inside OpenMM (PythonForce) and ASE gives the native engine's forces."""

from __future__ import annotations

import numpy as np
import openmm
import pytest
import torch
from ase.build import molecule
from openmm import unit

from neuralmd.md.ase_calculator import NeuralCalculator
from neuralmd.md.openmm_force import EV_IN_KJMOL, openmm_system
from neuralmd.md.simulation import make_force_fn
from neuralmd.models import load_potential
from neuralmd.state import AtomsBatch


def test_openmm_ase_and_native_forces_agree(trained_model):
    potential = load_potential(trained_model, dtype=torch.float64)
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=5)
    energy, native = make_force_fn(potential)(AtomsBatch.from_atoms([atoms]))

    context = openmm.Context(openmm_system(potential, atoms), openmm.VerletIntegrator(0.0005),
                             openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions / 10.0)
    state = context.getState(getEnergy=True, getForces=True)
    omm_forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    omm_forces = np.asarray(omm_forces) / EV_IN_KJMOL / 10.0
    omm_energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_IN_KJMOL
    np.testing.assert_allclose(omm_forces, native.numpy(), atol=1e-5)
    assert abs(omm_energy - float(energy[0])) < 1e-6

    atoms.calc = NeuralCalculator(potential)
    np.testing.assert_allclose(atoms.get_forces(), native.numpy(), atol=1e-5)
    assert abs(atoms.get_potential_energy() - float(energy[0])) < 1e-8


def test_openmm_integrator_conserves_energy_with_the_potential(trained_model):
    potential = load_potential(trained_model, dtype=torch.float64)
    atoms = molecule("CH3CH2OH")
    integrator = openmm.VerletIntegrator(0.25 * unit.femtosecond)
    context = openmm.Context(openmm_system(potential, atoms), integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions / 10.0)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    totals = []
    for _ in range(20):
        integrator.step(10)
        s = context.getState(getEnergy=True)
        totals.append((s.getPotentialEnergy() + s.getKineticEnergy()).value_in_unit(unit.kilojoule_per_mole))
    kinetic = s.getKineticEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert kinetic > 1.0
    assert np.ptp(totals) < 0.05 * 9 * 1.5 * 0.0083145 * 300


def test_periodic_water_under_openmms_monte_carlo_barostat(any_float64_model):
    """64 waters of the DeePMD data in OpenMM with the potential as a PythonForce and a
    MonteCarloBarostat at 5000 bar: the box moves, and at every step the energy OpenMM reports is
    the potential's energy of OpenMM's positions in OpenMM's current box (the box reaches the
    force)."""
    from neuralmd.data.io import read_frames
    from neuralmd.units import NM_IN_A

    from ..conftest import shared_file

    frame = read_frames(shared_file("deepmd_water/data_0"), require_labels=False)[0]
    system = openmm_system(any_float64_model, frame)
    system.addForce(openmm.MonteCarloBarostat(5000 * unit.bar, 300 * unit.kelvin, 2))
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 5 / unit.picosecond, 0.25 * unit.femtosecond)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(frame.positions / NM_IN_A)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    volumes = []
    for _ in range(10):
        integrator.step(4)
        state = context.getState(getEnergy=True, getPositions=True)
        box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)) * NM_IN_A
        volumes.append(abs(np.linalg.det(box)))
        moved = frame.copy()
        moved.positions = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)) * NM_IN_A
        moved.cell = box
        ours = float(any_float64_model(AtomsBatch.from_atoms([moved]), forces=False)["energy"][0]) * EV_IN_KJMOL
        assert state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) == pytest.approx(ours, rel=1e-10)
    assert len(set(np.round(volumes, 6))) > 1  # the barostat changed the box
