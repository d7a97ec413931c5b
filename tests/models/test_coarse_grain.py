"""The coarse-grained potential (neuralmd.models.coarse_grain): forces, invariance, torsion surfaces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from ..conftest import shared_file


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
