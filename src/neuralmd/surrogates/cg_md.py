"""Langevin dynamics of a CG model in the native engine, and its torsion free-energy surface
compared with the mapped all-atom data.

The comparison (the numbers ``neuralmd cg md`` and benchmarks/surrogates.py report):

- ``deltaF_kjmol``: F(t0 > 0) - F(t0 < 0) for the first named torsion (phi for a dipeptide),
  with a block error (block length from the data), ``converged`` and ``reason`` (the verdict of
  :mod:`neuralmd.sampling.convergence`: transitions per replica, effective sample sizes, drift)
  and its ``diagnostics``;
- ``fes_mae_kT``: mean absolute difference of the 2D torsion FES (k_BT) over the bins that
  both populate (at least ``min_count`` reference frames), after removing the mean offset
  (free energies are defined up to a constant);
- ``js_divergence``: Jensen-Shannon divergence (nats) of the two 2D torsion histograms, and
  ``fraction_outside_reference``: the CG probability in bins the data never visit.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io_utils import atomic_write_json
from ..md.integrators import check_timestep
from ..md.simulation import MDSettings, Simulation
from ..sampling.convergence import diagnose
from ..sampling.fes import delta_f, fes, kT_kjmol
from ..models.coarse_grain import CGPotential, torsion_angles

PERIODIC = [(-math.pi, math.pi)] * 2


def start_cg_md(model_path: str | Path, output: str | Path, ns: float, replicas: int, timestep_fs: float = 2.0,
                friction_per_ps: float = 1.0, temperature_K: float | None = None, seed: int = 0,
                report_every: int = 500, checkpoint_every: int = 10_000, bias: str = "none",
                barrier_kjmol: float = 30.0, trajectory_replicas: int = 16, start_positions: np.ndarray | None = None,
                progress: bool = True) -> Simulation:
    """A CG Langevin run of ``replicas`` copies started from frames stored in the model file
    (cycled when there are more replicas than frames), at the data's temperature unless given.
    The model's first two torsions are written to colvar.csv every frame; with ``bias`` (opes,
    opes-explore, metad) all replicas are walkers of one bias on them, so that the rare basins
    are visited and reweighted (the transitions of alanine dipeptide take nanoseconds). Only the
    first ``trajectory_replicas`` replicas write a trajectory file (-1: all); every replica's
    torsions and energies go to colvar.csv and log.csv. ``start_positions`` (S, n, 3) Å replace
    the model's stored start frames."""
    from ..models.neural import load_potential
    from ..sampling.bias_factory import BiasSettings
    from ..sampling.runs import start_native

    model = load_potential(model_path)
    if not isinstance(model, CGPotential):
        raise InputError(f"{model_path}: not a coarse-grained model (train one with `neuralmd cg train`)")
    if replicas < 1 or not ns > 0 or not (trajectory_replicas >= 1 or trajectory_replicas == -1):
        raise InputError(f"replicas {replicas}, ns {ns}, trajectory_replicas {trajectory_replicas}: expected "
                         f"replicas >= 1, ns > 0 and trajectory_replicas >= 1 or -1 (all)")
    check_timestep(timestep_fs)
    if len(model.torsions) < 2:
        raise InputError(f"{model_path}: the CG model names {len(model.torsions)} torsion(s); the analysis needs two")
    output = Path(output)
    settings = MDSettings(ensemble="nvt", timestep_fs=timestep_fs, temperature_K=[temperature_K or model.temperature_K],
                          friction_per_ps=friction_per_ps, seed=seed, report_every=report_every,
                          checkpoint_every=checkpoint_every, total_steps=int(round(ns * 1e6 / timestep_fs)),
                          model_path=str(Path(model_path).resolve()), max_spread_A=20.0, replicas=replicas,
                          trajectory_replicas=trajectory_replicas)
    spec = ",".join(f"torsion({','.join(map(str, q))})" for q in list(model.torsions.values())[:2])
    starts = model.start_positions if start_positions is None else np.asarray(start_positions)
    frames = model.start_batch(starts[np.arange(replicas) % len(starts)]).to_atoms()
    return start_native(model, frames, settings, BiasSettings(cv=spec, bias=bias, barrier_kjmol=barrier_kjmol),
                        output, progress=progress)


def compare_torsion_fes(sample: np.ndarray, weights: np.ndarray, reference: np.ndarray | None, temperature_K: float,
                        bins: int = 24, min_count: int = 10, replica: np.ndarray | None = None) -> dict[str, Any]:
    """Basin ΔF (kJ/mol) of the first torsion with its verdict and, with a reference, the 2D FES
    error (k_BT).

    ``sample`` (T, 2) torsions in rad with reweighting ``weights`` (T,), in time order;
    ``replica`` (T,) the trajectory of each frame (transitions are counted per replica);
    ``reference`` (T', 2) unbiased."""
    phi_neg, phi_pos = [(-math.pi, 0.0), (-math.inf, math.inf)], [(0.0, math.pi + 1e-9), (-math.inf, math.inf)]
    d = diagnose(sample, weights, phi_neg, phi_pos, temperature_K, segments=replica)
    out: dict[str, Any] = {"frames": len(sample), "deltaF_kjmol": d.deltaF_kjmol, "deltaF_err_kjmol": d.deltaF_err_kjmol,
                           "converged": d.converged, "reason": "; ".join(d.reasons), "diagnostics": d.as_dict(),
                           "fraction_t0_positive": float(weights[sample[:, 0] > 0].sum() / weights.sum())}
    centres, f_sample = fes(sample, weights, [bins, bins], PERIODIC, temperature_K)
    out["fes"] = {"centres": centres, "sample": f_sample}
    if reference is None:
        return out
    _, f_ref = fes(reference, np.ones(len(reference)), [bins, bins], PERIODIC, temperature_K)
    counts, _, _ = np.histogram2d(reference[:, 0], reference[:, 1], bins=bins, range=PERIODIC)
    mass, _, _ = np.histogram2d(sample[:, 0], sample[:, 1], bins=bins, range=PERIODIC, weights=weights)
    common = (counts >= min_count) & np.isfinite(f_sample)
    diff = (f_sample - f_ref)[common]
    diff -= diff.mean()
    out["fes"]["reference"] = f_ref
    out.update({"reference_deltaF_kjmol": delta_f(reference, np.ones(len(reference)), phi_neg, phi_pos, temperature_K),
                "fes_mae_kT": float(np.abs(diff).mean() / kT_kjmol(temperature_K)), "fes_bins_compared": int(common.sum()),
                "reference_population_compared": float(counts[common].sum() / counts.sum()),
                "js_divergence": jensen_shannon(mass, counts),
                "fraction_outside_reference": float(mass[counts == 0].sum() / mass.sum())})
    return out


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (nats, between 0 and ln 2) of two histograms on the same bins."""
    p, q = p.ravel() / p.sum(), q.ravel() / q.sum()
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log(a[nz] / m[nz])).sum())

    return 0.5 * (kl(p) + kl(q))


def analyse_cg_run(run_dir: str | Path, model: CGPotential, reference_coords: np.ndarray | None = None,
                   skip_ps: float = 0.0) -> dict[str, Any]:
    """Torsion FES of a CG run, reweighted when it was biased (and against mapped reference
    coordinates): writes ``cg_fes.png`` and ``cg_analysis.json`` in ``run_dir``."""
    from ..analysis.plots import plot_fes_comparison
    from ..sampling.samples import load_samples

    run_dir = Path(run_dir)
    quads = dict(list(model.torsions.items())[:2])
    samples = load_samples(run_dir)
    keep = samples.time_ns * 1000 >= skip_ps
    if not keep.any():
        raise InputError(f"{run_dir}: no frames after skip_ps={skip_ps}")
    reference = torsion_angles(reference_coords, quads) if reference_coords is not None else None
    result = compare_torsion_fes(samples.values[keep, :2], samples.weights[keep], reference, model.temperature_K,
                                 replica=samples.replica[keep])
    surfaces = {"CG model": result["fes"]["sample"]}
    if reference is not None:
        surfaces["reference (mapped data)"] = result["fes"]["reference"]
    names = [f"{name} (rad)" for name in quads]
    title = (f"ΔF({list(quads)[0]}>0) = {result['deltaF_kjmol']:.2f} ± {result['deltaF_err_kjmol']:.2f} kJ/mol"
             + ("" if result["converged"] else " (unconverged)"))
    if reference is not None:
        title += f" (data {result['reference_deltaF_kjmol']:.2f}); FES error {result['fes_mae_kT']:.2f} kT"
    plot_fes_comparison(result["fes"]["centres"], surfaces, names, run_dir / "cg_fes.png", title)
    summary = {k: v for k, v in result.items() if k != "fes"}
    atomic_write_json(summary, run_dir / "cg_analysis.json")
    return summary
