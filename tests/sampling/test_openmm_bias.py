"""Biases inside OpenMM: alanine dipeptide (amber99sb-ildn, vacuum) biased along phi and psi
through the exact PythonForce bias (the grid bias is tested in test_runs)."""

from __future__ import annotations

import pytest
import torch
from openmm import unit

from neuralmd.sampling.biases import OPES
from neuralmd.sampling.colvar import read_colvar
from neuralmd.sampling.cvs import Stack, Torsion
from neuralmd.md.openmm_engine import OpenMMSettings
from neuralmd.sampling.openmm_bias import biased_run
from neuralmd.units import EV_IN_KJMOL
from tests.conftest import shared_file

PHI, PSI = (4, 6, 8, 14), (6, 8, 14, 16)


def test_opes_on_phi_in_openmm_updates_the_force_and_crosses_the_barrier(tmp_path):
    cv = Stack([Torsion(*PHI, name="phi"), Torsion(*PSI, name="psi")])
    bias = OPES(cv, sigma=[0.3, 0.3], barrier_kjmol=40, pace=250, temperature_K=300)
    settings = OpenMMSettings(pdb=str(shared_file("alanine_dipeptide/ala2.pdb")), report_every=250,
                              total_steps=30_000, seed=1)
    run = biased_run(settings, tmp_path, bias, grid=False)
    run.simulation.system.getForce(run.simulation.system.getNumForces() - 1).setForceGroup(1)
    run.simulation.context.reinitialize(preserveState=True)
    run.run()
    # the OpenMM force sees the bias as it is now (not a stale copy taken at context creation)
    state = run.simulation.context.getState(getEnergy=True, groups={1})
    omm_bias = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    with torch.no_grad():
        ours = float(bias(run.current_state().batch)[0]) * EV_IN_KJMOL
    assert omm_bias == pytest.approx(ours, abs=1e-6)
    assert bias.heights.numel() > 5
    phi = read_colvar(tmp_path / "colvar.csv")["phi"]
    assert (phi > 0).any() and (phi < 0).any()  # the rare phi > 0 basin was reached


def test_an_exploding_openmm_run_stops_with_the_last_good_frame_and_a_clean_bias(tmp_path):
    """A 12 fs step without constraints blows up: the run stops with SimulationUnstable at
    the first non-finite state, before a NaN reaches the bias, and keeps the last good frame."""
    from ase.io import read

    from neuralmd.md.simulation import SimulationUnstable

    settings = OpenMMSettings(pdb=str(shared_file("alanine_dipeptide/ala2.pdb")), temperature_K=300.0, seed=1,
                              timestep_fs=12.0, constraints="None", report_every=100, checkpoint_every=10**9,
                              total_steps=20_000)
    bias = OPES(Torsion(*PHI), sigma=[0.3], barrier_kjmol=30.0, pace=50, temperature_K=300.0)
    run = biased_run(settings, tmp_path, bias, grid=False)
    with pytest.raises(SimulationUnstable, match="non-finite") as err:
        run.run()
    assert run.step < 20_000 and "last_good.xyz" in str(err.value)
    good = read(tmp_path / "last_good.xyz")
    assert len(good) == 22 and torch.isfinite(torch.as_tensor(good.positions)).all()
    assert torch.isfinite(bias.centres).all() and torch.isfinite(bias.sum_w)


GRID_EDGE = """
import numpy as np, openmm
from openmm import unit
from neuralmd.sampling.biases import OPES
from neuralmd.sampling.cvs import Distance
from neuralmd.sampling.openmm_bias import GridBias
system = openmm.System()
for _ in range(2):
    system.addParticle(12.0)
bond = openmm.HarmonicBondForce()
bond.addBond(0, 1, 0.15, 1000.0)
system.addForce(bond)
# 32 knots over the grid range a multithermal run's energy once had: OpenMM's last knot falls an
# ulp short of its top
grid = GridBias(OPES(Distance(0, 1), sigma=[0.1], barrier_kjmol=10, pace=10, temperature_K=300), system,
                ranges=[(-13.491631734546697, 52.70753914306916)], spacing=[3.0])
grid.add_to(system)
context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
for r_nm in (5.270753914306916, 6.0, 0.15):
    context.setPositions([[0, 0, 0], [r_nm, 0, 0]])
    state = context.getState(getEnergy=True, getForces=True)
    assert np.isfinite(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
print("ok")
"""


def test_grid_bias_holds_a_cv_beyond_its_range_at_the_edge_without_aborting():
    """A non-periodic CV at or past the top of its grid: the bias is held at its edge value. The
    clamp used to sit exactly on the range's top, which OpenMM's last spline knot can miss by an
    ulp: the spline then threw inside OpenMM's C++ step and the process aborted (seen in a
    multithermal run whose energy left its grid). Run in a child process, since that was an abort."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", GRID_EDGE], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
