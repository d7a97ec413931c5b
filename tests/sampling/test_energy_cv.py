"""The force-field energy as a CV and multithermal OPES on it (OpenMM, alanine dipeptide in vacuum)."""

from __future__ import annotations

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from neuralmd.config import load_config
from neuralmd.errors import InputError
from neuralmd.sampling.biases import OPESMultithermal
from neuralmd.sampling.colvar import read_colvar
from neuralmd.sampling.energy_cv import PotentialEnergy
from neuralmd.sampling.fes import kT_kjmol
from neuralmd.md.openmm_engine import OpenMMSettings
from neuralmd.sampling.bias_factory import BiasSettings, make_bias
from neuralmd.sampling.runs import start_openmm
from tests.conftest import shared_file

PDB = str(shared_file("alanine_dipeptide/ala2.pdb"))


def _system() -> tuple[openmm.System, np.ndarray]:
    pdb = app.PDBFile(PDB)
    system = app.ForceField("amber99sbildn.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                                              constraints=app.HBonds)
    return system, np.asarray(pdb.positions.value_in_unit(unit.angstrom))


def test_energy_cv_is_the_force_field_energy_with_its_gradient_and_openmm_twin():
    system, pos = _system()
    cv = PotentialEnergy()
    with pytest.raises(InputError, match="OpenMM runs"):
        cv(torch.as_tensor(pos).unsqueeze(0))  # unbound: no system to evaluate
    cv.bind(system)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    rng = np.random.default_rng(0)
    x = np.stack([pos, pos + rng.normal(0, 0.05, pos.shape)])
    xt = torch.tensor(x, requires_grad=True)
    values = cv(xt)
    for k in range(2):
        context.setPositions(x[k] / 10)
        e = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        assert float(values[k, 0].detach()) == pytest.approx(e, abs=1e-8)
    (grad,) = torch.autograd.grad(values.sum(), xt)
    h = 1e-5
    for atom, axis in [(1, 0), (6, 2), (14, 1)]:  # central differences of the CV itself (kJ/mol/Å)
        plus, minus = x.copy(), x.copy()
        plus[1, atom, axis] += h
        minus[1, atom, axis] -= h
        with torch.no_grad():
            fd = (cv(torch.as_tensor(plus))[1, 0] - cv(torch.as_tensor(minus))[1, 0]) / (2 * h)
        assert float(grad[1, atom, axis]) == pytest.approx(float(fd), rel=1e-5, abs=1e-4)
    # the OpenMM force that carries the CV into a grid bias has the same energy
    twin = openmm.System()
    for i in range(system.getNumParticles()):
        twin.addParticle(system.getParticleMass(i))
    twin.addForce(cv.openmm_force())
    twin_context = openmm.Context(twin, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    twin_context.setPositions(x[1] / 10)
    e_twin = twin_context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert e_twin == pytest.approx(float(values[1, 0].detach()), abs=1e-6)


def _mean_energy(colvar: dict, weights: np.ndarray, blocks: int = 8) -> tuple[float, float]:
    """Weighted mean energy and its block-average standard error."""
    u = colvar["energy"]
    means = [np.average(u[b], weights=weights[b]) for b in np.array_split(np.arange(len(u)), blocks)]
    return float(np.average(u, weights=weights)), float(np.std(means, ddof=1) / np.sqrt(blocks))


def test_multithermal_run_samples_both_ends_of_its_temperature_ladder(tmp_path):
    """One run at 300 K biased by multithermal OPES (300-500 K), reweighted to 300 K and to
    500 K, gives the mean energy of plain runs at those temperatures (within 4 standard
    errors); the bias only scales the force field's forces, by a factor in [T/Tmax, 1]."""
    t, tmax = 300.0, 500.0

    def settings(temperature: float, steps: int, seed: int) -> OpenMMSettings:
        return OpenMMSettings(pdb=PDB, temperature_K=temperature, timestep_fs=1.0, report_every=100,
                              checkpoint_every=10**9, total_steps=steps, seed=seed)

    plain = {}
    for temperature in (t, tmax):
        out = tmp_path / f"plain{temperature:.0f}"
        start_openmm(settings(temperature, 150_000, 1), BiasSettings(cv="energy", bias="none"), out).run()
        colvar = read_colvar(out / "colvar.csv")
        keep = colvar["step"] >= 20_000
        plain[temperature] = _mean_energy({"energy": colvar["energy"][keep]}, np.ones(keep.sum()))
    run = start_openmm(settings(t, 400_000, 2), BiasSettings(cv="energy", bias="opes-multithermal", tmax_K=tmax, pace=100),
                       tmp_path / "multi")
    run.run()
    bias = run.terms[0].bias
    assert isinstance(bias, OPESMultithermal) and len(bias.dbeta) >= 3
    colvar = read_colvar(tmp_path / "multi" / "colvar.csv")
    keep = colvar["step"] >= 50_000
    colvar = {k: v[keep] for k, v in colvar.items()}
    beta_v = colvar["bias_kjmol"] / kT_kjmol(t)
    for temperature in (t, tmax):
        dbeta = 1 / kT_kjmol(temperature) - 1 / kT_kjmol(t)
        log_w = beta_v - dbeta * colvar["energy"]
        mean, err = _mean_energy(colvar, np.exp(log_w - log_w.max()))
        ref, ref_err = plain[temperature]
        assert abs(mean - ref) < 4 * np.hypot(err, ref_err) + 1.0, (temperature, mean, err, ref, ref_err)
    assert plain[tmax][0] - plain[t][0] > 20  # the two ends differ by much more than the tolerance

    # forces: total = (1 + dV/dU) x force field, with the factor in [T/Tmax, 1]
    state = run.simulation.context.getState(getPositions=True, getForces=True)
    system, _ = _system()
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(state.getPositions())
    f_ff = context.getState(getForces=True).getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    f_all = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
    factor = float((f_all * f_ff).sum() / (f_ff * f_ff).sum())
    assert np.abs(f_all - factor * f_ff).max() < 1e-6 * np.abs(f_ff).max()
    assert t / tmax - 1e-3 <= factor <= 1 + 1e-3

    # the bias state round-trips (checkpoints); a bias with another ladder refuses it
    sigma = load_config(BiasSettings, tmp_path / "multi" / "sample.toml").sigma[0]
    same = OPESMultithermal(bias.cv, t, tmax, sigma, 100)
    same.set_state(bias.get_state())
    s = torch.linspace(-60, 80, 15, dtype=torch.float64).unsqueeze(-1)
    assert torch.allclose(same.energy_of_cv(s), bias.energy_of_cv(s))
    with pytest.raises(InputError, match="temperatures"):
        OPESMultithermal(bias.cv, t, 2 * tmax, sigma, 100).set_state(bias.get_state())


def test_energy_cv_refuses_kernel_biases_and_the_native_engine():
    cv = PotentialEnergy()
    with pytest.raises(InputError, match="opes-multithermal"):
        make_bias(BiasSettings(cv="energy", bias="opes"), cv, 300.0, [10.0])
    with pytest.raises(InputError, match="use --cv energy"):
        from neuralmd.sampling.cvs import Torsion

        make_bias(BiasSettings(cv="phi", bias="opes-multithermal"), Torsion(4, 6, 8, 14), 300.0, [0.3])
    with pytest.raises(InputError, match="tmax_K"):
        OPESMultithermal(cv, 300.0, 250.0, 10.0, 100)


def test_energy_cv_counts_degrees_of_freedom_and_their_equipartition_spread():
    """Alanine dipeptide with HBonds: 22 atoms, 12 constrained bonds, the centre of mass held:
    3·22 - 12 - 3 = 51 degrees of freedom; the harmonic potential energy fluctuates by
    √(51/2) k_BT, which is what the multithermal ladder and its grid are sized with (a probe of
    a few ps sees less)."""
    import math

    from neuralmd.sampling.energy_cv import PotentialEnergy
    from neuralmd.sampling.fes import kT_kjmol

    pdb = app.PDBFile(str(shared_file("alanine_dipeptide/ala2.pdb")))
    system = app.ForceField("amber99sbildn.xml").createSystem(pdb.topology, constraints=app.HBonds)
    cv = PotentialEnergy()
    cv.bind(system)
    assert cv.degrees_of_freedom == 51
    assert cv.equipartition_std_kjmol(300.0) == pytest.approx(math.sqrt(25.5) * kT_kjmol(300.0))
    free = app.ForceField("amber99sbildn.xml").createSystem(pdb.topology, constraints=None, removeCMMotion=False)
    cv.bind(free)
    assert cv.degrees_of_freedom == 66
