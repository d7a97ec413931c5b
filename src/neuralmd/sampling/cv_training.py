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
from .convergence import MIN_TRANSITIONS, count_transitions
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
#: transitions between the two modes of a learned CV's distribution, in the training
#: trajectories, below which their data do not contain the process (five round trips, as `fes`)
MIN_CV_CROSSINGS = MIN_TRANSITIONS
#: a dip in ln(density) between two modes of at least this much separates them (a factor e)
MODE_PROMINENCE = 1.0


def cv_modes(s: np.ndarray, segments: np.ndarray, bins: int = 60) -> dict:
    """The modes of a CV's distribution over the training frames and how often the trajectories
    go from one to the other.

    ``s`` (n,): the CV of each frame; ``segments`` (n,): its trajectory (frames of each in time
    order). The density is a histogram over the 0.1-99.9 percentile range smoothed over 1.5
    bins; modes are maxima of its logarithm standing at least :data:`MODE_PROMINENCE` above the
    dip that separates them. Of two or more, the highest on each side of the deepest dip are
    kept; each mode's core reaches from its peak halfway to that dip, and transitions are
    counted between the cores (:func:`count_transitions`). Returns ``modes`` (CV values of the
    peaks), ``boundary`` (the dip, or None), ``crossings``, ``visits`` and ``fraction`` (of the
    frames beyond the boundary)."""
    from scipy.ndimage import gaussian_filter1d
    from scipy.signal import find_peaks

    lo, hi = np.percentile(s, [0.1, 99.9])
    one = {"boundary": None, "crossings": 0, "visits": [1, 0], "fraction": 0.0}
    if not hi > lo:
        return {"modes": [float(lo)], **one}
    counts, edges = np.histogram(s, bins=bins, range=(lo, hi))
    centres = 0.5 * (edges[1:] + edges[:-1])
    log_p = np.log(gaussian_filter1d(counts.astype(float), 1.5, mode="constant") + 1e-3)
    padded = np.concatenate([[log_p.min() - 10], log_p, [log_p.min() - 10]])  # peaks at the edges count
    peaks = find_peaks(padded, prominence=MODE_PROMINENCE)[0] - 1
    if len(peaks) < 2:
        return {"modes": [float(centres[np.argmax(log_p)])], **one}
    dips = [i + int(np.argmin(log_p[i:j + 1])) for i, j in zip(peaks[:-1], peaks[1:])]
    dip = min(dips, key=lambda k: log_p[k])
    left = max((k for k in peaks if k < dip), key=lambda k: log_p[k])
    right = max((k for k in peaks if k > dip), key=lambda k: log_p[k])
    boundary = float(centres[dip])
    core_a, core_b = 0.5 * (centres[left] + boundary), 0.5 * (boundary + centres[right])
    labels = np.where(s <= core_a, 0, np.where(s >= core_b, 1, -1))
    crossings, visits = count_transitions(labels, segments)
    return {"modes": [float(centres[left]), float(centres[right])], "boundary": boundary, "crossings": crossings,
            "visits": list(visits), "fraction": float((s > boundary).mean())}


def slowest_crossed(modes: Sequence[dict], least: int = MIN_CV_CROSSINGS) -> int:
    """Index of the first (slowest) output whose modes (:func:`cv_modes`) are crossed at least
    ``least`` times, else of the most crossed one."""
    for k, m in enumerate(modes):
        if m["crossings"] >= least:
            return k
    return int(np.argmax([m["crossings"] for m in modes]))


def train_cv_from_runs(runs: Sequence[str | Path], out: str | Path, method: str = "deep-tica",
                       descriptors: str = "heavy-atom-distances", lag_ps: float = 1.0, n_cv: int = 1,
                       hidden: Sequence[int] = (24, 12), epochs: int = 200, seed: int = 0,
                       reweight: bool = True, scale_floor: float = 0.5, smoothness: float = 1e-3,
                       progress: bool = False, restarts: int = 1, force: bool = False,
                       keep_crossed: int = 0) -> dict:
    """Train, export into ``out`` (cv.pt, descriptors.json, plumed.dat, history.json,
    relevance.csv/png) and return a summary, including each CV's steepness (1/Å, see
    :mod:`neuralmd.analysis.interpret`) and, for Deep-TICA, its eigenvalue (None otherwise).
    ``scale_floor``: the least scale of a descriptor, as a fraction of the RMS of their spreads
    (see :mod:`neuralmd.sampling.learned`; 0: each by its own).
    ``smoothness`` (Å²): Deep-TICA's gradient penalty (see :func:`train_deep_tica`).
    ``restarts``: trainings from seeds ``seed, seed + 1, ...``; the one with the lowest
    validation loss is kept (for Deep-TICA the largest eigenvalues: on alanine dipeptide some
    seeds stall near eigenvalue 0 on a fast mode while others find the phi transition).

    Before anything is written, the learned CV is checked against its own data (not for Deep-LDA,
    whose states come from separate runs): its first output must have two modes between which
    the training trajectories cross at least :data:`MIN_CV_CROSSINGS` times (:func:`cv_modes`);
    otherwise the exploration did not sample the process and an InputError says so, unless
    ``force``. With ``keep_crossed`` = N > 0 and ``n_cv`` > 1, only the slowest output whose modes
    are crossed at least N times is kept and exported (a slower process visited once or twice, such as a
    cis peptide bond in a hot exploration, would otherwise take the CV's place)."""
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
    with torch.no_grad():
        s = net(torch.as_tensor(x)).numpy()
    eigenvalues = history[-1].get("tica_eigenvalues")
    kept = None
    if keep_crossed and method != "deep-lda" and n_cv > 1:
        kept = slowest_crossed([cv_modes(s[:, k], segments) for k in range(n_cv)], keep_crossed)
        net.projection = net.projection[:, [kept]]
        s, n_cv = s[:, [kept]], 1
        eigenvalues = [eigenvalues[kept]] if eigenvalues else eigenvalues
    cv = LearnedCV(desc, net, method)
    steepness = [round(float(v), 3) for v in cv_steepness(net, x)]
    modes = cv_modes(s[:, 0], segments) if method != "deep-lda" else None
    if modes is not None and modes["crossings"] < MIN_CV_CROSSINGS and not force:
        shape = ("one mode" if modes["boundary"] is None
                 else f"two modes (at {modes['modes'][0]:.3g} and {modes['modes'][1]:.3g})")
        raise InputError(f"{', '.join(str(r) for r in runs)}: the learned CV has {shape} and the trajectories cross "
                         f"between them {modes['crossings']} times (need {MIN_CV_CROSSINGS}): the exploration did not "
                         f"sample the process; explore longer (neuralmd cv discover does until it has), or --force "
                         f"to keep this CV")
    timescales = ([float(-lag_ps / np.log(v)) if 0 < v < 1 else None for v in eigenvalues]
                  if eigenvalues else None)
    meta = {"n_atoms": len(numbers), "elements": [int(numbers[a]) for a in atoms],
            "cv_range": [[float(s[:, k].min()), float(s[:, k].max())] for k in range(n_cv)],
            "steepness_per_A": steepness, "tica_eigenvalues": eigenvalues, "implied_timescales_ps": timescales,
            "modes": modes, "training": {"runs": [str(Path(r).resolve()) for r in runs], "frames": len(x), "descriptors": descriptors,
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
            "tica_eigenvalues": eigenvalues, "implied_timescales_ps": timescales, "modes": modes, "seed": seed,
            "kept_output": kept,
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
