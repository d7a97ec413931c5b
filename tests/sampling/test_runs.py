"""Sampling runs end to end: torsion convention, CVs and grid biases inside OpenMM, the
md/sample/cv train/fes commands on alanine dipeptide, restart, and bad input."""

from __future__ import annotations

import json

import numpy as np
import openmm
import pytest
import torch
from ase import Atoms
from openmm import app, unit
from typer.testing import CliRunner

from neuralmd.cli import app as cli
from neuralmd.sampling.biases import OPES
from neuralmd.sampling.cvs import Distance, Stack, Torsion
from neuralmd.errors import InputError
from neuralmd.md.openmm_engine import OpenMMSettings
from neuralmd.sampling.openmm_bias import GridBias, cv_forces
from neuralmd.sampling.bias_factory import BiasSettings
from neuralmd.sampling.runs import resume_run, start_openmm
from neuralmd.units import EV_IN_KJMOL
from tests.conftest import shared_file

PHI, PSI = (4, 6, 8, 14), (6, 8, 14, 16)


def test_torsion_follows_the_iupac_sign_convention():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=(4, 3)) * 1.5
        ase_angle = np.deg2rad(Atoms("H4", positions=x).get_dihedral(0, 1, 2, 3))  # in [0, 2π)
        ours = float(Torsion(0, 1, 2, 3)(torch.tensor(x)[None])[0, 0])
        assert np.isclose(np.angle(np.exp(1j * (ours - ase_angle))), 0.0, atol=1e-9)


def _system_and_positions():
    pdb = app.PDBFile(str(shared_file("alanine_dipeptide/ala2.pdb")))
    system = app.ForceField("amber99sbildn.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                                              constraints=app.HBonds)
    return pdb, system


def test_openmm_cv_forces_equal_the_torch_cvs():
    pdb, system = _system_and_positions()
    cv = Stack([Torsion(*PHI, name="phi"), Distance(1, 18)])
    cvf = openmm.CustomCVForce("s0 + s1")
    for k, f in enumerate(cv_forces(cv, system)):
        cvf.addCollectiveVariable(f"s{k}", f)
    system.addForce(cvf)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    pos = np.array(pdb.positions.value_in_unit(unit.nanometer))
    pos += np.random.default_rng(1).normal(scale=0.02, size=pos.shape)
    ctx.setPositions(pos)
    ours = cv(torch.tensor(pos * 10.0)[None])[0].numpy()
    assert np.allclose(cvf.getCollectiveVariableValues(ctx), ours, atol=1e-6)


def test_grid_bias_matches_the_exact_bias_energy_and_forces():
    pdb, system = _system_and_positions()
    cv = Stack([Torsion(*PHI, name="phi"), Torsion(*PSI, name="psi")])
    bias = OPES(cv, sigma=[0.3, 0.3], barrier_kjmol=30, pace=1, temperature_K=300)
    rng = np.random.default_rng(2)
    from neuralmd.md.integrators import MDState
    from neuralmd.md.openmm_engine import system_template

    template = system_template(system)
    pos0 = np.array(pdb.positions.value_in_unit(unit.nanometer)) * 10.0
    for step in range(1, 40):  # deposit kernels at scattered CV values (some merge: compression)
        pos = pos0 + rng.normal(scale=0.3, size=pos0.shape)
        bias.update(MDState(template.replace(positions=torch.tensor(pos)), None, None, step))
    grid = GridBias(bias, system)
    grid.force.setForceGroup(1)
    system.addForce(grid.force)
    ctx = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    for _ in range(5):
        pos = pos0 + rng.normal(scale=0.2, size=pos0.shape)
        ctx.setPositions(pos / 10.0)
        state = ctx.getState(getEnergy=True, getForces=True, groups={1})
        x = torch.tensor(pos, requires_grad=True)
        energy = bias(template.replace(positions=x))[0]
        (grad,) = torch.autograd.grad(energy, x)
        omm_e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        omm_f = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom)
        assert omm_e == pytest.approx(float(energy.detach()) * EV_IN_KJMOL, abs=0.05)
        assert np.abs(omm_f + grad.numpy() * EV_IN_KJMOL).max() < 0.5  # kJ/mol/Å, spline vs exact


def assert_colvar_has_the_bias_each_frame_felt(run_dir, settings: BiasSettings, cv, temperature_K: float = 300.0):
    """Replays the run's depositions (recorded every pace steps) into a fresh bias: each
    colvar.csv row must hold the bias *before* its own step's deposition, the bias that drew
    the frame (after it, a frame's own kernel inflates its weight: +0.1 kJ/mol in ΔF on alanine
    dipeptide)."""
    from types import SimpleNamespace

    from neuralmd.sampling.colvar import read_colvar
    from neuralmd.sampling.bias_factory import make_bias

    colvar = read_colvar(run_dir / "colvar.csv")
    fresh = make_bias(settings, cv, temperature_K, settings.sigma)
    moved = 0.0
    for step in np.unique(colvar["step"]):
        rows = colvar["step"] == step
        s = torch.tensor(np.stack([colvar[name][rows] for name in cv.names], -1), dtype=torch.float64)
        felt = (fresh.energy_of_cv(s) * EV_IN_KJMOL).numpy()
        assert np.allclose(colvar["bias_kjmol"][rows], felt, atol=1e-4), step
        if step > 0 and step % fresh.pace == 0:
            fresh.cv_values = lambda batch, s=s: s
            fresh.update(SimpleNamespace(step=int(step), batch=None))
            moved = max(moved, float(np.abs((fresh.energy_of_cv(s) * EV_IN_KJMOL).numpy() - felt).max()))
    assert moved > 0.01  # a deposition does move the bias at its own frame: the test can tell


@pytest.mark.parametrize("walkers", [1, 2])
def test_restarted_openmm_opes_run_continues_exactly(tmp_path, walkers):
    """One walker, or two sharing the bias (one context each): a restart repeats the run."""
    pdb = str(shared_file("alanine_dipeptide/ala2.pdb"))

    def settings(total):
        return OpenMMSettings(pdb=pdb, report_every=100, checkpoint_every=1000, total_steps=total, seed=3,
                              walkers=walkers)

    bias = BiasSettings(cv="phi,psi", barrier_kjmol=30, pace=100, sigma=[0.3, 0.3])
    full = start_openmm(settings(3000), bias, tmp_path / "full")
    full.run()
    part = start_openmm(settings(3000), BiasSettings(**{**bias.__dict__}), tmp_path / "part")
    part.run(1000)
    part.simulation.step(300)  # work after the checkpoint that the resume must discard
    resumed = resume_run(tmp_path / "part")
    assert resumed.step == 1000
    resumed.run()
    a = np.loadtxt(tmp_path / "full" / "colvar.csv", delimiter=",", skiprows=1)
    b = np.loadtxt(tmp_path / "part" / "colvar.csv", delimiter=",", skiprows=1)
    assert a.shape == b.shape == (31 * walkers, 6)
    assert np.array_equal(a, b) and set(a[:, 2]) == set(range(walkers))
    assert torch.equal(full.terms[0].bias.heights, resumed.terms[0].bias.heights)
    assert_colvar_has_the_bias_each_frame_felt(tmp_path / "full", bias, full.terms[0].bias.cv)


def test_cli_md_cv_train_sample_fes_on_alanine_dipeptide(tmp_path):
    pdb = str(shared_file("alanine_dipeptide/ala2.pdb"))
    runner = CliRunner()

    def ok(args):
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result

    ok(["md", "--engine", "openmm", "--pdb", pdb, "--steps", "20000", "--report-every", "50", "-o",
        str(tmp_path / "unbiased")])
    log = np.genfromtxt(tmp_path / "unbiased" / "log.csv", delimiter=",", names=True)
    assert abs(log["temperature_K"][20:].mean() - 300) < 30  # constraints counted in the degrees of freedom
    ok(["cv", "train", str(tmp_path / "unbiased"), "--method", "deep-tica", "--lag-ps", "0.5", "--epochs", "20",
        "--force", "-o", str(tmp_path / "cv")])  # 40 ps hold no phi transition: kept only when forced
    meta = json.loads((tmp_path / "cv" / "descriptors.json").read_text())
    assert meta["atoms_0based"] == [1, 4, 5, 6, 8, 10, 14, 15, 16, 18]  # heavy atoms of ala2
    assert len(meta["steepness_per_A"]) == 1 and 0 < meta["steepness_per_A"][0] < 1e3
    assert (tmp_path / "cv" / "relevance.png").stat().st_size > 0
    ok(["sample", "--pdb", pdb, "--cv", str(tmp_path / "cv"), "--bias", "opes", "--barrier-kjmol", "30",
        "--steps", "4000", "--pace", "200", "--report-every", "100", "-o", str(tmp_path / "opes")])
    colvar = np.genfromtxt(tmp_path / "opes" / "colvar.csv", delimiter=",", names=True)
    assert colvar["bias_kjmol"][-1] != 0.0
    ok(["fes", str(tmp_path / "opes"), "--cv", "phi,psi", "--bins", "30"])
    result = json.loads((tmp_path / "opes" / "fes.json").read_text())
    assert result["cvs"] == ["phi", "psi"] and result["frames"] == 41
    assert (tmp_path / "opes" / "fes.png").stat().st_size > 0


def test_bad_sampling_input_exits_2_and_writes_nothing(tmp_path):
    pdb = str(shared_file("alanine_dipeptide/ala2.pdb"))
    from neuralmd.cli import main

    def fails(args, expect):
        import subprocess
        import sys

        proc = subprocess.run([sys.executable, "-c", "from neuralmd.cli import main; main()", *args],
                              capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert expect in proc.stderr, proc.stderr

    assert main  # the entry point the subprocesses run
    fails(["sample", "--pdb", pdb, "--cv", "phi", "--barrier-kjmol", "0", "-o", str(tmp_path / "a")], "barrier")
    fails(["sample", "--pdb", pdb, "--cv", "phi", "--biasfactor", "0.5", "-o", str(tmp_path / "a")], "biasfactor")
    fails(["sample", "--pdb", pdb, "--cv", "torsion(0,1,2,40)", "-o", str(tmp_path / "a")], "atom index 40")
    fails(["sample", "--pdb", pdb, "--cv", "energy", "--bias", "opes", "-o", str(tmp_path / "a")], "opes-multithermal")
    fails(["sample", "--pdb", pdb, "--cv", "phi", "--bias", "opes-multithermal", "-o", str(tmp_path / "a")],
          "use --cv energy")
    assert not (tmp_path / "a").exists()
    # a CV trained on alanine dipeptide does not fit ethanol: descriptors do not match the system
    run = start_openmm(OpenMMSettings(pdb=pdb, report_every=10, total_steps=400), BiasSettings(cv="phi", bias="none"),
                       tmp_path / "short")
    run.run()
    from neuralmd.sampling.cv_training import train_cv_from_runs

    train_cv_from_runs([tmp_path / "short"], tmp_path / "cv", method="autoencoder", epochs=2, force=True)
    from neuralmd.errors import InputError
    from neuralmd.sampling.spec import load_cv

    with pytest.raises(InputError, match="atom"):
        load_cv(tmp_path / "cv", np.array([6, 1, 1, 1, 6, 1, 1, 8, 1]))
    numbers = run.numbers.copy()
    numbers[4] = 7
    with pytest.raises(InputError, match="elements"):
        load_cv(tmp_path / "cv", numbers)
    # a trajectory too short for the lag time
    fails(["cv", "train", str(tmp_path / "short"), "--lag-ps", "0.78", "-o", str(tmp_path / "cv2")], "lag")
    assert not (tmp_path / "cv2").exists()


def test_native_engine_walkers_share_one_opes_bias_and_resume(tmp_path, float64_model):
    from ase.build import molecule

    from neuralmd.md.simulation import MDSettings
    from neuralmd.sampling.colvar import read_colvar
    from neuralmd.sampling.runs import start_native

    def settings():
        return MDSettings(timestep_fs=0.5, temperature_K=[300.0], seed=4, report_every=20, checkpoint_every=100,
                          total_steps=200)

    bias = dict(cv="torsion(0,1,2,3)", barrier_kjmol=10, pace=20, sigma=[0.3])
    frames = [molecule("CH3CH2OH")] * 2
    full = start_native(float64_model, frames, settings(), BiasSettings(**bias), tmp_path / "full")
    full.run()
    colvar = read_colvar(tmp_path / "full" / "colvar.csv")
    assert sorted(set(colvar["replica"])) == [0, 1] and len(colvar["step"]) == 22
    assert full.terms[0].heights.numel() > 1 and colvar["bias_kjmol"][-2:].max() > 0  # both walkers deposit
    part = start_native(float64_model, frames, settings(), BiasSettings(**bias), tmp_path / "part")
    part.run(100)
    resumed = resume_run(tmp_path / "part", potential=float64_model)
    resumed.run(100)
    assert torch.equal(resumed.terms[0].heights, full.terms[0].heights)
    assert_colvar_has_the_bias_each_frame_felt(tmp_path / "full", BiasSettings(**bias), full.terms[0].cv)
    assert np.array_equal(np.loadtxt(tmp_path / "part" / "colvar.csv", delimiter=",", skiprows=1),
                          np.loadtxt(tmp_path / "full" / "colvar.csv", delimiter=",", skiprows=1))


def test_cv_modules_compile_with_torchscript_and_give_the_same_values_and_gradients():
    from neuralmd.sampling.cvs import Angle, PairwiseDistances, Position

    x = torch.randn(3, 6, 3, dtype=torch.float64, requires_grad=True)
    for cv in (Torsion(0, 1, 2, 3), Distance(0, 5), Angle(0, 1, 2), PairwiseDistances([0, 2, 4, 5]), Position(3),
               Stack([Torsion(1, 2, 3, 4), Distance(0, 1)])):
        scripted = torch.jit.script(cv)
        (g_script,) = torch.autograd.grad(scripted(x).sum(), x)
        (g_python,) = torch.autograd.grad(cv(x).sum(), x)
        assert torch.allclose(scripted(x), cv(x)) and torch.allclose(g_script, g_python), type(cv).__name__


def test_cli_sample_with_a_neural_potential_walkers_fes_and_resume(tmp_path, trained_model, ethanol_xyz):
    from neuralmd.data.io import read_frames, write_frames

    write_frames(read_frames(ethanol_xyz)[:1], tmp_path / "start.xyz")
    runner = CliRunner()
    args = ["sample", "--engine", "native", "--model", str(trained_model), "--structure", str(tmp_path / "start.xyz"),
            "--cv", "torsion(3,0,1,2)", "--replicas", "2", "--steps", "200", "--pace", "50", "--sigma", "0.3",
            "--report-every", "20", "--checkpoint-every", "100", "--threads", "2", "-o", str(tmp_path / "run")]
    result = runner.invoke(cli, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["sample", "--resume", str(tmp_path / "run"), "--steps", "300"],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    colvar = np.genfromtxt(tmp_path / "run" / "colvar.csv", delimiter=",", names=True)
    assert len(colvar) == 2 * 16 and set(colvar["replica"]) == {0, 1}  # steps 0..300 every 20, two walkers
    result = runner.invoke(cli, ["fes", str(tmp_path / "run"), "--basin-a", "t3-0-1-2<2.1", "--basin-b", "t3-0-1-2>2.1",
                                 "--blocks", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "run" / "fes.json").read_text())
    assert report["cvs"] == ["t3-0-1-2"] and report["frames"] == 32 and "deltaF_kjmol" in report
    assert report["converged"] is False and report["reason"]  # 200 steps: no free energy to trust
    # bad fes input: one line, exit 2, and the run's own files untouched
    (tmp_path / "fes").mkdir()
    for options, fragment in ((["--basin-a", "t3-0-1-2<0", "--basin-b", "t3-0-1-2>0"], "holds none of the 32 frames"),
                              (["--basin-a", "t3-0-1-2<0"], "give both basins"), (["--bins", "0"], "bins 0"),
                              (["--blocks", "1"], "blocks 1"), (["--skip-ns", "-1"], "skip-ns -1")):
        result = runner.invoke(cli, ["fes", str(tmp_path / "run"), "-o", str(tmp_path / "fes"), *options])
        assert result.exit_code != 0 and isinstance(result.exception, InputError), (options, result.output)
        assert fragment in str(result.exception), (fragment, str(result.exception))
    assert list((tmp_path / "fes").iterdir()) == []
    colvar_file = tmp_path / "run" / "colvar.csv"
    colvar_file.write_text(colvar_file.read_text() + "300,0.15,0,2.1")  # a row torn by a crash
    result = runner.invoke(cli, ["fes", str(tmp_path / "run"), "-o", str(tmp_path / "fes")])
    assert isinstance(result.exception, InputError) and "line 34: incomplete" in str(result.exception)


def test_cv_training_restarts_keep_the_lowest_validation_loss(tmp_path):
    from neuralmd.sampling.cv_training import train_cv_from_runs

    pdb = str(shared_file("alanine_dipeptide/ala2.pdb"))
    start_openmm(OpenMMSettings(pdb=pdb, report_every=10, total_steps=1000), BiasSettings(cv="phi", bias="none"),
                 tmp_path / "short").run()
    best = train_cv_from_runs([tmp_path / "short"], tmp_path / "cv", method="autoencoder", epochs=3, seed=5,
                              restarts=3, force=True)
    losses = best["restarts_best_valid_loss"]
    assert len(losses) == 3 and len(set(losses)) == 3  # three different trainings
    assert best["seed"] == 5 + int(np.argmin(losses))
    alone = train_cv_from_runs([tmp_path / "short"], tmp_path / "alone", method="autoencoder", epochs=3,
                               seed=best["seed"], force=True)
    assert alone["best_valid_loss"] == best["best_valid_loss"] == min(losses)  # the kept one is that training
    assert json.loads((tmp_path / "cv" / "descriptors.json").read_text())["training"]["seed"] == best["seed"]
