"""Surrogate models: a CG alanine dipeptide, Δ-learning on top of GFN2-xTB, and what one
energy+forces call costs with neuralmd, xTB and DFT, in one script run.

1. ``cg``: a 5-bead CG alanine dipeptide (C N C C N) force-matched on the mapped all-atom data
   (``ala2_cg``), run as ``--cg-replicas`` Langevin replicas at 2 fs; ΔF = F(phi > 0) - F(phi < 0)
   and the phi/psi FES error against the data (reference ΔF from the data, ~9.25 kJ/mol), the
   same for the prior alone (no network), and ns/day against all-atom OpenMM alanine dipeptide
   in vacuum (amber99sb-ildn, 2 fs, HBonds, LangevinMiddle, neuralmd's default Reference
   platform) for a fixed number of steps.
2. ``delta``: rMD17 ethanol, n labelled frames (10 % of them validate) for n in 50, 100, 250,
   1000: a direct PaiNN and a Δ-model (``TrainConfig(baseline="xtb")``: the network learns
   DFT minus GFN2-xTB) with the same recipe and step budget; force MAE on a fixed subset of
   ``test_MD.xyz``.
3. ``calls``: median ms of one energy+forces call on ethanol and 3BPA (27 atoms): neuralmd
   (ASE calculator), GFN2-xTB (tblite) and PBE/def2-SVP (PySCF, density fitting).

``cg_speed`` (CG ns/day with 64-4096 replicas in one batch) and ``cg_refine`` (iterative
Boltzmann inversion of the CG torsion free energy) start from the ``cg`` part's trained model.

    python benchmarks/surrogates.py [--threads 2] [--only cg,cg_speed,cg_refine,delta,calls]   # -> results/surrogates.json
    python benchmarks/surrogates.py --quick --threads 1   # ~1 min smoke run -> results/surrogates_quick.json

With ``--only`` the other sections of an existing results file are kept.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

import neuralmd
from neuralmd.data import FrameDataset, read_frames
from neuralmd.data.io import write_frames
from neuralmd.io_utils import atomic_write_json
from neuralmd.threads import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forcefield_rmd17 import LoadMonitor, machine_info, time_direct, time_ef_calls  # noqa: E402

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
CG_COORDS = DATA / "ala2_cg" / "ala2_coordinates.npy"
CG_FORCES = DATA / "ala2_cg" / "ala2_forces.npy"
PDB = DATA / "alanine_dipeptide" / "ala2.pdb"
ETHANOL = DATA / "rmd17_ethanol"
BPA_FILE = DATA / "3bpa" / "train_300K.xyz"
PARTS = ("cg", "cg_speed", "cg_refine", "delta", "calls")

# full-size settings and the --quick smoke-run ones
FULL = {"cg_epochs": 40, "cg_replicas": 64, "cg_report_every": 250, "allatom_steps": 100_000,
        "speed_replicas": [64, 512, 4096], "speed_steps": 1000,
        "delta_sizes": [50, 100, 250, 1000], "delta_test_frames": 500,
        "nm_calls": 50, "nm_warmup": 5, "xtb_calls": 20, "dft_calls": 2, "dft_3bpa": True}
QUICK = {"cg_epochs": 3, "cg_replicas": 8, "cg_report_every": 50, "allatom_steps": 5_000,
         "speed_replicas": [8, 64], "speed_steps": 100,
         "delta_sizes": [50, 100], "delta_test_frames": 50,
         "nm_calls": 10, "nm_warmup": 2, "xtb_calls": 5, "dft_calls": 1, "dft_3bpa": False}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def versions() -> dict[str, str]:
    import platform

    import ase

    out = {"python": platform.python_version(), "torch": torch.__version__, "ase": ase.__version__,
           "neuralmd": neuralmd.__version__}
    for name in ("openmm", "tblite", "pyscf"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# --- 1. coarse-grained alanine dipeptide ---------------------------------------------------
def allatom_speed(out: Path, steps: int) -> dict[str, Any]:
    """ns/day of unbiased all-atom alanine dipeptide in OpenMM: through neuralmd's OpenMMRun
    (as ala2_sampling.py's unbiased run: frames every 500 steps, reporting not timed) and as a
    bare ``simulation.step`` loop."""
    from neuralmd.md.openmm_engine import OpenMMRun, OpenMMSettings

    settings = OpenMMSettings(pdb=str(PDB), temperature_K=300.0, timestep_fs=2.0, seed=1, report_every=500,
                              checkpoint_every=10**9, total_steps=steps)
    run = OpenMMRun(settings, out)
    run.simulation.step(500)  # warm-up (context creation is lazy in places)
    run.run()
    t0 = time.perf_counter()
    run.simulation.step(steps)
    bare = steps * settings.timestep_fs * 1e-6 / (time.perf_counter() - t0) * 86400.0
    return {"allatom_ns_per_day": run.ns_per_day(), "allatom_ns_per_day_bare_step_loop": bare,
            "allatom_steps": steps, "allatom_platform": settings.platform,
            "allatom_system": "ala2.pdb in vacuum, amber99sb-ildn, NoCutoff, HBonds, LangevinMiddle 1/ps, 300 K, 2 fs"}


def run_cg(args: argparse.Namespace, s: dict, work: Path) -> dict[str, Any]:
    from neuralmd.md.simulation import SimulationUnstable
    from neuralmd.surrogates.cg_md import analyse_cg_run, start_cg_md
    from neuralmd.surrogates.cg_training import CGTrainer, CGTrainSettings

    timestep_fs = 2.0
    log(f"CG: force matching, {s['cg_epochs']} epochs")
    settings = CGTrainSettings(coords=str(CG_COORDS), forces=str(CG_FORCES), force_unit="kcal/mol/A",
                               bead_elements=["C", "N", "C", "C", "N"], epochs=s["cg_epochs"], threads=args.threads)
    t0 = time.perf_counter()
    train = CGTrainer(settings, work / "train", progress=False).run()
    train_wall = time.perf_counter() - t0
    model_path = work / "train" / "model.pt"
    reference = np.load(CG_COORDS)  # Å, the same beads as the model

    log(f"CG: MD, {s['cg_replicas']} replicas x {args.cg_ns} ns at {timestep_fs} fs")
    sim = start_cg_md(model_path, work / "md", ns=args.cg_ns, replicas=s["cg_replicas"], timestep_fs=timestep_fs,
                      report_every=s["cg_report_every"], bias=args.cg_bias, progress=False)
    sim.run()
    per_replica = sim.ns_per_day()
    analysis = analyse_cg_run(work / "md", sim.potential, reference)

    prior: dict[str, Any] = {}
    if args.cg_prior_ns > 0:
        log(f"CG: prior alone, {s['cg_replicas']} replicas x {args.cg_prior_ns} ns")
        psim = start_cg_md(work / "train" / "prior.pt", work / "prior_md", ns=args.cg_prior_ns,
                           replicas=s["cg_replicas"], timestep_fs=timestep_fs, report_every=s["cg_report_every"],
                           bias=args.cg_bias, progress=False)
        try:
            psim.run()
            prior = analyse_cg_run(work / "prior_md", psim.potential, reference)
            prior["ns_per_day_per_replica"] = psim.ns_per_day()
        except SimulationUnstable as exc:
            prior = {"unstable": str(exc)}

    log(f"all-atom OpenMM: {s['allatom_steps']} steps")
    allatom = allatom_speed(work / "allatom", s["allatom_steps"])

    ref = analysis["reference_deltaF_kjmol"]
    aggregate = per_replica * s["cg_replicas"]
    result: dict[str, Any] = {
        "deltaF_kjmol": analysis["deltaF_kjmol"],
        "deltaF_err_kjmol": analysis["deltaF_err_kjmol"],
        "deltaF_minus_reference_kjmol": analysis["deltaF_kjmol"] - ref,
        "reference_deltaF_kjmol": ref,
        "reference_note": "ΔF(phi > 0 vs phi < 0) of the mapped all-atom frames themselves (~1 kJ/mol uncertainty)",
        "fes_mae_kT": analysis["fes_mae_kT"],
        "fes_bins_compared": analysis["fes_bins_compared"],
        "fraction_phi_positive": analysis["fraction_t0_positive"],
        "frames_analysed": analysis["frames"],
        "cg_ns_per_day": aggregate,
        "cg_ns_per_day_note": "aggregate over all replicas (replicas x per-replica ns/day) of one batched run; "
                              "integration steps timed, frame writing not (as for the all-atom run)",
        "cg_ns_per_day_per_replica": per_replica,
        "replicas": s["cg_replicas"],
        "ns_per_replica": args.cg_ns,
        "timestep_fs": timestep_fs, "bias": f"{args.cg_bias} on (phi, psi), walkers share it, frames reweighted",
        "report_every": s["cg_report_every"],
        **allatom,
        "cg_aggregate_over_allatom": aggregate / allatom["allatom_ns_per_day"],
        "cg_per_replica_over_allatom": per_replica / allatom["allatom_ns_per_day"],
        "prior_only": {k: prior[k] for k in ("deltaF_kjmol", "deltaF_err_kjmol", "fes_mae_kT", "fraction_t0_positive",
                                             "ns_per_day_per_replica", "unstable") if k in prior},
        "training": {"epochs": train["epochs"], "best_epoch": train["best_epoch"],
                     "train_seconds": train["train_seconds"], "wall_seconds": round(train_wall, 1),
                     "train_frames": train["train_frames"], "valid_frames": train["valid_frames"],
                     "valid_force_rmse_kcal_per_mol_per_A": train["valid_force_rmse_kcal_per_mol_per_A"],
                     "hidden": settings.hidden, "batch_size": settings.batch_size, "lr": settings.lr,
                     "prior_torsion_order": getattr(settings, "prior_torsion_order", None)},
        "md": {"temperature_K": sim.settings.temperature_K[0], "friction_per_ps": sim.settings.friction_per_ps,
               "start_frames": "64 training frames stored in model.pt, cycled over the replicas", "seed": 0},
    }
    if "deltaF_kjmol" in prior:
        result["prior_only"]["deltaF_minus_reference_kjmol"] = prior["deltaF_kjmol"] - ref
        result["prior_only"]["ns_per_replica"] = args.cg_prior_ns
    return result


def run_cg_speed(s: dict, work: Path, timestep_fs: float) -> dict[str, Any]:
    """CG ns/day with many replicas in one batch (unbiased, the ``cg`` part's model) and
    all-atom OpenMM ns/day (2 fs), measured one after the other in this run."""
    from neuralmd.surrogates.cg_md import start_cg_md

    model = work.parent / "cg" / "train" / "model.pt"
    if not model.is_file():
        raise SystemExit(f"{model}: run the cg part first (the speed part times its model)")
    rows = []
    for replicas in s["speed_replicas"]:
        log(f"CG speed: {replicas} replicas, {s['speed_steps']} steps")
        sim = start_cg_md(model, work / f"r{replicas}", ns=s["speed_steps"] * timestep_fs * 1e-6, replicas=replicas,
                          timestep_fs=timestep_fs, report_every=s["speed_steps"], trajectory_replicas=1,
                          progress=False)
        sim.run()
        rows.append({"replicas": replicas, "ms_per_step": 1e3 * sim.wall_seconds / sim.state.step,
                     "aggregate_ns_per_day": sim.ns_per_day() * replicas})
    log(f"all-atom OpenMM: {s['allatom_steps']} steps")
    allatom = allatom_speed(work / "allatom", s["allatom_steps"])
    best = max(rows, key=lambda r: r["aggregate_ns_per_day"])
    return {"batched": rows, "cg_ns_per_day": best["aggregate_ns_per_day"], "replicas_at_best": best["replicas"],
            **allatom, "cg_over_allatom": best["aggregate_ns_per_day"] / allatom["allatom_ns_per_day"],
            "timestep_fs": timestep_fs,
            "note": f"unbiased CG Langevin, {timestep_fs:g} fs, aggregate over one batch on the torch threads given; "
                    "all-atom: one OpenMM Reference-platform trajectory at 2 fs, which uses one core"}


def run_cg_refine(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Iterative Boltzmann inversion of the ``cg`` part's model's (phi, psi) free energy
    (``neuralmd cg refine``), then the refined model run once more with the same protocol
    (OPES walkers started from data frames, reweighted), a new seed and ``--refine-eval-ns``
    per replica. The force-matched
    model's numbers are the first iteration's run (same protocol, before any update)."""
    from neuralmd.surrogates.cg_refine import refine_cg_model, sample_against_data

    model = work.parent / "cg" / "train" / "model.pt"
    if not model.is_file():
        raise SystemExit(f"{model}: run the cg part first (the refinement starts from its model)")
    reference = np.load(CG_COORDS)
    log(f"CG refine: {args.refine_iterations} iterations, {args.refine_replicas} replicas x {args.refine_ns} ns")
    t0 = time.perf_counter()
    state = refine_cg_model(model, reference, work / "refine", iterations=args.refine_iterations, ns=args.refine_ns,
                            replicas=args.refine_replicas, timestep_fs=args.cg_timestep_fs, progress=False)
    wall = time.perf_counter() - t0
    log("CG refine: evaluation run of the refined model")
    _, _, final, _ = sample_against_data(work / "refine" / "model.pt", reference, work / "evaluate",
                                         args.refine_eval_ns, args.refine_replicas, args.cg_timestep_fs, seed=100)
    keys = ("deltaF_kjmol", "deltaF_err_kjmol", "fes_mae_kT", "js_divergence")
    return {"force_matched": {k: state["history"][0][k] for k in keys},
            "refined": {k: final[k] for k in keys + ("fraction_outside_reference", "fes_bins_compared")},
            "reference_deltaF_kjmol": final["reference_deltaF_kjmol"],
            "iterations": [{k: v for k, v in row.items() if k != "model"} for row in state["history"]],
            "refine_wall_s": round(wall, 1), "replicas": args.refine_replicas, "ns_per_replica": args.refine_ns,
            "evaluation_ns_per_replica": args.refine_eval_ns, "timestep_fs": args.cg_timestep_fs,
            "protocol": "each run: replicas started from random data frames, walkers of one OPES bias (30 kJ/mol) on "
                        "(phi, psi), frames reweighted; update kT ln((n_CG + 1)/(n_data + 1)) (CG counts at the data's "
                        "size) on the 24x24 bins where data or CG have >= 10 frames, capped at 2 kT, damping 0.8, "
                        "fitted by an order-4 2D Fourier series"}


# --- 2. Δ-learning vs direct ----------------------------------------------------------------
def train_config(args: argparse.Namespace, data: Path, baseline: str):
    from neuralmd.training import TrainConfig

    steps = args.delta_steps
    # PaiNN without repulsion: the direct and Δ models these results were measured with (a Δ-model
    # never gets a repulsion; the direct one would now by default)
    return TrainConfig(train=str(data), valid_fraction=0.1, architecture="painn", repulsion="none",
                       features=args.features, interactions=args.interactions, batch_size=16, lr=2e-3, lr_schedule="cosine", max_steps=steps,
                       eval_every=max(steps // 10, 1), checkpoint_every=steps, patience=10**6, seed=0,
                       threads=args.threads, baseline=baseline)


def run_delta(args: argparse.Namespace, s: dict, work: Path) -> tuple[list[dict], dict[str, Any]]:
    from neuralmd.models.neural import load_potential
    from neuralmd.training import Trainer, evaluate
    from neuralmd.training.trainer import residual_labels

    pool = read_frames(ETHANOL / "train.xyz")  # eV, eV/Å
    order = np.random.default_rng(0).permutation(len(pool))
    test_all = read_frames(ETHANOL / "test_MD.xyz")
    pick = np.sort(np.random.default_rng(1).choice(len(test_all), size=min(s["delta_test_frames"], len(test_all)),
                                                   replace=False))
    test = [test_all[k] for k in pick]
    log(f"Δ-learning: GFN2-xTB on {len(test)} test frames")
    t0 = time.perf_counter()
    test_residual = residual_labels(test, "xtb", str(ETHANOL / "test_MD.xyz"))  # DFT - xTB labels
    xtb_test_s = time.perf_counter() - t0
    xtb_alone = float(np.mean(np.abs(np.concatenate([a.arrays["forces"].ravel() for a in test_residual]))) * 1000)

    def mae(model, frames) -> float:
        metrics, _ = evaluate(model, FrameDataset(frames), batch_size=64)
        return metrics["force_mae_mev_per_A"]

    curve, runs = [], {}
    for n in [n for n in s["delta_sizes"] if n <= len(pool)]:
        data = work / f"n{n}" / "train.xyz"
        data.parent.mkdir(parents=True, exist_ok=True)
        write_frames([pool[k] for k in order[:n]], data)
        row: dict[str, Any] = {"n_train": n}
        for kind, baseline in (("direct", ""), ("delta", "xtb")):
            run_dir = work / f"n{n}" / kind
            shutil.rmtree(run_dir, ignore_errors=True)
            log(f"Δ-learning: n={n} {kind}: {args.delta_steps} steps")
            t0 = time.perf_counter()
            res = Trainer(train_config(args, data, baseline), run_dir, progress=False).run()
            wall = time.perf_counter() - t0
            model = load_potential(run_dir / "model.pt")
            if kind == "direct":
                row["direct_force_mae"] = mae(model, test)
            else:  # the Δ-model's error = its correction's error on the DFT - xTB labels
                row["delta_force_mae"] = mae(model.correction, test_residual)
            runs[f"{n}_{kind}"] = {"steps": res["steps"], "train_seconds": res["train_seconds"],
                                   "wall_seconds": round(wall, 1), "stop_reason": res["stop_reason"],
                                   "valid_force_mae_mev_per_A": res["valid"].get("force_mae_mev_per_A")}
        row["n_fit"] = n - max(1, round(0.1 * n))
        curve.append(row)
        log(f"Δ-learning: {row}")

    # check once that the loaded DeltaPotential (xTB run inside the model) gives the same error
    n_check = min(5, len(test))
    last = curve[-1]["n_train"]
    delta_model = load_potential(work / f"n{last}" / "delta" / "model.pt")
    check = abs(mae(delta_model, test[:n_check]) - mae(delta_model.correction, test_residual[:n_check]))
    info = {"xtb_alone_force_mae": xtb_alone, "xtb_test_labelling_seconds": round(xtb_test_s, 1),
            "runs": runs, "check_full_delta_potential_vs_residual_mae_diff": check,
            "test_frames": len(test),
            "recipe": {"model": f"PaiNN {args.features} features, {args.interactions} interactions, cutoff 5 Å",
                       "steps": args.delta_steps, "batch_size": 16, "lr": "2e-3, cosine decay to 1e-5 over the steps",
                       "valid_fraction": 0.1, "kept": "best-validation EMA weights (model.pt)",
                       "threads": args.threads, "data": "first n frames of a seed-0 permutation of train.xyz "
                       "(nested subsets); n_train counts all labelled frames, n_fit those trained on",
                       "test": f"{len(test)} frames of test_MD.xyz (seed-1 random subset)",
                       "delta": "baseline GFN2-xTB (tblite); network trained on DFT - xTB energies and forces"}}
    return curve, info


# --- 3. energy+forces call time --------------------------------------------------------------
def run_calls(args: argparse.Namespace, s: dict, delta_work: Path) -> dict[str, Any]:
    from ase.io import read

    from neuralmd.md.ase_calculator import NeuralCalculator
    from neuralmd.models import NeuralPotential, load_potential
    from neuralmd.reference import PySCFLabeler
    from neuralmd.reference.xtb import XTBLabeler
    from neuralmd.state import AtomsBatch

    ethanol = read_frames(ETHANOL / "test_MD.xyz")[0]
    ethanol.calc = None
    bpa = read(BPA_FILE, index=0)
    bpa.calc = None
    hyper = {"features": args.features, "interactions": args.interactions, "cutoff": 5.0, "num_basis": 16}
    trained = sorted(delta_work.glob("n*/direct/model.pt"), key=lambda p: int(p.parent.parent.name[1:]))
    if trained:
        eth_model = load_potential(trained[-1])
        eth_note = f"the direct ethanol model of the delta section ({trained[-1].parent.parent.name})"
        hyper = dict(eth_model.hyperparameters)
    else:
        torch.manual_seed(0)
        eth_model = NeuralPotential([1, 6, 8], None, 1.0, 0.0, "painn", **hyper).eval()
        eth_note = ("untrained PaiNN over H, C, O (no delta section run in this work folder); "
                    "timing does not depend on the weights")
    torch.manual_seed(0)
    bpa_model = NeuralPotential([1, 6, 7, 8], None, 1.0, 0.0, "painn", **hyper).to(eth_model.dtype).eval()
    xtb = XTBLabeler()
    dft = PySCFLabeler("PBE", "def2-SVP", density_fit=True, threads=args.threads)
    out: dict[str, Any] = {"neuralmd": {}, "xtb": {}, "dft": {}}
    direct, dft_each = {}, {}
    for name, atoms, model in (("ethanol", ethanol, eth_model), ("3bpa", bpa, bpa_model)):
        log(f"calls: {name} ({len(atoms)} atoms)")
        out["neuralmd"][name] = time_ef_calls(NeuralCalculator(model), atoms, s["nm_calls"], s["nm_warmup"])

        def nm_direct(pos: np.ndarray, model=model, atoms=atoms) -> None:
            a = atoms.copy()
            a.positions = pos
            model(AtomsBatch.from_atoms([a], dtype=torch.float64), forces=True)

        direct[name] = time_direct(nm_direct, atoms.get_positions(), s["nm_calls"], s["nm_warmup"])

        def labeler_fn(labeler, atoms=atoms):
            def fn(pos: np.ndarray) -> None:
                a = atoms.copy()
                a.positions = pos
                labeler.compute(a)
            return fn

        out["xtb"][name] = time_direct(labeler_fn(xtb), atoms.get_positions(), s["xtb_calls"], 1)
        if name == "3bpa" and not (s["dft_3bpa"] and args.dft_3bpa):
            out["dft"][name] = None  # minutes per call on this machine
            continue
        # PySCF's one-off set-up costs go into an ethanol warm-up call; 3BPA: one call (minutes each)
        warmup, calls = (1, s["dft_calls"]) if name == "ethanol" else (0, 1)
        times = [time_direct(labeler_fn(dft), atoms.get_positions(), 1, 0, seed=k) for k in range(warmup + calls)]
        dft_each[name] = times[warmup:]
        out["dft"][name] = float(np.median(dft_each[name]))
    ratios = {f"{m}_over_neuralmd": {k: out[m][k] / out["neuralmd"][k] if out[m][k] is not None else None
                                     for k in out["neuralmd"]} for m in ("xtb", "dft")}
    info = {"ratios": ratios, "neuralmd_direct_ms": direct, "dft_each_ms": dft_each,
            "method": "ms per energy+forces call on one molecule moved 0.01 Å rms before every call; median of "
                      "calls. neuralmd: atoms.get_potential_energy(); get_forces() through NeuralCalculator "
                      "(neuralmd_direct_ms: model call on an AtomsBatch, no ASE); xtb: XTBLabeler.compute "
                      "(GFN2-xTB, tblite, set-up included); dft: PySCFLabeler('PBE', 'def2-SVP', density_fit=True)"
                      ".compute, SCF + gradient from scratch",
            "calls": {"neuralmd": s["nm_calls"], "neuralmd_warmup": s["nm_warmup"], "xtb": s["xtb_calls"],
                      "xtb_warmup": 1, "dft_ethanol": s["dft_calls"], "dft_3bpa": len(dft_each.get("3bpa", [])),
                      "dft_warmup": "1 ethanol call before the timed ones"},
            "threads": args.threads, "models": {"ethanol": eth_note,
                                                "3bpa": f"untrained PaiNN over H, C, N, O with the same hyperparameters "
                                                        f"({hyper}); timing does not depend on the weights"},
            "molecules": {"ethanol": "rmd17_ethanol/test_MD.xyz frame 0 (9 atoms)",
                          "3bpa": "3bpa/train_300K.xyz frame 0 (27 atoms)"}}
    return {**out, "info": info}


# --- main --------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="comma-separated subset of cg,delta,calls (default: all)")
    p.add_argument("--quick", action="store_true",
                   help="~1 min smoke run of everything (writes results/surrogates_quick.json)")
    p.add_argument("--threads", type=int, default=2, help="torch (and PySCF) threads (default 2)")
    p.add_argument("--cg-ns", type=float, default=None, help="ns per CG replica (default 0.5; quick 0.01)")
    p.add_argument("--cg-bias", default="opes",
                   help="bias of the CG runs on (phi, psi), reweighted: opes (default) or none")
    p.add_argument("--cg-prior-ns", type=float, default=None,
                   help="ns per replica of the prior-only CG run, 0 to skip (default: --cg-ns)")
    p.add_argument("--cg-timestep-fs", type=float, default=2.0,
                   help="CG timestep of the cg_speed and cg_refine parts (default 2 fs)")
    p.add_argument("--refine-iterations", type=int, default=3, help="IBI iterations of cg_refine (default 3)")
    p.add_argument("--refine-replicas", type=int, default=128, help="replicas per cg_refine run (default 128)")
    p.add_argument("--refine-ns", type=float, default=0.05, help="ns per replica per cg_refine run (default 0.05)")
    p.add_argument("--refine-eval-ns", type=float, default=0.1,
                   help="ns per replica of the refined model's evaluation run (default 0.1)")
    p.add_argument("--delta-steps", type=int, default=None, help="training steps per model (default 2000; quick 100)")
    p.add_argument("--no-dft-3bpa", dest="dft_3bpa", action="store_false",
                   help="skip the PBE/def2-SVP call on 3BPA (1-3 min; always skipped with --quick)")
    p.add_argument("--features", type=int, default=64, help="PaiNN features, delta models and timing (default 64)")
    p.add_argument("--interactions", type=int, default=3, help="PaiNN interaction layers (default 3)")
    p.add_argument("--work", type=Path, default=None,
                   help="run folders (default /tmp/neuralmd-surrogates-bench, quick: ...-quick)")
    p.add_argument("--out", type=Path, default=None,
                   help="results JSON (default results/surrogates.json; quick: results/surrogates_quick.json)")
    args = p.parse_args(argv)
    if args.cg_ns is None:
        args.cg_ns = 0.01 if args.quick else 0.5
    if args.cg_prior_ns is None:
        args.cg_prior_ns = args.cg_ns
    if args.delta_steps is None:
        args.delta_steps = 100 if args.quick else 2000
    suffix = "_quick" if args.quick else ""
    args.work = args.work or Path(f"/tmp/neuralmd-surrogates{'-quick' if args.quick else '-bench'}")
    args.out = args.out or HERE / "results" / f"surrogates{suffix}.json"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    parts = [x for x in args.only.split(",") if x] if args.only else list(PARTS)
    unknown = set(parts) - set(PARTS)
    if unknown:
        print(f"--only: unknown part(s) {sorted(unknown)}; expected some of {','.join(PARTS)}", file=sys.stderr)
        return 2
    for f in (CG_COORDS, CG_FORCES, PDB, ETHANOL / "train.xyz", ETHANOL / "test_MD.xyz", BPA_FILE):
        if not f.is_file():
            print(f"{f}: data file not found (expected the project's ../shared/data)", file=sys.stderr)
            return 2
    threads = set_threads(args.threads)
    torch.manual_seed(0)
    s = QUICK if args.quick else FULL
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.only and args.out.exists() else {}
    previous_load = results.get("machine", {}).get("other_processes_cpu_cores", {})
    for part in parts:
        shutil.rmtree(args.work / part, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)
    load = LoadMonitor()
    walls: dict[str, float] = dict(results.get("wall_seconds", {}))
    t_all = time.perf_counter()
    def save() -> None:
        """Write what is done so far, so that a crash in a later section loses nothing."""
        machine = machine_info()
        machine["torch_threads"] = threads
        machine["other_processes_cpu_cores"] = {**previous_load, **load.phases}
        results.update({
            "benchmark": "surrogates: CG alanine dipeptide, Δ-learning on GFN2-xTB, force-call cost",
            "quick": args.quick,
            "settings": {**s, "cg_ns": args.cg_ns, "cg_prior_ns": args.cg_prior_ns, "delta_steps": args.delta_steps,
                         "features": args.features, "interactions": args.interactions, "threads": threads},
            "wall_seconds": {**walls, "this_invocation": round(time.perf_counter() - t_all, 1)},
            "machine": machine, "versions": versions(),
            "force_units": "meV/Å", "time_units": "ms per call, ns/day",
        })
        atomic_write_json(finite(results), args.out)

    def run_part(name: str, compute: Callable[[], dict[str, Any]]) -> None:
        """Run one part if asked for, timed and load-monitored; its results are saved at once."""
        if name not in parts:
            return
        t0 = time.perf_counter()
        results.update(compute())
        walls[name] = round(time.perf_counter() - t0, 1)
        load.phase(name)
        save()

    def calls_part() -> dict[str, Any]:
        calls = run_calls(args, s, args.work / "delta")
        return {"force_call_ms": {k: calls[k] for k in ("neuralmd", "xtb", "dft")}, "force_call_info": calls["info"]}

    run_part("cg", lambda: {"cg": run_cg(args, s, args.work / "cg")})
    run_part("cg_speed", lambda: {"cg": {**results.get("cg", {}),
                                         "many_replicas": run_cg_speed(s, args.work / "cg_speed", args.cg_timestep_fs)}})
    run_part("cg_refine", lambda: {"cg": {**results.get("cg", {}),
                                          "refinement": run_cg_refine(args, args.work / "cg_refine")}})
    cg = results.get("cg", {})
    if "refinement" in cg and "many_replicas" in cg:
        cg["headline"] = cg_headline(cg)
    run_part("delta", lambda: dict(zip(("delta_learning", "delta_learning_info"),
                                       run_delta(args, s, args.work / "delta"))))
    run_part("calls", calls_part)
    busy = load.busy()
    save()
    results = finite(results)

    print_summary(results)
    if busy:
        print(f"WARNING: other processes used CPU during {busy} ({load.phases} cores): timings not comparable")
    print(f"-> {args.out}")
    return 0


def cg_headline(cg: dict[str, Any]) -> dict[str, Any]:
    """The issue's CG figures for the final model: accuracy of the refined model's evaluation run,
    speed of many replicas in one batch (the top-level ``cg`` fields are the force-matched model)."""
    refined, speed = cg["refinement"]["refined"], cg["many_replicas"]
    return {"deltaF_kjmol": refined["deltaF_kjmol"], "deltaF_err_kjmol": refined["deltaF_err_kjmol"],
            "fes_mae_kT": refined["fes_mae_kT"], "cg_ns_per_day": speed["cg_ns_per_day"],
            "allatom_ns_per_day": speed["allatom_ns_per_day"],
            "timestep_fs": {"refinement": cg["refinement"].get("timestep_fs", 2.0),
                            "speed": speed.get("timestep_fs", 2.0)},
            "note": "refined CG model: accuracy from its evaluation run (OPES walkers, reweighted), speed from "
                    f"{speed['replicas_at_best']} unbiased replicas in one batch; the top-level cg fields are the "
                    "force-matched model at 2 fs"}


def finite(obj: Any) -> Any:
    """NaN and infinities (e.g. a ΔF error bar from blocks that never visit phi > 0) as null."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def print_summary(r: dict[str, Any]) -> None:
    c = r.get("cg", {})
    if "deltaF_kjmol" in c:
        p = c.get("prior_only", {})
        err = c["deltaF_err_kjmol"]
        print(f"\nCG ala2: ΔF {c['deltaF_kjmol']:.2f} ± {'n/a' if err is None else f'{err:.2f}'} kJ/mol (data "
              f"{c['reference_deltaF_kjmol']:.2f}), FES MAE {c['fes_mae_kT']:.2f} kT; prior alone: "
              + (f"ΔF {p['deltaF_kjmol']:.2f} kJ/mol, FES MAE {p['fes_mae_kT']:.2f} kT" if "deltaF_kjmol" in p
                 else str(p)))
        print(f"CG {c['cg_ns_per_day']:.0f} ns/day aggregate ({c['replicas']} x {c['cg_ns_per_day_per_replica']:.1f}); "
              f"all-atom OpenMM {c['allatom_ns_per_day']:.0f} ns/day ({c['allatom_platform']}); "
              f"aggregate CG / all-atom {c['cg_aggregate_over_allatom']:.2f}")
    if "many_replicas" in c:
        m = c["many_replicas"]
        print(f"CG batched: {m['cg_ns_per_day']:.0f} ns/day with {m['replicas_at_best']} replicas; all-atom "
              f"{m['allatom_ns_per_day']:.0f} ns/day")
    if "refinement" in c:
        f = c["refinement"]
        for key in ("force_matched", "refined"):
            print(f"CG {key}: ΔF {f[key]['deltaF_kjmol']:.2f} ± {f[key]['deltaF_err_kjmol']:.2f} kJ/mol (data "
                  f"{f['reference_deltaF_kjmol']:.2f}), FES MAE {f[key]['fes_mae_kT']:.2f} kT")
    if "delta_learning" in r:
        print(f"\n{'n_train':>8s} {'direct meV/Å':>13s} {'Δ meV/Å':>10s}  (xTB alone "
              f"{r['delta_learning_info']['xtb_alone_force_mae']:.1f})")
        for row in r["delta_learning"]:
            print(f"{row['n_train']:8d} {row['direct_force_mae']:13.1f} {row['delta_force_mae']:10.1f}")
    if "force_call_ms" in r:
        f = r["force_call_ms"]
        print(f"\n{'ms/call':10s} {'neuralmd':>10s} {'xtb':>10s} {'dft':>10s} {'xtb/nm':>8s} {'dft/nm':>8s}")
        for k in f["neuralmd"]:
            dft, nm = f["dft"][k], f["neuralmd"][k]
            print(f"{k:10s} {nm:10.2f} {f['xtb'][k]:10.1f} {'-' if dft is None else f'{dft:.0f}':>10s} "
                  f"{f['xtb'][k] / nm:8.1f} {'-' if dft is None else f'{dft / nm:.0f}':>8s}")


if __name__ == "__main__":
    sys.exit(main())
