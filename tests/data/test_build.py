"""Supercells of periodic frames: composition, cell and density kept; a periodic model's energy
is extensive over the copies (8 × for 2,2,2) and its forces repeat; bad input refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule
from typer.testing import CliRunner

from neuralmd.cli import app
from neuralmd.data.build import replicate
from neuralmd.data.io import read_frames
from neuralmd.errors import InputError
from neuralmd.state import AtomsBatch

from ..conftest import shared_file


def test_replicated_water_keeps_density_and_the_energy_is_extensive(float64_model):
    frame = read_frames(shared_file("deepmd_water/data_0"), require_labels=False)[0]
    box = replicate(frame, (2, 2, 2))
    assert len(box) == 8 * len(frame) and np.allclose(box.cell.array, 2 * frame.cell.array)
    assert np.bincount(box.numbers).tolist() == (8 * np.bincount(frame.numbers)).tolist()
    assert box.get_masses().sum() / box.cell.volume == pytest.approx(frame.get_masses().sum() / frame.cell.volume)
    one = float64_model(AtomsBatch.from_atoms([frame]), stress=True)
    eight = float64_model(AtomsBatch.from_atoms([box]), stress=True)
    assert float(eight["energy"][0]) == pytest.approx(8 * float(one["energy"][0]), rel=1e-10)
    assert torch.allclose(eight["forces"][: len(frame)], one["forces"], atol=1e-9)  # the first copy is the original
    assert torch.allclose(eight["stress"], one["stress"], atol=1e-10)


def test_replicate_refuses_molecules_and_bad_counts(tmp_path):
    with pytest.raises(InputError, match="not periodic"):
        replicate(molecule("H2O"), (2, 2, 2), where="water.xyz frame 0")
    frame = read_frames(shared_file("deepmd_water/data_0"), require_labels=False)[0]
    for bad in ((2, 2), (0, 1, 1), (2, -1, 2)):
        with pytest.raises(InputError, match="repeat"):
            replicate(frame, bad)
    runner = CliRunner()
    out = tmp_path / "box.xyz"
    args = ["build", "replicate", str(shared_file("deepmd_water/data_0")), "--repeat", "1,1,2", "-o", str(out)]
    assert runner.invoke(app, args, catch_exceptions=False).exit_code == 0
    assert len(read_frames(out, require_labels=False)[0]) == 2 * len(frame)
    before = out.read_bytes()
    again = runner.invoke(app, args)
    assert isinstance(again.exception, InputError) and "exists already" in str(again.exception)
    assert out.read_bytes() == before
    far = runner.invoke(app, [*args[:-1], str(tmp_path / "far.xyz"), "--frame", "500"])
    assert isinstance(far.exception, InputError) and "frame 500" in str(far.exception)
    assert not (tmp_path / "far.xyz").exists()
