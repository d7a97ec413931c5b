"""Training: real learning on rMD17 ethanol, exact resume after kill -9, periodic water."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import tomllib

import pytest
from ase import Atoms
import torch

from neuralmd.training import TrainConfig, Trainer, evaluate
from neuralmd.training.trainer import batch_indices, build_model, load_data, loss_fn
from tests.conftest import shared_file


def test_training_beats_the_per_element_baseline_by_far(trained_run):
    """1000 steps on rMD17 ethanol (the session's trained_run fixture)."""
    results = json.loads((trained_run / "results.json").read_text())
    force_mae = results["valid"]["force_mae_mev_per_A"]
    baseline = results["baseline_valid"]["force_mae_mev_per_A"]
    assert baseline > 500  # rMD17 ethanol forces are ~1 eV/Å
    assert force_mae < 0.2 * baseline, (force_mae, baseline)
    for name in ("model.pt", "checkpoint.pt", "config.toml", "results.json", "history.json", "learning_curve.png"):
        assert (trained_run / name).is_file(), name
    assert results["steps"] == 1000
    assert [h["step"] for h in json.loads((trained_run / "history.json").read_text())] == [250, 500, 750, 1000]


def test_batch_order_depends_only_on_seed_and_step():
    seen = [i for step in range(7) for i in batch_indices(step, 20, 3, seed=5)]
    assert sorted(seen) == list(range(20))  # 7 steps of 3 cover one epoch of 20 frames once
    assert batch_indices(9, 20, 3, seed=5) == batch_indices(9, 20, 3, seed=5)
    assert batch_indices(9, 20, 3, seed=5) != batch_indices(9, 20, 3, seed=6)


RESUME_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from neuralmd.training import TrainConfig, Trainer, evaluate
    from neuralmd.threads import set_threads
    set_threads(1)
    cfg = TrainConfig(train=sys.argv[1], features=8, interactions=1, batch_size=4, max_steps=40,
                      eval_every=10, checkpoint_every=10, threads=1, valid_fraction=0.2, architecture=sys.argv[4])
    kill_at = int(sys.argv[3])
    def hook(step):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    Trainer(cfg, sys.argv[2], progress=False, on_step=hook).run()
""")


@pytest.mark.parametrize("architecture", ["painn", "tensornet"])
def test_kill_and_resume_gives_identical_weights(tmp_path, ethanol_xyz, architecture):
    from neuralmd.data import read_frames, write_frames

    small = tmp_path / "small.xyz"
    write_frames(read_frames(ethanol_xyz)[:40], small)
    script = tmp_path / "train.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, str(script), str(small), str(tmp_path / "killed"), "27", architecture],
                            env=env)
    assert killed.returncode == -signal.SIGKILL
    ckpt = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    assert ckpt["step"] == 20

    resumed = Trainer.resume(tmp_path / "killed", progress=False)
    assert resumed.step == 20
    resumed.run()
    straight = subprocess.run([sys.executable, str(script), str(small), str(tmp_path / "straight"), "-1",
                               architecture], env=env)
    assert straight.returncode == 0

    a = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 40
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
        assert torch.equal(a["ema"][key], b["ema"][key]), key


def test_periodic_water_trains_and_evaluates(tmp_path):
    """64-water frames with the default frames per step and network (resolved to 1 and PaiNN, and
    stored for a resume)."""
    from neuralmd.data import read_frames, write_frames

    frames = read_frames(shared_file("deepmd_water/data_0"))[:24]
    write_frames(frames, tmp_path / "water.xyz")
    cfg = TrainConfig(train=str(tmp_path / "water.xyz"), valid_fraction=0.25, features=16, interactions=1,
                      cutoff_A=4.0, lr=5e-3, max_steps=150, eval_every=50, checkpoint_every=150, threads=2)
    results = Trainer(cfg, tmp_path / "run", progress=False).run()
    assert results["valid"]["force_mae_mev_per_A"] < 0.75 * results["baseline_valid"]["force_mae_mev_per_A"]
    stored = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert (stored["batch_size"], stored["architecture"]) == (1, "painn")


def test_frames_per_step_default_follows_the_frames_size():
    from ase.build import molecule

    from neuralmd.data import FrameDataset
    from neuralmd.training.trainer import default_batch_size

    sizes = {n: default_batch_size(FrameDataset([Atoms("H" * n)] * 3)) for n in (9, 21, 27, 64, 192, 1536)}
    assert sizes == {9: 8, 21: 8, 27: 7, 64: 3, 192: 1, 1536: 1}
    assert default_batch_size(FrameDataset([molecule("CH3CH2OH"), Atoms("H" * 183)])) == 2  # by the mean size


def test_early_stopping_ends_a_plateau_run_but_not_a_cosine_one(tmp_path, ethanol_xyz):
    """A learning rate too small to move the weights: the validation error never improves after
    the first evaluation, so the plateau schedule stops after ``patience`` evaluations, while a
    cosine schedule (high rates early on purpose) runs its planned steps."""
    stops = {}
    for schedule in ("plateau", "cosine"):
        cfg = TrainConfig(train=str(ethanol_xyz), features=8, interactions=1, batch_size=4, lr=1e-30, min_lr=1e-31,
                          max_steps=40, eval_every=2, checkpoint_every=1000, patience=3, lr_schedule=schedule,
                          threads=2)
        stops[schedule] = Trainer(cfg, tmp_path / schedule, progress=False).run()
    assert stops["plateau"]["stop_reason"].startswith("early stopping")
    assert stops["plateau"]["steps"] < 40
    assert stops["cosine"]["stop_reason"] == "max_steps reached" and stops["cosine"]["steps"] == 40


def test_huber_force_loss_is_the_mse_for_small_errors_and_linear_for_outliers(ethanol_xyz):
    """Twice the Huber loss equals the MSE while every force error is below δ; one outlier label
    adds to the MSE quadratically in its size but to the Huber loss only linearly (slope 2δ/M)."""
    cfg = TrainConfig(train=str(ethanol_xyz), features=8, interactions=1, valid_fraction=0.5)
    train, _ = load_data(cfg)
    model = build_model(cfg, train).eval()
    batch = train.collate(range(4))
    mse = {"force_loss": "mse"}
    loss = lambda batch, **kw: float(loss_fn(model, batch, TrainConfig(**{**cfg.__dict__, **kw}))[0])  # noqa: E731
    assert abs(loss(batch, force_loss="huber", huber_delta=1e3) - loss(batch, **mse)) < 1e-9 * loss(batch, **mse)

    added = {}
    for size in (50.0, 100.0, 150.0):  # eV/Å, far above any error of the (untrained) model
        outlier = train.collate(range(4))
        outlier.forces[0, 0] += size
        added[size] = {kind: loss(outlier, **kw) - loss(batch, **kw)
                       for kind, kw in (("mse", mse), ("huber", {"huber_delta": 0.02}))}
    m, w = batch.forces.numel(), cfg.force_weight
    curvature = {kind: added[150.0][kind] - 2 * added[100.0][kind] + added[50.0][kind] for kind in ("mse", "huber")}
    assert abs(curvature["mse"] - w * 2 * 50.0**2 / m) < 1e-3 * curvature["mse"]  # quadratic
    assert abs(curvature["huber"]) < 1e-3  # linear ...
    assert abs(added[150.0]["huber"] - added[100.0]["huber"] - w * 2 * 0.02 * 50.0 / m) < 1e-3  # ... slope 2δ/M


def test_a_run_from_before_the_huber_loss_and_tensornet_resumes_as_it_was_made(tmp_path, ethanol_xyz):
    """A config.toml without force_loss, architecture and repulsion (older runs) resumes with the
    MSE loss and a PaiNN without repulsion, the model such a run trained."""
    from neuralmd.data import read_frames, write_frames

    small = tmp_path / "small.xyz"
    write_frames(read_frames(ethanol_xyz)[:12], small)
    cfg = TrainConfig(train=str(small), architecture="painn", repulsion="none", features=8, interactions=1,
                      batch_size=4, max_steps=2, eval_every=1, checkpoint_every=1, threads=1, valid_fraction=0.25)
    Trainer(cfg, tmp_path / "run", progress=False).run()
    config = tmp_path / "run" / "config.toml"
    assert Trainer.resume(tmp_path / "run", progress=False).cfg.force_loss == "huber"
    config.write_text("\n".join(line for line in config.read_text().splitlines()
                                if not line.startswith(("force_loss", "huber_delta", "architecture", "repulsion"))))
    old = Trainer.resume(tmp_path / "run", progress=False).cfg
    assert (old.force_loss, old.architecture, old.repulsion) == ("mse", "painn", "none")


def test_a_run_killed_before_its_first_checkpoint_resumes_by_starting_over(tmp_path, ethanol_xyz):
    """kill -9 at step 5 (first checkpoint at 10): config.toml exists, checkpoint.pt does not;
    --resume starts over from the stored config and ends with the weights of a run never killed."""
    from neuralmd.data import read_frames, write_frames

    small = tmp_path / "small.xyz"
    write_frames(read_frames(ethanol_xyz)[:40], small)
    script = tmp_path / "train.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for name, kill_at in (("killed", "5"), ("straight", "-1")):
        subprocess.run([sys.executable, str(script), str(small), str(tmp_path / name), kill_at, "painn"], env=env)
    assert (tmp_path / "killed" / "config.toml").is_file() and not (tmp_path / "killed" / "checkpoint.pt").exists()
    resumed = Trainer.resume(tmp_path / "killed", progress=False)
    assert resumed.step == 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the subprocess: bit for bit needs the same reduction order
    try:
        resumed.run()
    finally:
        torch.set_num_threads(threads)
    a = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 40
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def _strained_copper(n_frames: int, seed: int = 0):
    """Rattled, strained fcc Cu (32 atoms) labelled by ASE's EMT, stress included."""
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n_frames):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
        strain = np.eye(3) + rng.uniform(-0.04, 0.04, size=(3, 3))
        atoms.set_cell(atoms.cell[:] @ (strain + strain.T) / 2, scale_atoms=True)
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        atoms.calc = EMT()
        atoms.info["energy"] = atoms.get_potential_energy()
        atoms.arrays["forces"] = atoms.get_forces()
        atoms.info["stress"] = atoms.get_stress(voigt=False)
        atoms.calc = None
        frames.append(atoms)
    return frames


def test_the_virial_term_is_the_virial_per_atom_error_and_is_learned(tmp_path):
    """The loss's virial part is the MSE of V(σ_pred − σ_ref)/N over the frames' components, and
    training on strained EMT copper with it cuts the validation virial error several-fold."""
    import numpy as np

    from neuralmd.data import FrameDataset, write_frames

    frames = _strained_copper(40)
    write_frames(frames, tmp_path / "cu.xyz")
    cfg = TrainConfig(train=str(tmp_path / "cu.xyz"), valid_fraction=0.2, features=16, interactions=1,
                      cutoff_A=4.0, batch_size=4, lr=5e-3, max_steps=300, eval_every=100, checkpoint_every=300,
                      threads=2, virial_weight=10.0)
    trainer = Trainer(cfg, tmp_path / "run", progress=False)
    batch = FrameDataset(frames[:3]).collate([0, 1, 2], dtype=torch.float64)
    model = trainer.model.double().eval()
    _, parts = loss_fn(model, batch, cfg)
    stress = model(batch.atoms, stress=True)["stress"].detach().numpy()
    volume = np.abs(np.linalg.det(batch.atoms.cell.numpy()))[:, None, None]
    expected = np.sqrt(np.mean(((stress - batch.stress.numpy()) * volume / 32) ** 2))
    assert parts["virial_rmse_per_atom"] == pytest.approx(expected, rel=1e-9)
    trainer.model.float()
    untrained = evaluate(trainer.model, trainer.valid_data)[0]["virial_rmse_mev_per_atom"]
    trainer.model.train()
    results = trainer.run()
    assert results["valid"]["virial_rmse_mev_per_atom"] < 0.2 * untrained


def test_several_training_paths_are_read_in_order():
    """--train repeated: frames of every path, in the order given (two DeePMD folders here)."""
    from neuralmd.data import read_frames

    first, second = shared_file("deepmd_water/data_0"), shared_file("deepmd_water/data_1")
    cfg = TrainConfig(train=[str(first), str(second)], valid=str(first))
    train, valid = load_data(cfg)
    n0, n1 = len(read_frames(first)), len(read_frames(second))
    assert len(train) == n0 + n1 and len(valid) == n0
    assert train.frames[n0].info["source"] == read_frames(second)[0].info["source"]


def test_a_frame_of_weight_two_counts_as_two_frames_in_every_loss_term():
    """Per-system weighting: the loss (energy, Huber force and virial terms) of frames with
    weights (2, 1) is exactly that of the first frame taken twice and the second once."""
    from neuralmd.data import FrameDataset
    from neuralmd.models import NeuralPotential

    frames = _strained_copper(2, seed=4)
    frames[1].info["stress"] = frames[1].info["stress"] * 3  # a different error per frame
    torch.manual_seed(0)
    model = NeuralPotential([29], features=8, interactions=1, cutoff=4.0).double().eval()
    cfg = TrainConfig(virial_weight=10.0)
    weighted = [f.copy() for f in frames]
    weighted[0].info["weight"] = 2.0
    loss_w, parts_w = loss_fn(model, FrameDataset(weighted).collate([0, 1], dtype=torch.float64), cfg)
    loss_d, parts_d = loss_fn(model, FrameDataset([frames[0], frames[0], frames[1]]).collate([0, 1, 2], torch.float64),
                              cfg)
    assert float(loss_w) == pytest.approx(float(loss_d), rel=1e-12)
    assert parts_w == pytest.approx(parts_d, rel=1e-12)
    assert parts_w["loss"] != pytest.approx(loss_fn(model, FrameDataset(frames).collate([0, 1], torch.float64),
                                                     cfg)[1]["loss"], rel=1e-3)


def test_train_weights_need_one_per_path():
    from neuralmd.errors import InputError

    with pytest.raises(InputError, match="2 train weights for 1 train paths"):
        TrainConfig(train=["a.xyz"], train_weights=[1.0, 2.0]).validate()
    with pytest.raises(InputError, match="must be > 0"):
        TrainConfig(train=["a.xyz"], train_weights=[0.0]).validate()
