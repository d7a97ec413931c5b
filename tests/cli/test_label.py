"""neuralmd label (neuralmd.cli.label): xTB and DFT labels, failures recorded."""

from __future__ import annotations

import json

from ase.build import molecule
from ase.io import write

from neuralmd.data import read_frames

from .helpers import run


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
