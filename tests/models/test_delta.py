"""Δ-learning: GFN2-xTB baseline + learned correction, an exact-gradient Potential."""

from __future__ import annotations

import json

import numpy as np
import torch
from ase.build import molecule
from typer.testing import CliRunner

from neuralmd.cli import app
from neuralmd.data.io import read_frames, write_frames
from neuralmd.models import NeuralPotential
from neuralmd.models.delta import DeltaPotential, XTBBaseline
from neuralmd.models.neural import load_potential
from neuralmd.reference.xtb import XTBLabeler
from neuralmd.state import AtomsBatch


def _ethanol():
    atoms = molecule("CH3CH2OH")
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def test_delta_forces_are_minus_the_gradient_of_its_energy(float64_model):
    delta = DeltaPotential(XTBBaseline(), float64_model)
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
    out = DeltaPotential(XTBBaseline(), correction)(AtomsBatch.from_atoms([atoms, atoms], dtype=torch.float64))
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
