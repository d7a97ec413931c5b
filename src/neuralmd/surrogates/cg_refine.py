"""Iterative Boltzmann inversion of a CG model's torsion free energy (Reith, Pütz & Müller-Plathe,
J. Comput. Chem. 2003), applied on top of force matching.

Force matching on instantaneous mapped forces is unbiased but noisy: on alanine dipeptide the
network lowers the held-out force error by < 1 % while shifting the (φ, ψ) free energy by
several k_BT where the data are sparse. The data's own (φ, ψ) histogram is the statistic that
pins that surface down, so each iteration here runs CG MD of many replicas started from data
frames drawn at random, as walkers of one OPES bias on the two torsions (so that both φ basins
are visited and their balance is seen; frames reweighted), compares the 2D torsion free
energies on a grid and adds the difference

    ΔU(φ, ψ) = k_BT ln p_CG(φ, ψ) - k_BT ln p_data(φ, ψ)

(times ``damping``, capped at ``max_step_kT`` per bin, taken where the data or the model have
frames, fitted by a 2D Fourier series) to the
model's torsion correction (:meth:`CGPotential.set_torsion_correction`). The bonds, angles and
the network's many-body terms stay as force matching made them.

Each iteration's model and MD run are kept (``iter_XX/``); ``refine.json`` records the FES
error of each model before its update, so a killed refinement resumes at the first iteration
without a finished model, and the last model is ``model.pt``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io_utils import atomic_write_json
from ..md.integrators import check_timestep
from ..rundir import check_writable
from .cg_md import analyse_cg_run, start_cg_md
from ..models.coarse_grain import CGPotential, fit_series, torsion_angles, torsion_grid_basis


def torsion_update(sample: np.ndarray, weights: np.ndarray, reference: np.ndarray, kT: float, order: int,
                   bins: int = 24, min_count: int = 10, damping: float = 1.0, max_step_kT: float = 2.0) -> np.ndarray:
    """Fourier coefficients (eV) of the IBI step k_BT ln(p_sample / p_reference) on a bins × bins
    grid of two torsions (rad), times ``damping``. Counts are compared at the reference's size
    (the sample's weights rescaled to it), with one pseudo-count each, ln((n_s + 1) / (n_ref + 1)),
    capped at ``max_step_kT`` k_BT, on every bin where either side has at least ``min_count``
    frames: where the reference has them and the sample does not, the bin is lowered; where the
    sample piles up frames the reference has (almost) none, it is raised, so the model cannot
    hide the data's basin population in the sparse bins around it. Bins both sides leave sparse
    keep a zero target, so the correction stays flat there. Bins are weighted by
    √max(reference count, 1)."""
    grid = [(-math.pi, math.pi)] * 2
    ref, _, _ = np.histogram2d(reference[:, 0], reference[:, 1], bins=bins, range=grid)
    cg, _, _ = np.histogram2d(sample[:, 0], sample[:, 1], bins=bins, range=grid, weights=weights)
    ref, cg = ref.ravel(), cg.ravel()
    if not ref.sum() > 0 or not cg.sum() > 0:
        raise InputError("torsion_update: empty reference or sample")
    cg = cg * (ref.sum() / cg.sum())  # expected counts at the reference's number of frames
    used = (ref >= min_count) | (cg >= min_count)
    step = np.zeros(len(ref))
    step[used] = np.clip(np.log((cg[used] + 1.0) / (ref[used] + 1.0)), -max_step_kT, max_step_kT)
    step[used] -= np.average(step[used], weights=ref[used] + cg[used])  # a constant does nothing
    return damping * kT * fit_series(step, np.sqrt(np.maximum(ref, 1.0)), torsion_grid_basis(bins, order))


def sample_against_data(model_path: str | Path, reference_coords: np.ndarray, run: Path, ns: float,
                        replicas: int, timestep_fs: float = 2.0, bias: str = "opes", barrier_kjmol: float = 30.0,
                        report_every: int = 100, seed: int = 0, progress: bool = False):
    """One refinement run (also the evaluation protocol): ``replicas`` CG replicas of ``ns``
    started from reference frames drawn at random (seeded), walkers of one ``bias``, analysed
    against the reference. Returns (model, simulation, analysis dict, samples)."""
    from ..sampling.samples import load_samples

    shutil.rmtree(run, ignore_errors=True)  # a run killed midway starts over
    starts = reference_coords[np.random.default_rng(seed).choice(len(reference_coords), replicas)]
    sim = start_cg_md(model_path, run, ns=ns, replicas=replicas, timestep_fs=timestep_fs, seed=seed,
                      report_every=report_every, bias=bias, barrier_kjmol=barrier_kjmol, trajectory_replicas=1,
                      start_positions=starts, progress=progress)
    sim.run()
    return sim.potential, sim, analyse_cg_run(run, sim.potential, reference_coords), load_samples(run)


def refine_cg_model(model_path: str | Path, reference_coords: np.ndarray, output: str | Path, iterations: int = 3,
                    ns: float = 0.05, replicas: int = 128, timestep_fs: float = 2.0, order: int = 4,
                    damping: float = 0.8, bias: str = "opes", barrier_kjmol: float = 30.0, report_every: int = 100,
                    seed: int = 0, progress: bool = True) -> dict[str, Any]:
    """Refine the torsion free energy of the CG model in ``model_path`` against mapped reference
    coordinates (T, n, 3) Å; writes ``output/model.pt`` (the last model), ``iter_XX/`` and
    ``refine.json``. Each iteration: ``replicas`` runs of ``ns`` from reference frames (``bias``
    "opes": walkers with ``barrier_kjmol``; "none": unbiased), then the damped update of a Fourier
    surface of ``order``. Returns the summary (``history``: FES error and ΔF of each
    iteration's model before its update)."""
    from ..models.neural import load_potential

    if iterations < 1 or not 0 < damping <= 1 or order < 1 or replicas < 1 or not ns > 0:
        raise InputError(f"iterations {iterations}, damping {damping}, order {order}, replicas {replicas}, ns {ns}: "
                         f"expected iterations >= 1, 0 < damping <= 1, order >= 1, replicas >= 1, ns > 0")
    check_timestep(timestep_fs)
    source = load_potential(model_path)
    if not isinstance(source, CGPotential) or len(source.torsions) < 2:
        raise InputError(f"{model_path}: not a coarse-grained model with two named torsions")
    if reference_coords.ndim != 3 or reference_coords.shape[1:] != (len(source.elements), 3):
        raise InputError(f"reference: shape {reference_coords.shape}; expected (frames, {len(source.elements)}, 3) "
                         f"bead coordinates in Å for {model_path}")
    output = check_writable(output)
    state_path = output / "refine.json"
    # what makes the refinement (the number of iterations may grow on a rerun: it continues)
    settings = {"ns": ns, "replicas": replicas, "timestep_fs": timestep_fs, "order": order, "damping": damping,
                "bias": bias, "barrier_kjmol": barrier_kjmol, "report_every": report_every, "seed": seed,
                "reference_frames": len(reference_coords)}
    state = _load_state(state_path, model_path, settings)
    output.mkdir(parents=True, exist_ok=True)
    current = Path(state["history"][-1]["model"]) if state["history"] else Path(model_path)
    for it in range(len(state["history"]), iterations):
        run = output / f"iter_{it:02d}" / "md"
        model, sim, analysis, samples = sample_against_data(current, reference_coords, run, ns, replicas,
                                                            timestep_fs, bias, barrier_kjmol, report_every, seed + it,
                                                            progress)
        quads = dict(list(model.torsions.items())[:2])
        update = torsion_update(samples.values[:, :2], samples.weights, torsion_angles(reference_coords, quads),
                                model.kT, order, damping=damping)
        previous = model.correction_coef.double().numpy()
        if len(previous) and len(previous) != len(update):
            raise InputError(f"{current}: its torsion correction has order {model.correction_order}, not {order}")
        model.set_torsion_correction((previous + update) if len(previous) else update)
        new_path = output / f"iter_{it:02d}" / "model.pt"
        model.save(new_path, extra={"refined_from": str(Path(model_path).resolve()), "iteration": it + 1})
        state["history"].append({"iteration": it, "fes_mae_kT": analysis["fes_mae_kT"],
                                 "js_divergence": analysis["js_divergence"], "deltaF_kjmol": analysis["deltaF_kjmol"],
                                 "deltaF_err_kjmol": analysis["deltaF_err_kjmol"], "converged": analysis["converged"],
                                 "ns_per_day_per_replica": sim.ns_per_day(), "model": str(new_path)})
        atomic_write_json(state, state_path)  # the iteration is done only once this is written
        current = new_path
    shutil.copyfile(current, output / "model.pt")
    return state


def _load_state(path: Path, model_path: str | Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The refinement stored in ``path`` (to continue), or a new one; InputError if it refines
    another model or was made with other settings (a rerun never returns another run's result)."""
    import json

    source = str(Path(model_path).resolve())
    if not path.exists():
        return {"source_model": source, "settings": settings, "history": []}
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    if state.get("source_model") != source:
        raise InputError(f"{path}: refines {state.get('source_model')}, not {source}; use another -o")
    stored = state.setdefault("settings", settings)  # refinements from before settings were stored
    differ = sorted(k for k in settings if k in stored and stored[k] != settings[k])
    if differ:
        raise InputError(f"{path}: made with {', '.join(f'{k} {stored[k]}' for k in differ)}, not "
                         f"{', '.join(f'{k} {settings[k]}' for k in differ)}; rerun with those or use another -o")
    return state
