"""Neighbour lists: the dense torch list and vesin agree with ASE's."""

from __future__ import annotations

import numpy as np
import torch
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from neuralmd import neighbors
from neuralmd.state import AtomsBatch


def _pairs(i, j, s=None):
    s = np.zeros((len(i), 3)) if s is None else np.asarray(s)
    return sorted(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), map(tuple, np.round(s).astype(int).tolist())))


def test_dense_list_matches_ase_for_a_batch_of_molecules():
    mols = [molecule("CH3CH2OH"), molecule("H2O"), molecule("C6H6")]
    batch = AtomsBatch.from_atoms(mols)
    i, j, s = neighbors.neighbor_list(batch, cutoff=2.5)
    offset, expected = 0, []
    for m in mols:
        ai, aj = ase_neighbor_list("ij", m, 2.5)
        expected += _pairs(ai + offset, aj + offset)
        offset += len(m)
    assert _pairs(i, j, s) == sorted(expected)


def test_vesin_list_matches_ase_for_periodic_crystal():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=1)
    batch = AtomsBatch.from_atoms([atoms, atoms])
    i, j, s = neighbors.neighbor_list(batch, cutoff=4.0)
    ai, aj, aS = ase_neighbor_list("ijS", atoms, 4.0)
    n = len(atoms)
    expected = _pairs(ai, aj, aS) + _pairs(ai + n, aj + n, aS)
    assert _pairs(i, j, s) == sorted(expected)
    assert s.dtype == torch.float64


def test_skin_cache_gives_identical_md_with_fewer_rebuilds(float64_model):
    import copy

    from neuralmd.md.simulation import Simulation
    from tests.models.test_equivariant import _water_box

    no_skin = copy.deepcopy(float64_model)
    no_skin.neighbors.skin = 0.0
    runs = []
    for model in (float64_model, no_skin):
        sim = Simulation(model, AtomsBatch.from_atoms([_water_box()]), temperature_K=600, timestep_fs=1.0,
                         seed=4, report_every=10)
        sim.run(60)
        runs.append(sim.state.batch.positions)
    np.testing.assert_allclose(runs[0].numpy(), runs[1].numpy(), atol=1e-10)
    assert 1 <= float64_model.neighbors.rebuilds < 30
    assert no_skin.neighbors.rebuilds == 0


def _pair_set(i, j, vectors):
    return sorted(zip(i.tolist(), j.tolist(), map(tuple, np.round(vectors.numpy(), 6).tolist())))


def test_skin_list_survives_cell_deformation_and_stays_exact():
    """Under NPT the cell changes every step: the cached list carries its reference along the
    affine deformation, stays in use while the bound allows, and always gives exactly the pairs
    a fresh list within the cutoff gives."""
    from tests.models.test_equivariant import _water_box

    atoms = _water_box()
    rng = np.random.default_rng(3)
    cache = neighbors.NeighborCache(cutoff=3.5, skin=1.0)
    base = AtomsBatch.from_atoms([atoms])
    for scale in (1.0, 1.002, 0.997, 1.08, 1.004, 0.8, 0.801):  # expansion never drops a pair; 20 % compression does
        strain = np.eye(3) * scale + rng.normal(scale=0.001, size=(3, 3))
        cell = base.cell[0].numpy() @ strain
        positions = base.positions.numpy() @ strain + rng.normal(scale=0.02, size=base.positions.shape)
        batch = base.replace(positions=torch.as_tensor(positions), cell=torch.as_tensor(cell)[None])
        i, j, vectors = cache.pairs(batch)
        fi, fj, fs = neighbors.neighbor_list(batch, 3.5)
        fresh = neighbors.pair_vectors(batch, fi, fj, fs)
        assert _pair_set(i, j, vectors) == _pair_set(fi, fj, fresh)
    assert cache.rebuilds == 2  # the first call and the compression
