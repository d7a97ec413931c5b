"""DiffTRe refinement on systems with known answers: a tilted double well refined against a
population recovers the tilt (and so the barrier) that produces it, a Lennard-Jones fluid refined
against the RDF of another σ recovers that σ, the reweighted gradient equals a finite difference
of fresh simulations, a killed refinement resumes into the same sequence of updates, and a model
that blows up in MD stops the refinement with the last stable model kept."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from neuralmd.refine.difftre import (Refinement, RefinementUnstable, RefineSettings, block_error, frame_energies,
                                     reweighting)
from neuralmd.refine.targets import ObservableTarget, RDFTarget, parse_target
from neuralmd.units import kT_eV
from tests.md.potentials import LennardJones, TiltedDoubleWell

ROOT = Path(__file__).resolve().parents[2]
T_K = 300.0
BARRIER = 0.03  # eV: 1.2 kT, so that the wells exchange atoms every ps or so


def right_population(positions: torch.Tensor, cell: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
    """Fraction of atoms in the right well (x > 0) per frame."""
    return (positions[..., 0] > 0).double().mean(-1)


def exact_right_population(tilt: float) -> float:
    """p(x > 0) of the Boltzmann distribution of the double well at T_K (numerical integral)."""
    x = np.linspace(-3, 3, 60_001)
    u = BARRIER * (x**2 - 1) ** 2 + tilt * x
    p = np.exp(-(u - u.min()) / kT_eV(T_K))
    return float(p[x > 0].sum() / p.sum())


def barrier_from_right(tilt: float) -> float:
    """Barrier (eV) seen from the right well: the top near x = 0 minus the right minimum."""
    x = np.linspace(-2, 2, 40_001)
    u = BARRIER * (x**2 - 1) ** 2 + tilt * x
    return float(u[np.abs(x) < 0.5].max() - u[x > 0].min())


def well_settings(**changes) -> RefineSettings:
    base = dict(ensemble="nvt", thermostat="langevin", temperature_K=T_K, timestep_fs=5.0, friction_per_ps=5.0,
                replicas=96, sample_ps=20.0, equilibration_ps=2.0, frame_every_fs=250.0, updates=0, check_ps=0.0,
                seed=1)
    return RefineSettings(**{**base, **changes})


def one_atom(replicas: int = 1) -> list[Atoms]:
    """One hydrogen atom per replica, in alternate wells (the sampling starts near equilibrium)."""
    return [Atoms("H", positions=[[(-1.0) ** k, 0.0, 0.0]]) for k in range(replicas)]


def test_double_well_refined_against_a_population_recovers_the_tilt_and_barrier(tmp_path):
    true_tilt = -0.008
    target = ObservableTarget("right", right_population, exact_right_population(true_tilt), 0.01)
    potential = TiltedDoubleWell(BARRIER, 0.0)
    refinement = Refinement(potential, one_atom(96), [target], well_settings(updates=60, lr=0.001, check_ps=20.0),
                            tmp_path / "run")
    results = refinement.run()
    tilt = float(potential.tilt.detach())
    # dp/dtilt ≈ -17 /(eV/Å) here, so 0.0015 eV/Å is a population error of 0.025: about three
    # times the statistical error of one sampling's estimate
    assert tilt == pytest.approx(true_tilt, abs=0.0015), refinement.history
    assert barrier_from_right(tilt) == pytest.approx(barrier_from_right(true_tilt), abs=0.0015)
    check = results["targets"]["right"]
    assert check["after"]["chi2"] < 9 < 25 < check["before"]["chi2"]  # the fresh check simulation agrees
    assert all(h["ess_fraction"] >= 0.9 for h in refinement.history)  # reweighting stayed in its range
    assert {"targets.png", "history.png", "history.json", "results.json", "checkpoint.pt"} <= {
        p.name for p in (tmp_path / "run").iterdir()}


def _population_samples(tilt: float, run: Path, seed: int) -> Refinement:
    """A sampling of the double well at ``tilt`` (no update)."""
    target = ObservableTarget("right", right_population, 0.5, 0.01)
    refinement = Refinement(TiltedDoubleWell(BARRIER, tilt), one_atom(64), [target],
                            well_settings(replicas=64, sample_ps=20.0, equilibration_ps=1.0, seed=seed), run)
    refinement.run()
    return refinement


def test_reweighted_gradient_equals_a_finite_difference_of_fresh_simulations(tmp_path):
    delta, groups = 0.004, 16
    base = _population_samples(0.0, tmp_path / "base", seed=3)
    frames, n_rep = base.frames, base.settings.replicas
    per_replica = len(frames) // n_rep
    values = base.values["right"][:, 0]
    kT = kT_eV(T_K)
    gradients = []
    for g in range(groups):  # replicas are independent: the error from groups of them
        rows = slice(g * per_replica * n_rep // groups, (g + 1) * per_replica * n_rep // groups)
        potential = base.potential
        potential.zero_grad()
        u = frame_energies(potential, frames, rows.start, rows.stop)
        mean = reweighting(u, base.u_ref[rows], kT) @ values[rows]
        (grad,) = torch.autograd.grad(mean, potential.tilt)
        gradients.append(float(grad))
    reweighted, reweighted_err = np.mean(gradients), np.std(gradients, ddof=1) / math.sqrt(groups)

    def grouped_mean(tilt: float, seed: int) -> tuple[float, float]:
        run = _population_samples(tilt, tmp_path / f"t{tilt}", seed)
        v = run.values["right"][:, 0].numpy().reshape(groups, -1).mean(1)
        return float(v.mean()), float(v.std(ddof=1) / math.sqrt(groups))

    (p_plus, e_plus), (p_minus, e_minus) = grouped_mean(delta, 5), grouped_mean(-delta, 7)
    finite = (p_plus - p_minus) / (2 * delta)
    finite_err = math.hypot(e_plus, e_minus) / (2 * delta)
    exact = (exact_right_population(delta) - exact_right_population(-delta)) / (2 * delta)
    assert abs(reweighted - finite) < 3 * math.hypot(reweighted_err, finite_err), (reweighted, finite)
    assert abs(reweighted - exact) < 3 * reweighted_err + 0.5, (reweighted, exact)
    assert reweighted < -5  # tilting towards +x empties the right well


def test_lennard_jones_sigma_is_recovered_from_the_rdf_of_another_sigma(tmp_path):
    """32 argon atoms at T* ≈ 1.2, ρ* ≈ 0.8 (cut and shifted at 5.6 Å): the RDF of σ = 3.4 Å (the
    same soft estimator) is the measurement; refinement starts at σ = 3.25 Å."""
    atoms = bulk("Ar", "fcc", a=5.81, cubic=True).repeat(2)
    r = np.round(np.arange(2.5, 5.65, 0.05), 2)
    lj = dict(ensemble="nvt", thermostat="csvr", temperature_K=145.0, timestep_fs=10.0, replicas=8,
              frame_every_fs=100.0, check_ps=0.0)
    probe = RDFTarget("Ar-Ar", r, np.ones_like(r), np.full_like(r, 0.05))
    reference = Refinement(LennardJones(3.4, cutoff_A=5.6), [atoms], [probe],
                           RefineSettings(**lj, sample_ps=20.0, equilibration_ps=4.0, updates=0, seed=11),
                           tmp_path / "reference")
    reference.run()
    values = reference.values["rdf:Ar-Ar"].numpy()
    g = values.mean(0)
    err = values.reshape(8, -1, values.shape[1]).mean(1).std(0, ddof=1) / math.sqrt(8)  # replicas as blocks
    np.savetxt(tmp_path / "rdf.txt", np.c_[reference.targets[0].axis, g, err], header="r g err")
    potential = LennardJones(3.25, cutoff_A=5.6)
    potential.epsilon.requires_grad_(False)
    refinement = Refinement(potential, [atoms], [parse_target(f"rdf:Ar-Ar={tmp_path / 'rdf.txt'}")],
                            RefineSettings(**lj, sample_ps=10.0, equilibration_ps=2.0, updates=16, lr=0.02, seed=3),
                            tmp_path / "run")
    refinement.run()
    assert float(potential.sigma.detach()) == pytest.approx(3.4, abs=0.03), refinement.history
    assert refinement.history[-1]["experiment_loss"] < 0.1 * refinement.history[0]["experiment_loss"]


RESUME_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
import torch
torch.set_num_threads(1)
from pathlib import Path
from tests.refine.test_difftre import BARRIER, one_atom, right_population, well_settings
from tests.md.potentials import TiltedDoubleWell
from neuralmd.refine.difftre import Refinement
from neuralmd.refine.targets import ObservableTarget

run = Path(sys.argv[1])
refinement = Refinement(TiltedDoubleWell(BARRIER, 0.0), one_atom(16), [ObservableTarget("right", right_population, 0.7, 0.01)],
                        well_settings(replicas=16, sample_ps=4.0, equilibration_ps=0.5, updates=10, lr=0.004), run)
if (run / "checkpoint.pt").exists():
    refinement.restore()
refinement.run()
print(float(refinement.potential.tilt))
"""


def _run_script(script: Path, run: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(script), str(run)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _history(run: Path) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "wall_s"} for h in json.loads((run / "history.json").read_text())]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The refinement of RESUME_SCRIPT run start to end: (script, run directory, final tilt)."""
    folder = tmp_path_factory.mktemp("refine-resume")
    script = folder / "refine.py"
    script.write_text(RESUME_SCRIPT.format(root=str(ROOT)))
    whole = _run_script(script, folder / "whole")
    out, err = whole.communicate(timeout=600)
    assert whole.returncode == 0, err
    return script, folder / "whole", float(out.split()[-1])


def _four_updates_done(run: Path) -> bool:
    return (run / "history.json").exists() and len(json.loads((run / "history.json").read_text())) >= 4


def _first_sampling_running(run: Path) -> bool:
    return (run / "samples" / "sample_000" / "traj_000.h5md").exists() and not (run / "checkpoint.pt").exists()


@pytest.mark.parametrize("when", [_four_updates_done, _first_sampling_running], ids=["mid-refinement",
                                                                                       "before-first-checkpoint"])
def test_a_killed_refinement_resumes_into_the_same_sequence_of_updates(uninterrupted, tmp_path, when):
    script, whole, tilt = uninterrupted
    run = tmp_path / "killed"
    proc = _run_script(script, run)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not when(run):
        time.sleep(0.02)
    assert proc.poll() is None, "the refinement finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(json.loads((run / "history.json").read_text())) if (run / "history.json").exists() else 0
    assert done < 10
    resumed = _run_script(script, run)
    out_resumed, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert _history(run) == _history(whole)
    assert float(out_resumed.split()[-1]) == tilt  # the same parameters, bit for bit
    assert sum(h["resampled"] for h in _history(run)) >= 1  # resamplings happened on both sides of the kill


def test_a_model_that_blows_up_in_md_stops_with_the_last_stable_model_kept(tmp_path):
    potential = TiltedDoubleWell(BARRIER, 0.0)
    target = ObservableTarget("right", right_population, 0.9, 0.01)
    refinement = Refinement(potential, one_atom(8), [target],
                            well_settings(replicas=8, sample_ps=2.0, updates=3, lr=500.0), tmp_path / "run")
    with pytest.raises(RefinementUnstable, match="after update 1 is unstable.*model of update 0"):
        refinement.run()
    assert float(potential.tilt) == 0.0  # the last model that ran stably
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert "update 1" in results["stop_reason"] and results["updates"] == 1


def test_the_sampling_error_comes_from_blocks_of_frames():
    values = torch.arange(10, dtype=torch.float64).reshape(10, 1)  # drifting: the blocks see it
    means = np.array([0.5, 2.5, 4.5, 6.5, 8.5])
    assert float(block_error(values)[0]) == pytest.approx(means.std(ddof=1) / math.sqrt(5))
    assert float(block_error(torch.ones(20, 3)).abs().max()) == 0.0
