"""Coarse-grained force matching on the mapped alanine dipeptide data (../shared/data/ala2_cg)."""

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
from scipy.spatial.transform import Rotation

from neuralmd.errors import InputError
from neuralmd.surrogates.cg_md import analyse_cg_run, start_cg_md
from neuralmd.surrogates.cg_training import CGTrainer, CGTrainSettings
from neuralmd.models.coarse_grain import CGFeatures, Prior, torsion_angles
from neuralmd.surrogates.coarse_grain import Mapping, load_cg_data

from ..conftest import shared_file

BEADS = ["C", "N", "C", "C", "N"]


@pytest.fixture(scope="module")
def cg_data():
    return shared_file("ala2_cg/ala2_coordinates.npy"), shared_file("ala2_cg/ala2_forces.npy")


@pytest.fixture(scope="module")
def cgnet_run(cg_data, tmp_path_factory) -> Path:
    """CGnet's prior (bonds, angles, repulsion; no torsion terms) plus a network, 20 epochs."""
    coords, forces = cg_data
    run = tmp_path_factory.mktemp("cg")
    CGTrainer(CGTrainSettings(coords=str(coords), forces=str(forces), force_unit="kcal/mol/A", bead_elements=BEADS,
                              prior_torsion_order=0, epochs=20, patience=20, threads=2), run, progress=False).run()
    return run


def test_trained_model_beats_prior_on_held_out_forces_and_torsion_fes(cgnet_run, tmp_path):
    """Force matching lowers the held-out force error below the prior's, and CG MD with the
    trained model reproduces the data's (phi, psi) free-energy surface better than the prior
    alone (which knows nothing about the torsions)."""
    results = json.loads((cgnet_run / "results.json").read_text())
    rmse = results["valid_force_rmse_eV_per_A"]
    assert results["valid_frames"] == 2000 and rmse["model"] < rmse["prior"]
    reference = np.load(shared_file("ala2_cg/ala2_coordinates.npy"))
    out = {}
    for name in ("prior", "model"):
        sim = start_cg_md(cgnet_run / f"{name}.pt", tmp_path / name, ns=0.016, replicas=32, report_every=100,
                          progress=False)
        sim.run()
        out[name] = analyse_cg_run(tmp_path / name, sim.potential, reference, skip_ps=4.0)
        assert out[name]["fes_bins_compared"] > 20 and math.isfinite(out[name]["fes_mae_kT"])
    assert (tmp_path / "model" / "cg_fes.png").stat().st_size > 0
    # started from the same data frames, the prior alone (free torsions) drifts into (phi, psi)
    # regions the data never visit; the trained model stays where the data are
    assert out["model"]["js_divergence"] < 0.7 * out["prior"]["js_divergence"], out
    assert out["model"]["fraction_outside_reference"] < 0.5 * out["prior"]["fraction_outside_reference"], out


def test_cg_forces_are_gradients_and_invariant(cgnet_run):
    from neuralmd.models.neural import load_potential

    model = load_potential(cgnet_run / "model.pt", dtype=torch.float64)
    x = torch.as_tensor(np.load(shared_file("ala2_cg/ala2_coordinates.npy"))[:3], dtype=torch.float64)
    f = model.forces(x)
    h = 1e-5
    for b, i, d in [(0, 0, 0), (1, 2, 1), (2, 4, 2)]:
        xp, xm = x.clone(), x.clone()
        xp[b, i, d] += h
        xm[b, i, d] -= h
        fd = -(model.energy(xp)[b] - model.energy(xm)[b]) / (2 * h)
        assert float(fd) == pytest.approx(float(f[b, i, d]), rel=1e-6, abs=1e-8)
    rot = torch.as_tensor(Rotation.random(random_state=1).as_matrix())
    moved = x @ rot.T + torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)
    assert torch.allclose(model.energy(moved), model.energy(x), atol=1e-9)
    assert torch.allclose(model.forces(moved), f @ rot.T, atol=1e-8)
    batch = model.start_batch(x.numpy())  # the Potential interface gives the same forces
    assert torch.allclose(model(batch)["forces"], f.reshape(-1, 3), atol=1e-9)


def test_prior_boltzmann_inversion_recovers_a_harmonic_bond():
    """Bonds drawn from a Boltzmann distribution of a known harmonic potential give back its k and r0."""
    rng = np.random.default_rng(0)
    kT = 0.025852  # eV at 300 K
    k_true, r0 = 20.0, 1.5
    x = np.zeros((20000, 4, 3))
    x[:, 1, 0] = r0 + rng.normal(0, math.sqrt(kT / k_true), len(x))
    x[:, 2] = [2.0, 1.2, 0.0] + rng.normal(0, 0.05, (len(x), 3))
    x[:, 3] = [3.0, 1.5, 0.9] + rng.normal(0, 0.05, (len(x), 3))
    prior = Prior.fit(CGFeatures(4), x, 300.0)
    assert prior.bond_k[0].item() == pytest.approx(k_true, rel=0.03)
    assert prior.bond_r0[0].item() == pytest.approx(r0, abs=1e-3)


def test_mapping_centres_and_summed_forces(tmp_path):
    mapping_file = tmp_path / "map.toml"
    mapping_file.write_text('[[bead]]\nname = "A"\natoms = [0, 1]\n\n[[bead]]\nname = "B"\natoms = [2]\nelement = "N"\n')
    mapping = Mapping.from_toml(mapping_file)
    coords = np.arange(2 * 3 * 3, dtype=float).reshape(2, 3, 3)
    forces = np.ones((2, 3, 3))
    x, f = mapping.apply(coords, forces)
    assert np.allclose(x[:, 0], coords[:, :2].mean(1)) and np.allclose(x[:, 1], coords[:, 2])
    assert np.allclose(f[:, 0], 2.0) and np.allclose(f[:, 1], 1.0)
    with pytest.raises(InputError, match=r"bead 'B' references atom\(s\) \[7\]"):
        Mapping([[0, 1], [7]], ["C", "C"], ["A", "B"]).check(5, "allatom.npy")
    with pytest.raises(InputError, match="share"):
        Mapping([[0, 1], [1]], ["C", "C"], ["A", "B"])


def test_bad_cg_input_is_a_clear_error_and_writes_nothing(cg_data, tmp_path):
    coords, forces = cg_data
    short = tmp_path / "short_forces.npy"
    np.save(short, np.load(forces)[:100])
    with pytest.raises(InputError, match="shape"):
        load_cg_data(coords, short, "kcal/mol/A")
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "neuralmd.cli", "cg", "train", "--coords", str(coords)]
    proc = subprocess.run(cli + ["--forces", str(short), "--force-unit", "kcal/mol/A", "-o", str(out)],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "short_forces.npy" in proc.stderr and not out.exists()
    proc = subprocess.run(cli + ["--forces", str(forces), "-o", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "--force-unit" in proc.stderr and not out.exists()
    mapping = tmp_path / "map.toml"
    mapping.write_text("[[bead]]\natoms = [0, 99]\n")
    proc = subprocess.run(cli + ["--forces", str(forces), "--force-unit", "kcal/mol/A", "--mapping", str(mapping),
                                 "-o", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "99" in proc.stderr and not out.exists()


def test_training_resumes_after_kill_to_the_same_weights(cg_data, tmp_path):
    coords, forces = cg_data
    args = ["--coords", str(coords), "--forces", str(forces), "--force-unit", "kcal/mol/A", "--bead-elements",
            "C,N,C,C,N", "--epochs", "12", "--patience", "12", "--hidden", "32,32", "--threads", "1"]
    cli = [sys.executable, "-m", "neuralmd.cli", "cg", "train"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cli + args + ["-o", str(tmp_path / "full")], check=True, capture_output=True, env=env)
    killed = tmp_path / "killed"
    proc = subprocess.Popen(cli + args + ["-o", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env)
    deadline = time.time() + 120
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    epoch = torch.load(killed / "checkpoint.pt", weights_only=True)["epoch"]
    assert epoch < 12 and not (killed / "model.pt").exists()
    subprocess.run(cli + ["--resume", str(killed)], check=True, capture_output=True, env=env)
    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)["state_dict"]
    resumed = torch.load(killed / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(full[k], resumed[k]) for k in full)


def test_cg_md_cli_with_opes_walkers_and_resume(cgnet_run, tmp_path):
    """`neuralmd cg md --bias opes` runs walkers of one bias, reweights, and extends on --resume."""
    reference = shared_file("ala2_cg/ala2_coordinates.npy")
    out = tmp_path / "md"
    cli = [sys.executable, "-m", "neuralmd.cli", "cg", "md"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--replicas", "4", "--report-every", "50", "--reference", str(reference), "--threads", "1"]
    subprocess.run(cli + [str(cgnet_run / "model.pt"), "--ns", "0.004", "--bias", "opes", "--trajectory-replicas", "2",
                          "-o", str(out)] + common, check=True, capture_output=True, env=env)
    first = json.loads((out / "cg_analysis.json").read_text())
    proc = subprocess.run(cli + ["--resume", str(out), "--ns", "0.006"] + common, capture_output=True, text=True,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    second = json.loads((out / "cg_analysis.json").read_text())
    assert second["frames"] > first["frames"]
    assert math.isfinite(second["fes_mae_kT"]) and second["reference_deltaF_kjmol"] == pytest.approx(9.25, abs=0.01)
    # two replicas wrote trajectories; the colvar holds the torsions and the bias of all four,
    # and its torsions match a direct computation on the trajectories
    from neuralmd.md.reporters import read_h5md
    from neuralmd.sampling.samples import load_samples

    assert sorted(p.name for p in out.glob("traj_*.h5md")) == ["traj_000.h5md", "traj_001.h5md"]
    samples = load_samples(out)
    assert sorted(set(samples.replica.tolist())) == [0, 1, 2, 3]
    for b in (0, 1):
        frames = read_h5md(out / f"traj_{b:03d}.h5md")
        direct = torsion_angles(np.stack([a.positions for a in frames]), {"phi": [0, 1, 2, 3], "psi": [1, 2, 3, 4]})
        assert np.abs(np.angle(np.exp(1j * (samples.values[samples.replica == b] - direct)))).max() < 1e-6
    assert samples.weights.std() > 0  # the bias grew, so frames carry different weights


def test_torsion_surface_fit_recovers_a_known_two_dimensional_free_energy():
    """Samples of p(φ, ψ) ∝ exp(-F/kT) with a known coupled F give back F (up to a constant)
    within the histogram noise, in the populated region."""
    from neuralmd.models.coarse_grain import fit_torsion_surface, torsion_pair_basis

    kT = 0.025852

    def free(phi, psi):  # eV: two coupled basins
        return kT * (2.0 * np.cos(phi) + 1.5 * np.cos(psi - 1.0) + 1.0 * np.cos(phi + psi))

    rng = np.random.default_rng(0)
    phi, psi = rng.uniform(-np.pi, np.pi, (2, 400_000))
    keep = rng.uniform(size=phi.size) < np.exp(-(free(phi, psi) - free(phi, psi).min()) / kT)
    coef = fit_torsion_surface(phi[keep], psi[keep], kT, order=2)
    grid = np.linspace(-np.pi, np.pi, 25)[:-1] + np.pi / 24
    p, s = (g.ravel() for g in np.meshgrid(grid, grid, indexing="ij"))
    fitted = torsion_pair_basis(torch.as_tensor(p), torch.as_tensor(s), 2).numpy() @ coef
    true = free(p, s)
    populated = true - true.min() < 4 * kT  # bins with hundreds of samples or more
    diff = (fitted - true)[populated] - (fitted - true)[populated].mean()
    assert np.abs(diff).max() < 0.2 * kT


def test_boltzmann_inversion_step_recovers_a_known_torsion_free_energy_difference():
    """Samples of p_CG ∝ p_ref exp(-ΔF/kT) give back the update +ΔF (a region the CG model
    over-populates is raised), times the damping, where the reference is populated."""
    from neuralmd.surrogates.cg_refine import torsion_update
    from neuralmd.models.coarse_grain import torsion_grid_basis

    kT, bins, order = 0.025852, 24, 2
    rng = np.random.default_rng(1)

    def sample(free, n):  # rejection sampling of exp(-free/kT) on the torus
        out = np.empty((0, 2))
        while len(out) < n:
            x = rng.uniform(-np.pi, np.pi, size=(4 * n, 2))
            keep = rng.uniform(size=4 * n) < np.exp(-(free(x) - free(x).min()) / kT)
            out = np.concatenate([out, x[keep]])
        return out[:n]

    def f_ref(x):
        return kT * (1.0 * np.cos(x[:, 0]) + 0.8 * np.cos(x[:, 1] - 0.5))

    def delta(x):  # what the CG model gets wrong
        return kT * (0.7 * np.sin(x[:, 0]) - 0.5 * np.cos(x[:, 0] + x[:, 1]))

    reference = sample(f_ref, 200_000)
    cg = sample(lambda x: f_ref(x) + delta(x), 200_000)
    coef = torsion_update(cg, np.ones(len(cg)), reference, kT, order, bins=bins, damping=0.5)
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    c = np.stack(np.meshgrid(0.5 * (edges[1:] + edges[:-1]), 0.5 * (edges[1:] + edges[:-1]), indexing="ij"), -1)
    fitted = torsion_grid_basis(bins, order) @ coef
    # IBI: the update is kT ln(p_CG / p_ref) = -ΔF (up to a constant): the step lowers what ΔF raised
    expected = -0.5 * delta(c.reshape(-1, 2))
    err = (fitted - fitted.mean()) - (expected - expected.mean())
    assert np.abs(err).max() < 0.1 * kT and np.abs(expected).max() > 0.4 * kT


def test_boltzmann_inversion_step_raises_where_only_the_model_goes():
    """The data stay in phi < 0; a model that puts a third of its frames at phi > 0 gets that
    half raised by about the cap, not left alone because the data say nothing there."""
    from neuralmd.surrogates.cg_refine import torsion_update
    from neuralmd.models.coarse_grain import torsion_grid_basis

    kT, bins, order = 0.025852, 24, 4
    rng = np.random.default_rng(2)
    reference = np.stack([rng.uniform(-np.pi, 0, 20_000), rng.uniform(-np.pi, np.pi, 20_000)], 1)
    cg = np.concatenate([reference[:10_000], np.stack([rng.uniform(0, np.pi, 5_000),
                                                       rng.uniform(-np.pi, np.pi, 5_000)], 1)])
    fitted = (torsion_grid_basis(bins, order) @ torsion_update(cg, np.ones(len(cg)), reference, kT, order,
                                                               bins=bins)).reshape(bins, bins)
    # interior bins of each half (the Fourier fit smooths the step at the borders)
    raised = fitted[15:21].mean() - fitted[3:9].mean()
    assert raised > 1.5 * kT


def test_cg_refine_cli_adds_a_torsion_correction_and_resumes(cgnet_run, tmp_path):
    """`neuralmd cg refine` runs IBI iterations; the refined model differs from the original by
    exactly its 2D torsion correction; a second call with more iterations continues; a
    reference of the wrong shape exits 2 and writes nothing."""
    from neuralmd.models.neural import load_potential
    from neuralmd.models.coarse_grain import torsion_pair_basis

    reference = shared_file("ala2_cg/ala2_coordinates.npy")
    cli = [sys.executable, "-m", "neuralmd.cli", "cg", "refine", str(cgnet_run / "model.pt"), "--reference",
           str(reference), "--ns", "0.002", "--replicas", "16", "--threads", "1", "-o", str(tmp_path / "ref")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cli + ["--iterations", "1"], check=True, capture_output=True, env=env)
    state = json.loads((tmp_path / "ref" / "refine.json").read_text())
    assert len(state["history"]) == 1 and math.isfinite(state["history"][0]["fes_mae_kT"])
    proc = subprocess.run(cli + ["--iterations", "2"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads((tmp_path / "ref" / "refine.json").read_text())["history"]) == 2
    original, refined = load_potential(cgnet_run / "model.pt"), load_potential(tmp_path / "ref" / "model.pt")
    assert len(refined.correction_coef) == 80 and float(refined.correction_coef.abs().max()) > 0
    x = torch.as_tensor(np.load(reference)[:50], dtype=torch.float64)
    t = torsion_angles(x.numpy(), {"phi": [0, 1, 2, 3], "psi": [1, 2, 3, 4]})
    correction = torsion_pair_basis(torch.as_tensor(t[:, 0]), torch.as_tensor(t[:, 1]), 4) @ refined.correction_coef.double()
    assert torch.allclose(refined.energy(x) - original.energy(x), correction, atol=1e-5)
    with refined.prior_only(), original.prior_only():  # the correction belongs to the learned part
        assert torch.allclose(refined.energy(x), original.energy(x))
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((10, 4, 3)))
    proc = subprocess.run(cli[:6] + ["--reference", str(bad), "--ns", "0.002", "-o", str(tmp_path / "bad")],
                          capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "expected (frames, 5, 3)" in proc.stderr
    assert not (tmp_path / "bad").exists()
