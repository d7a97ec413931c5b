"""Iterative Boltzmann inversion of the CG torsion free energy (neuralmd.surrogates.cg_refine)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from neuralmd.models.coarse_grain import torsion_angles

from ..conftest import shared_file


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
    # other settings into the same folder: refused (was: the old result returned as if it were theirs)
    other = subprocess.run(cli + ["--iterations", "2", "--order", "2"], capture_output=True, text=True, env=env)
    assert other.returncode == 2 and "made with order 4, not order 2" in other.stderr, other.stderr
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


@pytest.mark.parametrize("bad", [{"timestep_fs": 0.0}, {"timestep_fs": -2.0}, {"order": 0}, {"replicas": 0},
                                 {"ns": -1.0}, {"iterations": 0}])
def test_bad_refine_and_md_settings_are_input_errors_before_anything_is_written(cgnet_run, tmp_path, bad):
    from neuralmd.errors import InputError
    from neuralmd.surrogates.cg_md import start_cg_md
    from neuralmd.surrogates.cg_refine import refine_cg_model

    reference = np.load(shared_file("ala2_cg/ala2_coordinates.npy"))[:100]
    args = {"iterations": 1, "ns": 0.001, "replicas": 2, "timestep_fs": 2.0, "order": 2, **bad}
    with pytest.raises(InputError):
        refine_cg_model(cgnet_run / "model.pt", reference, tmp_path / "refine", **args)
    md_args = {k: v for k, v in args.items() if k in ("ns", "replicas", "timestep_fs")}
    if md_args != {"ns": 0.001, "replicas": 2, "timestep_fs": 2.0}:
        with pytest.raises(InputError):
            start_cg_md(cgnet_run / "model.pt", tmp_path / "md", **md_args)
    assert list(tmp_path.iterdir()) == []
