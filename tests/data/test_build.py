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
from neuralmd.units import AMU_PER_A3_IN_G_PER_CM3

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


def test_packed_water_has_its_density_whole_molecules_and_no_close_contacts(tmp_path):
    """64 waters and 4 ethanols packed at 0.95 g/cm³: the box has exactly that density, every
    molecule keeps its geometry, and no two atoms of different molecules are closer than the
    tolerance under the minimum image (checked with MDAnalysis's periodic distances)."""
    from MDAnalysis.lib.distances import distance_array

    from neuralmd.data.build import pack, pack_box_length

    water, ethanol = molecule("H2O"), molecule("CH3CH2OH")
    mix = [(water, 64), (ethanol, 4)]
    edge = pack_box_length(mix, 0.95)
    box = pack(mix, edge, tolerance_A=2.0, seed=3)
    assert len(box) == 64 * 3 + 4 * 9
    assert box.get_masses().sum() / box.cell.volume * AMU_PER_A3_IN_G_PER_CM3 == pytest.approx(0.95, rel=1e-12)
    labels = np.repeat(np.arange(64 + 4), [3] * 64 + [9] * 4)  # copies in the order given
    dims = np.array([edge, edge, edge, 90, 90, 90])
    d = distance_array(box.positions, box.positions, box=dims)
    other = labels[:, None] != labels[None, :]
    assert d[other].min() >= 2.0
    for k, ref in [(0, water), (64, ethanol)]:
        atoms = box.positions[labels == k]
        np.testing.assert_allclose(np.linalg.norm(atoms[:, None] - atoms[None], axis=-1),
                                   np.linalg.norm(ref.positions[:, None] - ref.positions[None], axis=-1), atol=1e-9)


def test_pack_refuses_an_impossible_density_and_the_cli_writes_nothing(tmp_path):
    runner = CliRunner()
    out = tmp_path / "box.xyz"
    result = runner.invoke(app, ["build", "pack", "--molecule", "H2O:27", "--density", "3.0", "-o", str(out)])
    assert isinstance(result.exception, InputError) and "overlap" in str(result.exception) and not out.exists()
    result = runner.invoke(app, ["build", "pack", "--molecule", "nosuch.xyz:4", "--density", "1", "-o", str(out)])
    assert isinstance(result.exception, InputError) and "nosuch.xyz" in str(result.exception) and not out.exists()
    result = runner.invoke(app, ["build", "pack", "--molecule", "H2O:32", "--density", "1.0", "-o", str(out)])
    assert result.exit_code == 0, result.output
    box = read_frames(out, require_labels=False)[0]
    assert len(box) == 96 and box.pbc.all()
