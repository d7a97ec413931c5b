"""Error metrics: MAE/RMSE per structure, per atom and per force component, and evaluation of
a model on labelled frames."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from ase.build import molecule

from neuralmd.data.dataset import FrameDataset, composition_matrix
from neuralmd.errors import InputError
from neuralmd.state import AtomsBatch
from neuralmd.training.metrics import (
    Predictions,
    baseline_metrics,
    error_metrics,
    evaluate,
)


def test_error_metrics_against_numpy_in_mev():
    rng = np.random.default_rng(0)
    n_atoms = np.array([3, 9, 5, 12])
    e_true = rng.normal(size=4) * 10
    e_pred = e_true + rng.normal(size=4) * 0.05
    f_true = rng.normal(size=3 * n_atoms.sum())
    f_pred = f_true + rng.standard_t(3, size=f_true.shape) * 0.02  # heavy tails: MAE and RMSE differ
    m = error_metrics(Predictions(e_true, e_pred, n_atoms, f_true, f_pred))

    de, df = e_pred - e_true, f_pred - f_true
    assert m["frames"] == 4
    assert m["energy_mae_mev"] == pytest.approx(1000 * np.abs(de).mean(), rel=1e-12)
    assert m["energy_rmse_mev"] == pytest.approx(1000 * np.sqrt((de**2).mean()), rel=1e-12)
    assert m["energy_mae_mev_per_atom"] == pytest.approx(1000 * np.abs(de / n_atoms).mean(), rel=1e-12)
    assert m["energy_rmse_mev_per_atom"] == pytest.approx(1000 * np.sqrt(((de / n_atoms) ** 2).mean()), rel=1e-12)
    assert m["force_mae_mev_per_A"] == pytest.approx(1000 * np.abs(df).mean(), rel=1e-12)
    assert m["force_rmse_mev_per_A"] == pytest.approx(1000 * np.sqrt((df**2).mean()), rel=1e-12)
    assert m["force_rmse_mev_per_A"] > m["force_mae_mev_per_A"]  # RMSE ≥ MAE, strictly for unequal errors


def test_error_metrics_of_a_constant_error_by_hand():
    """Every energy 20 meV too high and every force component off by ±5 meV/Å."""
    n_atoms = np.array([2, 4])
    e_true = np.array([-1.0, -3.0])
    f_true = np.zeros(18)
    f_pred = np.tile([0.005, -0.005], 9)
    m = error_metrics(Predictions(e_true, e_true + 0.02, n_atoms, f_true, f_pred))
    assert m["energy_mae_mev"] == pytest.approx(20.0) and m["energy_rmse_mev"] == pytest.approx(20.0)
    assert m["energy_mae_mev_per_atom"] == pytest.approx((10.0 + 5.0) / 2)
    assert m["energy_rmse_mev_per_atom"] == pytest.approx(np.sqrt((10.0**2 + 5.0**2) / 2))
    assert m["force_mae_mev_per_A"] == pytest.approx(5.0) and m["force_rmse_mev_per_A"] == pytest.approx(5.0)


def _frames(n: int = 5):
    rng = np.random.default_rng(1)
    frames = []
    for k in range(n):
        atoms = molecule("CH3CH2OH" if k % 2 else "H2O")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        frames.append(atoms)
    return frames


def _self_labelled(model, frames, energy_offset=0.0, force_offset=0.0):
    """Frames labelled with ``model``'s own predictions plus constant offsets (eV, eV/Å)."""
    out = model(AtomsBatch.from_atoms(frames))
    energies, forces = out["energy"].detach().numpy(), out["forces"].detach().numpy()
    starts = np.cumsum([0] + [len(a) for a in frames])
    labelled = []
    for b, atoms in enumerate(frames):
        atoms = atoms.copy()
        atoms.info["energy"] = float(energies[b]) + energy_offset
        atoms.arrays["forces"] = forces[starts[b] : starts[b + 1]] + force_offset
        labelled.append(atoms)
    return labelled


def test_evaluate_on_the_models_own_predictions_gives_zero_error(float64_model):
    frames = _self_labelled(float64_model, _frames())
    metrics, preds = evaluate(float64_model, FrameDataset(frames), batch_size=2)
    assert metrics["frames"] == 5
    for key, value in metrics.items():
        if key != "frames":
            assert value == pytest.approx(0.0, abs=1e-6), key
    np.testing.assert_array_equal(preds.n_atoms, [len(a) for a in frames])
    np.testing.assert_array_equal(preds.energy_true, [a.info["energy"] for a in frames])  # file order kept
    np.testing.assert_array_equal(preds.forces_true, np.concatenate([a.arrays["forces"].ravel() for a in frames]))


def test_evaluate_sees_known_offsets_whatever_the_batch_size(float64_model):
    """Labels 0.1 eV above and forces 0.03 eV/Å off the model: energy MAE 100 meV, per-atom
    100/n meV, force MAE = RMSE = 30 meV/Å."""
    frames = _self_labelled(float64_model, _frames(), energy_offset=0.1, force_offset=-0.03)
    sizes = np.array([len(a) for a in frames])
    for batch_size in (1, 3, 32):
        m, _ = evaluate(float64_model, FrameDataset(frames), batch_size=batch_size)
        assert m["energy_mae_mev"] == pytest.approx(100.0, abs=1e-5)
        assert m["energy_rmse_mev"] == pytest.approx(100.0, abs=1e-5)
        assert m["energy_mae_mev_per_atom"] == pytest.approx(np.mean(100.0 / sizes), abs=1e-5)
        assert m["force_mae_mev_per_A"] == pytest.approx(30.0, abs=1e-5)
        assert m["force_rmse_mev_per_A"] == pytest.approx(30.0, abs=1e-5)


def test_energy_only_frames_give_energy_errors_and_no_force_keys(float64_model):
    """Labels 0.1 eV above the model, no forces: energy MAE 100 meV, forces absent (not NaN)."""
    frames = _self_labelled(float64_model, _frames(), energy_offset=0.1)
    for atoms in frames:
        del atoms.arrays["forces"]
    m, preds = evaluate(float64_model, FrameDataset(frames), batch_size=2)
    assert preds.forces_true is None and preds.forces_pred is None
    assert m["energy_mae_mev"] == pytest.approx(100.0, abs=1e-5) and m["frames"] == 5
    assert not [key for key in m if key.startswith("force")]


def test_forces_on_only_some_frames_are_an_input_error_naming_the_frame(float64_model):
    frames = _self_labelled(float64_model, _frames())
    del frames[3].arrays["forces"]
    with pytest.raises(InputError, match="frame 3: field 'forces': missing while other frames"):
        evaluate(float64_model, FrameDataset(frames), batch_size=2)


def test_evaluate_runs_a_float32_model_in_float32(float64_model):
    frames = _self_labelled(float64_model, _frames(3))
    model32 = copy.deepcopy(float64_model).float()
    assert model32.dtype == torch.float32
    m, preds = evaluate(model32, FrameDataset(frames))
    assert 0 < m["force_mae_mev_per_A"] < 1e-2  # float32 rounding only, but not float64 exactness
    assert preds.energy_pred.dtype == np.float64  # energies accumulated in float64


def test_baseline_is_reference_energies_and_zero_forces():
    """Frames whose energies are exactly linear in composition: with those per-element energies
    the baseline's energy error is 0, and its force error is the size of the forces."""
    frames = _frames(6)
    elements = [1, 6, 8]
    e0 = np.array([-13.6, -1025.0, -2035.0])
    rng = np.random.default_rng(2)
    for atoms in frames:
        atoms.info["energy"] = float(composition_matrix([atoms], elements)[0] @ e0)
        atoms.arrays["forces"] = rng.normal(size=(len(atoms), 3))
    data = FrameDataset(frames)
    m = baseline_metrics(data, data, elements, e0)
    forces = np.concatenate([a.arrays["forces"].ravel() for a in frames])
    assert m["energy_mae_mev"] == pytest.approx(0.0, abs=1e-6)
    assert m["force_mae_mev_per_A"] == pytest.approx(1000 * np.abs(forces).mean(), rel=1e-12)
    assert m["force_rmse_mev_per_A"] == pytest.approx(1000 * np.sqrt((forces**2).mean()), rel=1e-12)
    # a per-atom shift of 1 meV in the training energies moves every prediction by 1 meV per atom
    shifted = [a.copy() for a in frames]
    for a in shifted:
        a.info["energy"] += 0.001 * len(a)
    m2 = baseline_metrics(FrameDataset(shifted), data, elements, e0)
    assert m2["energy_mae_mev_per_atom"] == pytest.approx(1.0, abs=1e-6)
