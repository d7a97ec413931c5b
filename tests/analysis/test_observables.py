"""Observables of periodic runs: RDFs and MSDs through `neuralmd analyze` equal brute-force
NumPy ones on the same trajectory, the differentiable RDF matches the histogram within its
smoothing and has gradients, and Langevin-driven free particles diffuse with D = k_BT/(mγ)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from scipy import constants
from typer.testing import CliRunner

from neuralmd.analysis import observables as obs
from neuralmd.cli import app
from neuralmd.data.io import read_frames
from neuralmd.errors import InputError
from neuralmd.md.simulation import MDSettings
from neuralmd.md.start import start_native

from ..conftest import shared_file
from ..md.potentials import IdealGas


@pytest.fixture(scope="module")
def water_run(tmp_path_factory, float64_model_module):
    """A few steps of CSVR MD of the DeePMD water frame (64 waters), written as `md` writes runs."""
    run = tmp_path_factory.mktemp("water") / "run"
    frame = read_frames(shared_file("deepmd_water/data_0"), require_labels=False)[0]
    settings = MDSettings(ensemble="nvt", thermostat="csvr", temperature_K=[300.0], timestep_fs=0.5, report_every=5,
                          total_steps=60, model_path="untrained")
    start_native(settings, run, float64_model_module, [frame]).run()
    return run


@pytest.fixture(scope="module")
def float64_model_module():
    from neuralmd.models import NeuralPotential

    torch.manual_seed(0)
    return NeuralPotential([1, 6, 8], e0=[-13.6, -1025.0, -2035.0], scale=1.3, shift=0.1,
                           features=16, interactions=2, cutoff=4.0, num_basis=8).double()


def _frames(run):
    u, _ = obs.universe(run)
    pos = np.array([u.atoms.positions.copy() for _ in u.trajectory])
    box = np.array([ts.dimensions[:3].copy() for ts in u.trajectory])
    return u, pos, box


def _brute_rdf(pos, box, ia, ib, r_max, bins):
    """Histogram of minimum-image distances, normalised by the pair density, per frame."""
    edges = np.linspace(0, r_max, bins + 1)
    g = np.zeros(bins)
    for x, L in zip(pos, box):
        d = x[ia][:, None] - x[ib][None]
        d -= L * np.round(d / L)
        r = np.linalg.norm(d, axis=-1)
        same = ia[:, None] == ib[None]
        counts, _ = np.histogram(r[~same], bins=edges)
        shell = 4 / 3 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
        g += counts / shell / ((~same).sum() / np.prod(L))
    return 0.5 * (edges[1:] + edges[:-1]), g / len(pos)


def test_analyze_rdf_density_and_msd_equal_brute_force_numpy(water_run, tmp_path):
    result = CliRunner().invoke(app, ["analyze", str(water_run), "--rdf", "O-O,O-H", "--density", "--msd", "O",
                                      "-o", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "analysis.json").read_text())
    assert {"rdf.png", "msd_O.png", "analysis.json"} <= {p.name for p in tmp_path.iterdir()}
    u, pos, box = _frames(water_run)
    oxygen, hydrogen = np.flatnonzero(u.atoms.elements == "O"), np.flatnonzero(u.atoms.elements == "H")
    for pair, (ia, ib) in {"O-O": (oxygen, oxygen), "O-H": (oxygen, hydrogen)}.items():
        r, g = _brute_rdf(pos, box, ia, ib, 6.0, 120)
        np.testing.assert_allclose(report["rdf"][pair]["r_A"], r, atol=1e-9)
        np.testing.assert_allclose(report["rdf"][pair]["g"], g, rtol=1e-6, atol=1e-6)
    mass = u.atoms.masses.sum()
    assert report["density_g_cm3"]["mean"] == pytest.approx(mass / np.prod(box[0]) * 1.66053906, rel=1e-6)
    lags, msd = obs.msd(u, "O")
    x = pos[:, oxygen]
    brute = [np.mean(np.sum((x[k:] - x[: len(x) - k]) ** 2, axis=-1)) for k in range(len(x))]
    np.testing.assert_allclose(msd, brute, rtol=1e-6, atol=1e-9)
    assert report["diffusion_1e-9_m2_s"]["O"]["raw"] > 0


def test_soft_rdf_matches_the_histogram_within_its_smoothing_and_is_differentiable(water_run):
    from scipy.ndimage import gaussian_filter1d

    u, pos, box = _frames(water_run)
    oxygen = torch.as_tensor(np.flatnonzero(u.atoms.elements == "O"))
    hist = obs.rdf(u, "O-O", r_max=6.0, bins=240)
    sigma = 0.06
    smoothed = gaussian_filter1d(np.array(hist["g"]), sigma / (6.0 / 240), mode="nearest")
    r = torch.linspace(1.0, 5.5, 91, dtype=torch.float64)
    x = torch.as_tensor(pos, dtype=torch.float64).requires_grad_(True)
    cell = torch.diag_embed(torch.as_tensor(box, dtype=torch.float64))
    g = obs.soft_rdf(x, cell, oxygen, oxygen, r, sigma)
    assert np.abs(g.detach().numpy() - np.interp(r.numpy(), hist["r_A"], smoothed)).max() < 0.08
    (grad,) = torch.autograd.grad(g[30:50].sum(), x)
    assert torch.isfinite(grad).all() and grad.abs().max() > 0


def test_free_particles_under_langevin_diffuse_with_kT_over_m_gamma(tmp_path):
    """256 argon atoms without interactions in a 20 Å box, Langevin at 300 K with γ = 5/ps: the
    long-time diffusion coefficient is exactly k_BT/(mγ) = 12.49e-9 m²/s; the Yeh-Hummer term
    adds ξk_BT/(6πηL)."""
    atoms = Atoms("Ar256", positions=np.random.default_rng(0).uniform(0, 20, (256, 3)), cell=[20, 20, 20], pbc=True)
    settings = MDSettings(temperature_K=[300.0], friction_per_ps=5.0, timestep_fs=4.0, report_every=50,
                          total_steps=15_000, model_path="ideal gas", seed=4, max_spread_A=1e9)
    start_native(settings, tmp_path / "gas", IdealGas(), [atoms]).run()
    u, start = obs.universe(tmp_path / "gas")
    lags, msd = obs.msd(u, "Ar")
    fit = obs.diffusion(lags, msd, 300.0, 20.0, viscosity_mpa_s=1.0)
    exact = constants.k * 300 / (atoms.get_masses()[0] * constants.atomic_mass * 5e12) * 1e9
    assert exact == pytest.approx(12.49, abs=0.01)
    assert fit["raw"] == pytest.approx(exact, rel=0.1)
    yeh_hummer = 2.837297 * constants.k * 300 / (6 * math.pi * 1e-3 * 20e-10) * 1e9
    assert fit["corrected"] - fit["raw"] == pytest.approx(yeh_hummer, rel=1e-9)


def test_analyze_refuses_bad_requests(water_run, tmp_path):
    runner = CliRunner()
    for args, fragment in ((["--rdf", "O-X"], "no atoms of element 'X'"), (["--rdf", "OO"], "pair of elements"),
                           (["--rdf", "O-O", "--r-max", "50"], "half the box"), ([], "ask for something"),
                           (["--density", "--replica", "3"], "traj_003.pdb"),
                           (["--density", "--skip-ps", "1000"], "frames after")):
        result = runner.invoke(app, ["analyze", str(water_run), *args, "-o", str(tmp_path / "out")])
        assert isinstance(result.exception, InputError) and fragment in str(result.exception), (args, result.output)
    assert not (tmp_path / "out").exists()


def test_cv_values_from_a_periodic_trajectory_use_minimum_images(water_run):
    """A distance CV computed on a periodic run's frames (as ``cv train`` and ``fes`` read them)
    is the minimum-image distance, as ASE's ``get_distance(mic=True)`` gives it."""
    from neuralmd.md.reporters import read_h5md
    from neuralmd.sampling.cvs import Distance
    from neuralmd.sampling.samples import load_samples

    frames = read_h5md(water_run / "traj_000.h5md")
    oxygens = [i for i, z in enumerate(frames[0].numbers) if z == 8]
    far = max(oxygens[1:], key=lambda j: frames[0].get_distance(oxygens[0], j))  # across the box, unwrapped
    samples = load_samples(water_run, cv=Distance(oxygens[0], far))
    ase = [f.get_distance(oxygens[0], far, mic=True) for f in frames]
    assert max(ase) < frames[0].get_distance(oxygens[0], far)  # the raw distance is not the image's
    np.testing.assert_allclose(samples.values[:, 0], ase, atol=1e-9)
