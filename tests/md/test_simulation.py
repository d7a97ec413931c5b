"""The Simulation loop: batching, bit-exact resume after kill -9, guards, trajectories, NVE drift."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import molecule

from neuralmd.errors import InputError
from neuralmd.md.integrators import kinetic_energy
from neuralmd.md.reporters import BaseReporter
from neuralmd.md.simulation import Simulation, SimulationUnstable
from neuralmd.models import load_potential
from neuralmd.state import AtomsBatch

from ..conftest import shared_file
from .potentials import HarmonicWell


def _ethanols(n: int):
    frames = []
    for k in range(n):
        a = molecule("CH3CH2OH")
        a.rattle(0.02, seed=k)
        frames.append(a)
    return frames


def test_batch_of_replicas_equals_separate_runs(trained_model):
    potential = load_potential(trained_model, dtype=torch.float64)
    frames = _ethanols(3)
    batched = Simulation(potential, AtomsBatch.from_atoms(frames), temperature_K=400, seed=10)
    batched.run(60)
    for b, atoms in enumerate(frames):
        single = Simulation(potential, AtomsBatch.from_atoms([atoms]), temperature_K=400, seed=10 + b)
        single.run(60)
        np.testing.assert_allclose(batched.state.batch.positions[9 * b : 9 * b + 9].numpy(),
                                   single.state.batch.positions.numpy(), atol=1e-9)
        np.testing.assert_allclose(batched.state.batch.velocities[9 * b : 9 * b + 9].numpy(),
                                   single.state.batch.velocities.numpy(), atol=1e-9)


RUN = textwrap.dedent("""
    import os, signal, sys, torch
    from ase.build import molecule
    from neuralmd.md.simulation import Simulation
    from neuralmd.models import load_potential
    from neuralmd.state import AtomsBatch
    torch.set_num_threads(1)
    potential = load_potential(sys.argv[1], dtype=torch.float64)
    kill_at = int(sys.argv[3])
    def killer(state):
        if state.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    if sys.argv[4] == "npt":  # 27 waters at two pressures, the box wider than twice the 5 Å cutoff
        from ase import Atoms
        frames = []
        for _ in range(2):
            box = Atoms(cell=[10.8, 10.8, 10.8], pbc=True)
            for i in range(27):
                w = molecule("H2O")
                w.translate([3.6 * (i // 9 + 0.5), 3.6 * (i // 3 % 3 + 0.5), 3.6 * (i % 3 + 0.5)])
                box += w
            frames.append(box)
        extra = dict(ensemble="npt", thermostat="csvr", pressure_bar=[1, 1000], tau_p_ps=0.5,
                     compressibility_per_bar=2e-4, timestep_fs=0.25)  # the boxes move by ~1 %
    else:
        frames, extra = [molecule("CH3CH2OH"), molecule("CH3CH2OH")], {}
    sim = Simulation(potential, AtomsBatch.from_atoms(frames), temperature_K=[300, 500], seed=3,
                     report_every=10, checkpoint_every=40, run_dir=sys.argv[2], stop_conditions=[killer], **extra)
    sim.run(120)
""")


@pytest.mark.parametrize("ensemble", ["nvt", "npt"])
def test_resume_after_kill_reaches_the_same_final_state(tmp_path, trained_model, ensemble):
    """kill -9 at step 70 (checkpoint at 40), resume: the same final state, log and
    trajectories as an uninterrupted run; under NPT also the same cells."""
    import MDAnalysis as mda

    script = tmp_path / "run.py"
    script.write_text(RUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, str(script), str(trained_model), str(tmp_path / "a"), "70", ensemble],
                            env=env)
    assert killed.returncode == -signal.SIGKILL
    # the trajectory left by the kill is readable up to its last frame (step 70)
    u = mda.Universe(str(tmp_path / "a" / "traj_001.pdb"), str(tmp_path / "a" / "traj_001.h5md"))
    assert len(u.trajectory) == 8
    u.trajectory.close()

    potential = load_potential(trained_model, dtype=torch.float64)
    resumed = Simulation.resume(tmp_path / "a", potential)
    assert resumed.state.step == 40
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess: bit-for-bit needs the same reduction order
    try:
        resumed.run()
    finally:
        torch.set_num_threads(threads)
    straight = subprocess.run([sys.executable, str(script), str(trained_model), str(tmp_path / "b"), "-1", ensemble],
                              env=env)
    assert straight.returncode == 0
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 120
    assert torch.equal(a["batch"]["positions"], b["batch"]["positions"])
    assert torch.equal(a["batch"]["velocities"], b["batch"]["velocities"])
    assert torch.equal(a["batch"]["cell"], b["batch"]["cell"])
    if ensemble == "npt":  # the boxes moved, each its own way
        assert not torch.allclose(a["batch"]["cell"][0], a["batch"]["cell"][1])
    assert (tmp_path / "a" / "log.csv").read_text() == (tmp_path / "b" / "log.csv").read_text()
    for name in ("traj_000", "traj_001"):
        ua = mda.Universe(str(tmp_path / "a" / f"{name}.pdb"), str(tmp_path / "a" / f"{name}.h5md"))
        ub = mda.Universe(str(tmp_path / "b" / f"{name}.pdb"), str(tmp_path / "b" / f"{name}.h5md"))
        assert len(ua.trajectory) == len(ub.trajectory) == 13
        ua.trajectory[-1]
        ub.trajectory[-1]
        np.testing.assert_array_equal(ua.atoms.positions, ub.atoms.positions)
        assert ua.trajectory.time == pytest.approx(0.06 if ensemble == "nvt" else 0.03)  # ps

    other = HarmonicWell(1.0)
    with pytest.raises(InputError, match="written with another model") as refused:
        Simulation.resume(tmp_path / "a", other)
    assert "precision" not in str(refused.value)
    with pytest.raises(InputError, match=r"this model evaluated in float64: .*--float64"):
        Simulation.resume(tmp_path / "a", load_potential(trained_model))  # the stored float32 weights
    with pytest.raises(InputError, match="no MD checkpoint"):
        Simulation.resume(tmp_path / "missing", potential)


def test_blow_up_stops_with_clear_message_and_keeps_last_good_frame(tmp_path):
    from neuralmd.data import read_frames

    atoms = molecule("H2O")
    # a 9 fs step in a stiff well is unstable: amplitudes grow until the force guard trips
    sim = Simulation(HarmonicWell(50.0), AtomsBatch.from_atoms([atoms]), ensemble="nve", timestep_fs=9.0,
                     temperature_K=300, report_every=5, run_dir=tmp_path, max_force_eV_per_A=200.0)
    with pytest.raises(SimulationUnstable, match=r"force .* eV/Å on atom \d exceeds max_force_eV_per_A=200"):
        sim.run(2000)
    (last,) = read_frames(tmp_path / "last_good.xyz", require_labels=False)
    assert np.abs(last.positions).max() < 200.0 / 50.0 + 1e-9


def test_nan_is_caught():
    class Broken(HarmonicWell):
        def atomic_energies(self, batch):
            e = super().atomic_energies(batch)
            return torch.where(batch.positions[:, 0] > 0.05, torch.full_like(e, float("nan")), e)

    sim = Simulation(Broken(1.0), AtomsBatch.from_atoms([molecule("H2O")]), temperature_K=3000, report_every=1)
    with pytest.raises(SimulationUnstable, match="replica 0: non-finite"):
        sim.run(5000)


def test_unknown_element_and_bad_settings(trained_model):
    potential = load_potential(trained_model)
    with pytest.raises(InputError, match="element\\(s\\) N"):
        Simulation(potential, AtomsBatch.from_atoms([molecule("NH3")]))
    with pytest.raises(InputError, match="ensemble"):
        Simulation(potential, AtomsBatch.from_atoms([molecule("H2O")]), ensemble="nph")
    with pytest.raises(InputError, match="2 values for 3 replicas"):
        Simulation(potential, AtomsBatch.from_atoms(_ethanols(3)), temperature_K=[300, 400])


@pytest.mark.slow
def test_nve_energy_drift_of_trained_ethanol_model_over_10_ps(trained_model):
    """10 ps at 0.5 fs in float64, 4 replicas at 300 K.

    Forces are the exact gradient of the energy, so velocity Verlet conserves a shadow
    Hamiltonian: the total energy fluctuates by O((omega dt)²) of the kinetic energy and shows
    no systematic drift. Measured with this model: |linear drift over 10 ps| and peak-to-peak
    excursion 3-8 meV, i.e. 1-3 % of the kinetic energy (~0.25 eV), and both shrink ~5x at
    0.25 fs (dt² scaling: integration error, not a force/energy mismatch; a model with
    non-conservative forces drifts linearly at any dt). Bound: 8 % of the mean kinetic energy
    (~20 meV, 2 meV/atom) for both, which leaves a factor ~3 for a model trained on another CPU."""
    totals, kinetic = [], []

    class EnergyRecorder(BaseReporter):
        interval = 100

        def report(self, sim, state):
            totals.append(state.energy + kinetic_energy(state.batch))
            kinetic.append(kinetic_energy(state.batch))

    potential = load_potential(trained_model, dtype=torch.float64)
    sim = Simulation(potential, AtomsBatch.from_atoms(_ethanols(4)), ensemble="nve", timestep_fs=0.5,
                     temperature_K=300, report_every=100, reporters=[EnergyRecorder()])
    sim.run(20_000)
    totals = torch.stack(totals).numpy()
    ke = torch.stack(kinetic).numpy().mean(0)
    t = np.arange(len(totals)) * 100 * 0.5e-3  # ps
    for r in range(4):
        slope = np.polyfit(t, totals[:, r], 1)[0]
        assert abs(slope * 10.0) < 0.08 * ke[r], (r, slope, ke[r])
        assert np.ptp(totals[:, r]) < 0.08 * ke[r], (r, np.ptp(totals[:, r]), ke[r])
    assert ke.mean() > 0.5 * 1.5 * 9 * units.kB * 300 * 0.5  # the molecules did move


@pytest.mark.parametrize("ensemble,thermostat", [("nve", "langevin"), ("nvt", "langevin"), ("nvt", "csvr")])
def test_resume_is_bit_for_bit_for_every_replica_with_chunking(tmp_path, any_float64_model, ensemble, thermostat):
    """64 ethanol replicas (576 atoms: the potential evaluates them in chunks of whole systems),
    stopped at a checkpoint and resumed in a new Simulation: every frame of every replica's
    trajectory, and the log, equal those of an uninterrupted run."""
    import h5py

    assert 64 * 9 > 2 * any_float64_model.max_atoms_per_chunk  # the chunked path is taken
    batch = AtomsBatch.from_atoms(_ethanols(64))

    def simulation(run_dir):
        return Simulation(any_float64_model, batch, ensemble=ensemble, thermostat=thermostat, temperature_K=300, seed=11,
                          report_every=10, checkpoint_every=30, run_dir=run_dir)

    simulation(tmp_path / "straight").run(90)
    simulation(tmp_path / "split").run(60)
    resumed = Simulation.resume(tmp_path / "split", any_float64_model)
    assert resumed.state.step == 60
    resumed.run(30)
    assert (tmp_path / "straight" / "log.csv").read_bytes() == (tmp_path / "split" / "log.csv").read_bytes()
    for r in range(64):
        name = f"traj_{r:03d}.h5md"
        with h5py.File(tmp_path / "straight" / name) as a, h5py.File(tmp_path / "split" / name) as b:
            for key in ("position", "velocity"):
                x, y = a[f"particles/trajectory/{key}/value"][()], b[f"particles/trajectory/{key}/value"][()]
                assert x.shape == (10, 9, 3) and np.array_equal(x, y), (r, key)


def _water_grid(n: int = 3, spacing: float = 3.1):
    """n³ water molecules on a cubic grid in a periodic box (about 1 g/cm³ at 3.1 Å)."""
    water = molecule("H2O")
    box = Atoms(cell=np.eye(3) * n * spacing, pbc=True)
    for i, j, k in np.ndindex(n, n, n):
        w = water.copy()
        w.translate(spacing * (np.array([i, j, k]) + 0.5))
        box += w
    return box


@pytest.mark.parametrize("barostat, thermostat", [("isotropic", "csvr"), ("anisotropic", "csvr"),
                                                   ("triclinic", "csvr"), ("isotropic", "langevin")])
def test_npt_run_logs_pressure_volume_density_and_resumes_bit_for_bit(tmp_path, float64_model, barostat, thermostat):
    """27 waters at 1 and 5000 bar in one batch: the log has pressure, volume and density per
    replica, the two boxes part ways, and a run stopped at a checkpoint and resumed writes the
    same log and trajectories (positions and box) as one that was not; the anisotropic
    barostat's cube loses its shape, the isotropic one's stays a cube, the triclinic one's
    shears and stays in standard form."""
    import h5py

    batch = AtomsBatch.from_atoms([_water_grid(), _water_grid()])

    def simulation(run_dir):
        return Simulation(float64_model, batch, ensemble="npt", thermostat=thermostat, pressure_bar=[1.0, 5000.0],
                          temperature_K=300, timestep_fs=0.5, tau_p_ps=0.05, compressibility_per_bar=1e-3, seed=3,
                          report_every=10, checkpoint_every=30, run_dir=run_dir, barostat=barostat)

    simulation(tmp_path / "straight").run(90)
    simulation(tmp_path / "split").run(60)
    resumed = Simulation.resume(tmp_path / "split", float64_model)
    resumed.run(30)
    assert (tmp_path / "straight" / "log.csv").read_bytes() == (tmp_path / "split" / "log.csv").read_bytes()
    for r in range(2):
        with h5py.File(tmp_path / "straight" / f"traj_{r:03d}.h5md") as a, \
                h5py.File(tmp_path / "split" / f"traj_{r:03d}.h5md") as b:
            for key in ("position", "box/edges"):
                x, y = a[f"particles/trajectory/{key}/value"][()], b[f"particles/trajectory/{key}/value"][()]
                assert len(x) == 10 and np.array_equal(x, y), (r, key)
    log = np.genfromtxt(tmp_path / "straight" / "log.csv", delimiter=",", names=True)
    assert {"pressure_bar", "volume_A3", "density_g_cm3"} <= set(log.dtype.names)
    first = log[log["step"] == 0]
    assert np.allclose(first["volume_A3"], 9.3**3) and np.allclose(first["density_g_cm3"], 27 * 18.015 * 1.66054 / 9.3**3,
                                                                   rtol=1e-3)
    last = log[log["step"] == 90]
    assert last["volume_A3"][1] < last["volume_A3"][0]  # 5000 bar squeezes the box more than 1 bar
    edges = np.diagonal(resumed.state.batch.cell.numpy(), axis1=1, axis2=2)
    cubic = np.allclose(edges, edges[:, :1], rtol=1e-12)
    assert cubic == (barostat == "isotropic"), edges
    cells = resumed.state.batch.cell.numpy()
    assert np.abs(np.triu(cells, 1)).max() == 0
    assert (np.abs(np.tril(cells, -1)).max() > 1e-6) == (barostat == "triclinic")


def test_npt_refuses_molecules_without_a_cell_and_biases(float64_model):
    from neuralmd.sampling.biases import HarmonicRestraint
    from neuralmd.sampling.cvs import Distance

    with pytest.raises(InputError, match="periodic cell"):
        Simulation(float64_model, AtomsBatch.from_atoms(_ethanols(1)), ensemble="npt", thermostat="csvr")
    with pytest.raises(InputError, match="below twice the model's cutoff"):
        Simulation(float64_model, AtomsBatch.from_atoms([_water_grid(2)]), ensemble="npt", thermostat="csvr")
    restraint = HarmonicRestraint(Distance(0, 1), centre=[1.0], kappa_kjmol=100.0)
    with pytest.raises(InputError, match="npt: biases"):
        Simulation(float64_model, AtomsBatch.from_atoms([_water_grid()]), ensemble="npt", thermostat="csvr",
                   terms=[restraint])


def test_pressure_matches_ase_stress_with_the_ideal_gas_term(float64_model):
    """The barostat's pressure of a water box with velocities equals -tr/3 of ASE's
    ``get_stress(include_ideal_gas=True)`` through neuralmd's ASE calculator, same model."""
    from neuralmd.md.ase_calculator import NeuralCalculator
    from neuralmd.md.integrators import ReplicaNoise, maxwell_boltzmann, pressure

    batch = maxwell_boltzmann(AtomsBatch.from_atoms([_water_grid()]), 300.0, ReplicaNoise([1]))
    stress = float64_model(batch, stress=True)["stress"]
    ours = float(pressure(batch, stress)[0])
    atoms = batch.to_atoms()[0]
    atoms.calc = NeuralCalculator(float64_model)
    theirs = -atoms.get_stress(include_ideal_gas=True)[:3].mean()
    assert ours == pytest.approx(theirs, rel=1e-9, abs=1e-12)
    assert abs(ours) > 1e-5  # not a trivially empty comparison


def test_nve_of_a_periodic_water_box_conserves_energy_with_the_verlet_list(any_float64_model):
    """64 waters in their 12.44 Å box (float64, a 0.3 Å skin so the Verlet list is rebuilt many
    times on the way): velocity Verlet conserves a shadow Hamiltonian, so the total energy's
    fluctuation shrinks as dt² (4x from 0.5 to 0.25 fs over the same 150 fs) and stays far
    below the kinetic energy. A pair missing from a stale list, or a force that is not the
    energy's gradient, would make the fluctuation independent of dt (or grow with time)."""
    from neuralmd.data import read_frames

    frame = read_frames(shared_file("deepmd_water/data_0"), require_labels=False)[0]
    spreads = {}
    for dt in (0.5, 0.25):
        model = copy.deepcopy(any_float64_model)
        model.neighbors.skin = 0.3
        totals, kinetic = [], []

        class EnergyRecorder(BaseReporter):
            interval = 5

            def report(self, sim, state):
                totals.append(float(state.energy[0] + kinetic_energy(state.batch)[0]))
                kinetic.append(float(kinetic_energy(state.batch)[0]))

        sim = Simulation(model, AtomsBatch.from_atoms([frame]), ensemble="nve", timestep_fs=dt, temperature_K=300,
                         seed=2, report_every=5, reporters=[EnergyRecorder()])
        sim.run(int(150 / dt))
        assert model.neighbors.rebuilds >= 3
        spreads[dt] = np.std(totals)
        assert spreads[dt] < 0.01 * np.mean(kinetic), (dt, spreads[dt], np.mean(kinetic))
    assert 3.0 < spreads[0.5] / spreads[0.25] < 5.5, spreads
