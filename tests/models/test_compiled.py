"""The static-graph, compiled potential for MD of molecules (neuralmd.models.compiled)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from neuralmd.errors import InputError
from neuralmd.md.simulation import Simulation
from neuralmd.models.compiled import STATIC_MAX_ATOMS, StaticGraphPotential
from neuralmd.state import AtomsBatch


def _batch() -> AtomsBatch:
    """Ethanol and trans-butane: butane has atom pairs beyond the 4 Å cutoff of the models here."""
    butane = molecule("trans-butane")
    assert butane.get_all_distances().max() > 5.0
    return AtomsBatch.from_atoms([molecule("CH3CH2OH"), butane])


def test_all_pairs_graph_gives_the_model_s_energies_and_forces(any_float64_model):
    """Pairs beyond the cutoff add exactly nothing (the envelope is zero there)."""
    batch = _batch()
    static = StaticGraphPotential(any_float64_model, batch, compile=False)
    assert static.i.shape[0] == sum(n * (n - 1) for n in batch.counts.tolist())
    moved = batch.replace(positions=batch.positions + 0.05 * torch.randn_like(batch.positions))
    ref, out = any_float64_model(moved), static(moved)
    assert torch.allclose(out["energy"], ref["energy"], rtol=0, atol=1e-10)
    assert torch.allclose(out["forces"], ref["forces"], rtol=0, atol=1e-10)
    with pytest.raises(InputError, match="other atoms"):
        static(AtomsBatch.from_atoms([molecule("CH3CH2OH")]))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_compiled_md_follows_the_eager_trajectory(any_float64_model, device):
    """One compilation (float32, as MD benchmarks run; fused C++ on a CPU, CUDA graphs on a GPU):
    50 NVE steps of both molecules stay on the eager run's trajectory."""
    model = any_float64_model.float().to(device)
    runs = {}
    for compiled in (False, True):
        sim = Simulation(model, _batch(), ensemble="nve", timestep_fs=0.5, temperature_K=300, seed=3,
                         compile=compiled)
        sim.run(50)
        runs[compiled] = sim.state
    assert isinstance(sim.potential, StaticGraphPotential)
    assert runs[True].batch.positions.device.type == device
    drift = float((runs[True].batch.positions - runs[False].batch.positions).abs().max())
    assert drift < 1e-5
    assert torch.allclose(runs[True].energy, runs[False].energy, rtol=0, atol=1e-5)


def test_compile_refuses_what_it_cannot_make_static(float64_model):
    from ase import Atoms

    water_box = molecule("H2O")
    water_box.set_cell([5.0, 5.0, 5.0])
    water_box.pbc = True
    with pytest.raises(InputError, match="molecules only"):
        StaticGraphPotential(float64_model, AtomsBatch.from_atoms([water_box]))
    big = Atoms("H" * (STATIC_MAX_ATOMS + 1), positions=np.random.default_rng(0).normal(0, 3, (STATIC_MAX_ATOMS + 1, 3)))
    with pytest.raises(InputError, match=f"up to {STATIC_MAX_ATOMS} atoms"):
        StaticGraphPotential(float64_model, AtomsBatch.from_atoms([big]))


def test_compiled_ase_calculator_gives_the_eager_energies_and_forces(float64_model):
    """NeuralCalculator(compile=True) (float32, one compilation): a molecule's energies and forces
    at several geometries equal the eager calculator's; a periodic box is evaluated eagerly, with
    its stress."""
    from neuralmd.md.ase_calculator import NeuralCalculator

    model = float64_model.float()
    eager, fast = NeuralCalculator(model), NeuralCalculator(model, compile=True)
    atoms = molecule("CH3CH2OH")
    for seed in range(3):
        atoms.rattle(0.05, seed=seed)
        e_ref, f_ref = eager.get_potential_energy(atoms), eager.get_forces(atoms)
        assert fast.get_potential_energy(atoms) == pytest.approx(e_ref, abs=1e-4)
        np.testing.assert_allclose(fast.get_forces(atoms), f_ref, atol=1e-4)
    box = molecule("H2O")
    box.set_cell([6.0, 6.0, 6.0])
    box.pbc = True
    np.testing.assert_allclose(fast.get_stress(box), eager.get_stress(box), atol=1e-7)
