"""Δ-learning: GFN2-xTB baseline + learned correction, an exact-gradient Potential."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase.build import molecule
from typer.testing import CliRunner

from neuralmd.cli import app
from neuralmd.data.io import read_frames, write_frames
from neuralmd.models import NeuralPotential
from neuralmd.models.delta import DeltaPotential
from neuralmd.models.neural import load_potential
from neuralmd.reference.xtb import XTBLabeler
from neuralmd.state import AtomsBatch
from neuralmd.units import KJMOL

from ..conftest import shared_file


def _ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def test_delta_forces_are_minus_the_gradient_of_its_energy(any_float64_model):
    delta = DeltaPotential(XTBLabeler(), any_float64_model)
    atoms = _ethanol()
    out = delta(AtomsBatch.from_atoms([atoms], dtype=torch.float64))
    h = 1e-3
    for atom, axis in [(0, 0), (2, 1), (5, 2), (8, 0)]:
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * h
            energies.append(float(delta(AtomsBatch.from_atoms([moved], dtype=torch.float64), forces=False)["energy"][0]))
        fd = -(energies[0] - energies[1]) / (2 * h)
        assert abs(fd - float(out["forces"][atom, axis])) < 2e-3, (atom, axis, fd)


def test_delta_with_zero_correction_is_the_baseline():
    correction = NeuralPotential([1, 6, 8], e0=[0.0, 0.0, 0.0], scale=1.0, shift=0.0, features=8, interactions=1,
                                 cutoff=4.0, num_basis=4).double()
    with torch.no_grad():
        for p in correction.parameters():
            p.zero_()
    atoms = _ethanol()
    out = DeltaPotential(XTBLabeler(), correction)(AtomsBatch.from_atoms([atoms, atoms], dtype=torch.float64))
    ref = XTBLabeler().label_one(atoms)
    assert np.allclose(out["energy"].detach().numpy(), ref.info["energy"], atol=1e-8)
    assert np.allclose(out["forces"].detach().numpy()[:9], ref.arrays["forces"], atol=1e-6)


def test_train_with_an_xtb_baseline_beats_the_baseline_alone(tmp_path, ethanol_xyz):
    frames = read_frames(ethanol_xyz)
    write_frames(frames[:150], tmp_path / "train.xyz")
    write_frames(frames[900:960], tmp_path / "test.xyz")
    runner = CliRunner()
    result = runner.invoke(app, ["train", "--train", str(tmp_path / "train.xyz"), "--baseline", "xtb", "--features",
                                 "16", "--interactions", "2", "--max-steps", "300", "--eval-every", "100",
                                 "--batch-size", "8", "--lr", "3e-3", "--threads", "2", "-o", str(tmp_path / "run")],
                           catch_exceptions=False)
    assert result.exit_code == 0, result.output
    model = load_potential(tmp_path / "run" / "model.pt")
    assert isinstance(model, DeltaPotential)
    result = runner.invoke(app, ["eval", str(tmp_path / "run" / "model.pt"), str(tmp_path / "test.xyz"), "--json"],
                           catch_exceptions=False)
    delta_mae = json.loads(result.stdout[result.stdout.index("{"):])["force_mae_mev_per_A"]
    test = read_frames(tmp_path / "test.xyz")
    xtb = XTBLabeler().label(test)
    base_mae = 1000 * np.mean([np.abs(a.arrays["forces"] - b.arrays["forces"]).mean()
                               for a, b in zip(test, xtb.frames)])
    assert delta_mae < 0.7 * base_mae, (delta_mae, base_mae)


def _ala2_frames(n: int, seed: int = 0) -> list:
    from ase import Atoms
    from openmm import app, unit

    pdb = app.PDBFile(str(shared_file("alanine_dipeptide/ala2.pdb")))  # no element column: OpenMM reads it
    atoms = Atoms(numbers=[a.element.atomic_number for a in pdb.topology.atoms()],
                  positions=pdb.getPositions(asNumpy=True).value_in_unit(unit.angstrom))
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        moved = atoms.copy()
        moved.positions += rng.normal(scale=0.04, size=moved.positions.shape)
        frames.append(moved)
    return frames


def test_openmm_baseline_matches_openmm_and_its_own_finite_differences():
    """amber99sb-ildn through OpenMM as a labeler: energy equals OpenMM's own, forces are minus
    the gradient of that energy."""
    import openmm
    from openmm import app, unit

    from neuralmd.reference.openmm_ff import OpenMMLabeler

    pdb_path = shared_file("alanine_dipeptide/ala2.pdb")
    labeler = OpenMMLabeler.from_file(pdb_path)
    atoms = _ala2_frames(1)[0]
    energy, forces = labeler.compute(atoms)
    pdb = app.PDBFile(str(pdb_path))
    system = app.ForceField("amber99sbildn.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                                              constraints=None)
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(atoms.positions * unit.angstrom)
    direct = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
    assert energy == pytest.approx(direct * KJMOL, rel=1e-12)
    h = 1e-4
    for atom, axis in [(0, 0), (4, 1), (10, 2)]:
        moved = [atoms.copy(), atoms.copy()]
        moved[0].positions[atom, axis] += h
        moved[1].positions[atom, axis] -= h
        fd = -(labeler.compute(moved[0])[0] - labeler.compute(moved[1])[0]) / (2 * h)
        assert fd == pytest.approx(forces[atom, axis], rel=1e-4, abs=1e-5)


def test_delta_on_an_openmm_baseline_trains_and_is_a_potential(tmp_path):
    """Δ-learning on a classical force field: xTB labels minus amber99sb-ildn; the model file
    carries the force field (it loads with the PDB gone), zero correction is the baseline, and
    its forces are the gradient of its energy."""
    from neuralmd.reference.openmm_ff import OpenMMLabeler

    frames = XTBLabeler().label(_ala2_frames(24)).frames
    write_frames(frames, tmp_path / "train.xyz")
    pdb = tmp_path / "ala2.pdb"
    pdb.write_text(shared_file("alanine_dipeptide/ala2.pdb").read_text())
    result = CliRunner().invoke(app, ["train", "--train", str(tmp_path / "train.xyz"), "--baseline", f"openmm:{pdb}",
                                      "--features", "8", "--interactions", "1", "--max-steps", "20", "--eval-every",
                                      "10", "--batch-size", "4", "--threads", "2", "-o", str(tmp_path / "run")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    pdb.unlink()
    model = load_potential(tmp_path / "run" / "model.pt", dtype=torch.float64)
    assert isinstance(model, DeltaPotential) and isinstance(model.baseline, OpenMMLabeler)
    atoms = frames[0]
    out = {k: v.detach() for k, v in model(AtomsBatch.from_atoms([atoms], dtype=torch.float64)).items()}
    correction = {k: v.detach() for k, v in model.correction(AtomsBatch.from_atoms([atoms], dtype=torch.float64)).items()}
    e_base, f_base = model.baseline.compute(atoms)
    assert float(out["energy"][0]) == pytest.approx(e_base + float(correction["energy"][0]), abs=1e-8)
    assert np.allclose(out["forces"].numpy(), f_base + correction["forces"].numpy(), atol=1e-8)
    h = 1e-4
    moved = [atoms.copy(), atoms.copy()]
    moved[0].positions[3, 1] += h
    moved[1].positions[3, 1] -= h
    e = [float(model(AtomsBatch.from_atoms([m], dtype=torch.float64), forces=False)["energy"][0]) for m in moved]
    assert -(e[0] - e[1]) / (2 * h) == pytest.approx(float(out["forces"][3, 1]), rel=1e-4, abs=1e-5)
