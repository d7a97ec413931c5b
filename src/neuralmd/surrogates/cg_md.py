"""Langevin dynamics of a CG model in the native engine, and its torsion free-energy surface
compared with the mapped all-atom data.

The comparison (the numbers ``neuralmd cg md`` and benchmarks/surrogates.py report):

- ``deltaF_kjmol``: F(t0 > 0) - F(t0 < 0) for the first named torsion (phi for a dipeptide),
  with a block error over groups of replicas;
- ``fes_mae_kT``: mean absolute difference of the 2D torsion FES (k_BT) over the bins that
  both populate (at least ``min_count`` reference frames), after removing the mean offset
  (free energies are defined up to a constant).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from ..config import save_config
from ..errors import InputError
from ..io_utils import atomic_write_json
from ..md.simulation import MDSettings, Simulation
from ..sampling.fes import delta_f, delta_f_blocks, fes, kT_kjmol
from .coarse_grain import CGPotential, torsion_angles

PERIODIC = [(-math.pi, math.pi)] * 2


def start_cg_md(model_path: str | Path, output: str | Path, ns: float, replicas: int, timestep_fs: float = 2.0,
                friction_per_ps: float = 1.0, temperature_K: float | None = None, seed: int = 0,
                report_every: int = 500, checkpoint_every: int = 10_000, progress: bool = True) -> Simulation:
    """A CG Langevin run of ``replicas`` copies started from frames stored in the model file
    (cycled when there are more replicas than frames), at the data's temperature unless given."""
    from ..models.neural import load_potential

    model = load_potential(model_path)
    if not isinstance(model, CGPotential):
        raise InputError(f"{model_path}: not a coarse-grained model (train one with `neuralmd cg train`)")
    if replicas < 1 or not ns > 0:
        raise InputError(f"replicas {replicas}, ns {ns}: expected replicas >= 1 and ns > 0")
    output = Path(output)
    if (output / "checkpoint.pt").exists():
        raise InputError(f"{output}: already holds an MD run; use --resume {output} or another -o")
    starts = torch.load(model_path, weights_only=True)["start_positions"].numpy()
    steps = int(round(ns * 1e6 / timestep_fs))
    settings = MDSettings(ensemble="nvt", timestep_fs=timestep_fs, temperature_K=[temperature_K or model.temperature_K],
                          friction_per_ps=friction_per_ps, seed=seed, report_every=report_every,
                          checkpoint_every=checkpoint_every, total_steps=steps, model_path=str(Path(model_path).resolve()),
                          max_spread_A=20.0)
    batch = model.start_batch(starts[np.arange(replicas) % len(starts)])
    sim = Simulation(model, batch, settings, run_dir=output, progress=progress)
    output.mkdir(parents=True, exist_ok=True)
    save_config(settings, output / "md.toml")
    return sim


def trajectory_positions(run_dir: str | Path, skip_ps: float = 0.0) -> list[np.ndarray]:
    """Bead positions (T, n, 3) Å of each replica's H5MD trajectory, frames before ``skip_ps``
    dropped."""
    out = []
    for path in sorted(Path(run_dir).glob("traj_*.h5md")):
        with h5py.File(path, "r") as f:
            group = f["particles/trajectory/position"]
            n = min(len(group["value"]), len(group["time"]))
            keep = group["time"][:n] >= skip_ps
            out.append(group["value"][:n][keep])
    if not out:
        raise InputError(f"{run_dir}: no traj_*.h5md trajectories")
    return out


def compare_torsion_fes(sample: np.ndarray, reference: np.ndarray | None, temperature_K: float, bins: int = 24,
                        min_count: int = 10, blocks: int = 4) -> dict[str, Any]:
    """Basin ΔF (kJ/mol) of the first torsion and, with a reference, the 2D FES error (k_BT).

    ``sample`` and ``reference`` are torsions (T, 2) in rad; ``sample`` is ordered in
    ``blocks`` contiguous groups (replicas) for the error bar."""
    phi_neg, phi_pos = [(-math.pi, 0.0), (-math.inf, math.inf)], [(0.0, math.pi + 1e-9), (-math.inf, math.inf)]
    ones = np.ones(len(sample))
    dF, err = delta_f_blocks(sample, ones, phi_neg, phi_pos, temperature_K, blocks)
    out: dict[str, Any] = {"frames": len(sample), "deltaF_kjmol": dF, "deltaF_err_kjmol": err,
                           "fraction_t0_positive": float((sample[:, 0] > 0).mean())}
    centres, f_sample = fes(sample, ones, [bins, bins], PERIODIC, temperature_K)
    out["fes"] = {"centres": centres, "sample": f_sample}
    if reference is None:
        return out
    _, f_ref = fes(reference, np.ones(len(reference)), [bins, bins], PERIODIC, temperature_K)
    counts, _, _ = np.histogram2d(reference[:, 0], reference[:, 1], bins=bins, range=PERIODIC)
    common = (counts >= min_count) & np.isfinite(f_sample)
    diff = (f_sample - f_ref)[common]
    diff -= diff.mean()
    out["fes"]["reference"] = f_ref
    out.update({"reference_deltaF_kjmol": delta_f(reference, np.ones(len(reference)), phi_neg, phi_pos, temperature_K),
                "fes_mae_kT": float(np.abs(diff).mean() / kT_kjmol(temperature_K)), "fes_bins_compared": int(common.sum()),
                "reference_population_compared": float(counts[common].sum() / counts.sum())})
    return out


def analyse_cg_run(run_dir: str | Path, model: CGPotential, reference_coords: np.ndarray | None = None,
                   skip_ps: float = 0.0) -> dict[str, Any]:
    """Torsion FES of a CG run (and against mapped reference coordinates): writes
    ``cg_fes.png`` and ``cg_analysis.json`` in ``run_dir`` and returns the numbers."""
    from ..analysis.plots import plot_fes_comparison

    run_dir = Path(run_dir)
    if len(model.torsions) < 2:
        raise InputError(f"{run_dir}: the CG model names {len(model.torsions)} torsion(s); the FES needs two")
    quads = dict(list(model.torsions.items())[:2])
    per_replica = trajectory_positions(run_dir, skip_ps)
    sample = np.concatenate([torsion_angles(x, quads) for x in per_replica])
    reference = torsion_angles(reference_coords, quads) if reference_coords is not None else None
    result = compare_torsion_fes(sample, reference, model.temperature_K, blocks=min(4, len(per_replica)))
    surfaces = {"CG model": result["fes"]["sample"]}
    if reference is not None:
        surfaces["reference (mapped data)"] = result["fes"]["reference"]
    names = [f"{name} (rad)" for name in quads]
    title = f"ΔF({names[0].split()[0]}>0) = {result['deltaF_kjmol']:.2f} ± {result['deltaF_err_kjmol']:.2f} kJ/mol"
    if reference is not None:
        title += f" (data {result['reference_deltaF_kjmol']:.2f}); FES error {result['fes_mae_kT']:.2f} kT"
    plot_fes_comparison(result["fes"]["centres"], surfaces, names, run_dir / "cg_fes.png", title)
    summary = {k: v for k, v in result.items() if k != "fes"}
    atomic_write_json(summary, run_dir / "cg_analysis.json")
    return summary
