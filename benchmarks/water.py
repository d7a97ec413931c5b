"""Liquid water: neuralmd against DeePMD-kit and MACE, trained on the same data for the same
wall-clock budget, then accuracy, MD speed from 64 to 4,096 waters, and the liquid's physics.

    python benchmarks/water.py --budget-min 15 --threads 2 --resume      # all parts, resumable
    python benchmarks/water.py --only speed --resume                     # one part again

Data: ``../shared/data/deepmd_water`` (64 waters in a 12.44 Å box; data_0-2 train, data_3 is
held out). Parts, each saved into the results JSON as soon as it is done (``--resume`` skips
what is there; the work folder keeps models and MD runs between sessions):

- ``train``: neuralmd (``neuralmd train``'s defaults but 2 frames per step; its Trainer splits off 5 % to validate and
  MACE trains on the very same frames), DeePMD-kit 3.2 (TensorFlow backend in its own venv,
  ``examples/water/se_e2_a`` settings, its step count calibrated so that its learning-rate
  schedule ends with the budget; see ``deepmd_peer.py``), MACE (the rMD17 benchmark's recipe,
  ``forcefield_rmd17.train_mace``). Same threads; only training steps count.
- ``accuracy``: energy and force errors on data_3.
- ``batch``: neuralmd alone, trained with each of ``--batch-sizes`` frames per step for the
  same budget, then its errors on data_3 (the measurement behind ``neuralmd train``'s
  frames-per-step default for large frames); use its own ``--out``.
- ``speed``: NVT at 300 K (0.5 fs) for 64, 512 and 4,096 waters (the data's first frame
  replicated), each model through its fastest path here: neuralmd's native engine, DeePMD and
  MACE behind ASE with ASE's Bussi thermostat; each measurement in its own process so its peak
  memory is its own. The scaling exponent is the slope of log(time per step) on log(N) from 512
  to 4,096 waters.
- ``physics``: neuralmd NVT at the data's density and NPT at 300 K and 1 bar for 64 and 512
  waters (``neuralmd md``, resumable), DeePMD NVT for 64 waters with the same protocol;
  densities, O-O/O-H/H-H RDFs (``neuralmd analyze``), self-diffusion with the Yeh-Hummer
  correction, stability. The first ``--skip-ps`` are equilibration; ``--physics-ensembles npt``
  runs (or extends) only the NPT runs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import deepmd_peer as dp  # noqa: E402
import forcefield_rmd17 as ff  # noqa: E402  (machine, versions, MACE training helpers)

HERE = Path(__file__).resolve().parent
WATER = HERE.parents[1] / "shared" / "data" / "deepmd_water"
EXPERIMENT = HERE.parents[1] / "shared" / "data" / "water_experiment"
TRAIN_SETS = [WATER / f"data_{k}" for k in range(3)]
TEST_SET = WATER / "data_3"
MODELS = ("neuralmd", "deepmd", "mace")
SIZES = {64: (1, 1, 1), 512: (2, 2, 2), 4096: (4, 4, 4)}
#: (timed steps, warm-up steps) per box size for the speed part
SPEED_STEPS = {64: (40, 5), 512: (15, 3), 4096: (4, 1)}
TEMPERATURE_K = 300.0
TIMESTEP_FS = 0.5
WATER_VISCOSITY_MPA_S = 0.85  # at 300 K, for the Yeh-Hummer correction
log = ff.log


# --- results file ---------------------------------------------------------------------------
class Results:
    """The results JSON, written atomically after every finished piece."""

    def __init__(self, path: Path, resume: bool) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if resume and path.exists() else {}

    def save(self) -> None:
        from neuralmd.io_utils import atomic_write_json

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.data, self.path)


def box(waters: int, work: Path) -> Path:
    """An extxyz file of ``waters`` waters: data_3's first frame replicated (Å, with the cell)."""
    from neuralmd.data import read_frames, write_frames
    from neuralmd.data.build import replicate

    path = work / f"box_{waters}.xyz"
    if not path.exists():
        frame = read_frames(TEST_SET, require_labels=False)[0]
        write_frames([replicate(frame, SIZES[waters], where=f"{TEST_SET} frame 0")], path)
    return path


# --- training -------------------------------------------------------------------------------
def train_neuralmd(args: argparse.Namespace, work: Path, batch_size: int | None = None,
                   name: str = "neuralmd") -> dict[str, Any]:
    from neuralmd.training import TrainConfig, Trainer

    run_dir = work / name
    if (run_dir / "checkpoint.pt").exists():
        trainer = Trainer.resume(run_dir, progress=False)
    else:
        # PaiNN without repulsion: the network these results were measured with (session 12,
        # before TensorNet became the default); PaiNN's receiver blocks keep 12,288 atoms linear
        cfg = TrainConfig(train=[str(p) for p in TRAIN_SETS], architecture="painn", repulsion="none",
                          time_budget_min=args.budget_min, threads=args.threads,
                          batch_size=args.nm_batch_size if batch_size is None else batch_size, seed=args.seed)
        trainer = Trainer(cfg, run_dir, progress=False)
    results = trainer.run()
    return {"model": str(run_dir / "model.pt"), "train_seconds": results["train_seconds"], "steps": results["steps"],
            "valid": results["valid"], "settings": results["config"], "parameters": results["parameters"]}


def split_frames(work: Path) -> tuple[list, list]:
    """neuralmd's training and validation frames (its Trainer's split), for MACE."""
    from neuralmd.config import load_config
    from neuralmd.training import TrainConfig
    from neuralmd.training.trainer import load_data

    train, valid = load_data(load_config(TrainConfig, work / "neuralmd" / "config.toml"))
    return train.frames, valid.frames


def train_mace(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    train_frames, valid_frames = split_frames(work)
    mace_args = argparse.Namespace(mace_lr=args.mace_lr, mace_batch_size=args.mace_batch_size,
                                   eval_every=args.eval_every, seed=args.seed)
    res = ff.train_mace(mace_args, train_frames, valid_frames, args.budget_min * 60)
    path = work / "mace" / "model.model"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(res["model"], path)
    meta = {"zs": [int(z) for z in res["z_table"].zs], "e0": {str(k): v for k, v in res["e0"].items()}}
    (work / "mace" / "meta.json").write_text(json.dumps(meta))
    return {"model": str(path), "train_seconds": res["train_seconds"], "steps": res["steps"],
            "parameters": res["parameters"], "valid": min(res["history"], key=lambda r: r["valid_loss"]),
            "settings": {**ff.MACE_SETTINGS, "lr": args.mace_lr, "batch_size": args.mace_batch_size}}


def train_deepmd(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    venv = dp.ensure_venv(args.dp_venv).parents[1]
    res = dp.train(venv, TRAIN_SETS, TEST_SET, work / "deepmd", args.budget_min * 60, args.threads, seed=args.seed + 1)
    return {**res, "validation_note": "DeePMD-kit reports errors on data_3 while training; it selects nothing on them"}


# --- accuracy -------------------------------------------------------------------------------
def accuracy(name: str, model: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from neuralmd.data import FrameDataset, read_frames

    if name == "deepmd":
        return dp.test(args.dp_venv, Path(model), TEST_SET, args.threads)
    frames = read_frames(TEST_SET)
    if name == "neuralmd":
        from neuralmd.models import load_potential
        from neuralmd.training import evaluate

        metrics, _ = evaluate(load_potential(model), FrameDataset(frames))
    else:
        import torch
        from mace.tools.utils import AtomicNumberTable

        meta = json.loads((work / "mace" / "meta.json").read_text())
        data = ff.MaceData(frames, AtomicNumberTable(meta["zs"]), ff.MACE_SETTINGS["r_max"],
                           {int(k): v for k, v in meta["e0"].items()})
        metrics = ff.error_metrics(ff.mace_predict(torch.load(model, weights_only=False), data)[0])
    keys = ("energy_mae_mev_per_atom", "force_mae_mev_per_A", "force_rmse_mev_per_A", "frames")
    return {k: metrics[k] for k in keys}


# --- MD speed -------------------------------------------------------------------------------
def speed_child(spec: dict[str, Any]) -> dict[str, Any]:
    """One speed measurement (run in its own process): NVT steps of ``spec['model']``."""
    import torch
    from ase.io import read

    from neuralmd.threads import set_threads

    set_threads(spec["threads"])
    atoms = read(spec["structure"])
    steps, warmup = spec["steps"], spec["warmup"]
    if spec["name"] == "neuralmd":
        from neuralmd.md.simulation import Simulation
        from neuralmd.models import load_potential
        from neuralmd.state import AtomsBatch

        sim = Simulation(load_potential(spec["model"]), AtomsBatch.from_atoms([atoms]), ensemble="nvt",
                         thermostat="csvr", timestep_fs=TIMESTEP_FS, temperature_K=TEMPERATURE_K,
                         report_every=10**9, seed=0)
        sim.run(warmup)
        start = time.perf_counter()
        sim.run(steps)
    else:
        from ase import units
        from ase.md.bussi import Bussi
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
        from mace.calculators import MACECalculator

        torch.set_default_dtype(torch.float32)
        atoms.calc = MACECalculator(model_paths=spec["model"], device="cpu", default_dtype="float32")
        MaxwellBoltzmannDistribution(atoms, temperature_K=TEMPERATURE_K, rng=np.random.default_rng(0))
        md = Bussi(atoms, TIMESTEP_FS * units.fs, temperature_K=TEMPERATURE_K, taut=100 * units.fs)
        md.run(warmup)
        start = time.perf_counter()
        md.run(steps)
    seconds = time.perf_counter() - start
    return {"steps_per_s": steps / seconds, "atom_steps_per_s": steps * len(atoms) / seconds,
            "ms_per_step": seconds / steps * 1000, "atoms": len(atoms),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


#: a measurement whose memory, extrapolated linearly from the next smaller box, would pass this
#: is skipped (the machine has 24 GiB; an out-of-memory kill could take other work with it)
MEMORY_LIMIT_MB = 18_000


def projected_memory_mb(rows: list[dict[str, Any]], name: str, waters: int) -> float | None:
    """Peak memory of ``name`` at ``waters`` extrapolated from its two largest smaller boxes."""
    pts = sorted((r["waters"], r["peak_rss_mb"]) for r in rows
                 if r.get("model") == name and "peak_rss_mb" in r and r["waters"] < waters)
    if len(pts) < 2:
        return None
    (w0, m0), (w1, m1) = pts[-2:]
    return m1 + (m1 - m0) / (w1 - w0) * (waters - w1)


def speed(name: str, model: str, waters: int, args: argparse.Namespace, work: Path,
          rows: list[dict[str, Any]]) -> dict[str, Any]:
    steps, warmup = SPEED_STEPS[waters]
    structure = box(waters, work)
    projected = projected_memory_mb(rows, name, waters)
    if projected is not None and projected > MEMORY_LIMIT_MB:
        return {"model": name, "waters": waters, "error": f"skipped: {projected:.0f} MB projected from the smaller "
                                                            f"boxes, above the {MEMORY_LIMIT_MB} MB limit"}
    if name == "deepmd":
        try:
            res = dp.md_speed(args.dp_venv, Path(model), structure, steps, warmup, args.threads, TEMPERATURE_K,
                              TIMESTEP_FS)
        except RuntimeError as exc:  # e.g. killed for memory: record it, measure the others
            return {"model": name, "waters": waters, "error": str(exc).splitlines()[-1]}
    else:
        spec = {"name": name, "model": model, "structure": str(structure), "steps": steps, "warmup": warmup,
                "threads": args.threads}
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run([sys.executable, __file__, "--speed-child", json.dumps(spec)], capture_output=True,
                              text=True, env=env)
        if proc.returncode != 0:
            return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"model": name, "waters": waters, **res, "steps": steps}


def scaling_exponent(rows: list[dict[str, Any]], name: str = "neuralmd") -> float | None:
    """Slope of log(ms per step) on log(atoms) from 512 to 4,096 waters."""
    pts = {r["waters"]: r for r in rows if r.get("model") == name and "ms_per_step" in r}
    if 512 not in pts or 4096 not in pts:
        return None
    a, b = pts[512], pts[4096]
    return float(np.log(b["ms_per_step"] / a["ms_per_step"]) / np.log(b["atoms"] / a["atoms"]))


# --- physics --------------------------------------------------------------------------------
def md_run(name: str, model: str, waters: int, ensemble: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """neuralmd md (resumed when its folder holds a checkpoint), then neuralmd analyze."""
    run_dir = work / "physics" / f"neuralmd_{ensemble}_{waters}"
    steps = int(round(args.physics_ps * 1000 / TIMESTEP_FS))
    report = int(round(args.frame_every_fs / TIMESTEP_FS))
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if (run_dir / "checkpoint.pt").exists():  # continue, to this call's length (a new total)
        cmd = ["neuralmd", "md", "--resume", str(run_dir), "--steps", str(steps), "--threads", str(args.threads),
               "--no-float64"]
    else:
        cmd = ["neuralmd", "md", model, "--structure", str(box(waters, work)), "--ensemble", ensemble,
               "--thermostat", "csvr", "--temperature", str(TEMPERATURE_K), "--timestep-fs", str(TIMESTEP_FS),
               "--steps", str(steps), "--report-every", str(report), "--checkpoint-every", str(20 * report),
               "--seed", str(args.seed), "--threads", str(args.threads), "--no-float64", "-o", str(run_dir)]
        if ensemble == "npt":
            cmd += ["--pressure-bar", "1"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    out: dict[str, Any] = {"stable": proc.returncode == 0, "seconds_this_call": round(seconds, 1), "ps": args.physics_ps,
                           "skip_ps": args.skip_ps}
    if proc.returncode != 0:
        out["error"] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    analysis = run_dir / "analysis"
    cmd = ["neuralmd", "analyze", str(run_dir), "--rdf", "O-O,O-H,H-H", "--density", "--msd", "O",
           "--viscosity-mpa-s", str(WATER_VISCOSITY_MPA_S), "--skip-ps", str(args.skip_ps), "-o", str(analysis)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode == 0:
        out["analysis"] = json.loads((analysis / "analysis.json").read_text())
    else:
        out["analysis_error"] = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
    return out


def deepmd_rdf(model: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """DeePMD NVT of 64 waters (same protocol as neuralmd's), then the RDFs of its frames."""
    import MDAnalysis as mda
    from ase.io import read
    from MDAnalysis.coordinates.memory import MemoryReader

    from neuralmd.analysis import observables as obs

    out_dir = work / "physics" / "deepmd_nvt_64"
    run = dp.md_run(args.dp_venv, Path(model), box(64, work), out_dir, args.physics_ps, TIMESTEP_FS, TEMPERATURE_K,
                    args.frame_every_fs, args.threads, args.seed)
    frames = read(out_dir / "traj.extxyz", index=":")
    times_ps = np.array([f.info.get("time_fs", 0.0) for f in frames]) / 1000
    u = mda.Universe.empty(len(frames[0]), trajectory=True)
    u.add_TopologyAttr("elements", frames[0].get_chemical_symbols())
    u.add_TopologyAttr("masses", frames[0].get_masses())
    dims = np.array([[*f.cell.lengths(), *f.cell.angles()] for f in frames])
    u.load_new(np.stack([f.positions for f in frames]).astype(np.float32), format=MemoryReader, dimensions=dims)
    start = int(np.searchsorted(times_ps, args.skip_ps - 1e-9))
    rdfs = {pair: obs.rdf(u, pair, start) for pair in ("O-O", "O-H", "H-H")}
    return {**run, "rdf": rdfs}


def experiment_peaks() -> dict[str, Any]:
    """First-peak height and position of Soper (2013)'s measured O-O, O-H and H-H RDFs."""
    data = np.loadtxt(EXPERIMENT / "soper2013_rdf.txt", comments="#")
    out = {}
    r = data[:, 0]
    for k, pair in enumerate(("O-O", "O-H", "H-H")):
        g = data[:, 1 + 2 * k]
        window = r > (2.0 if pair != "O-H" else 1.4)  # beyond the intramolecular O-H peak
        peak = int(np.argmax(np.where(window, g, -np.inf)))
        out[pair] = {"height": float(g[peak]), "position_A": float(r[peak])}
    return out


# --- driver ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--budget-min", type=float, default=15.0, help="training minutes per model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="train,accuracy,speed,physics", help="parts to run, comma-separated")
    p.add_argument("--models", default=",".join(MODELS), help="models to include, comma-separated")
    p.add_argument("--resume", action="store_true", help="keep what the results file already holds")
    p.add_argument("--out", type=Path, default=HERE / "results" / "water.json")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/neuralmd-water-bench"),
                   help="models and MD runs (kept for --resume)")
    p.add_argument("--dp-venv", type=Path, default=Path("/tmp/dp-venv"), help="DeePMD-kit's venv (made if absent)")
    p.add_argument("--nm-batch-size", type=int, default=2,
                   help="neuralmd frames per step (its default 8 suits small molecules; a 192-atom frame "
                        "costs as much as 20 ethanols)")
    p.add_argument("--mace-lr", type=float, default=1e-2)
    p.add_argument("--mace-batch-size", type=int, default=2)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--batch-sizes", default="1,2,4,8", help="frames per step compared by the batch part")
    p.add_argument("--speed-sizes", default="64,512,4096", help="waters per box in the speed part")
    p.add_argument("--physics-ps", type=float, default=100.0, help="length of each physics run")
    p.add_argument("--physics-sizes", default="64,512")
    p.add_argument("--physics-ensembles", default="nvt,npt", help="neuralmd ensembles of the physics part, in order")
    p.add_argument("--skip-ps", type=float, default=5.0, help="equilibration discarded by the analysis")
    p.add_argument("--frame-every-fs", type=float, default=50.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed-child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.speed_child:
        print(json.dumps(speed_child(json.loads(args.speed_child))))
        return 0
    warnings.filterwarnings("ignore", message=".*TorchScript type system.*")
    warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
    import torch

    from neuralmd.threads import set_threads

    set_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    import mace  # noqa: F401  (sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 on import)

    for path in (*TRAIN_SETS, TEST_SET):
        if not path.is_dir():
            print(f"{path}: data folder not found (expected the project's ../shared/data)", file=sys.stderr)
            return 2
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    res = Results(args.out, args.resume)
    d = res.data
    parts = args.only.split(",")
    d.update(benchmark="liquid water: neuralmd vs DeePMD-kit vs MACE", machine=ff.machine_info(),
             versions=ff.versions())
    if "train" in parts or "speed" in parts:  # the threads every model trained and ran with
        d.update(threads=args.threads, budget_min=args.budget_min)
    models = [m for m in args.models.split(",") if m]
    load = ff.LoadMonitor()

    if "train" in parts:
        trainers = {"neuralmd": train_neuralmd, "deepmd": train_deepmd, "mace": train_mace}
        for name in models:
            if "train_seconds" in d.get(name, {}):
                continue
            log(f"{name}: training {args.budget_min} min on {args.threads} threads")
            d[name] = {**d.get(name, {}), **trainers[name](args, work)}
            load.phase(f"train_{name}")
            d.setdefault("other_processes_cpu_cores", {}).update(load.phases)
            log(f"{name}: {d[name]['steps']} steps in {d[name]['train_seconds']:.0f} s")
            res.save()

    if "batch" in parts:
        sweep = d.setdefault("batch_sweep", {})
        d.update(threads=args.threads, budget_min=args.budget_min)
        for size in args.batch_sizes.split(","):
            if "test" in sweep.get(size, {}):
                continue
            log(f"neuralmd: {size} frames per step, {args.budget_min} min on {args.threads} threads")
            run = train_neuralmd(args, work, int(size), f"neuralmd_batch{size}")
            sweep[size] = {**run, "test": accuracy("neuralmd", run["model"], args, work)}
            log(f"  force RMSE on data_3 {sweep[size]['test']['force_rmse_mev_per_A']:.1f} meV/Å "
                f"after {run['steps']} steps")
            res.save()

    if "accuracy" in parts:
        for name in models:
            if "model" not in d.get(name, {}) or "force_rmse_mev_per_A" in d[name]:
                continue
            d[name].update(accuracy(name, d[name]["model"], args, work))
            log(f"{name}: data_3 energy MAE {d[name]['energy_mae_mev_per_atom']:.2f} meV/atom, force MAE "
                f"{d[name]['force_mae_mev_per_A']:.1f}, RMSE {d[name]['force_rmse_mev_per_A']:.1f} meV/Å")
            res.save()

    if "speed" in parts:
        rows = d.setdefault("md_speed", [])
        for waters in [int(w) for w in args.speed_sizes.split(",")]:
            for name in models:
                if "model" not in d.get(name, {}) or any(r["model"] == name and r["waters"] == waters for r in rows):
                    continue
                row = speed(name, d[name]["model"], waters, args, work, rows)
                rows.append(row)
                load.phase(f"speed_{name}_{waters}")
                d.setdefault("other_processes_cpu_cores", {}).update(load.phases)
                log(f"{name} {waters} waters: " + (row["error"] if "error" in row else
                    f"{row['ms_per_step']:.1f} ms/step, {row['atom_steps_per_s']:.0f} atom-steps/s, "
                    f"{row['peak_rss_mb']:.0f} MB"))
                res.save()
        d["scaling_exponent"] = scaling_exponent(rows)
        res.save()

    if "physics" in parts:
        phys = d.setdefault("physics", {"runs": {}})
        phys["threads"] = args.threads  # each run records its own ps and skip_ps
        for waters in [int(w) for w in args.physics_sizes.split(",")]:
            for ensemble in args.physics_ensembles.split(","):
                key = f"neuralmd_{ensemble}_{waters}"
                if phys["runs"].get(key, {}).get("analysis") and phys["runs"][key].get("ps") == args.physics_ps:
                    continue
                log(f"physics: {key}, {args.physics_ps} ps")
                phys["runs"][key] = md_run("neuralmd", d["neuralmd"]["model"], waters, ensemble, args, work)
                res.save()
        dp_run = phys["runs"].get("deepmd_nvt_64", {})
        if "deepmd" in models and "model" in d.get("deepmd", {}) and (
                not dp_run.get("rdf") or dp_run.get("ps_done", 0) < args.physics_ps):
            log(f"physics: deepmd_nvt_64, {args.physics_ps} ps")
            phys["runs"]["deepmd_nvt_64"] = deepmd_rdf(d["deepmd"]["model"], args, work)
            res.save()
        summarise_physics(d)
        res.save()
    log(f"-> {args.out}")
    return 0


def summarise_physics(d: dict[str, Any]) -> None:
    """The results file's ``physics`` summary keys from the runs."""
    phys, runs = d["physics"], d["physics"]["runs"]
    phys["density_g_cm3"] = {str(w): runs[f"neuralmd_npt_{w}"]["analysis"]["density_g_cm3"]
                             for w in (64, 512) if runs.get(f"neuralmd_npt_{w}", {}).get("analysis")}
    phys["stable"] = {key: run.get("stable") for key, run in runs.items()}
    peaks = {}
    if runs.get("neuralmd_nvt_64", {}).get("analysis"):
        peaks["neuralmd"] = runs["neuralmd_nvt_64"]["analysis"]["rdf"]["O-O"]["first_peak"]
        phys["diffusion_1e-9_m2_s"] = runs["neuralmd_nvt_64"]["analysis"]["diffusion_1e-9_m2_s"]["O"]
    if runs.get("deepmd_nvt_64", {}).get("rdf"):
        peaks["deepmd"] = runs["deepmd_nvt_64"]["rdf"]["O-O"]["first_peak"]
    peaks["experiment"] = experiment_peaks()["O-O"]
    phys["rdf_oo_first_peak"] = peaks


if __name__ == "__main__":
    sys.exit(main())
