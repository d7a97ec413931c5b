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
