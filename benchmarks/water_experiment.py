"""Water refined against experiment: DiffTRe (``neuralmd refine``) of the DFT-trained water model
against the Soper 2013 partial RDFs and the density 0.997 g/cm³ at 298 K and 1 bar, DFT data
fused in; then fresh NPT simulations of the model before and after, at 64 and 512 waters.

    python benchmarks/water_experiment.py --threads 1 --resume                  # all parts, resumable
    python benchmarks/water_experiment.py --only check --check-ps 64:100 --resume   # longer checks later
    python benchmarks/water_experiment.py --only progress --resume             # where a stopped refinement stands

Parts (each saved into the results JSON when done; ``--resume`` skips what is there, and every
run is a neuralmd run directory in the work folder that continues where it stopped):

- ``refine``: ``neuralmd refine`` of the water model of ``benchmarks/water.py`` (PaiNN trained
  15 minutes on deepmd_water data_0-2; trained here with that script's recipe if its work folder
  lacks it) from 64 waters (data_3's first frame), NPT, targets O-O over its whole range, O-H
  from 1.3 Å and H-H from 2.0 Å (the intramolecular peaks are quantum-broadened in experiment;
  classical nuclei cannot reproduce them), density 0.997; QM data data_0-2 fused in.
- ``check``: ``neuralmd md`` NPT (298 K, 1 bar, CSVR, 0.5 fs) of the model before and after, 64
  and 512 waters, the first ``--skip-ps`` discarded; RDFs by MDAnalysis (``neuralmd analyze``'s
  code, 0.05 Å bins to 6 Å) against Soper 2013 interpolated on the bins: RMS difference and χ²
  per point with the experimental errors (floored as the refinement floors them), over r ≥ 1.3 Å
  for O-H and r ≥ 2.0 Å for H-H as refined, and over the whole range as well; density ± block
  error.
- ``qm``: force MAE on data_3 (held out) before and after.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forcefield_rmd17 as ff  # noqa: E402  (machine, versions)
import water  # noqa: E402  (the water model's recipe, boxes)

HERE = Path(__file__).resolve().parent
SOPER = water.EXPERIMENT / "soper2013_rdf.txt"
TEMPERATURE_K = 298.0
DENSITY = 0.997
NEURALMD = str(Path(sys.executable).parent / "neuralmd")  # the command of this environment
PAIRS = {"O-O": 0.0, "O-H": 1.3, "H-H": 2.0}  # refined from this r (Å)
log = ff.log


def thread_env(threads: int) -> dict[str, str]:
    """The environment of a child process limited to ``threads`` threads."""
    import os

    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def model_before(args: argparse.Namespace) -> Path:
    """The DFT-only water model (benchmarks/water.py's neuralmd model, trained if absent)."""
    path = args.water_work / "neuralmd" / "model.pt"
    if not path.exists():
        subprocess.run([sys.executable, str(HERE / "water.py"), "--only", "train", "--models", "neuralmd",
                        "--work-dir", str(args.water_work), "--threads", str(args.threads), "--resume"], check=True)
    return path


def refine(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``neuralmd refine`` (resumed where a previous session stopped)."""
    run = work / "refine"
    if (run / "refine.toml").exists():
        cmd = [NEURALMD, "refine", "--resume", str(run), "--threads", str(args.threads)]
    else:
        targets = [f"rdf:{pair}={SOPER}" + (f"@{start},6.0" if start else "") for pair, start in PAIRS.items()]
        cmd = [NEURALMD, "refine", str(model_before(args)), "--structure", str(water.box(64, args.water_work)),
               "--ensemble", "npt", "--temperature", str(TEMPERATURE_K), "--pressure-bar", "1",
               *[x for t in targets for x in ("--target", t)], "--target", f"density={DENSITY}",
               *[x for d in water.TRAIN_SETS for x in ("--qm-data", str(d))],
               "--updates", str(args.updates), "--lr", str(args.lr), "--qm-weight", str(args.qm_weight),
               "--sample-ps", str(args.sample_ps),
               "--equilibration-ps", str(args.equilibration_ps), "--replicas", str(args.replicas),
               "--check-ps", "0", "--threads", str(args.threads), "-o", str(run)]
    log(" ".join(cmd))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=thread_env(args.threads))
    results = json.loads((run / "results.json").read_text())
    history = json.loads((run / "history.json").read_text()) if (run / "history.json").exists() else []
    out = {"command": " ".join(cmd), "updates": results["updates"], "resamples": results["resamples"],
           "samplings": results["samplings"], "md_ps": results["md_ps"], "md_ps_per_update": results["md_ps_per_update"],
           "wall_s_per_update": results["wall_s_per_update"], "qm_errors_fused_subset": results.get("qm_errors"),
           "targets_during_refinement": {k: {"before": v.get("before")} for k, v in results["targets"].items()},
           "this_session_wall_s": round(time.perf_counter() - t0, 1)}
    if history:
        out["last_update"] = history[-1]
    return out


def progress(run: Path) -> dict[str, Any]:
    """Where an unfinished refinement in ``run`` stands (its history so far), for a session that
    stops it."""
    path = run / "history.json"
    history = json.loads(path.read_text()) if path.exists() else []
    keys = [k for k in (history[0] if history else {}) if k.startswith(("rms ", "chi2 ")) or k in (
        "update", "sample", "ess_fraction", "experiment_loss", "qm_loss_ratio", "md_ps", "wall_s")]
    return {"updates_done": len(history), "history": [{k: h[k] for k in keys} for h in history]}


def rdf_errors(rdf: dict[str, Any], pair: str) -> dict[str, float]:
    """RMS difference and χ² per point of a simulated RDF (``observables.rdf`` output) from Soper
    2013 interpolated on its bins, over the refined range and over all r."""
    from neuralmd.refine.targets import MIN_RDF_ERROR, read_rdf_file

    r_exp, g_exp, err_exp = read_rdf_file(SOPER, pair)
    r, g = np.asarray(rdf["r_A"]), np.asarray(rdf["g"])
    ref = np.interp(r, r_exp, g_exp)
    err = np.maximum(np.interp(r, r_exp, err_exp), MIN_RDF_ERROR)
    out = {}
    for label, keep in (("", r >= PAIRS[pair]), ("_all_r", r > 0)):
        d = g[keep] - ref[keep]
        out[f"rms{label}"] = float(np.sqrt(np.mean(d**2)))
        out[f"chi2{label}"] = float(np.mean((d / err[keep]) ** 2))
    return out


def check_lengths(text: str) -> dict[int, float]:
    """``"64:20,512:5"`` -> {waters: ps}."""
    return {int(w): float(ps) for w, ps in (item.split(":") for item in text.split(","))}


def check_run(model: Path, waters: int, ps: float, label: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """A fresh NPT run of ``model`` for ``ps`` (resumed if there) and its RDF errors and density."""
    from neuralmd.analysis import observables as obs

    run = work / "check" / f"{label}_{waters}"
    steps = int(round(ps * 1000 / water.TIMESTEP_FS))
    if (run / "checkpoint.pt").exists():
        cmd = [NEURALMD, "md", "--resume", str(run), "--steps", str(steps), "--threads", str(args.threads)]
    else:
        cmd = [NEURALMD, "md", str(model), "--structure", str(water.box(waters, args.water_work)), "--ensemble", "npt",
               "--thermostat", "csvr", "--temperature", str(TEMPERATURE_K), "--pressure-bar", "1", "--timestep-fs",
               str(water.TIMESTEP_FS), "--steps", str(steps), "--report-every", "100", "--seed", "11", "--threads",
               str(args.threads), "-o", str(run)]
    log(" ".join(cmd))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=thread_env(args.threads), capture_output=True, text=True)
    if proc.returncode != 0:
        return {"stable": False, "error": (proc.stdout + proc.stderr).strip().splitlines()[-1]}
    u, start = obs.universe(run, 0, args.skip_ps)
    return {"stable": True, "ps": ps, "skip_ps": args.skip_ps, "wall_s": round(time.perf_counter() - t0, 1),
            "density": obs.density(u, start),
            "rdf": {pair: rdf_errors(obs.rdf(u, pair, start, 6.0, 120), pair) for pair in PAIRS}}


def qm_errors(model: Path) -> dict[str, float]:
    """Errors on the held-out DFT frames (data_3)."""
    from neuralmd.data import read_frames
    from neuralmd.data.dataset import FrameDataset
    from neuralmd.models.neural import load_network
    from neuralmd.training.metrics import evaluate

    metrics, _ = evaluate(load_network(model), FrameDataset(read_frames(water.TEST_SET)), batch_size=4)
    return metrics


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", default="refine,qm,check", help="parts to run, comma-separated")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--resume", action="store_true", help="keep what the results file already holds")
    p.add_argument("--updates", type=int, default=40)
    p.add_argument("--lr", type=float, default=3e-5)
    p.add_argument("--qm-weight", type=float, default=100.0, help="QM loss weight (its ratio to the start value)")
    p.add_argument("--sample-ps", type=float, default=4.0)
    p.add_argument("--equilibration-ps", type=float, default=1.0)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--check-ps", default="64:20,512:5", help="waters:ps of each check run (the issue asks >= 100 ps)")
    p.add_argument("--skip-ps", type=float, default=2.0, help="check runs: equilibration discarded")
    p.add_argument("--labels", default="before,after", help="which models the qm and check parts run")
    p.add_argument("--out", type=Path, default=HERE / "results" / "water_experiment.json")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/neuralmd-water-exp"))
    p.add_argument("--water-work", type=Path, default=Path("/tmp/neuralmd-water-bench"),
                   help="benchmarks/water.py's work folder (its model and boxes)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    parts = set(args.only.split(","))
    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    results = water.Results(args.out, args.resume)
    data = results.data
    data.update(machine=ff.machine_info(), threads=args.threads, versions=ff.versions())
    before, after = model_before(args), work / "refine" / "model.pt"
    if "progress" in parts:  # after a session stopped the refinement: what it has done so far
        data["refinement_progress"] = progress(work / "refine")
        results.save()
    if "refine" in parts and "refinement" not in data:
        data["refinement"] = refine(args, work)
        data.update({k: data["refinement"][k] for k in ("updates", "resamples", "md_ps_per_update",
                                                        "wall_s_per_update")})
        results.save()
    models = [(label, model) for label, model in (("before", before), ("after", after))
              if label in args.labels.split(",") and model.exists()]
    if "qm" in parts:
        for label, model in models:
            data.setdefault(label, {})["force_mae_mev_per_A"] = qm_errors(model)["force_mae_mev_per_A"]
        results.save()
    if "check" in parts:
        for label, model in models:
            for waters, ps in check_lengths(args.check_ps).items():
                entry = data.setdefault(label, {}).setdefault("checks", {})
                key = str(waters)
                if key in entry and entry[key].get("ps", 0) >= ps:
                    continue
                entry[key] = check_run(model, waters, ps, label, args, work)
                side = data[label]
                if entry[key]["stable"]:
                    for name, pick in (("rdf_rms", "rms"), ("rdf_chi2", "chi2")):
                        side.setdefault(name, {})[key] = {p: v[pick] for p, v in entry[key]["rdf"].items()}
                    side.setdefault("density_g_cm3", {})[key] = {k: entry[key]["density"][k] for k in ("mean", "err")}
                results.save()
    print(json.dumps({k: data.get(k) for k in ("updates", "resamples", "md_ps_per_update", "wall_s_per_update")}))
    for label in ("before", "after"):
        side = data.get(label, {})
        print(label, json.dumps({k: side.get(k) for k in ("rdf_rms", "density_g_cm3", "force_mae_mev_per_A")}))


if __name__ == "__main__":
    main()
