"""Biases inside OpenMM: alanine dipeptide (amber99sb-ildn, vacuum) biased along phi."""

from __future__ import annotations

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from neuralmd.md.openmm_force import EV_IN_KJMOL
from neuralmd.sampling.biases import OPES
from neuralmd.sampling.cvs import Stack, Torsion
from neuralmd.sampling.openmm_engine import BiasedOpenMM, bias_force
from tests.conftest import shared_file

PHI, PSI = (4, 6, 8, 14), (6, 8, 14, 16)


def _simulation(bias):
    pdb = app.PDBFile(str(shared_file("alanine_dipeptide/ala2.pdb")))
    ff = app.ForceField("amber99sbildn.xml")
    system = ff.createSystem(pdb.topology, nonbondedMethod=app.NoCutoff, constraints=app.HBonds)
    force = bias_force(bias, system)
    force.setForceGroup(1)
    system.addForce(force)
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1 / unit.picosecond, 2 * unit.femtosecond)
    integrator.setRandomNumberSeed(1)
    sim = app.Simulation(pdb.topology, system, integrator, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(pdb.positions)
    sim.context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    return sim


def test_opes_on_phi_in_openmm_updates_the_force_and_crosses_the_barrier():
    cv = Stack([Torsion(*PHI, name="phi"), Torsion(*PSI, name="psi")])
    bias = OPES(cv, sigma=[0.3, 0.3], barrier_kjmol=40, pace=250, temperature_K=300, periods=[2 * np.pi] * 2)
    sim = _simulation(bias)
    driver = BiasedOpenMM(sim, bias, record_every=250)
    driver.run(30_000)
    # the OpenMM force sees the bias as it is now (not a stale copy taken at context creation)
    state = sim.context.getState(getEnergy=True, getPositions=True, groups={1})
    omm_bias = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    with torch.no_grad():
        ours = float(bias.energy_of_cv(bias.cv_values(driver._state().batch))[0]) * EV_IN_KJMOL
    assert omm_bias == pytest.approx(ours, abs=1e-6)
    assert bias.heights.numel() > 5
    phi = np.array(driver.cv)[:, 0]
    assert (phi > 0).any() and (phi < 0).any()  # the rare phi > 0 basin was reached
