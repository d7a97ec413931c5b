"""``neuralmd demo``: every stage that exists, on a built-in molecule, in a few minutes.

Ethanol: sample geometries by xTB Langevin MD at 500 K (ASE + tblite), label them with
GFN2-xTB through the Labeler, train a small neural potential (the default network), evaluate it on frames from an
independent trajectory, run batched MD and OPES (4 walkers) on the OH torsion with the learned
potential, run one round of active learning, and write a run directory with plots and results.json.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase import units
from rich.console import Console
from rich.table import Table
from tblite.ase import TBLite

from .analysis.plots import plot_parity
from .data.dataset import FrameDataset
from .data.io import write_frames
from .errors import InputError
from .io_utils import atomic_write_json
from .models.neural import load_potential
from .reference.xtb import XTBLabeler
from .rundir import LOG, refuse_existing
from .training.metrics import evaluate
from .training.trainer import TrainConfig, Trainer


def sample_geometries(atoms: Atoms, n_frames: int, temperature_K: float, every: int, seed: int) -> list[Atoms]:
    """Snapshots every ``every`` steps of GFN2-xTB Langevin MD (0.5 fs, friction 0.02/fs)."""
    work = atoms.copy()
    work.calc = TBLite(method="GFN2-xTB", verbosity=0)
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(work, temperature_K=temperature_K, rng=rng)
    Stationary(work)
    dyn = Langevin(work, 0.5 * units.fs, temperature_K=temperature_K, friction=0.02 / units.fs, fixcm=False, rng=rng)
    dyn.run(200)  # equilibrate
    frames = []
    for _ in range(n_frames):
        dyn.run(every)
        snap = Atoms(work.numbers, work.positions.copy())
        frames.append(snap)
    return frames


def run_md_stage(model, start: Atoms, out: Path, console: Console, replicas: int = 8,
                 steps: int = 2000) -> dict[str, Any]:
    """Langevin MD (0.5 fs, 300 K) of ``replicas`` copies of ``start`` in one batch."""
    from .analysis.plots import plot_md_log
    from .md.simulation import Simulation
    from .state import AtomsBatch

    sim = Simulation(model, AtomsBatch.from_atoms([start] * replicas), ensemble="nvt", timestep_fs=0.5,
                     temperature_K=300.0, friction_per_ps=5.0, seed=7, report_every=50, run_dir=out, progress=True)
    state = sim.run(steps)
    plot_md_log(out / LOG, out / "md.png")
    from .md.integrators import temperature

    mean_t = float(temperature(state.batch).mean())
    console.print(f"{steps} steps x {replicas} replicas ({sim.time_ps(steps):.1f} ps each) at "
                  f"{sim.ns_per_day():.1f} ns/day per replica; final mean T {mean_t:.0f} K")
    return {"replicas": replicas, "steps": steps, "ns_per_day_per_replica": sim.ns_per_day(),
            "final_mean_temperature_K": mean_t}


def run_sampling_stage(model, start: Atoms, out: Path, console: Console, walkers: int = 4,
                       steps: int = 3000) -> dict[str, Any]:
    """OPES along the C-C-O-H torsion with the learned potential: ``walkers`` replicas share one
    bias; the reweighted free-energy profile of the torsion is plotted."""
    from .analysis.plots import plot_fes
    from .md.simulation import MDSettings
    from .sampling import fes as F
    from .sampling.bias_factory import BiasSettings
    from .sampling.runs import start_native
    from .sampling.samples import load_samples

    settings = MDSettings(timestep_fs=0.5, temperature_K=[300.0], friction_per_ps=5.0, seed=11, report_every=10,
                          checkpoint_every=steps, total_steps=steps)
    bias = BiasSettings(cv="torsion(0,1,2,3)", bias="opes", barrier_kjmol=15.0, pace=200, sigma=[0.35])
    sim = start_native(model, [start] * walkers, settings, bias, out, progress=True)
    sim.run()
    samples = load_samples(out)
    centres, profile = F.fes(samples.values, samples.weights, 36, [(-np.pi, np.pi)], samples.temperature_K)
    plot_fes(centres, profile, ["C-C-O-H torsion (rad)"], out / "fes.png",
             title="ethanol OH rotor, OPES with the learned potential")
    barrier = float(np.nanmax(profile))
    console.print(f"{walkers} walkers x {steps} steps, {sim.terms[0].heights.numel()} kernels; "
                  f"OH-rotor free-energy profile: highest point {barrier:.1f} kJ/mol above the minimum")
    return {"walkers": walkers, "steps": steps, "kernels": sim.terms[0].heights.numel(),
            "torsion_profile_max_kjmol": barrier}


def run_active_stage(start: Atoms, out: Path, console: Console) -> dict[str, Any]:
    """One round of active learning from a single structure: a 2-member committee explores at
    300 and 600 K, the frames it disagrees on are labelled with GFN2-xTB on a 2-worker Dask
    cluster into labels.db, and the committee retrains."""
    from .active.loop import ActiveLearning, ActiveSettings

    structure = out / "start.xyz"
    out.mkdir(parents=True, exist_ok=True)
    write_frames([Atoms(start.numbers, start.positions)], structure)
    settings = ActiveSettings(structure=str(structure), committee=2, temperatures_K=[300.0, 600.0], rounds=1,
                              initial_frames=16, md_steps=400, max_select=12, train_steps=150, features=16,
                              trust_low_eV_per_A=0.05, trust_high_eV_per_A=1.0, workers=2, seed=0)
    summary = ActiveLearning(settings, out).run()
    row = summary["history"][-1]
    console.print(f"round 1: {row['candidates']} candidates between the trust levels, {row['selected']} selected "
                  f"and labelled; {summary['labels']} labels in {out / 'labels.db'}")
    return {"labels": summary["labels"], "candidates": row["candidates"], "selected": row["selected"],
            "final_valid_force_mae_mev_per_A": summary["final_valid_force_mae_mev_per_A"]}


def run_demo(out: str | Path = "neuralmd-demo", train_minutes: float = 1.5, n_train: int = 300,
             n_test: int = 100, threads: int | None = None, console: Console | None = None) -> dict[str, Any]:
    """Run the demo into ``out``; return its results."""
    console = console or Console()
    if not 0 < train_minutes < float("inf") or n_train < 10 or n_test < 1:
        raise InputError(f"train_minutes {train_minutes}, n_train {n_train}, n_test {n_test}: expected a training "
                         f"time > 0 minutes, at least 10 training and 1 test frame")
    out = refuse_existing(out, "a demo run", marker="train", resumable=False)
    if out.is_dir() and any(out.iterdir()):
        raise InputError(f"{out}: exists and is not empty; the demo writes a new folder (choose another -o)")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    mol = molecule("CH3CH2OH")

    console.rule("[bold]1. sample geometries (xTB MD, 500 K)")
    train_geoms = sample_geometries(mol, n_train, 500.0, every=10, seed=1)
    test_geoms = sample_geometries(mol, n_test, 500.0, every=10, seed=2)
    console.print(f"{len(train_geoms)} training and {len(test_geoms)} test geometries from independent trajectories")

    console.rule("[bold]2. label with GFN2-xTB (tblite)")
    labeler = XTBLabeler()
    labelled = {}
    for name, geoms in (("train", train_geoms), ("test", test_geoms)):
        result = labeler.label(geoms, progress=True)
        if result.failures:
            console.print(f"[yellow]{len(result.failures)} {name} frames failed: {result.failures[:3]}")
        labelled[name] = result.frames
        write_frames(result.frames, out / f"{name}.xyz")
    console.print(f"wrote {out / 'train.xyz'} and {out / 'test.xyz'}")

    cfg = TrainConfig(train=str(out / "train.xyz"), valid_fraction=0.1, features=32, interactions=2,
                      batch_size=8, lr=2e-3, eval_every=50, checkpoint_every=100,
                      time_budget_min=train_minutes, threads=threads or 0)
    trainer = Trainer(cfg, out / "train")  # resolves the architecture ("auto": TensorNet for molecules)
    name = {"painn": "PaiNN", "tensornet": "TensorNet"}[cfg.architecture]
    console.rule(f"[bold]3. train a {name} potential")
    train_results = trainer.run()

    console.rule("[bold]4. evaluate on the independent test trajectory")
    model = load_potential(out / "train" / "model.pt")
    metrics, preds = evaluate(model, FrameDataset(labelled["test"]))
    plot_parity(preds, metrics, out / "parity_test.png", title=f"demo: ethanol, {name} vs GFN2-xTB (test)")

    console.rule("[bold]5. MD with the learned potential (8 replicas, NVT 300 K, batched)")
    md = run_md_stage(model, labelled["test"][0], out / "md", console)

    console.rule("[bold]6. enhanced sampling: OPES on the OH torsion (4 walkers, one shared bias)")
    sampling = run_sampling_stage(model, labelled["test"][0], out / "opes", console)

    console.rule("[bold]7. active learning: committee exploration, xTB labels on a Dask cluster")
    active = run_active_stage(mol, out / "active", console)

    table = Table(title=f"neuralmd demo: ethanol, {name} vs GFN2-xTB")
    for col in ("set", "energy MAE (meV/atom)", "force MAE (meV/Å)", "force RMSE (meV/Å)"):
        table.add_column(col)
    base = train_results["baseline_valid"]
    table.add_row("per-element mean baseline (valid)", f"{base['energy_mae_mev_per_atom']:.2f}",
                  f"{base['force_mae_mev_per_A']:.1f}", f"{base['force_rmse_mev_per_A']:.1f}")
    for name, m in (("validation", train_results["valid"]), ("test trajectory", metrics)):
        table.add_row(name, f"{m['energy_mae_mev_per_atom']:.2f}", f"{m['force_mae_mev_per_A']:.1f}",
                      f"{m['force_rmse_mev_per_A']:.1f}")
    console.print(table)
    results = {"molecule": "ethanol", "labeler": labeler.settings(), "train": train_results, "test": metrics,
               "md": md, "sampling": sampling, "active": active, "seconds": round(time.perf_counter() - start, 1)}
    atomic_write_json(results, out / "results.json")
    console.print(f"run directory: {out}/ (learning curve: train/learning_curve.png, parity: parity_test.png, "
                  f"MD: md/md.png and md/traj_*.h5md, OPES: opes/fes.png and opes/colvar.csv, active learning: active/)")
    console.print(f"demo finished in {results['seconds']:.0f} s")
    return results
