"""neuralmd label (neuralmd.cli.label): xTB and DFT labels, failures recorded."""

from __future__ import annotations

import json

import pytest
from ase import Atoms
from ase.build import molecule
from ase.io import write

from neuralmd.data import read_frames

from .helpers import assert_input_error, run


def test_label_with_xtb_records_failures(tmp_path):
    good = molecule("CH3CH2OH")
    francium = Atoms("FrH", positions=[[0, 0, 0], [0, 0, 2.2]])  # GFN2-xTB has no parameters beyond Z = 86
    write(tmp_path / "geoms.xyz", [good, francium, good])
    result = run("label", str(tmp_path / "geoms.xyz"), "--method", "xtb", "-o", str(tmp_path / "labelled.xyz"))
    assert result.returncode == 0, result.stderr
    frames = read_frames(tmp_path / "labelled.xyz")
    assert len(frames) == 2
    assert all(f.info["label_method"] == "GFN2-xTB" for f in frames)
    failures = json.loads((tmp_path / "labelled.xyz.failures.json").read_text())
    assert [f["frame"] for f in failures["failures"]] == [1]
    assert "Z >86" in failures["failures"][0]["reason"]


def test_label_with_dft(tmp_path):
    write(tmp_path / "h2o.xyz", molecule("H2O"))
    result = run("label", str(tmp_path / "h2o.xyz"), "--method", "dft", "--functional", "PBE", "--basis", "sto-3g",
                 "-o", str(tmp_path / "h2o.db"), "--threads", "2")
    assert result.returncode == 0, result.stderr
    (frame,) = read_frames(tmp_path / "h2o.db")
    assert frame.info["energy"] < -2000  # PBE/STO-3G water is about -75.9 Hartree


@pytest.mark.parametrize("method, options, fragment", [
    ("xtb", ["--charge", "100"], "20 valence electrons"),  # ethanol: -80 electrons left
    ("xtb", ["--spin", "1"], "parity"),                    # 20 valence electrons cannot leave one unpaired
    ("dft", ["--charge", "1"], "26 electrons"),            # 25 electrons, closed shell: impossible
    ("xtb", ["--spin", "-2"], "2S >= 0"),
])
def test_an_impossible_charge_or_spin_is_an_input_error_before_any_calculation(tmp_path, method, options, fragment):
    write(tmp_path / "three.xyz", [molecule("CH3CH2OH")] * 3)
    (tmp_path / "old.xyz.failures.json").write_text("{}")
    result = run("label", str(tmp_path / "three.xyz"), "--method", method, "--basis", "sto-3g", *options, "-o",
                 str(tmp_path / "c.xyz"))
    assert_input_error(result, "three.xyz: frame 0", fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.xyz.failures.json", "three.xyz"]
