"""Errors of a potential on labelled frames: MAE/RMSE per property and parity data."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.dataset import FrameDataset, composition_matrix, virial_per_atom
from ..models.base import Potential


@dataclass
class Predictions:
    """Reference and predicted energies (eV, per structure), atom counts and force components
    (eV/Å, flattened; None for frames labelled with energies only)."""

    energy_true: np.ndarray
    energy_pred: np.ndarray
    n_atoms: np.ndarray
    forces_true: np.ndarray | None
    forces_pred: np.ndarray | None
    #: virial per atom V σ / N (eV, 9 components per frame, flattened) of the frames with a stress
    virial_true: np.ndarray | None = None
    virial_pred: np.ndarray | None = None


def predict(model: Potential, data: FrameDataset, batch_size: int = 32) -> Predictions:
    """Run ``model`` over ``data`` (no parameter gradients kept); forces only if every frame
    carries them (InputError if only some do), the stress only where frames carry one."""
    with_forces = data.has_forces()
    e_t, e_p, n, f_t, f_p, v_t, v_p = [], [], [], [], [], [], []
    for batch in data.batches(batch_size, dtype=model.dtype):
        with_stress = batch.has_stress is not None
        out = model(batch.atoms, forces=with_forces, stress=with_stress)
        e_t.append(batch.energy.numpy())
        e_p.append(out["energy"].detach().numpy())
        n.append(batch.atoms.counts.numpy())
        if with_forces:
            f_t.append(batch.forces.double().numpy().ravel())
            f_p.append(out["forces"].detach().double().numpy().ravel())
        if with_stress:
            mask = batch.has_stress
            v_t.append(virial_per_atom(batch.stress, batch.atoms)[mask].numpy().ravel())
            v_p.append(virial_per_atom(out["stress"].detach(), batch.atoms)[mask].numpy().ravel())
    forces = (np.concatenate(f_t), np.concatenate(f_p)) if with_forces else (None, None)
    virial = (np.concatenate(v_t), np.concatenate(v_p)) if v_t else (None, None)
    return Predictions(*(np.concatenate(x) for x in (e_t, e_p, n)), *forces, *virial)


def error_metrics(p: Predictions) -> dict[str, float]:
    """MAE and RMSE: energy per structure and per atom (meV), force components (meV/Å; no force
    keys where ``p`` has no forces), virial per atom (meV; only where ``p`` has virials)."""
    de = p.energy_pred - p.energy_true
    de_atom = de / p.n_atoms
    mae = lambda x: float(np.mean(np.abs(x)) * 1000)  # noqa: E731
    rmse = lambda x: float(np.sqrt(np.mean(x**2)) * 1000)  # noqa: E731
    return {
        "energy_mae_mev": mae(de),
        "energy_rmse_mev": rmse(de),
        "energy_mae_mev_per_atom": mae(de_atom),
        "energy_rmse_mev_per_atom": rmse(de_atom),
        **({} if p.forces_true is None else {"force_mae_mev_per_A": mae(p.forces_pred - p.forces_true),
                                             "force_rmse_mev_per_A": rmse(p.forces_pred - p.forces_true)}),
        "frames": int(len(de)),
        **({} if p.virial_true is None else {"virial_mae_mev_per_atom": mae(p.virial_pred - p.virial_true),
                                             "virial_rmse_mev_per_atom": rmse(p.virial_pred - p.virial_true)}),
    }


def evaluate(model: Potential, data: FrameDataset, batch_size: int = 32) -> tuple[dict[str, float], Predictions]:
    """Metrics and parity data of ``model`` on ``data``."""
    preds = predict(model, data, batch_size)
    return error_metrics(preds), preds


def baseline_metrics(train: FrameDataset, data: FrameDataset, elements: list[int], e0: np.ndarray) -> dict[str, float]:
    """Errors of the trivial model: per-element reference energies and zero forces."""
    energy_true = np.array([a.info["energy"] for a in data.frames])
    counts = composition_matrix(data.frames, elements)
    forces = np.concatenate([a.arrays["forces"].ravel() for a in data.frames])
    shift = train.mean_residual_per_atom(elements, e0)
    pred = Predictions(energy_true, counts @ e0 + shift * counts.sum(1), counts.sum(1), forces, np.zeros_like(forces))
    return error_metrics(pred)

