"""NEB with a surrogate against the reference's own NEB: the umbrella inversion of ammonia.

GFN2-xTB (tblite) is the reference. Its own climbing-image NEB gives the inversion barrier
(0.265 eV = 25.6 kJ/mol; experiment 24.2 kJ/mol). A small PaiNN trained in the test on ~200
xTB-labelled frames (the xTB path images and random displacements around them) must reproduce
that barrier from the same endpoints; a committee of two seeds must report its disagreement per
image, small on the path and large far from the training data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from ase.io import write
from tblite.ase import TBLite

from neuralmd.data.io import read_frames, write_frames
from neuralmd.errors import InputError
from neuralmd.models.committee import load_committee
from neuralmd.models.neural import load_potential
from neuralmd.reference.xtb import XTBLabeler
from neuralmd.surrogates.neb import committee_uncertainty, load_endpoints, run_neb
from neuralmd.threads import set_threads
from neuralmd.training import TrainConfig, Trainer

#: Barrier tolerance (eV): 0.02 eV = 1.9 kJ/mol, 8 % of the 0.265 eV barrier and under half of
#: chemical accuracy (1 kcal/mol = 0.043 eV). The trained surrogate lands within ~2 meV; an
#: under-trained one (checked below) misses by the whole barrier.
BARRIER_TOL_EV = 0.02


def xtb() -> TBLite:
    return TBLite(method="GFN2-xTB", verbosity=0)


def inverted(atoms: Atoms) -> Atoms:
    """The umbrella-inverted ammonia: mirrored through the plane z = z_N (N is atom 0)."""
    out = atoms.copy()
    pos = out.positions
    pos[:, 2] = 2 * pos[0, 2] - pos[:, 2]
    out.positions = pos
    return out


def unlabelled(atoms: Atoms) -> Atoms:
    """The geometry alone (no energy, forces or calculator)."""
    return Atoms(atoms.numbers, atoms.positions)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny molecules run fastest on one torch thread (and leave the other core alone)."""
    before = torch.get_num_threads()
    set_threads(1)
    yield
    set_threads(before)


@pytest.fixture(scope="module")
def endpoints() -> tuple[Atoms, Atoms]:
    start = molecule("NH3")
    return start, inverted(start)


@pytest.fixture(scope="module")
def xtb_path(endpoints, one_thread):
    """xTB's own climbing-image NEB (9 images) from the same endpoints."""
    return run_neb(*endpoints, xtb)


def train(data: Path, run_dir: Path, seed: int, steps: int) -> Path:
    """A small PaiNN (32 features, 2 interactions) trained for ``steps`` steps; its model.pt."""
    cfg = TrainConfig(train=str(data), features=32, interactions=2, cutoff_A=4.0, num_basis=8, batch_size=16,
                      max_steps=steps, lr=3e-3, lr_schedule="cosine", energy_weight=10.0,
                      eval_every=min(100, steps), checkpoint_every=steps, threads=1, seed=seed)
    Trainer(cfg, run_dir, progress=False).run()
    return run_dir / "model.pt"


@pytest.fixture(scope="module")
def training_data(tmp_path_factory, xtb_path) -> Path:
    """~200 xTB-labelled frames: the xTB path images plus Gaussian displacements (σ = 0.06 Å),
    25 around each endpoint and 15 around each intermediate image."""
    rng = np.random.default_rng(0)
    frames = []
    for i, image in enumerate(xtb_path.images):
        frames.append(unlabelled(image))
        for _ in range(25 if i in (0, len(xtb_path.images) - 1) else 15):
            frames.append(Atoms(image.numbers, image.positions + rng.normal(0.0, 0.06, image.positions.shape)))
    result = XTBLabeler().label(frames)
    assert not result.failures
    path = tmp_path_factory.mktemp("neb_data") / "nh3.xyz"
    write_frames(result.frames, path)
    return path


@pytest.fixture(scope="module")
def committee_models(tmp_path_factory, training_data, one_thread) -> list[Path]:
    """Two surrogates, seeds 0 and 1, 1000 steps each."""
    root = tmp_path_factory.mktemp("neb_models")
    return [train(training_data, root / f"seed{seed}", seed, 1000) for seed in (0, 1)]


@pytest.mark.slow
def test_surrogate_barrier_matches_xtb_neb(endpoints, xtb_path, committee_models, training_data, tmp_path, one_thread):
    assert xtb_path.converged and xtb_path.highest_image == 5
    assert 0.15 < xtb_path.barrier_forward_eV < 0.4  # GFN2-xTB inversion barrier, ~0.265 eV

    surrogate = run_neb(*endpoints, load_potential(committee_models[0]), output=tmp_path / "path")
    assert surrogate.converged
    assert abs(surrogate.barrier_forward_eV - xtb_path.barrier_forward_eV) < BARRIER_TOL_EV
    assert abs(surrogate.barrier_reverse_eV - xtb_path.barrier_reverse_eV) < BARRIER_TOL_EV
    summary = json.loads((tmp_path / "path" / "neb.json").read_text())
    assert summary["barrier_forward_kjmol"] == pytest.approx(surrogate.barrier_forward_eV * 96.485, rel=1e-4)
    assert len(read_frames(tmp_path / "path" / "path.xyz", require_labels=True)) == 11
    assert (tmp_path / "path" / "neb.png").stat().st_size > 0

    # the tolerance discriminates: a surrogate trained for 20 steps fails it
    poor = train(training_data, tmp_path / "poor", seed=0, steps=20)
    poor_path = run_neb(*endpoints, load_potential(poor))
    assert abs(poor_path.barrier_forward_eV - xtb_path.barrier_forward_eV) > BARRIER_TOL_EV


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "neuralmd.cli", "neb", *args], capture_output=True, text=True,
                          env=env, timeout=600)


@pytest.mark.slow
def test_cli_committee_reports_uncertainty_per_image(endpoints, xtb_path, committee_models, tmp_path, one_thread):
    write(tmp_path / "start.xyz", endpoints[0])
    write(tmp_path / "end.xyz", endpoints[1])
    models = [arg for m in committee_models for arg in ("--model", str(m))]
    # a trust level below any deviation flags every image, so the warning must appear
    result = cli(str(tmp_path / "start.xyz"), str(tmp_path / "end.xyz"), *models, "--images", "9", "--threads", "1",
                 "--trust", "1e-5", "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "warning: committee force deviation exceeds the trust level" in result.stderr
    summary = json.loads((tmp_path / "out" / "neb.json").read_text())
    assert summary["converged"] and summary["committee"]
    assert abs(summary["barrier_forward_eV"] - xtb_path.barrier_forward_eV) < BARRIER_TOL_EV
    deviation = np.array([row["force_deviation_eV_per_A"] for row in summary["images"]])
    std = np.array([row["energy_std_eV"] for row in summary["images"]])
    assert len(deviation) == len(std) == 11
    assert np.isfinite(deviation).all() and (deviation >= 0).all() and (std >= 0).all()
    assert summary["untrusted_images"] == list(range(11))
    assert (tmp_path / "out" / "neb.png").stat().st_size > 0
    # too few steps: the files are written, but the command says so and exits non-zero
    short = cli(str(tmp_path / "start.xyz"), str(tmp_path / "end.xyz"), *models, "--images", "3", "--steps", "2",
                "--threads", "1", "-o", str(tmp_path / "short"))
    assert short.returncode == 1 and "did not converge in 2 steps" in short.stderr, short.stderr
    assert not json.loads((tmp_path / "short" / "neb.json").read_text())["converged"]

    # on the path the committee agrees (below the default trust level); far from the data it does not
    path = read_frames(tmp_path / "out" / "path.xyz")
    committee = load_committee(committee_models)
    on_path = committee_uncertainty(committee, path)["force_deviation_eV_per_A"]
    np.testing.assert_allclose(on_path, deviation, rtol=1e-4, atol=1e-6)
    stretched = unlabelled(path[0])
    stretched.set_distance(0, 1, 1.6, fix=0)  # one N-H bond at 1.6 Å, never seen in training
    far = committee_uncertainty(committee, [stretched])["force_deviation_eV_per_A"][0]
    assert on_path.max() < 0.2 and far > 5 * on_path.max()


def test_endpoints_with_different_atoms_are_rejected(tmp_path, endpoints):
    start, end = endpoints
    write(tmp_path / "nh3.xyz", start)
    write(tmp_path / "nh2.xyz", end[:3])
    write(tmp_path / "hnhh.xyz", end[[1, 0, 2, 3]])
    (tmp_path / "broken.xyz").write_text("4\nnot a comment line\nN 0 0\n")
    with pytest.raises(InputError, match=r"nh3\.xyz.*nh2\.xyz.*atom count.*4 atoms.*3"):
        load_endpoints(tmp_path / "nh3.xyz", tmp_path / "nh2.xyz")
    with pytest.raises(InputError, match=r"nh3\.xyz.*hnhh\.xyz.*element order: atom 0 is N .* but H"):
        load_endpoints(tmp_path / "nh3.xyz", tmp_path / "hnhh.xyz")
    with pytest.raises(InputError, match="broken.xyz"):
        load_endpoints(tmp_path / "broken.xyz", tmp_path / "nh3.xyz")
    with pytest.raises(InputError, match="at least 1 intermediate image"):
        run_neb(start, end, xtb, images=0)


def test_cli_bad_endpoints_exit_2_and_write_nothing(tmp_path, endpoints):
    write(tmp_path / "nh3.xyz", endpoints[0])
    write(tmp_path / "nh2.xyz", endpoints[1][:3])
    out = tmp_path / "out"
    nh3, nh2 = str(tmp_path / "nh3.xyz"), str(tmp_path / "nh2.xyz")
    for args, fragments in (([nh3, nh2], [nh3, nh2, "atom count"]), ([nh3, nh3], ["the same geometry"]),
                            ([nh3, nh2, "--fmax", "0"], ["fmax 0"]), ([nh3, nh2, "--steps", "-5"], ["steps -5"]),
                            ([nh3, nh2, "--trust", "-1"], ["trust -1"]),
                            ([nh3, nh3, "--images", "0"], ["images: 0", "at least 1 intermediate image"])):
        result = cli(*args, "--model", str(tmp_path / "model.pt"), "-o", str(out))
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
        for fragment in fragments:
            assert fragment in lines[0], (fragment, lines[0])
        assert not out.exists()
