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


@pytest.mark.parametrize("cell", [np.diag([9.0, 11.0, 13.0]), np.array([[10.0, 0, 0], [2.5, 9.0, 0], [-1.5, 2.0, 11.0]])])
def test_minimum_image_distances_match_ase_and_distance_cvs_use_them(cell):
    from ase.geometry import get_distances

    from neuralmd.geometry import displacement, minimum_image
    from neuralmd.sampling.cvs import Distance, PairwiseDistances

    rng = np.random.default_rng(1)
    x = rng.uniform(-15.0, 25.0, size=(2, 12, 3))  # unwrapped: several cells away
    c = torch.as_tensor(np.stack([cell, cell * 1.05]))
    d = displacement(torch.as_tensor(x[:, :1]), torch.as_tensor(x), c)
    for b in range(2):
        _, ase = get_distances(x[b, :1], x[b], cell=c[b].numpy(), pbc=True)
        # within half the shortest height (where rounding the fractions finds the nearest image)
        heights = abs(np.linalg.det(c[b].numpy())) / np.linalg.norm(np.cross(c[b].numpy()[[1, 2, 0]], c[b].numpy()[[2, 0, 1]]), axis=1)
        near = ase[0] < heights.min() / 2
        assert near.sum() >= 2
        np.testing.assert_allclose(torch.linalg.vector_norm(d[b], dim=-1).numpy()[near], ase[0][near], atol=1e-10)
    # a lattice translation of an atom changes nothing
    shifted = x.copy()
    shifted[:, 3] += c[:, 0].numpy() - 2 * c[:, 2].numpy()  # each replica's own lattice vectors
    for cv in (Distance(0, 3), PairwiseDistances([0, 3, 5])):
        np.testing.assert_allclose(cv(torch.as_tensor(shifted), c).numpy(), cv(torch.as_tensor(x), c).numpy(), atol=1e-10)
    assert minimum_image(torch.as_tensor(np.asarray(cell)[None, :1] * 1.0), c[:1]).abs().max() < 1e-12  # a lattice vector is 0
