"""Active learning: committee uncertainty, Dask labelling that survives a dead worker, the
durable label store, and a loop that resumes after kill -9 with the same labels."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from ase.build import molecule

from neuralmd.active.loop import ActiveLearning, ActiveSettings
from neuralmd.config import save_config
from neuralmd.data.io import read_frames, write_frames
from neuralmd.data.store import LabelStore, frame_key
from neuralmd.errors import InputError
from neuralmd.reference.xtb import XTBLabeler


def _rattled_ethanol(n: int, seed: int, scale: float = 0.05):
    rng = np.random.default_rng(seed)
    base = molecule("CH3CH2OH")
    frames = []
    for _ in range(n):
        atoms = base.copy()
        atoms.positions += rng.normal(scale=scale, size=atoms.positions.shape)
        frames.append(atoms)
    return frames


def test_dask_labelling_survives_a_killed_worker_and_stores_each_frame_once(tmp_path):
    from neuralmd.parallel import connect, disconnect, label_as_completed, worker_pids

    frames = _rattled_ethanol(60, seed=1)
    store = LabelStore(tmp_path / "labels.db", project="test")
    client = connect(workers=2)
    try:
        victim = worker_pids(client)[0]
        seen = []
        for k, labelled, reason in label_as_completed(client, XTBLabeler(), frames):
            if not seen:
                os.kill(victim, signal.SIGKILL)  # one worker dies mid-run
            assert reason is None, reason
            store.add(labelled, frame_key(frames[k]), 1, {"method": "GFN2-xTB"})
            seen.append(k)
    finally:
        disconnect(client)
    assert sorted(seen) == list(range(60))  # every frame exactly once
    assert store.count("ok") == 60 and len(store.keys()) == 60
    direct = XTBLabeler().label_one(frames[5])
    stored = [a for a in store.frames() if a.info["key"] == frame_key(frames[5])][0]
    assert stored.info["energy"] == pytest.approx(direct.info["energy"], abs=1e-8)


def test_label_store_refuses_foreign_or_corrupted_databases(tmp_path):
    LabelStore(tmp_path / "a.db", project="one")
    with pytest.raises(InputError, match="project"):
        LabelStore(tmp_path / "a.db", project="two")
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite at all" * 10)
    with pytest.raises(InputError, match="not an SQLite"):
        LabelStore(bad, project="one")
    from neuralmd.data.io import write_frames

    write_frames(_rattled_ethanol(2, 0), tmp_path / "plain.db")  # an ase.db of someone else
    with pytest.raises(InputError, match="another program"):
        LabelStore(tmp_path / "plain.db", project="one")
    with pytest.raises(InputError, match="PostgreSQL store unreachable") as err:
        LabelStore("postgresql://neuralmd:secret@127.0.0.1:9/labels", project="one")
    assert "secret" not in str(err.value)
    with pytest.raises(InputError, match="unreachable"):
        from neuralmd.parallel import connect

        connect(scheduler="tcp://127.0.0.1:9", timeout_s=2)


def test_committee_disagrees_more_far_from_its_training_data(tmp_path, ethanol_xyz):
    """A committee trained on 300 frames of rMD17 ethanol disagrees more, on average and in
    its upper tail, on hot (1500 K) xTB MD geometries than on held-out frames like its data."""
    from neuralmd.data.io import write_frames
    from neuralmd.demo import sample_geometries
    from neuralmd.models.committee import calibrate, committee_deviation, load_committee
    from neuralmd.training import TrainConfig, Trainer

    frames = read_frames(ethanol_xyz)
    hot = sample_geometries(frames[0], 60, 1500.0, every=10, seed=5)
    write_frames(frames[:300], tmp_path / "train.xyz")
    models = []
    for seed in (0, 1):
        cfg = TrainConfig(train=str(tmp_path / "train.xyz"), features=16, interactions=2, batch_size=8, lr=5e-3,
                          max_steps=500, eval_every=250, checkpoint_every=500, seed=seed, threads=2)
        Trainer(cfg, tmp_path / f"m{seed}", progress=False).run()
        models.append(tmp_path / f"m{seed}" / "model.pt")
    committee = load_committee(models)
    near = committee_deviation(committee, frames[500:600])
    far = committee_deviation(committee, hot)
    assert far.mean() > 1.3 * near.mean()
    assert np.quantile(far, 0.9) > 1.3 * np.quantile(near, 0.9)
    cal = calibrate(committee, frames[500:600])
    assert cal["spearman"] > 0.2 and cal["scale_factor"] > 0


def _active_args(out, structure):
    return [sys.executable, "-c", "from neuralmd.cli import main; main()", "active", "--structure", str(structure),
            "--committee", "2", "--rounds", "2", "--initial-frames", "8", "--md-steps", "200", "--replicas", "2",
            "--temperatures", "300,800", "--trust-low", "0.02", "--trust-high", "2.0", "--max-select", "4",
            "--train-steps", "60", "--workers", "2", "--seed", "3", "--explore-cv", "torsion(0,1,2,3)",
            "--explore-barrier-kjmol", "15", "--architecture", "painn", "-o", str(out)]


def _labels(run):
    store = LabelStore(run / "labels.db", project=f"neuralmd-active:{run.name}")
    keys = [a.info["key"] for a in store.frames("ok")] + [a.info["key"] for a in store.frames("failed")]
    return keys


@pytest.mark.slow
def test_kill_9_of_the_loop_then_resume_gives_the_same_labels(tmp_path):
    from ase.io import write

    structure = tmp_path / "ethanol.xyz"
    write(structure, molecule("CH3CH2OH"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    a = tmp_path / "run"  # same directory name: the store's project name follows it
    b_parent = tmp_path / "killed"
    b_parent.mkdir()
    b = b_parent / "run"
    subprocess.run(_active_args(a, structure), check=True, env=env, capture_output=True)
    delay = random.Random().uniform(3.0, 15.0)  # the uninterrupted run takes about 20 s
    proc = subprocess.Popen(_active_args(b, structure), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGKILL)  # the loop and its Dask workers, at a random moment
    proc.wait()
    resumed = subprocess.run([sys.executable, "-c", "from neuralmd.cli import main; main()", "active", "--resume",
                              str(b)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, f"killed after {delay:.1f} s: {resumed.stderr[-2000:]}"
    keys_a, keys_b = _labels(a), _labels(b)
    assert len(keys_b) == len(set(keys_b)), f"duplicate labels after a kill at {delay:.1f} s"
    assert sorted(keys_a) == sorted(keys_b), f"different label set after a kill at {delay:.1f} s"
    assert len(keys_a) > 8  # exploration added labels beyond the initial frames
    explored = [json.loads(p.read_text()) for p in sorted(a.glob("round_*/explore.json"))]
    assert explored and all(e["bias_kernels"] > 0 for e in explored)  # OPES_EXPLORE on the C-C-O-H torsion
    member = torch.load(a / "final" / "member_0" / "model.pt", map_location="cpu", weights_only=False)
    assert member["architecture"] == "painn"  # the committee is the network asked for


@pytest.fixture(scope="module")
def postgres_url():
    """A real PostgreSQL server (pgserver's bundled binaries) in a short temporary directory
    (its Unix socket path must stay under 108 characters)."""
    import shutil
    import tempfile

    pgserver = pytest.importorskip("pgserver")
    data = tempfile.mkdtemp(prefix="nmd-pg-")
    server = pgserver.get_server(data, cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.slow
def test_a_postgresql_store_works_in_place_of_sqlite(tmp_path, postgres_url):
    """The same seeded loop stores the same labels in PostgreSQL as in SQLite; --resume finds the
    PostgreSQL store from the run's settings and pays for nothing twice; another project is refused."""
    from ase.io import write

    structure = tmp_path / "ethanol.xyz"
    write(structure, molecule("CH3CH2OH"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    lite, pg = tmp_path / "lite" / "run", tmp_path / "pg" / "run"  # same name: same project in both stores
    one_round = ["--rounds", "1"]
    subprocess.run(_active_args(lite, structure) + one_round, check=True, env=env, capture_output=True)
    subprocess.run(_active_args(pg, structure) + one_round + ["--store", postgres_url], check=True, env=env,
                   capture_output=True)
    assert not (pg / "labels.db").exists()
    sqlite_store = LabelStore(lite / "labels.db", project="neuralmd-active:run")
    pg_store = LabelStore(postgres_url, project="neuralmd-active:run")
    by_key = {a.info["key"]: a for a in sqlite_store.frames()}
    assert len(by_key) > 8 and sorted(by_key) == sorted(a.info["key"] for a in pg_store.frames())
    for atoms in pg_store.frames():
        assert atoms.info["energy"] == pytest.approx(by_key[atoms.info["key"]].info["energy"], abs=1e-8)
        np.testing.assert_allclose(atoms.arrays["forces"], by_key[atoms.info["key"]].arrays["forces"], atol=1e-8)
    n = pg_store.count()
    resumed = subprocess.run([sys.executable, "-c", "from neuralmd.cli import main; main()", "active", "--resume",
                              str(pg)], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert pg_store.count() == n  # finished run: nothing labelled again
    with pytest.raises(InputError, match="project"):
        LabelStore(postgres_url, project="neuralmd-active:another")


def test_a_bad_explore_cv_is_refused_before_any_work_and_a_stored_one_says_where_to_fix_it(tmp_path):
    write_frames([molecule("CH3CH2OH")], tmp_path / "ethanol.xyz")
    settings = ActiveSettings(structure=str(tmp_path / "ethanol.xyz"), explore_cv="torsion(0,1,2,99)", committee=2,
                              rounds=1, initial_frames=4)
    with pytest.raises(InputError, match="explore_cv: CV .*atom index 99"):
        ActiveLearning(settings, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing labelled, trained or written
    # a run whose stored settings went bad: the error says where to correct them
    (tmp_path / "old").mkdir()
    save_config(settings, tmp_path / "old" / "active.toml")
    with pytest.raises(InputError, match=r"correct explore_cv in .*old/active\.toml and --resume"):
        ActiveLearning.resume(tmp_path / "old")
    fixed = (tmp_path / "old" / "active.toml").read_text().replace("torsion(0,1,2,99)", "torsion(3,0,1,2)")
    (tmp_path / "old" / "active.toml").write_text(fixed)
    assert ActiveLearning.resume(tmp_path / "old").s.explore_cv == "torsion(3,0,1,2)"
