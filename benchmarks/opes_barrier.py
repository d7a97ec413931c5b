"""Which OPES ``BARRIER`` for binding: a sweep on a one-dimensional binding toy.

A guest's position z (Å) moves by overdamped Langevin dynamics (300 K, D = 0.2 Å²/ps, 5 fs
steps) on F(z) = -depth · exp(-z²/2 Å²): a bound well at z = 0 and a flat unbound plateau out to
a wall at 20 Å, the shape of a binding PMF along a funnel's axis. neuralmd's OPES (``OPES`` on
a ``Position`` CV, kernels every 1 ps from the first step, the binding run's initial width
0.5 Å) biases z. For each depth, barrier setting and seed the script counts the transitions
between bound (z < 1.5 Å) and unbound (z > 6 Å) in ``--ns`` and the error of the reweighted
ΔF = F(unbound) - F(bound) (after the first ``--skip-ns``) against the exact integral.

    python benchmarks/opes_barrier.py                       # results/opes_barrier.json

The question it answers: the CB7-B2 runs with BARRIER = 150 kJ/mol (well above the bound
state's depth) left the host once and never came back in 6 ns, because OPES_METAD's bias in a
region first reached at the bias floor -BARRIER rises only as fast as the reweighted samples
there (weights exp(βV) ≈ exp(-βBARRIER)) accumulate.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from neuralmd.md.integrators import MDState
from neuralmd.sampling.biases import KJMOL, OPES
from neuralmd.sampling.cvs import Position
from neuralmd.sampling.fes import kT_kjmol
from neuralmd.state import AtomsBatch

HERE = Path(__file__).resolve().parent
T_K = 300.0
KT = kT_kjmol(T_K)
WALL_A, LOW_A = 20.0, -3.0
BOUND_A, UNBOUND_A = 1.5, 6.0
GRID_STEP_A = 0.01


def exact_delta_f(depth: float) -> float:
    """F(unbound) - F(bound) (kJ/mol) by quadrature of exp(-βF)."""
    z = np.linspace(LOW_A, WALL_A, 200_001)
    p = np.exp(depth * np.exp(-z**2 / 2) / KT)
    return float(-KT * np.log(p[z > UNBOUND_A].sum() / p[z < BOUND_A].sum()))


def run(depth: float, barrier: float, mode: str, ns: float, seed: int, diffusion: float = 0.2,
        dt_ps: float = 0.005, pace_ps: float = 1.0, sigma: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """z and the bias V(z) (kJ/mol) at every deposition (every ``pace_ps``)."""
    rng = np.random.default_rng(seed)
    bias = OPES(Position(0, axes=(0,)), sigma=[sigma], barrier_kjmol=barrier, pace=1, temperature_K=T_K, mode=mode)
    grid = np.arange(LOW_A, WALL_A + 2 * GRID_STEP_A, GRID_STEP_A)
    grid_t = torch.as_tensor(grid, dtype=torch.float64)[:, None]
    z, pace = 0.0, int(round(pace_ps / dt_ps))
    drift, kick = diffusion / KT * dt_ps, math.sqrt(2 * diffusion * dt_ps)
    zs, vs = [], []
    for block in range(int(round(ns * 1000 / pace_ps))):
        atoms = Atoms("H", positions=[[z, 0.0, 0.0]])
        bias.update(MDState(AtomsBatch.from_atoms([atoms]), forces=None, energy=None, step=0))
        v = (bias.energy_of_cv(grid_t) / KJMOL).numpy()
        dv = list(np.diff(v) / GRID_STEP_A)  # dV/dz on the grid's intervals (kJ/mol/Å)
        zs.append(z)
        vs.append(float(np.interp(z, grid, v)))
        for xi in rng.standard_normal(pace).tolist():
            k = min(max(int((z - LOW_A) / GRID_STEP_A), 0), len(dv) - 1)
            z += -(depth * z * math.exp(-z * z / 2) + dv[k]) * drift + kick * xi
            z = 2 * WALL_A - z if z > WALL_A else (2 * LOW_A - z if z < LOW_A else z)
    return np.array(zs), np.array(vs)


def summary(zs: np.ndarray, vs: np.ndarray, depth: float, skip: int) -> dict:
    bound, unbound = zs < BOUND_A, zs > UNBOUND_A
    states = np.where(bound, 1, np.where(unbound, 2, 0))
    visited = states[states > 0]
    out = {"transitions": int((np.diff(visited) != 0).sum()),
           "first_exit_ps": int(np.argmax(unbound)) if unbound.any() else None,
           "unbound_fraction": round(float(unbound.mean()), 3)}
    w = np.exp((vs[skip:] - vs[skip:].max()) / KT)
    wb, wu = w[bound[skip:]].sum(), w[unbound[skip:]].sum()
    out["delta_f"] = round(float(-KT * math.log(wu / wb)), 2) if wb > 0 and wu > 0 else None
    out["exact"] = round(exact_delta_f(depth), 2)
    out["error"] = round(out["delta_f"] - out["exact"], 2) if out["delta_f"] is not None else None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", default="60,90", help="well depths (kJ/mol)")
    p.add_argument("--barriers", default="60,80,100,150", help="OPES barriers (kJ/mol)")
    p.add_argument("--modes", default="metad", help="metad, explore")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--ns", type=float, default=10.0)
    p.add_argument("--skip-ns", type=float, default=0.5)
    p.add_argument("--out", type=Path, default=HERE / "results" / "opes_barrier.json")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for depth in [float(x) for x in args.depths.split(",")]:
        for mode in args.modes.split(","):
            for barrier in [float(x) for x in args.barriers.split(",")]:
                for seed in [int(x) for x in args.seeds.split(",")]:
                    start = time.perf_counter()
                    zs, vs = run(depth, barrier, mode, args.ns, seed)
                    row = {"depth_kjmol": depth, "barrier_kjmol": barrier, "mode": mode, "seed": seed,
                           **summary(zs, vs, depth, int(args.skip_ns * 1000)),
                           "seconds": round(time.perf_counter() - start, 1)}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "opes_barrier", "command": " ".join(sys.argv),
                                    "settings": vars(args) | {"out": str(args.out)}, "rows": rows}, indent=1))
    print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
