"""``neuralmd cv train``: a learned CV from the trajectories of runs, exported with its
descriptor definition, training history and descriptor relevance.

Deep-TICA uses each run's frames in time order (pairs never straddle two runs or replicas)
and reweights biased frames by exp(βV); Deep-LDA takes each run as one labelled state; the
autoencoder pools all frames.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..io_utils import atomic_write_json
from .cvs import PairwiseDistances
from .learned import LearnedCV, train_autoencoder, train_deep_lda, train_deep_tica
from ..rundir import md_settings, refuse_existing
from .samples import load_samples
from .spec import descriptor_atoms

METHODS = ("deep-tica", "autoencoder", "deep-lda")
#: a CV steeper than this (its own standard deviations per Å of descriptor change) may need a
#: shorter timestep when biased (see neuralmd.analysis.interpret: torsion-like CVs stay at a few)
STEEP_CV_PER_A = 10.0
#: a Deep-TICA CV whose autocorrelation at the lag is below this follows no process slower than the lag
#: (alanine dipeptide, from validation losses ≈ -λ²: trainings that found phi 0.35-0.94, stalled ones 0.01-0.13)
SLOW_TICA_EIGENVALUE = 0.2


def train_cv_from_runs(runs: Sequence[str | Path], out: str | Path, method: str = "deep-tica",
                       descriptors: str = "heavy-atom-distances", lag_ps: float = 1.0, n_cv: int = 1,
                       hidden: Sequence[int] = (24, 12), epochs: int = 200, seed: int = 0,
                       reweight: bool = True, scale_floor: float = 0.5, smoothness: float = 1e-3,
                       progress: bool = False, restarts: int = 1) -> dict:
    """Train, export into ``out`` (cv.pt, descriptors.json, plumed.dat, history.json,
    relevance.csv/png) and return a summary, including each CV's steepness (1/Å, see
    :mod:`neuralmd.analysis.interpret`) and, for Deep-TICA, its eigenvalue (None otherwise).
    ``scale_floor``: the least scale of a descriptor, as a fraction of the RMS of their spreads
    (see :mod:`neuralmd.sampling.learned`; 0: each by its own).
    ``smoothness`` (Å²): Deep-TICA's gradient penalty (see :func:`train_deep_tica`).
    ``restarts``: trainings from seeds ``seed, seed + 1, ...``; the one with the lowest
    validation loss is kept (for Deep-TICA the largest eigenvalues: on alanine dipeptide some
    seeds stall near eigenvalue 0 on a fast mode while others find the phi transition)."""
    from ..analysis.interpret import cv_relevance, cv_steepness, plot_relevance

    refuse_existing(out, "a learned CV", marker="cv.pt", resumable=False)
    if method not in METHODS:
        raise InputError(f"method: {method!r}; expected one of {', '.join(METHODS)}")
    if restarts < 1 or n_cv < 1 or epochs < 1 or not hidden or min(hidden) < 1:
        raise InputError(f"restarts {restarts}, n_cv {n_cv}, epochs {epochs}, hidden {list(hidden)}: expected each >= 1")
    if not 0 < lag_ps < float("inf") or not 0 <= smoothness < float("inf") or not 0 <= scale_floor < float("inf"):
        raise InputError(f"lag_ps {lag_ps}, smoothness {smoothness}, scale_floor {scale_floor}: expected lag_ps > 0, "
                         f"smoothness >= 0 and scale_floor >= 0")
    if method == "deep-lda" and len(runs) < 2:
        raise InputError("deep-lda: give one run per state (at least two runs)")
    parts, numbers, lag_frames = [], None, None
    for run in runs:
        run = Path(run)
        frames_numbers = _numbers(run)
        if numbers is None:
            numbers = frames_numbers
            atoms = descriptor_atoms(descriptors, numbers)
            desc = PairwiseDistances(atoms)
        elif not np.array_equal(numbers, frames_numbers):
            raise InputError(f"{run}: a different system from {runs[0]} (atoms or elements differ)")
        samples = load_samples(run, cv=desc)
        if method == "deep-tica":
            settings = md_settings(run)
            stride_ps = settings["report_every"] * settings["timestep_fs"] / 1000.0
            lag = int(round(lag_ps / stride_ps))
            if lag < 1:
                raise InputError(f"lag: {lag_ps} ps is shorter than the frame interval {stride_ps} ps of {run}")
            lag_frames = lag if lag_frames is None else lag_frames
            if lag != lag_frames:
                raise InputError(f"{run}: frame interval differs from {runs[0]}; the lag would differ")
        parts.append(samples)
    x_parts, w_parts, seg_parts, label_parts = [], [], [], []
    for k, s in enumerate(parts):
        for b in np.unique(s.replica):
            rows = s.replica == b
            x_parts.append(s.values[rows])
            w_parts.append(s.weights[rows] / s.weights[rows].mean())  # each trajectory counts alike
            seg_parts.append(np.full(rows.sum(), len(seg_parts)))
            label_parts.append(np.full(rows.sum(), k))
    x = np.concatenate(x_parts).astype(np.float32)
    weights = np.concatenate(w_parts) if reweight else None
    segments, labels = np.concatenate(seg_parts), np.concatenate(label_parts)

    def fit(seed: int):
        if method == "deep-tica":
            return train_deep_tica(x, lag_frames, n_cv, weights=weights, hidden=hidden, epochs=epochs, seed=seed,
                                   segments=segments, scale_floor=scale_floor, smoothness=smoothness,
                                   progress=progress)
        if method == "deep-lda":
            return train_deep_lda(x, labels, n_cv, hidden=hidden, epochs=epochs, seed=seed,
                                  scale_floor=scale_floor, progress=progress)
        return train_autoencoder(x, n_cv, hidden=hidden, epochs=epochs, seed=seed, scale_floor=scale_floor,
                                 progress=progress)

    fits = [(fit(seed + r), seed + r) for r in range(restarts)]
    valid_losses = [min(h["valid_loss"] for h in history) for (_, history), _ in fits]
    best = int(np.argmin(valid_losses))
    (net, history), seed = fits[best]
    cv = LearnedCV(desc, net, method)
    with torch.no_grad():
        s = net(torch.as_tensor(x)).numpy()
    steepness = [round(float(v), 3) for v in cv_steepness(net, x)]
    eigenvalues = history[-1].get("tica_eigenvalues")
    meta = {"n_atoms": len(numbers), "elements": [int(numbers[a]) for a in atoms],
            "cv_range": [[float(s[:, k].min()), float(s[:, k].max())] for k in range(n_cv)],
            "steepness_per_A": steepness, "tica_eigenvalues": eigenvalues,
            "training": {"runs": [str(Path(r).resolve()) for r in runs], "frames": len(x), "descriptors": descriptors,
                         "lag_ps": lag_ps if method == "deep-tica" else None, "epochs": epochs, "seed": seed,
                         "restarts_best_valid_loss": [float(v) for v in valid_losses],
                         "scale_floor": scale_floor, "smoothness_A2": smoothness if method == "deep-tica" else None}}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    relevance = cv_relevance(net, x)
    order = np.argsort(relevance)[::-1]
    with open(out / "relevance.csv", "w") as fh:
        fh.write("descriptor,relevance\n")
        fh.writelines(f"{desc.names[i]},{relevance[i]:.6f}\n" for i in order)
    plot_relevance(relevance, desc.names, out / "relevance.png")
    atomic_write_json(history, out / "history.json")
    cv.export(out, meta)
    return {"method": method, "frames": len(x), "cv_range": meta["cv_range"], "steepness_per_A": steepness,
            "tica_eigenvalues": eigenvalues, "seed": seed,
            "restarts_best_valid_loss": meta["training"]["restarts_best_valid_loss"],
            "final_valid_loss":
            history[-1]["valid_loss"], "best_valid_loss": valid_losses[best],
            "top_descriptors": [(desc.names[i], float(relevance[i])) for i in order[:5]]}


def _numbers(run: Path) -> np.ndarray:
    import h5py

    path = run / "traj_000.h5md"
    if not path.is_file():
        raise InputError(f"{run}: no trajectory traj_000.h5md; is it a run directory?")
    with h5py.File(path, "r") as f:
        return f["particles/trajectory/species"][()]
