"""Integrators: Boltzmann sampling of a known potential, exact energy bookkeeping, validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units

from neuralmd.errors import InputError
from neuralmd.md.integrators import (ReplicaNoise, csvr, kinetic_energy, langevin, maxwell_boltzmann, npt_csvr,
                                     npt_langevin, nve, pressure_diagonal, temperature)
from neuralmd.md.simulation import make_force_fn
from neuralmd.state import AtomsBatch

from .potentials import CellSprings, HarmonicWell, IdealGas, SpringNetwork


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


def _spread_out(n_replicas: int, atoms: int, rng) -> AtomsBatch:
    frames = [Atoms("C" * atoms, positions=rng.normal(scale=1.0, size=(atoms, 3))) for _ in range(n_replicas)]
    return AtomsBatch.from_atoms(frames)


def test_csvr_gives_the_canonical_kinetic_energy_distribution_per_replica():
    """Spring networks of 6 atoms (3N - 3 = 15 degrees of freedom, the centre of mass at rest) at
    300 K and 900 K in one batch: each replica's kinetic energy is Gamma(15/2, k_BT) in mean,
    variance and shape (Kolmogorov-Smirnov), and the centre of mass never moves."""
    from scipy import stats

    temps = [300.0] * 8 + [900.0] * 8
    noise = ReplicaNoise(range(16))
    init_fn, step_fn = csvr(make_force_fn(SpringNetwork()), 1.0, temps, 0.02, noise)
    state = init_fn(maxwell_boltzmann(_spread_out(16, 6, np.random.default_rng(0)), temps, noise))
    ke, com = [], []
    for step in range(6000):
        state = step_fn(state)
        if step >= 500 and step % 10 == 0:
            ke.append(kinetic_energy(state.batch).numpy())
            v = state.batch.velocities.reshape(16, 6, 3).numpy()
            com.append(np.abs(v.mean(axis=1)).max())
    ke = np.array(ke)
    assert max(com) < 1e-12
    for group, t in ((slice(0, 8), 300.0), (slice(8, 16), 900.0)):
        kT = units.kB * t
        sample = ke[:, group].ravel() / kT
        n_eff = len(sample) / 2  # frames 10 fs apart, τ = 20 fs: about every other one independent
        assert sample.mean() == pytest.approx(7.5, abs=4 * np.sqrt(7.5 / n_eff))
        assert sample.var() == pytest.approx(7.5, rel=0.12)
        assert stats.kstest(sample[::3], stats.gamma(7.5).cdf).pvalue > 1e-3


def test_csvr_leaves_nve_dynamics_when_the_kinetic_energy_is_at_the_bath():
    """With τ → ∞ (exp(-Δt/2τ) = 1 in float64) the rescaling factor is exactly 1 whatever the
    noise: CSVR is velocity Verlet, step for step."""
    batch = maxwell_boltzmann(_spread_out(3, 5, np.random.default_rng(1)), 300.0, ReplicaNoise(range(3)))
    init_a, step_a = csvr(make_force_fn(SpringNetwork()), 1.0, 300.0, 1e20, ReplicaNoise(range(3)))
    init_b, step_b = nve(make_force_fn(SpringNetwork()), 1.0)
    a, b = init_a(batch), init_b(batch)
    for _ in range(200):
        a, b = step_a(a), step_b(b)
    assert torch.equal(a.batch.positions, b.batch.positions)


def test_csvr_refuses_a_bad_relaxation_time():
    for tau in (0.0, -1.0, float("nan")):
        with pytest.raises(InputError, match="tau_ps"):
            csvr(make_force_fn(SpringNetwork()), 1.0, 300.0, tau, ReplicaNoise([0]))


def _stress_fn(potential):
    def force_fn(batch):
        out = potential(batch, stress=True)
        return out["energy"].detach(), out["forces"].detach(), out["stress"].detach()

    return force_fn


@pytest.mark.parametrize("thermostat", ["csvr", "langevin"])
def test_stochastic_cell_rescaling_samples_the_ideal_gas_volume_distribution_per_replica(thermostat):
    """Ideal gases of N = 5 atoms at 300 K, half the replicas at 500 bar and half at 2000 bar, in
    one batch: the isothermal-isobaric p(V) ∝ V^N exp(-βPV) has <V> = (N+1)k_BT/P and
    Var V = (N+1)(k_BT/P)² (with CSVR, without SCR's k_BT/V term, or with the kinetic pressure
    counted over 3N instead of the 3N - 3 moving degrees of freedom, <V> would be off by k_BT/P:
    17 %; with Langevin, whose noise moves the centre of mass, the same term added would be)."""
    pressures = [500.0] * 8 + [2000.0] * 8
    frames = []
    rng = np.random.default_rng(2)
    for p in pressures:
        edge = (6 * units.kB * 300 / (p * units.bar)) ** (1 / 3)
        frames.append(Atoms("Ar" * 5, positions=rng.uniform(0, edge, (5, 3)), cell=np.eye(3) * edge, pbc=True))
    noise = ReplicaNoise(range(16))
    npt, bath = (npt_csvr, 0.05) if thermostat == "csvr" else (npt_langevin, 20.0)  # τ (ps) or γ (1/ps)
    init_fn, step_fn = npt(_stress_fn(IdealGas()), 2.0, 300.0, pressures, bath, 0.2, 1e-3, noise)
    state = init_fn(maxwell_boltzmann(AtomsBatch.from_atoms(frames), 300.0, noise))
    volumes = []
    for step in range(12000):
        state = step_fn(state)
        if step >= 1000 and step % 20 == 0:
            volumes.append(torch.linalg.det(state.batch.cell).numpy())
    volumes = np.array(volumes)
    for group, p in ((slice(0, 8), 500.0), (slice(8, 16), 2000.0)):
        scale = units.kB * 300 / (p * units.bar)
        v = volumes[:, group].ravel() / scale
        n_eff = v.size / 4  # frames 40 fs apart, the volume decorrelates over ~0.1-0.2 ps
        assert v.mean() == pytest.approx(6.0, abs=4 * np.sqrt(6.0 / n_eff)), v.mean()
        assert v.var() == pytest.approx(6.0, rel=0.2), v.var()
    cells = state.batch.cell.numpy()
    assert np.allclose(cells, np.eye(3) * cells[:, :1, :1])  # isotropic: the cell stays cubic


def test_anisotropic_cell_rescaling_samples_each_axis_of_a_box_with_different_stiffnesses():
    """A box whose lattice vectors are springs of different stiffness (K = 1, 2, 4 eV/Å²) holding
    an ideal gas of N = 5 atoms, at 5000 bar: the anisotropic barostat samples
    p(L) ∝ V^N exp(-β(P_0 V + E(L))) per axis (means by quadrature on a grid) and each diagonal
    pressure component obeys ⟨P_αα + k_BT/V⟩ = P_0; the isotropic one cannot (it keeps the
    box's shape), so the test tells them apart."""
    k, l0, p0, n, temp = (1.0, 2.0, 4.0), (10.0, 11.0, 12.0), 5000.0, 5, 300.0
    rng = np.random.default_rng(5)
    frames = [Atoms("Ar" * n, positions=rng.uniform(0, 10, (n, 3)), cell=np.diag(l0), pbc=True) for _ in range(16)]
    beta = 1 / (units.kB * temp)
    grids = [np.linspace(l - 1.4, l + 0.6, 60) for l in l0]
    L1, L2, L3 = np.meshgrid(*grids, indexing="ij")
    volume = L1 * L2 * L3
    energy = sum(0.5 * kk * (L - ll) ** 2 for kk, L, ll in zip(k, (L1, L2, L3), l0))
    log_w = n * np.log(volume) - beta * (p0 * units.bar * volume + energy)
    w = np.exp(log_w - log_w.max())
    expected = [float((w * L).sum() / w.sum()) for L in (L1, L2, L3)]
    spread = [float(np.sqrt((w * L**2).sum() / w.sum() - e**2)) for L, e in zip((L1, L2, L3), expected)]

    for coupling in ("anisotropic", "isotropic"):
        noise = ReplicaNoise(range(16))
        init_fn, step_fn = npt_csvr(_stress_fn(CellSprings(k, l0)), 2.0, temp, p0, 0.05, 0.1, 2 * units.bar,
                                    noise, coupling)
        state = init_fn(maxwell_boltzmann(AtomsBatch.from_atoms(frames), temp, noise))
        lengths, p_axes = [], []
        for step in range(8000):
            state = step_fn(state)
            if step >= 1000 and step % 10 == 0:
                b = state.batch
                lengths.append(torch.diagonal(b.cell, dim1=1, dim2=2).numpy().copy())
                vol = torch.linalg.det(b.cell)
                p_axes.append((pressure_diagonal(b, state.stress) + units.kB * temp / vol.unsqueeze(-1)).numpy())
        mean = np.array(lengths).reshape(-1, 3).mean(0)
        err = [s / np.sqrt(16 * 700 / 20) for s in spread]  # ~20 frames (0.4 ps) per independent sample
        if coupling == "anisotropic":
            for a in range(3):
                assert mean[a] == pytest.approx(expected[a], abs=4 * err[a] + 0.01), (a, mean, expected)
            np.testing.assert_allclose(np.array(p_axes).reshape(-1, 3).mean(0) / units.bar, p0, rtol=0.1)
        else:
            assert max(abs(mean[a] - expected[a]) / spread[a] for a in range(3)) > 1.0


def _standard_form_components(cell: np.ndarray) -> np.ndarray:
    """(…, 3, 3) lower-triangular cells -> (…, 6): a_x, b_x, b_y, c_x, c_y, c_z (Å)."""
    return np.stack([cell[..., 0, 0], cell[..., 1, 0], cell[..., 1, 1], cell[..., 2, 0], cell[..., 2, 1],
                     cell[..., 2, 2]], -1)


def _springs_energy(h: np.ndarray, k, l0, k_angle, cos0) -> np.ndarray:
    """CellSprings' energy (eV) of cells given by their six standard-form components."""
    zero = np.zeros(h.shape[:-1])
    vectors = (np.stack([h[..., 0], zero, zero], -1), np.stack([h[..., 1], h[..., 2], zero], -1), h[..., 3:])
    lengths = [np.linalg.norm(v, axis=-1) for v in vectors]
    cos = [(vectors[i] * vectors[j]).sum(-1) / (lengths[i] * lengths[j]) for i, j in ((1, 2), (0, 2), (0, 1))]
    return (sum(0.5 * kk * (ll - l) ** 2 for kk, ll, l in zip(k, lengths, l0))
            + sum(0.5 * k_angle * (c - c0) ** 2 for c, c0 in zip(cos, cos0)))


def test_triclinic_cell_rescaling_samples_the_six_cell_components_shear_included():
    """An ideal gas of N = 2 atoms in a box whose lengths and angles are soft springs (preferred
    angles away from 90°), at 660 bar: the triclinic barostat samples the six components of the
    standard-form cell from p(h) ∝ V^N exp(-β(P_0 V + E(h))), flat in each component (expected
    means by importance sampling). The ideal gas makes the V^N term matter: without the
    divergence term n = (3, 2, 1) of the cell's diffusion (n = 1 on every axis, as for the
    diagonal barostat) ⟨a_x⟩ is 7 standard errors low. Langevin, because an ideal gas under CSVR
    never shares kinetic energy between axes (its collisions would)."""
    k, l0, k_angle, cos0, p0, n, temp = (0.03,) * 3, (6.0, 6.5, 7.0), 5.0, (0.0, 0.2, 0.3), 660.0, 2, 300.0
    beta = 1 / (units.kB * temp)
    rng = np.random.default_rng(0)
    centre, scale = np.array([5.9, 2.0, 6.2, 1.4, -0.5, 6.9]), np.full(6, 1.2)
    for _ in range(2):  # self-normalised importance sampling, the proposal refitted once
        h = centre + scale * rng.standard_normal((2_000_000, 6))
        volume = h[:, 0] * h[:, 2] * h[:, 5]
        log_w = np.where(volume > 0, n * np.log(np.abs(volume)) - beta * (p0 * units.bar * volume + _springs_energy(
            h, k, l0, k_angle, cos0)) + 0.5 * (((h - centre) / scale) ** 2).sum(-1), -np.inf)
        w = np.exp(log_w - log_w.max())
        expected = (w[:, None] * h).sum(0) / w.sum()
        centre, scale = expected, 1.3 * np.sqrt((w[:, None] * h**2).sum(0) / w.sum() - expected**2)
    assert w.sum() ** 2 / (w**2).sum() > 1e5  # effective samples of the estimate

    frames = [Atoms("Ar" * n, positions=rng.uniform(0, 5, (n, 3)), cell=np.diag(l0), pbc=True) for _ in range(16)]
    noise = ReplicaNoise(range(16))
    init_fn, step_fn = npt_langevin(_stress_fn(CellSprings(k, l0, k_angle, cos0)), 2.0, temp, p0, 20.0, 0.1,
                                    50 * units.bar, noise, "triclinic")
    state = init_fn(maxwell_boltzmann(AtomsBatch.from_atoms(frames), temp, noise))
    samples = []
    for step in range(16000):
        state = step_fn(state)
        if step >= 1000 and step % 10 == 0:
            samples.append(_standard_form_components(state.batch.cell.numpy()))
    samples = np.array(samples)  # (frames, replicas, 6)
    per_replica = samples.mean(0)
    z = (per_replica.mean(0) - expected) / (per_replica.std(0, ddof=1) / np.sqrt(16))
    assert np.abs(z).max() < 4, (per_replica.mean(0), expected, z)
    assert np.abs(np.triu(state.batch.cell.numpy(), 1)).max() == 0  # the cell stays in standard form
    assert samples[..., [1, 3, 4]].std() > 0.4  # shear was sampled, not frozen at the start's right angles

    with pytest.raises(InputError, match="standard form"):
        init_fn(AtomsBatch.from_atoms([Atoms("Ar", cell=[[5, 1, 0], [0, 5, 0], [0, 0, 5]], pbc=True)]))


def test_npt_refuses_a_frame_without_a_cell_and_bad_pressures():
    noise = ReplicaNoise([0])
    init_fn, _ = npt_csvr(_stress_fn(IdealGas()), 1.0, 300.0, 1.0, 0.1, 1.0, 4.5e-5, noise)
    with pytest.raises(InputError, match="periodic cell"):
        init_fn(AtomsBatch.from_atoms([Atoms("Ar2", positions=[[0, 0, 0], [3, 0, 0]])]))
    for bad in (float("nan"), 1e9, -float("inf")):
        with pytest.raises(InputError, match="pressure"):
            npt_csvr(_stress_fn(IdealGas()), 1.0, 300.0, bad, 0.1, 1.0, 4.5e-5, noise)
    for tau_p, beta in ((0.0, 4.5e-5), (1.0, 0.0), (1.0, float("nan"))):
        with pytest.raises(InputError, match="tau_p_ps|compressibility"):
            npt_csvr(_stress_fn(IdealGas()), 1.0, 300.0, 1.0, 0.1, tau_p, beta, noise)
