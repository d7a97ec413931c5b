"""MD speed: neuralmd's batched engine against ASE driving the same model and ASE driving MACE.

In one run, on the same thread count, for ethanol (9 atoms) and 3BPA (27 atoms):
- steps/s of the native engine with one replica, of ASE's VelocityVerlet driving the neuralmd
  calculator, and of ASE's VelocityVerlet driving MACE's calculator (2 layers, 32x0e+32x1o);
- atom-steps/s of the native engine with 1, 8, 32 and 128 replicas in one batch, and the ratio
  to running them one by one;
- the time of the model's own forward+backward per step, so the engine's overhead shows;
- the same native runs with ``compile=True`` (all-pairs static graph + torch.compile, see
  neuralmd.models.compiled), and the compilation time; the compiled model's own time per step,
  and ASE driving the same compiled potential (what the engine adds beyond compiling).

``--device cuda`` runs both models and the engine on a GPU (compiled runs replay CUDA graphs);
``--data`` points at a folder with ``rmd17_ethanol/test_MD.xyz`` and ``3bpa/train_300K.xyz``
(only their first frames are used).

    python benchmarks/md_speed.py --threads 2
    python benchmarks/md_speed.py --device cuda --replicas 1,8,32,128,512 --out results/md_speed_gpu.json

Timing does not depend on the weights, so both models are built with random weights over
H, C, N, O and their output scaled to ~0.01 eV/Å forces: the molecules then stay intact over
the short runs (started at 50 K) without training anything. Both models run in float32; the
native engine keeps its state in float64. NVE (velocity Verlet) everywhere.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")  # no compile-worker processes beside the timings
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")  # compile_s: a first, cold compilation
import torch  # noqa: E402
from ase import units
from ase.io import read
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from neuralmd.io_utils import atomic_write_json
from neuralmd.md.ase_calculator import NeuralCalculator
from neuralmd.md.simulation import Simulation, make_force_fn
from neuralmd.models import NeuralPotential
from neuralmd.models.compiled import StaticGraphPotential
from neuralmd.state import AtomsBatch
from neuralmd.threads import set_threads

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import forcefield_rmd17 as ff  # noqa: E402  (shared machine/version/MACE helpers)

ELEMENTS = [1, 6, 7, 8]
FORCE_SCALE = 0.01  # eV/Å: keeps random-weight models from tearing the molecules apart
TIMESTEP_FS = 0.5
TEMPERATURE_K = 50.0


def molecules(data: Path) -> dict[str, Any]:
    ethanol = read(data / "rmd17_ethanol" / "test_MD.xyz", index=0)
    bpa = read(data / "3bpa" / "train_300K.xyz", index=0)
    for atoms in (ethanol, bpa):
        atoms.calc = None
    return {"ethanol": ethanol, "3bpa": bpa}


def synchronize(device: torch.device) -> None:
    """Wait for the GPU's queued work (a timer must not stop while kernels still run)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def native_steps_per_s(model, atoms, replicas: int, steps: int, compile: bool = False) -> tuple[float, float]:
    """Steps per second of the native engine on ``replicas`` copies of ``atoms``, and the
    seconds its set-up and first 30 steps took (the compilation, with ``compile``)."""
    if compile:  # each compiled measurement starts as a fresh process would: no compiled graphs of other shapes
        torch._dynamo.reset()
    start = time.perf_counter()
    sim = Simulation(model, AtomsBatch.from_atoms([atoms] * replicas), ensemble="nve", timestep_fs=TIMESTEP_FS,
                     temperature_K=TEMPERATURE_K, report_every=10**9, seed=0, compile=compile)
    sim.run(30)  # warm-up (the first force call compiles)
    synchronize(model.device)
    warm_up = time.perf_counter() - start
    start = time.perf_counter()
    sim.run(steps)
    synchronize(model.device)
    return steps / (time.perf_counter() - start), warm_up


def model_ms_per_step(model, atoms, calls: int) -> float:
    """Forward+backward (energy and forces) of one replica, as the engine calls it, in ms."""
    force_fn = make_force_fn(model)
    batch = AtomsBatch.from_atoms([atoms], dtype=torch.float64, device=model.device)
    for _ in range(5):
        force_fn(batch)
    synchronize(model.device)
    start = time.perf_counter()
    for _ in range(calls):
        force_fn(batch)
    synchronize(model.device)
    return (time.perf_counter() - start) / calls * 1000


def ase_steps_per_s(calc, atoms, steps: int) -> float:
    work = atoms.copy()
    work.calc = calc
    MaxwellBoltzmannDistribution(work, temperature_K=TEMPERATURE_K, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(work, TIMESTEP_FS * units.fs)
    dyn.run(5)
    start = time.perf_counter()
    dyn.run(steps)
    return steps / (time.perf_counter() - start)


def mace_calculator(work: Path, seed: int, device: torch.device):
    from mace.calculators import MACECalculator
    from mace.tools.utils import AtomicNumberTable

    model = ff.build_mace(AtomicNumberTable(ELEMENTS), np.zeros(len(ELEMENTS)), avg_num_neighbors=10.0,
                          mean=0.0, std=FORCE_SCALE, seed=seed)
    path = work / "mace_random.model"
    torch.save(model, path)
    return MACECalculator(model_paths=str(path), device=device.type, default_dtype="float32"), model


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=300, help="timed steps per single-replica measurement")
    p.add_argument("--features", type=int, default=64)
    p.add_argument("--interactions", type=int, default=3)
    p.add_argument("--replicas", default="1,8,32,128")
    p.add_argument("--no-compile", action="store_true", help="skip the compiled native runs")
    p.add_argument("--out", type=Path, default=HERE / "results" / "md_speed.json")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/neuralmd-md-speed"))
    p.add_argument("--device", default="cpu", help="torch device of both models and the native engine (cpu, cuda)")
    p.add_argument("--data", type=Path, default=ff.DATA, help="folder with rmd17_ethanol/ and 3bpa/")
    p.add_argument("--molecules", default="ethanol,3bpa", help="which of ethanol, 3bpa to run")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    set_threads(args.threads)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    monitor = ff.LoadMonitor()
    torch.manual_seed(0)
    model = NeuralPotential(ELEMENTS, scale=FORCE_SCALE, features=args.features,
                            interactions=args.interactions).to(device).eval()
    mace_calc, mace_model = mace_calculator(args.work_dir, seed=0, device=device)
    results: dict[str, Any] = {
        "machine": {**ff.machine_info(), "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                                    else "cpu")},
        "threads": args.threads, "versions": ff.versions(),
        "settings": {"timestep_fs": TIMESTEP_FS, "temperature_K": TEMPERATURE_K, "ensemble": "nve",
                     "neuralmd_model": {"architecture": "painn", "features": args.features,
                                        "interactions": args.interactions, "cutoff_A": model.cutoff,
                                        "parameters": sum(p.numel() for p in model.parameters())},
                     "mace_model": {**{k: ff.MACE_SETTINGS[k] for k in ("num_interactions", "hidden_irreps", "max_ell",
                                                                        "correlation", "r_max")},
                                    "parameters": sum(p.numel() for p in mace_model.parameters())},
                     "weights": "random, forces scaled to ~0.01 eV/Å (timing does not depend on weights)"},
    }
    replicas = [int(r) for r in args.replicas.split(",")]
    for name, atoms in molecules(args.data).items():
        if name not in args.molecules.split(","):
            continue
        n = len(atoms)
        ff.log(f"{name}: {n} atoms")
        row: dict[str, Any] = {"atoms": n}
        row["model_ms_per_step"] = model_ms_per_step(model, atoms, args.steps)
        row["native_steps_per_s"] = native_steps_per_s(model, atoms, 1, args.steps)[0]
        row["engine_overhead_fraction"] = 1000.0 / row["native_steps_per_s"] / row["model_ms_per_step"] - 1.0
        if not args.no_compile:
            row["native_compiled_steps_per_s"], row["compile_s"] = native_steps_per_s(model, atoms, 1, args.steps,
                                                                                       compile=True)
        row["ase_neuralmd_steps_per_s"] = ase_steps_per_s(NeuralCalculator(model), atoms, args.steps)
        if not args.no_compile:  # the same compiled potential behind ASE: what the engine adds beyond compiling
            torch._dynamo.reset()
            static = StaticGraphPotential(model, AtomsBatch.from_atoms([atoms], dtype=torch.float64, device=device))
            row["model_compiled_ms_per_step"] = model_ms_per_step(static, atoms, args.steps)
            row["compiled_engine_overhead_fraction"] = (1000.0 / row["native_compiled_steps_per_s"]
                                                        / row["model_compiled_ms_per_step"] - 1.0)
            row["ase_neuralmd_compiled_steps_per_s"] = ase_steps_per_s(NeuralCalculator(static), atoms, args.steps)
        row["ase_mace_steps_per_s"] = ase_steps_per_s(mace_calc, atoms, max(args.steps // 5, 20))
        for key, compile in (("batched", False), ("batched_compiled", True)):
            if compile and args.no_compile:
                continue
            batched = []
            for r in replicas:
                steps = max(20, args.steps * 4 // max(r, 4))
                atom_steps = native_steps_per_s(model, atoms, r, steps, compile)[0] * r * n
                batched.append({"replicas": r, "atom_steps_per_s": atom_steps})
            one = batched[0]["atom_steps_per_s"] if replicas[0] == 1 else row["native_steps_per_s"] * n
            for b in batched:
                b["speedup_vs_one_by_one"] = b["atom_steps_per_s"] / one
            row[key] = batched
        row["ratios"] = {"native_vs_ase_neuralmd": row["native_steps_per_s"] / row["ase_neuralmd_steps_per_s"],
                         "native_vs_ase_mace": row["native_steps_per_s"] / row["ase_mace_steps_per_s"]}
        if "native_compiled_steps_per_s" in row:
            row["ratios"]["native_compiled_vs_ase_neuralmd"] = (row["native_compiled_steps_per_s"]
                                                                / row["ase_neuralmd_steps_per_s"])
            row["ratios"]["native_compiled_vs_ase_neuralmd_compiled"] = (row["native_compiled_steps_per_s"]
                                                                         / row["ase_neuralmd_compiled_steps_per_s"])
        results[name] = row
        monitor.phase(name)
        ff.log(f"  native {row['native_steps_per_s']:.0f} steps/s, ASE+neuralmd {row['ase_neuralmd_steps_per_s']:.0f},"
               f" ASE+MACE {row['ase_mace_steps_per_s']:.0f}; model {row['model_ms_per_step']:.2f} ms/step, engine "
               f"overhead {100 * row['engine_overhead_fraction']:.0f} %")
        if "native_compiled_steps_per_s" in row:
            ff.log(f"  compiled: {row['native_compiled_steps_per_s']:.0f} steps/s "
                   f"({row['ratios']['native_compiled_vs_ase_neuralmd']:.2f}x ASE+neuralmd), "
                   f"compiled in {row['compile_s']:.0f} s; compiled model {row['model_compiled_ms_per_step']:.2f} "
                   f"ms/step, engine overhead {100 * row['compiled_engine_overhead_fraction']:.0f} %; ASE driving "
                   f"the compiled model {row['ase_neuralmd_compiled_steps_per_s']:.0f} steps/s")
        for key in ("batched", "batched_compiled"):
            for b in row.get(key, []):
                ff.log(f"  {key:16s} {b['replicas']:>4} replicas: {b['atom_steps_per_s']:.0f} atom-steps/s "
                       f"({b['speedup_vs_one_by_one']:.1f}x one by one)")
    results["machine"]["other_processes_cpu_cores"] = monitor.phases
    busy = monitor.busy()
    if busy:
        ff.log(f"WARNING: other processes used the CPU during {busy}; timings are not trustworthy")
    atomic_write_json(results, args.out)
    ff.log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
