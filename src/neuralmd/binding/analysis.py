"""The binding free energy of a binding run: the reweighted PMF along the funnel axis, ΔG°bind
(1 M) with its block error, ΔG°(t), recrossings, and frames that left the funnel.

Definitions (stated in the results): *bound* is z < ``bound_z_A`` (the guest inside or at the
mouth of the host; the funnel's cone); *unbound* is the plateau ``unbound_z_A`` = [low, high]
of the cylinder, far enough that the host no longer acts on the guest. Frames are weighted by
exp(βV) with V the OPES bias each felt, so

    K_b = A_eff P(bound) / (P(unbound) / L_unbound),     ΔG° = -k_BT ln(K_b / V°),

where A_eff is the cylinder's Boltzmann-weighted cross-section
(:meth:`~.funnel.Funnel.cross_section_A2`), L_unbound = high − low and V° = 1660.54 Å³ (1 M).
Equivalently ΔG° = F(bound) − F(unbound) − k_BT ln(A_eff L_unbound / V°): the error, the
convergence verdict, the recrossings and ΔG°(t) are those of that free-energy difference
(:func:`~neuralmd.sampling.convergence.basin_report`) shifted by the funnel's constant.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..sampling.colvar import read_colvar
from ..sampling.convergence import MIN_BLOCKS, basin_report
from ..sampling.fes import fes, kT_kjmol
from ..rundir import COLVAR, ML_CORRECTION
from .funnel import STANDARD_VOLUME_A3
from .runs import load_settings

#: a frame is outside the funnel when beyond its surface by more than this many thermal wall
#: widths (k_BT/k)^½: the soft wall lets the guest that far about once in 10⁴ frames
ESCAPE_WIDTHS = 4.0
#: "stuck outside": after leaving, at most this fraction of frames back in the bound state, the
#: bias outside within FLOOR_KT k_BT of -BARRIER, and at most STUCK_TRANSITIONS recrossings
RETURN_FRACTION, FLOOR_KT, STUCK_TRANSITIONS = 0.01, 4.0, 2


def funnel_correction_kjmol(cross_section_A2: float, unbound_length_A: float, temperature_K: float) -> float:
    """-k_BT ln(A_eff L / V°) (kJ/mol): the step from F(bound) - F(unbound) to ΔG°."""
    return -kT_kjmol(temperature_K) * math.log(cross_section_A2 * unbound_length_A / STANDARD_VOLUME_A3)


def stuck_outside(z: np.ndarray, t_ns: np.ndarray, bias_kjmol: np.ndarray, bound_z_A: float, barrier_kjmol: float,
                  kT: float) -> str:
    """A reason (empty if none) when the guest left the bound state and has not come back, while
    the OPES bias it felt outside sat within ``FLOOR_KT`` k_BT of its floor −BARRIER: the sign of
    a barrier far above the well's depth (``benchmarks/opes_barrier.py``), or of a way back that
    is slow along the CV. Frames in time order of one walker, or of all walkers sorted by step
    (then "not come back" means none did)."""
    outside = z >= bound_z_A
    if not outside.any() or outside.all():
        return ""
    first = int(np.argmax(outside))
    after = outside[first:]
    if after.mean() < 1.0 - RETURN_FRACTION:
        return ""
    floor = -barrier_kjmol
    median = float(np.median(bias_kjmol[first:][after]))
    if median > floor + FLOOR_KT * kT:
        return ""
    return (f"stuck: the guest left at {t_ns[first]:.2f} ns and has not come back in {t_ns[-1] - t_ns[first]:.2f} ns, "
            f"outside where the bias is at its floor (median {median:.1f} kJ/mol, -BARRIER = {floor:g})")


def axis_pmf(z: np.ndarray, weights: np.ndarray, span_A: tuple[float, float], plateau_A: tuple[float, float],
             bins: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """The reweighted PMF along the funnel axis: bin centres (Å) over ``span_A`` and W (kJ/mol,
    NaN where no frame fell) with its mean over the bins inside ``plateau_A`` at zero (its minimum
    if none is). Weights may span tens of orders of magnitude (a plateau biased −120 kJ/mol is
    ~1e-21 of the well): the bins are summed by :func:`~neuralmd.sampling.fes.fes` one by one, not
    by cumulative differences as ``np.histogram`` with explicit edges does, which rounds them to 0."""
    (centres,), pmf = fes(z, weights, [bins], [span_A], temperature)
    plateau = (centres >= plateau_A[0]) & (centres < plateau_A[1]) & np.isfinite(pmf)
    return centres, pmf - (pmf[plateau].mean() if plateau.any() else np.nanmin(pmf))


def binding_report(run_dir: str | Path, skip_ns: float = 0.0, blocks: int = 0, bins: int = 80) -> dict:
    """ΔG°bind and its diagnostics for the binding run in ``run_dir`` (frames before ``skip_ns``
    dropped). Keys: ``dG_kjmol``, ``dG_err_kjmol``, ``converged``, ``reason``, ``recrossings``,
    ``curve`` ([ns, ΔG°]), ``pmf`` (z Å, W kJ/mol, zero on the unbound plateau), ``escaped``,
    ``bound_z_A`` and ``unbound_z_A`` with their definitions, the funnel and its cross-section;
    with an ML/MM correction computed, ``ml_mm_correction`` and ``dG_mlmm_kjmol`` ±
    ``dG_mlmm_err_kjmol``."""
    run_dir = Path(run_dir)
    settings, engine = load_settings(run_dir)
    funnel = settings.make_funnel()
    temperature = engine.temperature_K
    colvar = read_colvar(run_dir / COLVAR)
    order = np.lexsort((colvar["replica"], colvar["step"]))
    z, rho = colvar["z"][order], colvar["rho"][order]
    t_ns = colvar["step"][order] * engine.timestep_fs * 1e-6
    keep = t_ns >= skip_ns
    if keep.sum() < 2 * max(blocks, MIN_BLOCKS):
        raise InputError(f"{run_dir}: {int(keep.sum())} frames after --skip-ns {skip_ns}; run longer")
    kT = kT_kjmol(temperature)
    bias = colvar["bias_kjmol"][order][keep]
    weights = np.exp((bias - bias.max()) / kT)
    z, rho, t_ns, replica = z[keep], rho[keep], t_ns[keep], colvar["replica"][order][keep]
    lo, hi = settings.unbound_z_A
    bound, unbound = [(-np.inf, settings.bound_z_A)], [(lo, hi)]
    for name, region in (("bound", bound), ("unbound", unbound)):
        mask = (z >= region[0][0]) & (z < region[0][1])
        if not mask.any():
            hint = (f"; a guest still bound after a few ns may face a well deeper than the OPES barrier "
                    f"({settings.barrier_kjmol:g} kJ/mol): start again with a higher --barrier-kjmol"
                    if name == "unbound" else "")
            raise InputError(f"{run_dir}: no frame in the {name} state (z in [{region[0][0]}, {region[0][1]}) Å) yet; "
                             f"run longer (neuralmd bind --resume){hint}")
    stuck = stuck_outside(z, t_ns, bias, settings.bound_z_A, settings.barrier_kjmol, kT)
    area = funnel.cross_section_A2(temperature)
    shift = funnel_correction_kjmol(area, hi - lo, temperature)
    report = basin_report(z[:, None], weights, t_ns, unbound, bound, temperature, segments=replica, blocks=blocks)
    centres, pmf = axis_pmf(z, weights, (funnel.lower_z_A - 1.0, funnel.upper_z_A + 1.0), (lo, hi), bins, temperature)
    sigma = math.sqrt(kT / funnel.k_kjmol_A2)
    excess = np.maximum.reduce([rho - funnel.radius(z), z - funnel.upper_z_A, funnel.lower_z_A - z])
    escaped = excess > ESCAPE_WIDTHS * sigma
    if stuck and report["diagnostics"]["transitions"] <= STUCK_TRANSITIONS:
        report["diagnostics"]["reasons"].append(stuck)
        report["diagnostics"]["advice"].append(
            f"OPES has not sampled the way back: if the barrier ({settings.barrier_kjmol:g} kJ/mol) is well above the "
            f"bound state's depth (binding.png's PMF up to where the guest left is a lower bound), that takes many "
            f"ns, and a new run with --barrier-kjmol near the depth recrosses sooner (30 kJ/mol below it the guest "
            f"never leaves); if not, re-entry is the slow step along this CV: run longer, add --walkers, or try "
            f"--cv learned")
        report["converged"] = report["diagnostics"]["converged"] = False
        report["reason"] = "; ".join(report["diagnostics"]["reasons"])
    out = {
        "dG_kjmol": report["deltaF_kjmol"] + shift, "dG_err_kjmol": report["deltaF_err_kjmol"],
        "converged": report["converged"], "reason": report["reason"],
        "recrossings": report["diagnostics"]["transitions"], "diagnostics": report["diagnostics"],
        "curve": [[t, f + shift] for t, f in report["curve"]],
        "pmf": {"z_A": centres.tolist(), "W_kjmol": [float(w) if np.isfinite(w) else None for w in pmf]},
        "bound_z_A": settings.bound_z_A, "unbound_z_A": [lo, hi],
        "definition": {"bound": f"z < {settings.bound_z_A} Å along the host axis",
                       "unbound": f"{lo} <= z < {hi} Å in the funnel's cylinder",
                       "standard_state": "1 M (1660.54 Å³ per molecule)",
                       "formula": "ΔG° = F(bound) - F(unbound) - kT ln(A_eff L_unbound / V°)"},
        "cross_section_A2": area, "funnel_correction_kjmol": shift, "funnel": funnel.__dict__,
        "escaped": {"frames": int(escaped.sum()), "fraction": float(escaped.mean()),
                    "beyond_A": float(ESCAPE_WIDTHS * sigma)},
        "frames": int(len(z)), "simulated_ns": float(t_ns.max()), "temperature_K": temperature, "cv": settings.cv,
    }
    correction = run_dir / ML_CORRECTION / "correction.json"
    if correction.exists():  # the MM -> ML/MM correction (binding.correction), once computed
        c = json.loads(correction.read_text())
        out["ml_mm_correction"] = c
        if c["ddG_kjmol"] is not None:
            out["dG_mlmm_kjmol"] = out["dG_kjmol"] + c["ddG_kjmol"]
            out["dG_mlmm_err_kjmol"] = float(math.hypot(out["dG_err_kjmol"], c["ddG_err_kjmol"]))
    return out
