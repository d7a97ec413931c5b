"""Learned CVs find the slow or discriminating coordinate; the TorchScript export is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from neuralmd.sampling.cvs import PairwiseDistances
from neuralmd.sampling.learned import (LearnedCV, load_exported, train_autoencoder, train_deep_lda,
                                       train_deep_tica)


def _slow_fast_process(n: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """x hops between -1 and +1 rarely (slow); y is fast noise with 3x larger variance; two
    more noisy descriptors mix them. Returns descriptors (n, 4) and x."""
    rng = np.random.default_rng(seed)
    state, x = -1.0, np.empty(n)
    for t in range(n):
        if rng.random() < 0.004:
            state = -state
        x[t] = state + 0.15 * rng.normal()
    y = 3.0 * rng.normal(size=n)
    d = np.stack([x, y, x + 0.3 * y + 0.1 * rng.normal(size=n), 0.5 * rng.normal(size=n)], axis=1)
    return d, x


def _corr(a, b) -> float:
    return abs(float(np.corrcoef(a, b)[0, 1]))


def test_deep_tica_finds_the_slow_coordinate_where_variance_points_elsewhere():
    d, x = _slow_fast_process()
    net, history = train_deep_tica(d, lag=10, epochs=40, seed=0)  # 12 batches of 512 per epoch
    cv = net(torch.as_tensor(d, dtype=torch.float32)).detach().numpy()[:, 0]
    assert _corr(cv, x) > 0.9
    assert history[-1]["valid_loss"] < history[0]["valid_loss"]
    # the hidden state's autocorrelation at 10 steps is (1 - 2 * 0.004)^10 = 0.923; noisy observables give less
    (eigenvalue,) = history[-1]["tica_eigenvalues"]
    assert 0.75 < eigenvalue < 0.95


def test_deep_tica_eigenvalue_is_near_zero_without_a_slow_process():
    from neuralmd.sampling.cv_training import SLOW_TICA_EIGENVALUE

    d, _ = _slow_fast_process()
    shuffled = d[np.random.default_rng(1).permutation(len(d))]  # same distribution, no time correlation
    _, history = train_deep_tica(shuffled, lag=10, epochs=40, seed=0)
    (eigenvalue,) = history[-1]["tica_eigenvalues"]
    assert abs(eigenvalue) < SLOW_TICA_EIGENVALUE  # what `cv train` warns about


def test_deep_tica_stays_smooth_when_a_stiff_descriptor_drifts_with_the_state():
    """A bond-like descriptor (spread 0.014) whose mean shifts by 0.02 with the slow state: scaled
    to unit variance it becomes as loud as the slow coordinate and the CV follows it with a
    gradient many times steeper than the slow coordinate's own (which is 1 per unit); the
    default scale floor and gradient penalty keep the CV as smooth as the slow coordinate."""
    from neuralmd.analysis.interpret import cv_steepness

    d, x = _slow_fast_process()
    rng = np.random.default_rng(5)
    stiff = 0.01 * np.sign(x) + 0.01 * rng.normal(size=len(x))
    d = np.concatenate([d, stiff[:, None]], axis=1)
    net, _ = train_deep_tica(d, lag=10, epochs=40, seed=0)
    cv = net(torch.as_tensor(d, dtype=torch.float32)).detach().numpy()[:, 0]
    assert _corr(cv, x) > 0.95
    assert cv_steepness(net, d)[0] < 2.0
    per_column, _ = train_deep_tica(d, lag=10, epochs=40, seed=0, scale_floor=0.0, smoothness=0.0)
    assert cv_steepness(per_column, d)[0] > 5.0


def test_autoencoder_latent_follows_the_manifold_coordinate():
    """Descriptors (t, t², t³, noise) lie near a curve parametrised by t: a one-dimensional
    latent must be a monotonic function of t and reconstruct them well."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(2)
    t = rng.uniform(-1, 1, 3000)
    d = np.stack([t, t**2, t**3, 0.02 * rng.normal(size=t.size)], axis=1) + 0.01 * rng.normal(size=(t.size, 4))
    net, history = train_autoencoder(d, n_cv=1, epochs=60, seed=0)
    cv = net(torch.as_tensor(d, dtype=torch.float32)).detach().numpy()[:, 0]
    assert abs(spearmanr(cv, t)[0]) > 0.95
    assert history[-1]["valid_loss"] < 0.5 * history[0]["valid_loss"]


def test_deep_lda_separates_labelled_states():
    rng = np.random.default_rng(1)
    a = rng.normal([0, 0, 0], [0.3, 1.0, 1.0], size=(800, 3))
    b = rng.normal([1.2, 0, 0], [0.3, 1.0, 1.0], size=(800, 3))
    d = np.concatenate([a, b])
    labels = np.repeat([0, 1], 800)
    net, _ = train_deep_lda(d, labels, epochs=40, seed=0)
    cv = net(torch.as_tensor(d, dtype=torch.float32)).detach().numpy()[:, 0]
    threshold = 0.5 * (cv[:800].mean() + cv[800:].mean())
    accuracy = max(((cv > threshold) == labels).mean(), ((cv < threshold) == labels).mean())
    assert accuracy > 0.95


def test_torchscript_export_matches_python_values_and_gradients(tmp_path):
    atoms = molecule("CH3CH2OH")
    desc = PairwiseDistances([0, 1, 2, 8])
    rng = np.random.default_rng(0)
    positions = torch.as_tensor(atoms.positions + rng.normal(0, 0.1, (200, 9, 3)), dtype=torch.float64)
    d = desc(positions).numpy()
    net, _ = train_autoencoder(d, n_cv=2, epochs=5, seed=0)
    cv = LearnedCV(desc, net, "autoencoder")
    folder = cv.export(tmp_path / "cv")
    scripted, meta = load_exported(folder)
    assert meta["pairs_0based"][0] == [0, 1] and meta["cv_names"] == ["autoencoder_0", "autoencoder_1"]
    assert "PYTORCH_MODEL FILE=cv.pt" in (folder / "plumed.dat").read_text()
    x = torch.as_tensor(d[:7], dtype=torch.float32).requires_grad_(True)
    y_py = net(x)
    (g_py,) = torch.autograd.grad(y_py.sum(), x)
    x2 = x.detach().clone().requires_grad_(True)
    y_ts = scripted(x2)
    (g_ts,) = torch.autograd.grad(y_ts.sum(), x2)
    torch.testing.assert_close(y_ts, y_py, rtol=0, atol=1e-6)
    torch.testing.assert_close(g_ts, g_py, rtol=0, atol=1e-6)
    # the learned CV of positions is differentiable end to end
    pos = positions[:3].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(cv(pos).sum(), pos)
    assert torch.isfinite(g).all() and g.abs().max() > 0


def test_relevance_ranks_the_slow_descriptor_first(tmp_path):
    from neuralmd.analysis.interpret import cv_relevance, plot_relevance

    d, _ = _slow_fast_process(seed=3)
    net, _ = train_deep_tica(d, lag=10, epochs=40, seed=0)
    relevance = cv_relevance(net, d)
    assert relevance.sum() == pytest.approx(1.0)
    # column 0 is the slow x, column 2 mixes x with the fast y; columns 1 and 3 carry no slow signal
    assert relevance[0] + relevance[2] > 0.7
    assert relevance[3] < 0.1
    plot_relevance(relevance, ["x", "y", "x+0.3y", "noise"], tmp_path / "relevance.png")
    assert (tmp_path / "relevance.png").stat().st_size > 5000


def test_numpy_twin_of_a_learned_cv_matches_torch_values_and_gradients(tmp_path):
    from neuralmd.sampling.fast_cv import MLPDistanceCV
    from neuralmd.sampling.spec import load_cv

    rng = np.random.default_rng(3)
    x0 = rng.normal(size=(6, 3)) * 2.0
    frames = x0 + rng.normal(scale=0.2, size=(300, 6, 3))
    desc = PairwiseDistances([0, 1, 2, 4, 5])
    d = desc(torch.tensor(frames)).numpy()
    net, _ = train_autoencoder(d, n_cv=2, epochs=5, seed=0)
    LearnedCV(desc, net, "autoencoder").export(tmp_path / "cv", {"n_atoms": 6, "elements": [6] * 5})
    cv = load_cv(tmp_path / "cv", np.array([6] * 6))
    twins = MLPDistanceCV.components(cv, 6)
    assert len(twins) == 2
    for component, twin in enumerate(twins):
        x = torch.tensor(frames[7], requires_grad=True)
        s = cv(x.unsqueeze(0))[0, component]
        (grad,) = torch.autograd.grad(s, x)
        value, grad_np = twin.value_and_grad(frames[7])
        assert value == pytest.approx(float(s), rel=1e-5, abs=1e-5)
        assert np.allclose(grad_np, grad.numpy(), rtol=1e-4, atol=1e-5)
