"""neuralmd train and eval (neuralmd.cli.train): end to end; bad data exits 2 with one line and writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import molecule
from ase.io import write

from neuralmd.data import read_frames, write_frames

from .helpers import assert_input_error, run


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
    assert_input_error(run("eval", str(tmp_path / "data.xyz"), str(tmp_path / "data.xyz")), "data.xyz",
                       "not a readable neuralmd model file", "neuralmd train")
    assert "weights_only" not in run("eval", str(tmp_path / "data.xyz"), str(tmp_path / "data.xyz")).stderr
    (tmp_path / "iso.xyz").write_text(GOOD.replace("3\n", "1\n", 1).split("H 0 0.76")[0])  # one O atom
    (tmp_path / "two.xyz").write_text(GOOD + GOOD)
    assert_input_error(run("train", "--train", str(tmp_path / "two.xyz"), "--valid-fraction", "0.5", "--isolated-atoms",
                           str(tmp_path / "iso.xyz"), "-o", str(tmp_path / "run")), "iso.xyz", "no single-atom frame for H")
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
