"""AtomsBatch: stacking ASE frames into one flat batch, splitting it back, slicing, casting."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from neuralmd.state import AtomsBatch


def _frames() -> list[Atoms]:
    """A molecule in vacuum, a periodic crystal and a slab periodic in x, y only, with velocities."""
    rng = np.random.default_rng(7)
    water = molecule("H2O")
    silicon = bulk("Si", "diamond", a=5.43, cubic=True)
    silicon.positions += rng.normal(scale=0.05, size=silicon.positions.shape)
    slab = Atoms("CO", positions=[[0.1, 0.2, 5.0], [0.1, 0.2, 6.13]], cell=[[3.0, 0.0, 0.0], [1.0, 4.0, 0.0],
                                                                          [0.0, 0.0, 12.0]], pbc=[True, True, False])
    frames = [water, silicon, slab]
    for atoms in frames:
        atoms.set_velocities(rng.normal(size=(len(atoms), 3)) * 0.01)
    return frames


def test_from_atoms_stacks_every_frame_contiguously_with_its_system_index():
    frames = _frames()
    batch = AtomsBatch.from_atoms(frames, with_velocities=True)
    sizes = [len(a) for a in frames]
    assert batch.n_systems == 3 and batch.n_atoms == sum(sizes) == 3 + 8 + 2
    assert batch.counts.tolist() == sizes
    assert batch.system.tolist() == [0] * 3 + [1] * 8 + [2] * 2
    assert batch.positions.dtype == torch.float64 and batch.numbers.dtype == torch.long
    assert batch.pbc.dtype == torch.bool and batch.system.dtype == torch.long
    np.testing.assert_array_equal(batch.positions.numpy(), np.concatenate([a.positions for a in frames]))
    np.testing.assert_array_equal(batch.numbers.numpy(), np.concatenate([a.numbers for a in frames]))
    np.testing.assert_array_equal(batch.masses.numpy(), np.concatenate([a.get_masses() for a in frames]))
    np.testing.assert_allclose(batch.velocities.numpy(), np.concatenate([a.get_velocities() for a in frames]),
                               rtol=1e-15, atol=0)
    assert batch.cell.shape == (3, 3, 3)
    np.testing.assert_array_equal(batch.cell[0].numpy(), np.zeros((3, 3)))  # vacuum: no cell
    np.testing.assert_array_equal(batch.cell[2].numpy(), frames[2].cell.array)
    assert batch.pbc.tolist() == [[False] * 3, [True] * 3, [True, True, False]]
    assert batch.periodic
    assert not AtomsBatch.from_atoms([frames[0]]).periodic


def test_velocities_only_when_asked_and_empty_input_refused():
    assert AtomsBatch.from_atoms(_frames()).velocities is None
    with pytest.raises(ValueError):
        AtomsBatch.from_atoms([])


def test_round_trip_through_ase_keeps_geometry_cell_pbc_velocities_and_masses():
    frames = _frames()
    back = AtomsBatch.from_atoms(frames, with_velocities=True).to_atoms()
    assert len(back) == len(frames)
    for a, b in zip(frames, back):
        assert b.get_chemical_symbols() == a.get_chemical_symbols()
        np.testing.assert_array_equal(b.positions, a.positions)
        np.testing.assert_array_equal(b.cell.array, a.cell.array)
        np.testing.assert_array_equal(b.pbc, a.pbc)
        np.testing.assert_allclose(b.get_velocities(), a.get_velocities(), rtol=1e-14, atol=1e-18)
        np.testing.assert_array_equal(b.get_masses(), a.get_masses())
        # kinetic energy depends on masses and velocities together
        assert b.get_kinetic_energy() == pytest.approx(a.get_kinetic_energy(), rel=1e-13)
    assert np.abs(AtomsBatch.from_atoms(frames).to_atoms()[0].get_velocities()).max() == 0.0


def test_round_trip_keeps_non_default_masses():
    heavy = molecule("H2O")
    heavy.set_masses([15.999, 2.014, 2.014])  # D2O
    batch = AtomsBatch.from_atoms([heavy])
    np.testing.assert_allclose(batch.masses.numpy(), [15.999, 2.014, 2.014])  # from_atoms takes them
    np.testing.assert_allclose(batch.to_atoms()[0].get_masses(), [15.999, 2.014, 2.014])


def test_to_atoms_from_a_float32_batch_with_gradients_attached():
    frames = _frames()
    batch = AtomsBatch.from_atoms(frames, with_velocities=True).to(dtype=torch.float32)
    batch = batch.replace(positions=batch.positions.clone().requires_grad_(True))
    back = batch.to_atoms()
    for a, b in zip(frames, back):
        assert b.positions.dtype == np.float64
        np.testing.assert_allclose(b.positions, a.positions, atol=1e-5)  # float32 resolution at ~10 Å
        np.testing.assert_allclose(b.get_velocities(), a.get_velocities(), rtol=1e-6, atol=1e-9)


def test_slice_systems_gives_the_batch_of_the_middle_frames():
    frames = _frames()
    batch = AtomsBatch.from_atoms(frames, with_velocities=True)
    part = batch.slice_systems(1, 3, 3, 13)
    alone = AtomsBatch.from_atoms(frames[1:], with_velocities=True)
    for f in dataclasses.fields(AtomsBatch):
        assert torch.equal(getattr(part, f.name), getattr(alone, f.name)), f.name
    assert part.system.min() == 0 and part.counts.tolist() == [8, 2]
    first = batch.slice_systems(0, 1, 0, 3)
    assert first.n_systems == 1 and not first.periodic
    assert AtomsBatch.from_atoms(frames).slice_systems(0, 1, 0, 3).velocities is None


def test_replace_makes_a_new_batch_and_leaves_the_original_alone():
    batch = AtomsBatch.from_atoms(_frames())
    moved = batch.replace(positions=batch.positions + 1.0)
    assert torch.equal(moved.positions, batch.positions + 1.0)
    assert moved.numbers is batch.numbers and moved.cell is batch.cell
    assert batch.velocities is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        batch.positions = moved.positions
    with pytest.raises(TypeError):
        batch.replace(forces=batch.positions)  # not a field


def test_to_casts_floating_fields_only():
    batch = AtomsBatch.from_atoms(_frames(), with_velocities=True)
    low = batch.to(dtype=torch.float32)
    for name in ("positions", "cell", "masses", "velocities"):
        assert getattr(low, name).dtype == torch.float32, name
        torch.testing.assert_close(getattr(low, name).double(), getattr(batch, name), rtol=1e-6, atol=1e-6)
    for name in ("numbers", "system", "pbc"):
        assert getattr(low, name).dtype == getattr(batch, name).dtype, name
        assert torch.equal(getattr(low, name), getattr(batch, name))
    same = batch.to("cpu")  # no dtype: nothing cast
    assert same.positions.dtype == torch.float64
    assert AtomsBatch.from_atoms(_frames()).to(dtype=torch.float32).velocities is None
