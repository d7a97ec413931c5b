"""Extrapolation test sets of rMD17 ethanol and 3BPA, and the metrics the force-field benchmark
reports on them (``forcefield_rmd17.py``, ``extrapolation_sweep.py``).

Every model is reached through one function, ``predict(frames, forces) -> (energies eV (n,),
forces eV/Å (n_atoms_total, 3) or None)``, so neuralmd's networks and MACE are measured by the
same code. Sets, by file stem:

- ``test_MD`` (ethanol, in distribution) and ``3bpa_300K_test`` / ``3bpa_mixedT`` (3BPA at 300 K
  and at 300/600/1200 K): energy and force errors; 3BPA also against the distance of each frame's
  torsions (``dihedrals`` info key) from the nearest training frame's.
- ``test_norm_mode_874`` / ``test_norm_mode_3005``: energy scans along two normal modes (profile
  error aligned at the first frame, barrier = highest minus lowest energy, curvature at the
  minimum from a parabola through |displacement| <= 0.3).
- ``test_H_removal``: the hydroxyl H pulled off: from the reference minimum (the equilibrium O-H
  distance, so the profile is aligned there) out to where the DFT curve flattens (the first
  O-H distance at which the reference has risen by 95 % of its final rise); the compressed
  frames before the minimum are reported apart (``compressed_*``: aligned at the minimum too).
- ``test_dimers``: two-atom dissociation curves (HH, HC, HO, CC, CO, OO) aligned at the largest
  separation; the short-range sign is the fraction of frames on the repulsive wall (reference
  above its separated limit, at distances below the reference minimum) predicted above it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
from ase import Atoms

from neuralmd.analysis.scan import scan_profiles
from neuralmd.data import FrameDataset, read_frames
from neuralmd.models.base import Potential
from neuralmd.training.metrics import Predictions, error_metrics, predict

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ETHANOL = DATA / "rmd17_ethanol"
BPA = DATA / "3bpa"

Predict = Callable[[list[Atoms], bool], tuple[np.ndarray, np.ndarray | None]]

ETHANOL_SCANS = {"test_norm_mode_874": "displacement", "test_norm_mode_3005": "displacement",
                 "test_H_removal": "OH_dist"}


def ethanol_sets(test_md_frames: int | None = None) -> dict[str, list[Atoms]]:
    """The ethanol test sets by file stem (``test_md_frames``: only the first frames of test_MD)."""
    sets = {"test_MD": read_frames(ETHANOL / "test_MD.xyz")[:test_md_frames]}
    for stem in (*ETHANOL_SCANS, "test_dimers"):
        sets[stem] = read_frames(ETHANOL / f"{stem}.xyz", require_labels=False)
    return sets


def bpa_split(n_train: int = 400) -> tuple[list[Atoms], list[Atoms], list[Atoms]]:
    """3BPA: the first ``n_train`` frames of train_300K.xyz to train on, its other frames to
    test at 300 K, and all of train_mixedT.xyz (300/600/1200 K) as the transfer test."""
    frames = read_frames(BPA / "train_300K.xyz")
    return frames[:n_train], frames[n_train:], read_frames(BPA / "train_mixedT.xyz")


def neuralmd_predictor(model: Potential) -> Predict:
    """``predict(frames, forces)`` of a neuralmd potential (through
    :func:`neuralmd.training.metrics.predict`, which computes forces where the frames have them)."""
    def run(frames: list[Atoms], forces: bool) -> tuple[np.ndarray, np.ndarray | None]:
        p = predict(model, FrameDataset(frames))
        return p.energy_pred, (p.forces_pred.reshape(-1, 3) if forces else None)
    return run


def labelled_metrics(frames: list[Atoms], energies: np.ndarray, forces: np.ndarray | None) -> dict[str, float]:
    """neuralmd's error metrics (:func:`neuralmd.training.metrics.error_metrics`: energy MAE/RMSE
    per structure and per atom in meV, force components in meV/Å) of any model's predictions."""
    ref = np.array([a.info["energy"] for a in frames])
    n = np.array([len(a) for a in frames])
    forces_true = np.concatenate([a.arrays["forces"] for a in frames]).ravel() if forces is not None else None
    return error_metrics(Predictions(ref, energies, n, forces_true, None if forces is None else forces.ravel()))


def scan_metrics(stem: str, frames: list[Atoms], energies: np.ndarray) -> dict[str, float]:
    """Profile error and barriers of one ethanol scan set (see the module docstring)."""
    key = ETHANOL_SCANS[stem]
    coordinate = np.array([a.info[key] for a in frames])
    ref = np.array([a.info["energy"] for a in frames])
    keep = np.ones(len(frames), bool)
    if stem == "test_H_removal":
        order = np.argsort(coordinate)
        frames, energies, coordinate, ref = [frames[k] for k in order], energies[order], coordinate[order], ref[order]
        rise = ref - ref.min()
        start = coordinate[np.argmin(ref)]
        flat = coordinate[(coordinate > start) & (rise >= 0.95 * rise[-1])].min()
        keep = (coordinate >= start) & (coordinate <= flat)
    (profile,) = scan_profiles([f for f, k in zip(frames, keep) if k], energies[keep], key, source=stem)
    out = profile.metrics()
    if stem == "test_H_removal":
        out.update(from_A=float(start), flat_from_A=float(flat))
        inside = coordinate <= start
        (compressed,) = scan_profiles([f for f, k in zip(frames[::-1], inside[::-1]) if k],
                                      energies[::-1][inside[::-1]], key, source=stem)
        out.update({f"compressed_{k}": v for k, v in compressed.metrics().items()})
    else:
        near = np.abs(profile.coordinate) <= 0.3 + 1e-9
        curv_ref = np.polyfit(profile.coordinate[near], profile.reference[near], 2)[0]
        curv_pred = np.polyfit(profile.coordinate[near], profile.predicted[near], 2)[0]
        out.update(curvature_ref_ev=float(2 * curv_ref), curvature_pred_ev=float(2 * curv_pred),
                   curvature_ratio=float(curv_pred / curv_ref))
    return out


def dimer_metrics(frames: list[Atoms], energies: np.ndarray) -> dict[str, object]:
    """Per element pair: profile error aligned at the largest separation, barrier, and the
    fraction of repulsive-wall frames predicted repulsive; plus the same pooled."""
    pairs: dict[str, dict[str, float]] = {}
    wall_total, wall_right, errors = 0, 0, []
    types = np.array([a.info["config_type"] for a in frames])
    dist = np.array([a.info["distance"] for a in frames])
    ref = np.array([a.info["energy"] for a in frames])
    for name in dict.fromkeys(types):
        idx = np.flatnonzero(types == name)
        far = idx[np.argmax(dist[idx])]
        r, e_ref, e_pred = dist[idx], ref[idx] - ref[far], energies[idx] - energies[far]
        wall = (e_ref > 0) & (r < r[np.argmin(e_ref)])
        err = (e_pred - e_ref) * 1000
        errors.append(err)
        wall_total += int(wall.sum())
        wall_right += int((e_pred[wall] > 0).sum())
        pairs[name] = {"frames": len(idx), "energy_profile_mae_mev": float(np.abs(err).mean()),
                       "barrier_ref_mev": float(np.ptp(e_ref) * 1000), "barrier_pred_mev": float(np.ptp(e_pred) * 1000),
                       "repulsive_wall_frames": int(wall.sum()),
                       "repulsive_sign_fraction": float((e_pred[wall] > 0).mean()) if wall.any() else None}
    err = np.concatenate(errors)
    return {"frames": len(frames), "energy_profile_mae_mev": float(np.abs(err).mean()),
            "repulsive_sign_fraction": wall_right / max(wall_total, 1), "pairs": pairs}


def torsion_distance(frames: list[Atoms], reference: list[Atoms]) -> np.ndarray:
    """Per frame, the smallest distance (degrees, periodic per angle, Euclidean over the three
    torsions of 3BPA's ``dihedrals`` key) to any frame of ``reference``."""
    a, b = (np.array([f.info["dihedrals"] for f in fs], dtype=float) for fs in (frames, reference))
    d = np.abs(a[:, None, :] - b[None, :, :]) % 360.0
    d = np.minimum(d, 360.0 - d)
    return np.sqrt((d**2).sum(-1)).min(1)


def torsion_binned_errors(frames: list[Atoms], forces_pred: np.ndarray, distance: np.ndarray,
                          edges: tuple[float, ...] = (0, 10, 20, 40, 80, 360)) -> list[dict[str, float]]:
    """Force MAE (meV/Å) of frames binned by their torsion distance from the training set."""
    per_frame, start = [], 0
    for atoms in frames:
        n = len(atoms)
        per_frame.append(np.abs(forces_pred[start:start + n] - atoms.arrays["forces"]).mean() * 1000)
        start += n
    per_frame = np.array(per_frame)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (distance >= lo) & (distance < hi)
        if sel.any():
            out.append({"torsion_distance_deg": [lo, hi], "frames": int(sel.sum()),
                        "force_mae_mev_per_A": float(per_frame[sel].mean())})
    return out


def evaluate_ethanol(predict: Predict, sets: dict[str, list[Atoms]]) -> dict[str, dict]:
    """Every ethanol set's metrics for one model."""
    out: dict[str, dict] = {}
    for stem, frames in sets.items():
        has_forces = "forces" in frames[0].arrays
        energies, forces = predict(frames, has_forces)
        if stem == "test_MD":
            out[stem] = labelled_metrics(frames, energies, forces)
        elif stem == "test_dimers":
            out[stem] = dimer_metrics(frames, energies)
        else:
            out[stem] = scan_metrics(stem, frames, energies)
    return out


def evaluate_bpa(predict: Predict, train: list[Atoms], test: list[Atoms], mixed: list[Atoms]) -> dict[str, dict]:
    """3BPA test metrics at 300 K and on the mixed-temperature transfer set, the latter also
    binned by torsion distance from the training frames."""
    out = {}
    for stem, frames in (("3bpa_300K_test", test), ("3bpa_mixedT", mixed)):
        energies, forces = predict(frames, True)
        out[stem] = labelled_metrics(frames, energies, forces)
        out[stem]["by_torsion_distance"] = torsion_binned_errors(frames, forces, torsion_distance(frames, train))
    return out
