"""The MM → ML/MM correction: U(λ=0) is the force field exactly, and a "neural" guest potential
that is the force field's own guest-internal energy plus a constant c gives ΔA = c in both states
and ΔΔG = 0 (identical windows: full overlap); the windows are stored and reused."""

from __future__ import annotations

import json

import numpy as np
import openmm
import pytest
import torch
from openmm import app, unit

from neuralmd.binding.correction import lambda_force, mlmm_correction
from neuralmd.binding.mlmm import remove_guest_internal
from neuralmd.binding.runs import build_settings
from neuralmd.errors import InputError
from neuralmd.md.openmm_engine import OpenMMSettings
from neuralmd.models.base import Potential
from neuralmd.units import EV_IN_KJMOL, NM_IN_A
from tests.binding.cb7 import CB7, cb7_complex

OFFSET_EV = -123.4


class _LigandEnergy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, positions, context):
        context.setPositions(positions.detach().numpy() / NM_IN_A)
        state = context.getState(getEnergy=True, getForces=True)
        forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.angstrom)
        ctx.save_for_backward(torch.as_tensor(np.asarray(forces) / EV_IN_KJMOL))
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_IN_KJMOL
        return torch.tensor(energy, dtype=torch.float64)

    @staticmethod
    def backward(ctx, grad):
        (forces,) = ctx.saved_tensors
        return -grad * forces, None


class ForceFieldGuest(Potential):
    """B2's own GAFF energy in vacuum (its ligand.prmtop, through OpenMM) plus a constant; with
    the X-H bonds constrained as the complex is (a constrained bond has no bond term)."""

    _context = None

    @property
    def context(self) -> openmm.Context:  # built on first use: pickled copies (inside OpenMM) build their own
        if self._context is None:
            system = app.AmberPrmtopFile(str(CB7 / "ligand.prmtop")).createSystem(nonbondedMethod=app.NoCutoff,
                                                                                   constraints=app.HBonds)
            self._context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                                           openmm.Platform.getPlatformByName("Reference"))
        return self._context

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_context": None}

    def atomic_energies(self, batch):
        energy = _LigandEnergy.apply(batch.positions, self.context) + OFFSET_EV
        return torch.cat([energy.view(1), torch.zeros(batch.n_atoms - 1, dtype=torch.float64)])


@pytest.fixture(scope="module")
def cb7():
    parts, spec = cb7_complex()
    return parts, build_settings(parts, spec, "axial")


def test_lambda_zero_is_the_force_field_and_lambda_one_the_potential(cb7):
    parts, settings = cb7
    potential = ForceFieldGuest()
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(parts.system))
    remove_guest_internal(system, settings.guest)
    mix = lambda_force(parts.system, settings.guest, parts.numbers, potential)
    system.addForce(mix)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    reference = openmm.Context(openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(parts.system)),
                               openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    for c in (context, reference):
        c.setPositions(parts.positions)
    energy = lambda c: c.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)  # noqa: E731
    assert energy(context) == pytest.approx(energy(reference), abs=1e-6)
    context.setParameter("lambda", 1.0)  # the ML guest = the force field's guest + c
    assert energy(context) == pytest.approx(energy(reference) + OFFSET_EV * EV_IN_KJMOL, abs=1e-6)


def test_a_constant_difference_gives_that_constant_in_both_states_and_no_correction(cb7, tmp_path):
    parts, settings = cb7
    engine = OpenMMSettings(pdb="", forcefield=[], temperature_K=300.0, timestep_fs=2.0, platform="Reference")
    out = mlmm_correction(parts, settings, engine, ForceFieldGuest(), tmp_path, ps_per_window=1.0,
                          lambdas=(0.0, 0.5, 1.0), every_steps=25)
    for state in ("bound", "unbound"):
        assert out["states"][state]["dA_kjmol"] == pytest.approx(OFFSET_EV * EV_IN_KJMOL, abs=1e-4)
    assert out["ddG_kjmol"] == pytest.approx(0.0, abs=1e-4) and out["min_neighbour_overlap"] > 0.3
    assert json.loads((tmp_path / "correction.json").read_text())["ddG_kjmol"] == out["ddG_kjmol"]
    assert len(list((tmp_path / "windows").glob("*.npz"))) == 6
    again = mlmm_correction(parts, settings, engine, ForceFieldGuest(), tmp_path, ps_per_window=1.0,
                            lambdas=(0.0, 0.5, 1.0), every_steps=25)  # every window reused
    assert again["ddG_kjmol"] == out["ddG_kjmol"]


class ExplodingGuest(Potential):
    """A guest whose atoms repel their centroid with a -1e3 eV/Å² spring: no MD survives it."""

    def atomic_energies(self, batch):
        x = batch.positions
        return -0.5e3 * (x - x.mean(0)).pow(2).sum(-1)


@pytest.mark.parametrize("platform", ["CPU", "Reference"])  # OpenMM checks for NaN on the CPU, not on Reference
def test_a_window_that_blows_up_is_a_clear_error_and_the_windows_before_it_are_kept(cb7, tmp_path, platform):
    parts, settings = cb7
    engine = OpenMMSettings(pdb="", forcefield=[], temperature_K=300.0, timestep_fs=2.0, platform=platform)
    with pytest.raises(InputError, match="bound state's λ = 1 window blew up"):
        mlmm_correction(parts, settings, engine, ExplodingGuest(), tmp_path, ps_per_window=0.2,
                        lambdas=(0.0, 1.0), every_steps=10)
    assert [p.name for p in (tmp_path / "windows").glob("*.npz")] == ["bound_0.npz"]
    assert not (tmp_path / "correction.json").exists()
