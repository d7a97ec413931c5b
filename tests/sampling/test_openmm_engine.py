"""Biases inside OpenMM: alanine dipeptide (amber99sb-ildn, vacuum) biased along phi and psi
through the exact PythonForce bias (the grid bias is tested in test_sampling_runs)."""

from __future__ import annotations

import pytest
import torch
from openmm import unit

from neuralmd.sampling.biases import OPES
from neuralmd.sampling.colvar import read_colvar
from neuralmd.sampling.cvs import Stack, Torsion
from neuralmd.sampling.openmm_engine import OpenMMRun, OpenMMSettings
from neuralmd.units import EV_IN_KJMOL
from tests.conftest import shared_file

PHI, PSI = (4, 6, 8, 14), (6, 8, 14, 16)


def test_opes_on_phi_in_openmm_updates_the_force_and_crosses_the_barrier(tmp_path):
    cv = Stack([Torsion(*PHI, name="phi"), Torsion(*PSI, name="psi")])
    bias = OPES(cv, sigma=[0.3, 0.3], barrier_kjmol=40, pace=250, temperature_K=300)
    settings = OpenMMSettings(pdb=str(shared_file("alanine_dipeptide/ala2.pdb")), report_every=250,
                              total_steps=30_000, seed=1)
    run = OpenMMRun(settings, tmp_path, bias, grid=False)
    run.simulation.system.getForce(run.simulation.system.getNumForces() - 1).setForceGroup(1)
    run.simulation.context.reinitialize(preserveState=True)
    run.run()
    # the OpenMM force sees the bias as it is now (not a stale copy taken at context creation)
    state = run.simulation.context.getState(getEnergy=True, groups={1})
    omm_bias = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    with torch.no_grad():
        ours = float(bias(run.md_state().batch)[0]) * EV_IN_KJMOL
    assert omm_bias == pytest.approx(ours, abs=1e-6)
    assert bias.heights.numel() > 5
    phi = read_colvar(tmp_path / "colvar.csv")["phi"]
    assert (phi > 0).any() and (phi < 0).any()  # the rare phi > 0 basin was reached
