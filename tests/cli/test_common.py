"""neuralmd.cli.common: option defaults from the settings dataclasses, and --config (a run's own
TOML record, options on top; bad files exit 2 with one line and write nothing)."""

from __future__ import annotations

import dataclasses
import importlib.util
import tomllib
from pathlib import Path

import h5py
import numpy as np
from ase.build import molecule
from ase.io import write

from neuralmd.training.trainer import TrainConfig

from .helpers import assert_input_error, run

ROOT = Path(__file__).resolve().parents[2]


def test_train_defaults_are_the_benchmarked_settings(tmp_path, ethanol_xyz):
    """`neuralmd train` with no tuning options stores exactly TrainConfig's defaults, and the
    rMD17 benchmark's neuralmd settings are those same defaults (read from one place)."""
    spec = importlib.util.spec_from_file_location("forcefield_rmd17", ROOT / "benchmarks" / "forcefield_rmd17.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    measured = bench.parse_args([])  # the benchmark's neuralmd settings, as it runs by default
    defaults = TrainConfig()
    assert (measured.features, measured.interactions, measured.nm_lr) == (
        defaults.features, defaults.interactions, defaults.lr) == (64, 2, 3e-3)
    result = run("train", "--train", str(ethanol_xyz), "--max-steps", "2", "--eval-every", "1", "-o",
                 str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    stored = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    expected = dataclasses.asdict(defaults)
    # the frames-per-step default, resolved from ethanol's 9 atoms, is the benchmark's 8
    expected.update(train=[str(ethanol_xyz)], max_steps=2, eval_every=1, batch_size=measured.nm_batch_size,
                    architecture=bench.DEFAULT_ARCHITECTURE)
    assert defaults.batch_size == 0 and measured.nm_batch_size == 8
    assert defaults.architecture == "auto" and bench.DEFAULT_ARCHITECTURE == "tensornet"  # auto on a molecule
    assert {k: stored[k] for k in expected} == expected


def test_md_config_reruns_a_run_from_its_own_record(tmp_path, trained_model):
    write(tmp_path / "ethanol.xyz", molecule("CH3CH2OH"))
    first = run("md", str(trained_model), "--structure", str(tmp_path / "ethanol.xyz"), "--replicas", "2",
                "--steps", "40", "--report-every", "10", "--seed", "3", "--threads", "2", "-o", str(tmp_path / "a"))
    assert first.returncode == 0, first.stderr
    again = run("md", "--config", str(tmp_path / "a" / "md.toml"), "--threads", "2", "-o", str(tmp_path / "b"))
    assert again.returncode == 0, again.stderr
    for name in ("traj_000.h5md", "traj_001.h5md"):
        with h5py.File(tmp_path / "a" / name) as fa, h5py.File(tmp_path / "b" / name) as fb:
            a, b = fa["particles/trajectory/position/value"][()], fb["particles/trajectory/position/value"][()]
        assert a.shape == (5, 9, 3) and np.array_equal(a, b)
    # an option given on the command line overrides the file: another seed, another trajectory
    other = run("md", "--config", str(tmp_path / "a" / "md.toml"), "--seed", "4", "--threads", "2", "-o",
                str(tmp_path / "c"))
    assert other.returncode == 0, other.stderr
    assert tomllib.loads((tmp_path / "c" / "md.toml").read_text())["seed"] == 4
    with h5py.File(tmp_path / "a" / "traj_000.h5md") as fa, h5py.File(tmp_path / "c" / "traj_000.h5md") as fc:
        assert not np.array_equal(fa["particles/trajectory/position/value"][-1],
                                  fc["particles/trajectory/position/value"][-1])


def test_bad_config_exits_2_names_file_and_key_and_writes_nothing(tmp_path):
    (tmp_path / "train.toml").write_text('train = "x.xyz"\nfeatures = 64\n')
    (tmp_path / "typo.toml").write_text('timestep_fs = 0.5\ntemprature_K = [300.0]\n')
    (tmp_path / "type.toml").write_text('timestep_fs = "fast"\n')
    (tmp_path / "junk.toml").write_text('timestep_fs = = 1\n')
    out = tmp_path / "out"
    assert_input_error(run("md", "--config", str(tmp_path / "missing.toml"), "-o", str(out)), "missing.toml", "not found")
    assert_input_error(run("md", "--config", str(tmp_path / "train.toml"), "-o", str(out)), "train.toml", "'features'",
                   "another command")
    assert_input_error(run("md", "--config", str(tmp_path / "typo.toml"), "-o", str(out)), "typo.toml", "temprature_K",
                   "expected keys")
    assert_input_error(run("md", "--config", str(tmp_path / "type.toml"), "-o", str(out)), "type.toml", "timestep_fs",
                   "float")
    assert_input_error(run("md", "--config", str(tmp_path / "junk.toml"), "-o", str(out)), "junk.toml", "not valid TOML")
    assert_input_error(run("train", "--config", str(tmp_path / "typo.toml"), "-o", str(out)), "typo.toml", "TrainConfig")
    assert not out.exists()


def test_an_output_under_a_regular_file_or_an_existing_result_exits_2_before_any_work(tmp_path, ethanol_xyz):
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "done.xyz").write_text("labels of an earlier run")
    write(tmp_path / "ethanol.xyz", molecule("CH3CH2OH"))
    assert_input_error(run("train", "--train", str(ethanol_xyz), "-o", str(tmp_path / "file" / "run")), "is a file")
    assert_input_error(run("md", "--engine", "openmm", "--pdb", "x.pdb", "-o", str(tmp_path / "file" / "md")),
                       "is a file")
    assert_input_error(run("label", str(tmp_path / "ethanol.xyz"), "-o", str(tmp_path / "file" / "l.xyz")), "is a file")
    assert_input_error(run("label", str(tmp_path / "ethanol.xyz"), "-o", str(tmp_path / "done.xyz")), "exists already")
    assert (tmp_path / "done.xyz").read_text() == "labels of an earlier run"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done.xyz", "ethanol.xyz", "file"]


def test_demo_refuses_a_folder_that_holds_anything(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"an MD run's")
    assert_input_error(run("demo", "-o", str(tmp_path / "run")), "run: exists and is not empty")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt"]
