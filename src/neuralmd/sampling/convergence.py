"""Is a free-energy difference between two basins converged? Diagnostics for ΔF = F(B) - F(A)
from weighted samples in time order, and the verdict they give.

A reweighted ΔF is only as good as the number of times the run went from one basin to the
other: an unbiased run that visited B once, or a biased run whose CV never drives the process,
returns a number with a small block error all the same. :func:`diagnose` therefore reports,
beside ΔF and its error,

- **transitions**: committed basin changes per trajectory (a stay of fewer than ``min_dwell``
  frames is not a visit; frames in neither basin neither start nor end one), summed over the
  trajectories (walkers), and the number of separate visits to each basin;
- **ESS**: Kish's effective sample size (Σw)²/Σw² of the weights of each basin's frames;
- **largest block share**: the largest fraction of a basin's weight in one tenth of the run;
- **drift**: ΔF from all frames minus ΔF from the first half;
- **block error with the block length chosen from the data**: the error σ_L of ln(p_B/p_A)
  (delta method on block means of w·1_A and w·1_B) for block lengths L = 1, 2, 4, ... frames
  (at least :data:`MIN_BLOCKS` blocks); it grows while blocks are correlated and levels off once
  they are independent. The chosen length is the shortest with L³ > 2n(σ_L/σ_1)⁴, where
  (σ_L/σ_1)² estimates twice the correlation time in frames (Wolff 2004; Lee et al., Phys. Rev.
  E 83, 066706 (2011), pyblock's "optimal block"); where no length qualifies, the error at the
  longest blocks is a lower bound and the run is unconverged.

and calls the result **unconverged**, with the reasons and what to do, when any of the
thresholds below fails. Free energies in kJ/mol.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from ..analysis.blocking import MIN_BLOCKS, optimal_block
from .fes import convergence, delta_f, in_region, kT_kjmol

#: committed transitions between the basins (all trajectories together) below which ΔF is
#: unconverged: five round trips
MIN_TRANSITIONS = 10
#: Kish effective sample size of each basin's frames below which ΔF is unconverged
MIN_ESS = 50.0
#: a basin with more than this fraction of its weight in one of :data:`SHARE_BLOCKS` equal
#: stretches of the run rests on one episode
MAX_BLOCK_SHARE = 0.5
SHARE_BLOCKS = 10
#: |ΔF(all) - ΔF(first half)| above this many k_BT and above :data:`DRIFT_ERRORS` errors is a
#: drift (the two estimates share half their frames: in a converged run they differ by about
#: one error)
MAX_DRIFT_KT = 0.25
DRIFT_ERRORS = 3.0
#: frames a trajectory must stay in a basin for the stay to count as a visit
MIN_DWELL = 2

ADVICE = {
    "transitions": "run longer or with more walkers; if the bias does not drive the system between the basins, "
                   "bias a better CV (neuralmd cv discover)",
    "ess": "a basin rests on a few heavily weighted frames: run longer, or bias a CV that samples it directly",
    "block_share": "one stretch of the run carries most of a basin's weight: run longer",
    "drift": "ΔF is still moving over the second half of the run: run longer (or drop the bias's transient with "
             "--skip-ns)",
    "plateau": "the block error has not levelled off, so successive blocks are still correlated: run longer",
}


@dataclass
class Diagnostics:
    """What :func:`diagnose` found (free energies in kJ/mol)."""

    deltaF_kjmol: float
    deltaF_err_kjmol: float
    transitions: int
    visits: tuple[int, int]
    ess: tuple[float, float]
    largest_block_share: tuple[float, float]
    drift_kjmol: float
    block_frames: int
    blocks: int
    error_plateau: bool
    block_error_curve: list[list[float]] = field(default_factory=list)  # [frames per block, blocks, error]
    reasons: list[str] = field(default_factory=list)

    @property
    def converged(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict:
        out = asdict(self)
        out.update({"converged": self.converged, "advice": [ADVICE[key] for key in self.reason_keys]})
        return out

    @property
    def reason_keys(self) -> list[str]:
        return [text.split(":", 1)[0] for text in self.reasons]


def basin_labels(values: np.ndarray, region_a, region_b) -> np.ndarray:
    """0 for frames in A, 1 in B, -1 in neither (A wins where the regions overlap)."""
    labels = np.full(len(values), -1)
    labels[in_region(values, region_b)] = 1
    labels[in_region(values, region_a)] = 0
    return labels


def count_transitions(labels: np.ndarray, segments: np.ndarray | None = None,
                      min_dwell: int = MIN_DWELL) -> tuple[int, tuple[int, int]]:
    """Committed transitions between basins 0 and 1 and the visits to each, summed over the
    trajectories named by ``segments`` (one label per frame, frames of a trajectory in time
    order; None: one trajectory). Frames labelled -1 are dropped; runs of fewer than
    ``min_dwell`` frames are not visits; consecutive visits to the same basin merge."""
    labels = np.asarray(labels)
    segments = np.zeros(len(labels), dtype=int) if segments is None else np.asarray(segments)
    transitions, visits = 0, [0, 0]
    for seg in np.unique(segments):
        seq = labels[(segments == seg) & (labels >= 0)]
        if not len(seq):
            continue
        edges = np.flatnonzero(np.diff(seq)) + 1
        starts = np.concatenate([[0], edges])
        lengths = np.diff(np.concatenate([starts, [len(seq)]]))
        kept = seq[starts][lengths >= min_dwell]
        if not len(kept):
            continue
        kept = kept[np.concatenate([[True], np.diff(kept) != 0])]
        transitions += len(kept) - 1
        visits[0] += int((kept == 0).sum())
        visits[1] += int((kept == 1).sum())
    return transitions, (visits[0], visits[1])


def kish_ess(weights: np.ndarray) -> float:
    """Kish's effective sample size (Σw)²/Σw² (0 for no frames)."""
    w = np.asarray(weights, dtype=float)
    return float(w.sum() ** 2 / np.square(w).sum()) if len(w) and w.sum() > 0 else 0.0


def block_error(a: np.ndarray, b: np.ndarray, block_frames: int, temperature_K: float) -> float:
    """Standard error (kJ/mol) of -kT ln(Σb/Σa) from blocks of ``block_frames`` consecutive
    frames (the earliest n mod L frames dropped), by the delta method on the block means of
    ``a`` = w·1_A and ``b`` = w·1_B."""
    m = len(a) // block_frames
    cut = len(a) - m * block_frames
    ma = a[cut:].reshape(m, block_frames).mean(axis=1)
    mb = b[cut:].reshape(m, block_frames).mean(axis=1)
    abar, bbar = ma.mean(), mb.mean()
    if m < 2 or abar <= 0 or bbar <= 0:
        return float("nan")
    cov = np.cov(np.stack([ma / abar, mb / bbar]), ddof=1)
    var = (cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]) / m
    return float(kT_kjmol(temperature_K) * np.sqrt(max(var, 0.0)))


def block_error_curve(a: np.ndarray, b: np.ndarray, temperature_K: float) -> list[list[float]]:
    """[frames per block, blocks, error (kJ/mol)] for block lengths 1, 2, 4, ... with at least
    :data:`MIN_BLOCKS` blocks."""
    out, length = [], 1
    while len(a) // length >= MIN_BLOCKS:
        out.append([length, len(a) // length, block_error(a, b, length, temperature_K)])
        length *= 2
    return out


def diagnose(values: np.ndarray, weights: np.ndarray, region_a, region_b, temperature_K: float,
             segments: np.ndarray | None = None, blocks: int = 0) -> Diagnostics:
    """ΔF = F(B) - F(A) (kJ/mol) of weighted frames in time order, its block error and the
    diagnostics above. ``segments``: the trajectory (walker) of each frame; transitions are
    counted per trajectory, and a block holds the same stretch of time of every trajectory
    (``block_frames`` consecutive frames of each). ``blocks``: a fixed number of blocks instead
    of the length chosen from the data."""
    values, w = np.asarray(values), np.asarray(weights, dtype=float)
    labels = basin_labels(values, region_a, region_b)
    a, b = _per_time(w * (labels == 0), segments), _per_time(w * (labels == 1), segments)
    dF = delta_f(values, w, region_a, region_b, temperature_K)
    curve = block_error_curve(a, b, temperature_K)
    if blocks:
        length = max(1, len(a) // blocks)
        k, found = None, True
        err = block_error(a, b, length, temperature_K)
    else:
        k = optimal_block(curve, len(a))
        found = k is not None
        if not found:  # the longest blocks: a lower bound
            usable = [i for i, (_, _, e) in enumerate(curve) if np.isfinite(e)]
            k = usable[-1] if usable else None
        length = int(curve[k][0]) if k is not None else max(1, len(a) // MIN_BLOCKS)
        err = curve[k][2] if k is not None else float("nan")
    transitions, visits = count_transitions(labels, segments)
    shares = [float(max(part.sum() for part in np.array_split(x, SHARE_BLOCKS)) / x.sum()) if x.sum() > 0 else 1.0
              for x in (a, b)]
    half = len(w) // 2
    first = delta_f(values[:half], w[:half], region_a, region_b, temperature_K) if half else float("nan")
    drift = dF - first if np.isfinite(first) else float("nan")
    d = Diagnostics(deltaF_kjmol=float(dF), deltaF_err_kjmol=float(err), transitions=transitions, visits=visits,
                    ess=(kish_ess(w[labels == 0]), kish_ess(w[labels == 1])),
                    largest_block_share=(shares[0], shares[1]), drift_kjmol=float(drift), block_frames=length,
                    blocks=len(a) // length, error_plateau=found, block_error_curve=curve)
    d.reasons = _reasons(d, temperature_K)
    return d


def _per_time(x: np.ndarray, segments: np.ndarray | None) -> np.ndarray:
    """``x`` summed over the trajectories at each time: the k-th frame of every trajectory
    together (walkers of one run advance in step), in order of k."""
    if segments is None:
        return x
    segments = np.asarray(segments)
    index = np.zeros(len(segments), dtype=int)
    for seg in np.unique(segments):
        rows = segments == seg
        index[rows] = np.arange(rows.sum())
    return np.bincount(index, weights=x)


def _reasons(d: Diagnostics, temperature_K: float) -> list[str]:
    kT = kT_kjmol(temperature_K)
    reasons = []
    if d.transitions < MIN_TRANSITIONS:
        reasons.append(f"transitions: {d.transitions} between the basins (visits {d.visits[0]}/{d.visits[1]}); "
                       f"need {MIN_TRANSITIONS}")
    if min(d.ess) < MIN_ESS:
        reasons.append(f"ess: effective samples {d.ess[0]:.1f} in A, {d.ess[1]:.1f} in B; need {MIN_ESS:g} each")
    if max(d.largest_block_share) > MAX_BLOCK_SHARE:
        reasons.append(f"block_share: one tenth of the run holds {max(d.largest_block_share):.0%} of a basin's "
                       f"weight; need <= {MAX_BLOCK_SHARE:.0%}")
    allowed = max(MAX_DRIFT_KT * kT, DRIFT_ERRORS * np.nan_to_num(d.deltaF_err_kjmol))
    if not abs(d.drift_kjmol) <= allowed:
        reasons.append(f"drift: ΔF moved by {d.drift_kjmol:.2f} kJ/mol over the second half; need within "
                       f"{allowed:.2f} ({MAX_DRIFT_KT:g} kT or {DRIFT_ERRORS:g} errors)")
    if not d.error_plateau:
        reasons.append(f"plateau: the block error still grows at blocks of {d.block_frames} frames "
                       f"({d.blocks} blocks)")
    return reasons


def basin_report(values: np.ndarray, weights: np.ndarray, time_ns: np.ndarray, region_a, region_b,
                 temperature_K: float, segments: np.ndarray | None = None, blocks: int = 0, points: int = 20) -> dict:
    """ΔF = F(B) - F(A) (kJ/mol) with its block error, the verdict (``converged``, ``reason``:
    empty when converged), the ``diagnostics`` of :func:`diagnose` and the convergence curve
    [ns, ΔF] (``points`` points)."""
    d = diagnose(values, weights, region_a, region_b, temperature_K, segments, blocks)
    ends, curve = convergence(values, weights, region_a, region_b, temperature_K, points)
    return {"deltaF_kjmol": d.deltaF_kjmol, "deltaF_err_kjmol": d.deltaF_err_kjmol, "converged": d.converged,
            "reason": "; ".join(d.reasons), "diagnostics": d.as_dict(),
            "curve": [[float(time_ns[e - 1]), float(c)] for e, c in zip(ends, curve)]}
