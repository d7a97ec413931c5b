"""Integrators: Boltzmann sampling of a known potential, exact energy bookkeeping, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units

from neuralmd.errors import InputError
from neuralmd.md.integrators import (ReplicaNoise, kinetic_energy, langevin, maxwell_boltzmann, nve,
                                     temperature)
from neuralmd.md.simulation import make_force_fn
from neuralmd.state import AtomsBatch

from .potentials import HarmonicWell


def _atoms_batch(n_replicas: int, atoms_per_replica: int = 1, mass: float = 12.0) -> AtomsBatch:
    frames = []
    for _ in range(n_replicas):
        a = Atoms("C" * atoms_per_replica, positions=np.zeros((atoms_per_replica, 3)))
        a.set_masses([mass] * atoms_per_replica)
        frames.append(a)
    return AtomsBatch.from_atoms(frames)


def test_langevin_samples_the_boltzmann_distribution_per_replica():
    """Harmonic wells at 300 K and 600 K: <x²> = kT/k per dimension and <KE> = 3/2 kT per atom,
    within statistical error, for every replica and over the batch."""
    k = 2.0  # eV/Å²; omega = sqrt(k/m) gives a period of ~50 fs for carbon
    temps = [300.0] * 8 + [600.0] * 8
    batch = _atoms_batch(16, atoms_per_replica=4)
    noise = ReplicaNoise(range(16))
    init_fn, step_fn = langevin(make_force_fn(HarmonicWell(k)), 2.0, temps, 20.0, noise)
    state = init_fn(maxwell_boltzmann(batch, temps, noise))
    x2, ke = [], []
    for step in range(6000):
        state = step_fn(state)
        if step >= 500 and step % 5 == 0:
            x2.append(state.batch.positions.pow(2).view(16, 4, 3).mean((1, 2)).clone())
            ke.append(kinetic_energy(state.batch) / 4)
    x2 = torch.stack(x2).mean(0).numpy()
    ke = torch.stack(ke).mean(0).numpy()
    kT = np.array(temps) * units.kB
    # ~1100 samples x 12 coordinates with a correlation time of a few samples: ~3 % error
    np.testing.assert_allclose(x2, kT / k, rtol=0.12)
    np.testing.assert_allclose(ke, 1.5 * kT, rtol=0.12)
    np.testing.assert_allclose(x2[:8].mean(), kT[0] / k, rtol=0.04)
    np.testing.assert_allclose(x2[8:].mean(), kT[8] / k, rtol=0.04)
    np.testing.assert_allclose(ke[:8].mean(), 1.5 * kT[0], rtol=0.04)


def test_velocity_verlet_conserves_energy_of_a_harmonic_well():
    batch = _atoms_batch(4, atoms_per_replica=3)
    noise = ReplicaNoise(range(4))
    init_fn, step_fn = nve(make_force_fn(HarmonicWell(2.0)), 1.0)
    state = init_fn(maxwell_boltzmann(batch, 300.0, noise))
    e0 = state.energy + kinetic_energy(state.batch)
    for _ in range(2000):
        state = step_fn(state)
    e1 = state.energy + kinetic_energy(state.batch)
    # dt = 1 fs against a 50 fs period: (omega dt)^2 / 8 ~ 2e-3 relative fluctuation, no drift
    assert torch.all((e1 - e0).abs() < 5e-3 * e0.abs())


def test_maxwell_boltzmann_removes_centre_of_mass_motion():
    batch = _atoms_batch(50, atoms_per_replica=5)
    v = maxwell_boltzmann(batch, 500.0, ReplicaNoise(range(50)))
    momentum = torch.zeros(50, 3, dtype=torch.float64).index_add(0, v.system, v.masses[:, None] * v.velocities)
    assert momentum.abs().max() < 1e-12
    # with 3N-3 degrees of freedom the mean temperature is the requested one
    assert float(temperature(v, remove_com_dof=True).mean()) == pytest.approx(500.0, rel=0.08)


@pytest.mark.parametrize("timestep_fs", [0.0, -1.0, 50.0])
def test_bad_timestep(timestep_fs):
    with pytest.raises(InputError, match="timestep_fs"):
        nve(lambda b: None, timestep_fs)


@pytest.mark.parametrize("temp", [0.0, -5.0, 1e7])
def test_bad_temperature(temp):
    with pytest.raises(InputError, match="temperature"):
        langevin(lambda b: None, 0.5, temp, 1.0, ReplicaNoise([0]))
