"""OPES and well-tempered metadynamics recover a known free-energy difference; bias forces
are exact; restarts continue with the same bias."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units

from neuralmd.errors import InputError
from neuralmd.md.integrators import MDState
from neuralmd.md.reporters import BaseReporter
from neuralmd.md.simulation import Simulation
from neuralmd.models.base import Potential
from neuralmd.sampling.biases import KJMOL, OPES, HarmonicRestraint, WellTemperedMetaD
from neuralmd.sampling.cvs import Distance, Position, Stack, Torsion
from neuralmd.sampling.fes import delta_f, to_kT, weights_from_bias
from neuralmd.state import AtomsBatch

T = 300.0
KT = units.kB * T
BARRIER = 8 * KT      # eV, between the wells at x = -1 and x = +1 Å
TILT = 0.03           # eV/Å: the left well is lower


class DoubleWell(Potential):
    """E_b ((x/Å)² - 1)² + TILT x + ½ k (y² + z²) for every atom (eV)."""

    def atomic_energies(self, batch: AtomsBatch) -> torch.Tensor:
        x, y, z = batch.positions.unbind(-1)
        return BARRIER * (x**2 - 1) ** 2 + TILT * x + 0.5 * 2.0 * (y**2 + z**2)


def reference_delta_f_kjmol() -> float:
    """F(x > 0) - F(x < 0) by numerical integration of the Boltzmann factor (y, z cancel)."""
    x = np.linspace(-3, 3, 200_001)
    p = np.exp(-(BARRIER * (x**2 - 1) ** 2 + TILT * x) / KT)
    return float(-KT * np.log(p[x > 0].sum() / p[x < 0].sum()) / KJMOL)


class Recorder(BaseReporter):
    """Keeps (x, bias) of every walker every ``every`` steps after ``skip`` steps."""

    def __init__(self, bias, every: int, skip: int) -> None:
        self.bias, self.every, self.skip = bias, every, skip
        self.interval = every
        self.x, self.v, self.steps = [], [], []

    def report(self, sim, state) -> None:
        if state.step % self.every or state.step < self.skip:
            return
        with torch.no_grad():
            s = self.bias.cv_values(state.batch)
            self.x.append(s[:, 0].numpy().copy())
            self.v.append(self.bias.energy_of_cv(s).numpy().copy())
            self.steps.append(state.step)


def _walkers(n: int) -> AtomsBatch:
    frames = [Atoms("H", positions=[[-1.0, 0.0, 0.0]]) for _ in range(n)]
    return AtomsBatch.from_atoms(frames)


def _run(bias, steps: int, walkers: int = 16, seed: int = 0):
    rec = Recorder(bias, every=10, skip=steps // 5)
    sim = Simulation(DoubleWell(), _walkers(walkers), temperature_K=T, timestep_fs=2.0, friction_per_ps=10.0,
                     seed=seed, report_every=10, terms=[bias], reporters=[rec])
    sim.run(steps)
    return np.concatenate(rec.x), np.concatenate(rec.v), sim, rec


def test_opes_recovers_the_reference_free_energy_difference(tmp_path):
    bias = OPES(Position(0, axes=(0,)), sigma=[0.1], barrier_kjmol=10 * KT / KJMOL, pace=50, temperature_K=T)
    x, v, _, _ = _run(bias, 15_000)
    left, right = (x < 0).mean(), (x > 0).mean()
    assert min(left, right) > 0.2  # both basins visited often despite an 8 kT barrier
    df = delta_f(x, weights_from_bias(v, T), [(-3, 0)], [(0, 3)], T)
    ref = reference_delta_f_kjmol()
    assert to_kT(ref, T) > 1.5  # the test is not trivial: the basins differ by ~2.3 kT
    assert abs(to_kT(df - ref, T)) < 0.5, (df, ref)
    assert bias.heights.numel() < 200  # compression keeps the kernel list short
    from neuralmd.analysis.plots import plot_convergence, plot_fes
    from neuralmd.sampling.fes import convergence, fes

    centres, f = fes(x, weights_from_bias(v, T), bins=40, ranges=[(-2, 2)], temperature_K=T)
    assert np.nanargmin(f) < 20  # the lower basin is at x < 0
    plot_fes(centres, f, ["x (Å)"], tmp_path / "fes.png")
    ends, curve = convergence(x, weights_from_bias(v, T), [(-3, 0)], [(0, 3)], T, points=10)
    plot_convergence(ends, curve, tmp_path / "convergence.png", "samples", reference=ref)
    assert abs(to_kT(curve[-1] - ref, T)) < 0.5
    assert (tmp_path / "fes.png").is_file() and (tmp_path / "convergence.png").is_file()


def test_well_tempered_metad_final_bias_and_ct_reweighting_recover_reference():
    from neuralmd.sampling.fes import metad_ct

    bias = WellTemperedMetaD(Position(0, axes=(0,)), sigma=[0.1], height_kjmol=1.0, pace=50, biasfactor=8.0,
                             temperature_K=T)
    x, v, sim, rec = _run(bias, 15_000)
    grid = torch.linspace(-2.0, 2.0, 801, dtype=torch.float64).unsqueeze(-1)
    f = bias.free_energy_of_cv(grid).numpy()
    p = np.exp(-(f - f.min()) / KT)
    xs = grid[:, 0].numpy()
    df = -KT * np.log(p[xs > 0].sum() / p[xs < 0].sum()) / KJMOL
    ref = reference_delta_f_kjmol()
    assert abs(to_kT(df - ref, T)) < 0.5, (df, ref)
    # frame reweighting with exp(β(V(s,t) - c(t))), c(t) rebuilt from the kernels' deposition order
    ct = metad_ct(bias, np.array(rec.steps), walkers=16, temperature_K=T)
    assert np.all(np.diff(ct) >= -1e-9)  # c(t) grows as the bias fills the wells
    # a frame recorded at a deposition step felt the kernels before that step's deposition only
    first = metad_ct(bias, np.array([bias.pace, bias.pace + 1]), walkers=16, temperature_K=T)
    assert first[0] == 0.0 and first[1] > 0.0
    weights = weights_from_bias(v - np.repeat(ct, 16), T)
    df_ct = delta_f(x, weights, [(-3, 0)], [(0, 3)], T)
    assert abs(to_kT(df_ct - ref, T)) < 0.5, (df_ct, ref)


@pytest.mark.parametrize("make", [
    lambda cv: OPES(cv, sigma=[0.2, 0.3], barrier_kjmol=20, pace=1, temperature_K=T, periods=[0, 2 * np.pi]),
    lambda cv: WellTemperedMetaD(cv, sigma=[0.2, 0.3], height_kjmol=2, pace=1, biasfactor=5, temperature_K=T,
                                 periods=[0, 2 * np.pi]),
    lambda cv: HarmonicRestraint(cv, centre=[1.2, 0.5], kappa_kjmol=300, periods=[0, 2 * np.pi]),
])
def test_bias_forces_are_minus_the_gradient(make):
    from ase.build import molecule

    from neuralmd.md.simulation import make_force_fn

    atoms = molecule("CH3CH2OH")
    cv = Stack([Distance(0, 2), Torsion(3, 0, 1, 8)])
    bias = make(cv)
    batch = AtomsBatch.from_atoms([atoms, atoms])
    rng = np.random.default_rng(0)
    if hasattr(bias, "update"):
        for step in range(6):  # deposit a few kernels around the start
            moved = batch.replace(positions=batch.positions + torch.as_tensor(rng.normal(0, 0.1, (18, 3))))
            bias.update(MDState(moved, forces=None, energy=None, step=step))

    class Zero(Potential):
        def atomic_energies(self, b):
            return b.positions.sum(-1) * 0.0

    force_fn = make_force_fn(Zero(), [bias])
    probe = batch.replace(positions=batch.positions + torch.as_tensor(rng.normal(0, 0.05, (18, 3))))
    energy, forces = force_fn(probe)
    assert forces.abs().max() > 1e-4
    h = 1e-6
    for atom, k in [(0, 0), (2, 1), (3, 2), (8, 0), (10, 1)]:
        e = []
        for sign in (1, -1):
            pos = probe.positions.clone()
            pos[atom, k] += sign * h
            e.append(force_fn(probe.replace(positions=pos))[0][1 if atom >= 9 else 0])
        fd = -(e[0] - e[1]) / (2 * h)
        assert abs(float(fd) - float(forces[atom, k])) < 1e-6 * max(1.0, abs(float(forces[atom, k])))


def test_restarted_opes_continues_with_the_same_bias(tmp_path):
    def make():
        return OPES(Position(0, axes=(0,)), sigma=[0.1], barrier_kjmol=25, pace=20, temperature_K=T)

    straight = make()
    sim = Simulation(DoubleWell(), _walkers(4), temperature_K=T, timestep_fs=2.0, friction_per_ps=10.0, seed=2,
                     terms=[straight], run_dir=tmp_path / "a", checkpoint_every=200, report_every=100)
    sim.run(600)

    first = make()
    sim = Simulation(DoubleWell(), _walkers(4), temperature_K=T, timestep_fs=2.0, friction_per_ps=10.0, seed=2,
                     terms=[first], run_dir=tmp_path / "b", checkpoint_every=200, report_every=100)
    sim.run(400)
    resumed_bias = make()
    resumed = Simulation.resume(tmp_path / "b", DoubleWell(), terms=[resumed_bias])
    assert resumed.state.step == 400
    resumed.run(200)
    torch.testing.assert_close(resumed_bias.centres, straight.centres, rtol=0, atol=0)
    torch.testing.assert_close(resumed_bias.heights, straight.heights, rtol=0, atol=0)
    grid = torch.linspace(-2, 2, 41, dtype=torch.float64).unsqueeze(-1)
    torch.testing.assert_close(resumed_bias.energy_of_cv(grid), straight.energy_of_cv(grid), rtol=0, atol=0)
    with pytest.raises(InputError, match="extra energy terms"):
        Simulation.resume(tmp_path / "b", DoubleWell())


def test_bad_bias_settings():
    cv = Position(0, axes=(0,))
    with pytest.raises(InputError, match="sigma"):
        OPES(cv, sigma=[0.1, 0.2], barrier_kjmol=10, pace=10, temperature_K=T)
    with pytest.raises(InputError, match="barrier_kjmol"):
        OPES(cv, sigma=[0.1], barrier_kjmol=-1, pace=10, temperature_K=T)
    with pytest.raises(InputError, match="biasfactor"):
        WellTemperedMetaD(cv, sigma=[0.1], height_kjmol=1, pace=10, biasfactor=0.5, temperature_K=T)


def test_cv_atom_out_of_range_and_bias_state_files(tmp_path):
    bias = OPES(Distance(0, 50), sigma=[0.1], barrier_kjmol=10, pace=1, temperature_K=T)
    with pytest.raises(InputError, match="atom index 50 but the system has 1 atoms"):
        Simulation(DoubleWell(), _walkers(2), terms=[bias])

    opes = OPES(Position(0, axes=(0,)), sigma=[0.1], barrier_kjmol=10, pace=1, temperature_K=T)
    for step, x in enumerate([-1.0, -0.8, 0.5]):
        batch = _walkers(1)
        opes.update(MDState(batch.replace(positions=batch.positions + torch.tensor([[x + 1.0, 0, 0]])), None, None, step))
    opes.save(tmp_path / "opes.pt")
    copy = OPES(Position(0, axes=(0,)), sigma=[0.1], barrier_kjmol=10, pace=1, temperature_K=T)
    copy.load(tmp_path / "opes.pt")
    grid = torch.linspace(-2, 2, 9, dtype=torch.float64).unsqueeze(-1)
    torch.testing.assert_close(copy.energy_of_cv(grid), opes.energy_of_cv(grid), rtol=0, atol=0)
    metad = WellTemperedMetaD(Position(0, axes=(0,)), sigma=[0.1], height_kjmol=1, pace=1, biasfactor=5,
                              temperature_K=T)
    with pytest.raises(InputError, match="holds a OPES state"):
        metad.load(tmp_path / "opes.pt")


def test_opes_running_normalisation_equals_the_direct_sum():
    """Z is kept up to date kernel by kernel (O(K) per deposition); it must equal the mean of
    P over the kernel centres computed from scratch, compression included."""
    cv = Stack([Position(0, axes=[0, 1])])
    bias = OPES(cv, sigma=[0.3, 0.3], barrier_kjmol=20, pace=1, temperature_K=300)
    rng = np.random.default_rng(0)
    template = AtomsBatch.from_atoms([Atoms("H", positions=[[0.0, 0.0, 0.0]])] * 3, dtype=torch.float64)
    for step in range(1, 200):
        pos = torch.tensor(rng.normal(scale=1.0, size=(3, 3)))
        bias.update(MDState(template.replace(positions=pos), None, None, step))
    assert bias.heights.numel() < 3 * 199  # compression merged kernels
    direct = bias.kernel_sum(bias.centres)
    assert torch.allclose(bias.p_centres, direct, rtol=1e-10)
    assert float(bias.zed) == pytest.approx(float(direct.mean() / bias.sum_w), rel=1e-10)


def test_bias_stiffness_is_the_spring_frequency_and_sigma_widens_to_the_limit():
    """A kernel bias of width σ on a distance curves like a spring k_BT/σ² on the reduced mass:
    ω = sqrt(k_BT/σ² (1/m1 + 1/m2)); widths are widened by one factor until ω·Δt is at most
    MAX_BIAS_OMEGA_DT, and kept where it already is."""
    from neuralmd.sampling.fes import kT_kjmol
    from neuralmd.sampling.kernel_widths import MAX_BIAS_OMEGA_DT, bias_omega_per_fs, integrable_sigma

    rng = np.random.default_rng(0)
    positions = rng.normal(size=(50, 3, 3)) * 2.0
    masses = np.array([12.0, 1.008, 16.0])
    cv = Distance(0, 2)
    sigma = 0.01  # Å
    spring = kT_kjmol(T) / sigma**2 * (1 / 12.0 + 1 / 16.0) * 1e26  # 1/s²
    assert bias_omega_per_fs(cv, positions, masses, [sigma], T) == pytest.approx(np.sqrt(spring) * 1e-15, rel=1e-9)
    with pytest.warns(UserWarning, match="kernel widths"):
        wider = integrable_sigma(cv, positions, masses, [sigma], T, timestep_fs=2.0)
    assert wider[0] > sigma
    assert bias_omega_per_fs(cv, positions, masses, wider, T) * 2.0 == pytest.approx(MAX_BIAS_OMEGA_DT, rel=1e-9)
    assert integrable_sigma(cv, positions, masses, [1.0], T, timestep_fs=2.0) == [1.0]
