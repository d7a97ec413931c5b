"""Reference energies and dataset splits."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule

from neuralmd.data import FrameDataset, read_frames, reference_energies
from tests.conftest import shared_file


def test_least_squares_recovers_element_energies_of_mixed_compositions():
    e0_true = {1: -13.6, 6: -1030.0, 8: -2040.0}
    frames = []
    for name in ("H2O", "CH4", "CH3OH", "CO2", "C2H6", "H2"):
        atoms = molecule(name)
        atoms.info["energy"] = sum(e0_true[z] for z in atoms.numbers)
        frames.append(atoms)
    e0 = reference_energies(frames, [1, 6, 8])
    np.testing.assert_allclose(e0, [-13.6, -1030.0, -2040.0], rtol=1e-10)


def test_isolated_atom_file_gives_reference_energies():
    iso = read_frames(shared_file("rmd17_ethanol/isolated_atoms.xyz"), require_labels=False)
    e0 = reference_energies([], [1, 6, 8], isolated=iso)
    assert e0 == pytest.approx([-13.568422383046626, -1025.2770951782686, -2035.5709809589698])


def test_split_is_disjoint_and_seeded(ethanol_xyz):
    data = FrameDataset(read_frames(ethanol_xyz)[:100])
    train, valid = data.split(0.1, seed=4)
    assert (len(train), len(valid)) == (90, 10)
    ids = lambda d: {a.info["energy"] for a in d.frames}  # noqa: E731
    assert not ids(train) & ids(valid)
    assert ids(data.split(0.1, seed=4)[1]) == ids(valid)
    batch = train.collate([0, 1, 2])
    assert batch.atoms.n_systems == 3 and batch.forces.shape == (27, 3)
