"""The potential as an ASE calculator: exact forces, ASE MD, caching, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import molecule
from ase.calculators.fd import calculate_numerical_forces
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from ase.optimize import BFGS

import neuralmd
from neuralmd.errors import InputError


def test_forces_match_finite_differences_and_energies_sum(trained_model):
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=4)
    atoms.calc = neuralmd.load_calculator(trained_model, dtype=torch.float64)
    forces = atoms.get_forces()
    numeric = calculate_numerical_forces(atoms, eps=1e-4)
    assert np.abs(numeric - forces).max() < 1e-6 * np.abs(forces).max() + 1e-7
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), rel=1e-12)


def test_results_are_cached_until_atoms_change(trained_model):
    atoms = molecule("CH3CH2OH")
    calc = neuralmd.load_calculator(trained_model)
    atoms.calc = calc
    e0 = atoms.get_potential_energy()
    atoms.get_forces()
    calls = []
    original = calc.potential.forward
    calc.potential.forward = lambda *a, **k: calls.append(1) or original(*a, **k)
    atoms.get_potential_energy()
    atoms.get_forces()
    assert calls == []
    atoms.positions[0, 0] += 0.01
    assert atoms.get_potential_energy() != e0
    assert calls == [1]


def test_ase_velocity_verlet_conserves_energy_in_float64(trained_model):
    atoms = molecule("CH3CH2OH")
    atoms.calc = neuralmd.load_calculator(trained_model, dtype=torch.float64)
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=200)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, 0.25 * units.fs)
    totals = []
    for _ in range(40):
        dyn.run(5)
        totals.append(atoms.get_total_energy())
    kinetic = atoms.get_kinetic_energy()
    assert kinetic > 0.01
    assert np.ptp(totals) < 0.02 * 9 * 1.5 * units.kB * 300  # within 2 % of the thermal energy


def test_unknown_element_is_a_clear_error(trained_model):
    atoms = molecule("NH3")
    atoms.calc = neuralmd.load_calculator(trained_model)
    with pytest.raises(InputError, match="element\\(s\\) N not known to the model"):
        atoms.get_potential_energy()


def test_ase_cell_filter_relaxes_a_periodic_box_with_the_stress(any_float64_model):
    """ASE's FrechetCellFilter + FIRE on 64 waters with the neuralmd calculator: the cell moves
    and the energy falls (the filter descends along the stress, the strain derivative); ASE's
    isotropic MTK NPT integrator then runs with it."""
    from ase.filters import FrechetCellFilter
    from ase.md.nose_hoover_chain import IsotropicMTKNPT
    from ase.optimize import FIRE

    from neuralmd.data.io import read_frames
    from neuralmd.md.ase_calculator import NeuralCalculator

    from ..conftest import shared_file

    atoms = read_frames(shared_file("deepmd_water/data_0"), require_labels=False)[0]
    atoms.calc = NeuralCalculator(any_float64_model)
    before_cell, before = atoms.cell.array.copy(), atoms.get_potential_energy()
    FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-3, steps=15)
    assert not np.allclose(atoms.cell.array, before_cell)
    assert atoms.get_potential_energy() < before
    volume = atoms.get_volume()
    IsotropicMTKNPT(atoms, timestep=0.25 * units.fs, temperature_K=300, pressure_au=1e4 * units.bar, tdamp=25 * units.fs,
                    pdamp=250 * units.fs).run(10)
    assert np.isfinite(atoms.get_potential_energy()) and atoms.get_volume() != volume
