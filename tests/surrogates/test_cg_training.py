"""Force matching (neuralmd.surrogates.cg_training) on the mapped alanine dipeptide data (../shared/data/ala2_cg)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from neuralmd.errors import InputError
from neuralmd.surrogates.cg_md import analyse_cg_run, start_cg_md
from neuralmd.models.coarse_grain import CGFeatures, Prior
from neuralmd.surrogates.coarse_grain import load_cg_data

from ..conftest import shared_file


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
