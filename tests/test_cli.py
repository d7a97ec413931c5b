"""The command line end to end: label, train, eval; bad input exits 2 with one line, writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import write

from neuralmd.data import read_frames, write_frames


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "neuralmd.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def assert_input_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def test_label_with_xtb_records_failures(tmp_path):
    good = molecule("CH3CH2OH")
    impossible = good.copy()
    impossible.info["spin"] = 5  # 5 unpaired electrons with 26 electrons: xTB refuses
    write(tmp_path / "geoms.xyz", [good, impossible, good])
    result = run("label", str(tmp_path / "geoms.xyz"), "--method", "xtb", "-o", str(tmp_path / "labelled.xyz"))
    assert result.returncode == 0, result.stderr
    frames = read_frames(tmp_path / "labelled.xyz")
    assert len(frames) == 2
    assert all(f.info["label_method"] == "GFN2-xTB" for f in frames)
    failures = json.loads((tmp_path / "labelled.xyz.failures.json").read_text())
    assert [f["frame"] for f in failures["failures"]] == [1]
    assert "unpaired" in failures["failures"][0]["reason"]


def test_label_with_dft(tmp_path):
    write(tmp_path / "h2o.xyz", molecule("H2O"))
    result = run("label", str(tmp_path / "h2o.xyz"), "--method", "dft", "--functional", "PBE", "--basis", "sto-3g",
                 "-o", str(tmp_path / "h2o.db"), "--threads", "2")
    assert result.returncode == 0, result.stderr
    (frame,) = read_frames(tmp_path / "h2o.db")
    assert frame.info["energy"] < -2000  # PBE/STO-3G water is about -75.9 Hartree


def test_train_then_eval_json(tmp_path, ethanol_xyz):
    small = tmp_path / "small.xyz"
    write_frames(read_frames(ethanol_xyz)[:30], small)
    result = run("train", "--train", str(small), "-o", str(tmp_path / "run"), "--features", "8", "--interactions", "1",
                 "--max-steps", "20", "--eval-every", "10", "--valid-fraction", "0.2", "--threads", "2")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / "model.pt").is_file()
    result = run("eval", str(tmp_path / "run" / "model.pt"), str(small), "--json")
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout)
    for key in ("energy_mae_mev", "force_mae_mev_per_A", "energy_mae_mev_per_atom", "force_rmse_mev_per_A"):
        assert np.isfinite(metrics[key])
    assert metrics["frames"] == 30
    assert (tmp_path / "run" / "parity_small.png").stat().st_size > 10_000
    table = run("eval", str(tmp_path / "run" / "model.pt"), str(small))
    assert "force component" in table.stdout

    again = run("train", "--train", str(small), "-o", str(tmp_path / "run"))
    assert_input_error(again, "already holds a training run")


GOOD = """3
Properties=species:S:1:pos:R:3:forces:R:3 energy=-1.5 pbc="F F F"
O 0 0 0 0 0 0
H 0 0.76 0.58 0 0.1 0.2
H 0 -0.76 0.58 0 -0.1 -0.2
"""


@pytest.mark.parametrize("name, text, fragments", [
    ("truncated.xyz", GOOD + "3\nProperties=species:S:1:pos:R:3 energy=-1\nO 0 0 0\n", ["truncated.xyz", "frame 1"]),
    ("noenergy.xyz", GOOD + GOOD.replace("energy=-1.5 ", ""), ["noenergy.xyz", "frame 1", "'energy'"]),
    ("inf.xyz", GOOD.replace("0 0.1 0.2", "0 inf 0.2"), ["inf.xyz", "frame 0", "'forces'"]),
])
def test_train_rejects_bad_data_without_output(tmp_path, name, text, fragments):
    (tmp_path / name).write_text(text)
    result = run("train", "--train", str(tmp_path / name), "-o", str(tmp_path / "run"))
    assert_input_error(result, *fragments)
    assert not (tmp_path / "run").exists()


def test_eval_rejects_foreign_model_and_unknown_elements(tmp_path, trained_model):
    payload = torch.load(trained_model, weights_only=True)
    payload["format_version"] = 0
    torch.save(payload, tmp_path / "old.pt")
    (tmp_path / "data.xyz").write_text(GOOD)
    assert_input_error(run("eval", str(tmp_path / "old.pt"), str(tmp_path / "data.xyz")), "old.pt", "format_version")
    ammonia = GOOD.replace("O 0 0 0", "N 0 0 0")
    (tmp_path / "nh2.xyz").write_text(ammonia)
    assert_input_error(run("eval", str(trained_model), str(tmp_path / "nh2.xyz")), "nh2.xyz: frame 0", "N not known")
    assert not list(tmp_path.glob("*.png"))


def test_npz_without_units_and_bad_outputs(tmp_path):
    water = molecule("H2O").positions
    np.savez(tmp_path / "md17.npz", z=[8, 1, 1], R=np.stack([water, water]), E=np.zeros(2), F=np.zeros((2, 3, 3)))
    assert_input_error(run("train", "--train", str(tmp_path / "md17.npz"), "-o", str(tmp_path / "r")), "md17.npz", "units")
    write(tmp_path / "g.xyz", molecule("H2O"))
    assert_input_error(run("label", str(tmp_path / "g.xyz"), "-o", str(tmp_path / "out.csv")), "out.csv")
    assert_input_error(run("train", "--resume", str(tmp_path / "nothing")), "nothing")
    assert_input_error(run("train", "--train", str(tmp_path / "g.xyz"), "-o", str(tmp_path / "r"), "--force-loss", "l1"),
                       "force_loss", "huber or mse")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g.xyz", "md17.npz"]


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
                           str(tmp_path / "x")), "N not known")
    assert_input_error(run("md", "--resume", str(tmp_path / "nowhere")), "nowhere")
    assert_input_error(run(*args, "--device", "gpu", "-o", str(tmp_path / "x")), "not a torch device")
    if not torch.cuda.is_available():
        assert_input_error(run(*args, "--device", "cuda", "-o", str(tmp_path / "x")), "no CUDA GPU")
    assert not (tmp_path / "x").exists()
