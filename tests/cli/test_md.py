"""neuralmd md (neuralmd.cli.md): a batched run, its resume, bad input."""

from __future__ import annotations

import json
import tomllib

import torch
from ase.build import molecule
from ase.io import write

from neuralmd.data import read_frames

from ..conftest import shared_file
from .helpers import assert_input_error, run


def test_md_run_resume_and_bad_input(tmp_path, trained_model):
    write(tmp_path / "ethanol.xyz", molecule("CH3CH2OH"))
    args = ["md", str(trained_model), "--structure", str(tmp_path / "ethanol.xyz"), "--replicas", "3",
            "--temperature", "300,400,500", "--steps", "60", "--report-every", "20", "--checkpoint-every", "20",
            "--threads", "2"]
    result = run(*args, "-o", str(tmp_path / "md"))
    assert result.returncode == 0, result.stderr
    for name in ("traj_000.h5md", "traj_002.h5md", "traj_000.pdb", "log.csv", "md.png", "final.xyz", "results.json",
                 "checkpoint.pt", "md.toml"):
        assert (tmp_path / "md" / name).is_file(), name
    rows = (tmp_path / "md" / "log.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 3  # header + steps 0, 20, 40, 60 for 3 replicas
    result = run("md", "--resume", str(tmp_path / "md"), "--steps", "100", "--threads", "2", "--export-xyz")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "md" / "results.json").read_text())["steps"] == 100
    exported = read_frames(tmp_path / "md" / "traj_002.xyz", require_labels=False)
    assert [a.info["step"] for a in exported] == [0, 20, 40, 60, 80, 100]
    assert len(exported[-1]) == 9 and exported[-1].get_velocities().any()

    assert_input_error(run(*args, "-o", str(tmp_path / "md")), "already holds an MD run")
    assert_input_error(run(*args[:-2], "--timestep-fs", "-1", "-o", str(tmp_path / "x")), "timestep_fs")
    assert_input_error(run(*[a if a != "300,400,500" else "0" for a in args], "-o", str(tmp_path / "x")), "temperature")
    (tmp_path / "junk.xyz").write_text("this is not xyz\n")
    assert_input_error(run("md", str(trained_model), "--structure", str(tmp_path / "junk.xyz"), "-o",
                           str(tmp_path / "x")), "junk.xyz")
    write(tmp_path / "nh3.xyz", molecule("NH3"))
    assert_input_error(run("md", str(trained_model), "--structure", str(tmp_path / "nh3.xyz"), "-o",
                           str(tmp_path / "x")), "nh3.xyz: frame 0", "N not known")
    assert_input_error(run("md", "--resume", str(tmp_path / "nowhere")), "nowhere")
    assert_input_error(run(*args, "--device", "gpu", "-o", str(tmp_path / "x")), "not a torch device")
    if not torch.cuda.is_available():
        assert_input_error(run(*args, "--device", "cuda", "-o", str(tmp_path / "x")), "no CUDA GPU")
    assert not (tmp_path / "x").exists()


def test_resume_refuses_options_it_would_ignore_and_fewer_steps_touching_nothing(tmp_path, trained_model):
    write(tmp_path / "ethanol.xyz", molecule("CH3CH2OH"))
    result = run("md", str(trained_model), "--structure", str(tmp_path / "ethanol.xyz"), "--steps", "40",
                 "--report-every", "10", "--checkpoint-every", "20", "--threads", "2", "-o", str(tmp_path / "md"))
    assert result.returncode == 0, result.stderr
    before = {p.name: p.read_bytes() for p in (tmp_path / "md").iterdir() if p.is_file()}
    for option, value in (("--temperature", "900"), ("--timestep-fs", "2"), ("--replicas", "5"), ("--seed", "3")):
        assert_input_error(run("md", "--resume", str(tmp_path / "md"), option, value), option, "--resume",
                           "--config")
    assert_input_error(run("md", "--resume", str(tmp_path / "md"), "--steps", "20"), "steps: 20", "already at step 40")
    assert_input_error(run("sample", "--resume", str(tmp_path / "md"), "--bias", "metad"), "--bias", "--resume")
    after = {p.name: p.read_bytes() for p in (tmp_path / "md").iterdir() if p.is_file()}
    assert after == before


def test_options_that_do_not_apply_are_refused_not_ignored(tmp_path, trained_model):
    pdb = str(shared_file("alanine_dipeptide/ala2.pdb"))
    write(tmp_path / "twenty.xyz", [molecule("CH3CH2OH")] * 20)
    assert_input_error(run("md", "--engine", "openmm", "--pdb", pdb, "--replicas", "4", "-o", str(tmp_path / "a")),
                       "--replicas", "OpenMM engine")
    assert_input_error(run("md", "--engine", "openmm", "--pdb", pdb, "--ensemble", "nve", "-o", str(tmp_path / "a")),
                       "--ensemble")
    assert_input_error(run("md", str(trained_model), "--structure", str(tmp_path / "twenty.xyz"), "--pdb", pdb,
                           "-o", str(tmp_path / "a")), "--pdb", "--engine openmm")
    assert_input_error(run("md", str(trained_model), "--structure", str(tmp_path / "twenty.xyz"), "-o",
                           str(tmp_path / "a")), "20 frames for 1 replica", "--replicas 20")
    assert not (tmp_path / "a").exists()


def test_resume_continues_in_the_runs_own_precision(tmp_path, trained_model):
    write(tmp_path / "ethanol.xyz", molecule("CH3CH2OH"))
    out = tmp_path / "md"
    first = run("md", str(trained_model), "--structure", str(tmp_path / "ethanol.xyz"), "--steps", "20",
                "--report-every", "10", "--no-float64", "--threads", "1", "-o", str(out))
    assert first.returncode == 0, first.stderr
    assert tomllib.loads((out / "md.toml").read_text())["float64"] is False
    resumed = run("md", "--resume", str(out), "--steps", "40", "--threads", "1")  # no flag: the run's own float32
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads((out / "results.json").read_text())["steps"] == 40
    assert_input_error(run("md", "--resume", str(out), "--steps", "60", "--float64"), "float32", "--no-float64")
