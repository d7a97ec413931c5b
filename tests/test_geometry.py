"""neuralmd.geometry: angles and dihedrals against ASE's, replica views of a batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from neuralmd.errors import InputError
from neuralmd.geometry import angles, dihedrals, replica_positions
from neuralmd.state import AtomsBatch


def test_angles_and_dihedrals_match_ase_and_their_gradients_are_finite():
    rng = np.random.default_rng(0)
    frames = [molecule("CH3CH2OH") for _ in range(3)]
    for atoms in frames:
        atoms.rattle(0.2, rng=rng)
    x = torch.tensor(np.stack([a.positions for a in frames]), requires_grad=True)
    triplets = torch.tensor([[0, 1, 2], [3, 0, 1], [1, 2, 8]])
    quads = torch.tensor([[0, 1, 2, 8], [3, 0, 1, 2], [4, 0, 1, 6]])
    a, d = angles(x, triplets), dihedrals(x, quads)
    for b, atoms in enumerate(frames):
        np.testing.assert_allclose(a[b].detach().numpy(), np.radians([atoms.get_angle(*t) for t in triplets.tolist()]),
                                   atol=1e-10)
        ase = np.radians([atoms.get_dihedral(*q) for q in quads.tolist()])  # ASE: [0, 360)
        np.testing.assert_allclose(np.angle(np.exp(1j * (d[b].detach().numpy() - ase))), 0.0, atol=1e-10)
    assert bool(((d > -np.pi) & (d <= np.pi)).all())
    (grad,) = torch.autograd.grad((a.sum() + d.sum()), x)
    assert torch.isfinite(grad).all()


def test_replica_positions_is_a_view_and_refuses_unequal_systems():
    batch = AtomsBatch.from_atoms([molecule("H2O"), molecule("H2O")])
    view = replica_positions(batch)
    assert view.shape == (2, 3, 3) and view.data_ptr() == batch.positions.data_ptr()
    with pytest.raises(InputError, match="equal atom counts"):
        replica_positions(AtomsBatch.from_atoms([molecule("H2O"), molecule("NH3")]))
