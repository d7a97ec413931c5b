"""Alanine dipeptide in vacuum (amber99sb-ildn, 300 K, 2 fs, HBonds, OpenMM Reference platform):
ΔF = F(phi > 0) - F(phi < 0) against simulated time for

(a) unbiased MD; (b) OpenMM's own ``app.Metadynamics`` on phi, psi (the peer);
(c) neuralmd OPES on phi, psi; (d) neuralmd OPES on a Deep-TICA CV trained only on a short
unbiased run plus an exploration run that needs no CV: multithermal OPES on the force-field
energy (300-1000 K, 1 fs; no phi/psi given to either). The exploration stage replaces the issue's
"OPES_EXPLORE on a poor CV": OPES_EXPLORE on an autoencoder CV never left phi < 0, and kernel
biases on the energy reverse the force field's forces (see RESULTS.md).

    python benchmarks/ala2_sampling.py [--ns 10] [--seeds 3] [--only opes,learned]   # -> results/ala2_sampling.json

(b), (c) and (d) run once per seed (``--seeds``; (d) repeats its whole preparation per seed).
(b) and (c) use the same kernel width on phi and psi, 0.35 rad; (d) takes its width as ``sample``
would: the learned CV's spread over its own short unbiased run (OPES's advice: the standard
deviation in a basin), widened by ``integrable_sigma`` where that bias would be too stiff for
2 fs steps. ``ns_to_1kjmol``: the simulated time after which ΔF(t) stays within 1 kJ/mol of the
reference: the converged value, from a long OPES run on phi, psi (part ``reference``,
``--reference-ns``, another seed); without it, the mean of the final (b) and (c) values. Per
method: ΔF is the mean over seeds with the standard error between seeds, ``ns_to_1kjmol`` the
median over seeds (a seed that never stays within 1 kJ/mol counts as infinitely slow), ``curve``
the mean curve; each seed's own numbers are under ``seeds``. ``wall_s_per_ns``: wall time per
simulated ns, bias updates and recording included.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import openmm
import torch
from openmm import app, unit

from neuralmd.sampling import fes as F
from neuralmd.sampling.convergence import basin_report
from neuralmd.sampling.cv_training import train_cv_from_runs
from neuralmd.md.openmm_engine import OpenMMSettings
from neuralmd.sampling.bias_factory import BiasSettings
from neuralmd.sampling.kernel_widths import run_sigma
from neuralmd.sampling.runs import start_openmm
from neuralmd.sampling.samples import load_samples
from neuralmd.threads import set_threads

sys.path.insert(0, str(Path(__file__).resolve().parent))
from forcefield_rmd17 import LoadMonitor  # noqa: E402  (CPU used by other processes, per phase)

HERE = Path(__file__).resolve().parent
PDB = HERE.parents[1] / "shared" / "data" / "alanine_dipeptide" / "ala2.pdb"
T = 300.0
PHI, PSI = (4, 6, 8, 14), (6, 8, 14, 16)
SIGMA_RAD = 0.35  # kernel width on phi and psi in (b) and (c)
A, B = [(-np.pi, 0.0)], [(0.0, np.pi)]


def run_neuralmd(out: Path, ns: float, bias: BiasSettings, seed: int, timestep_fs: float = 2.0) -> tuple[dict, float]:
    """A neuralmd OpenMM run recording every 1 ps; ΔF(t) on phi and the wall time per ns."""
    settings = OpenMMSettings(pdb=str(PDB), temperature_K=T, seed=seed, timestep_fs=timestep_fs,
                              report_every=int(round(1000 / timestep_fs)), checkpoint_every=10**9,
                              total_steps=int(round(ns * 1e6 / timestep_fs)))
    run = start_openmm(settings, bias, out)
    t0 = time.perf_counter()
    run.run()
    wall = time.perf_counter() - t0
    s = load_samples(out, "phi")
    report = basin_report(s.values, s.weights, s.time_ns, A, B, T, segments=s.replica, points=40)
    return report, wall / ns


def run_openmm_metad(ns: float, seed: int, points: int = 40) -> tuple[dict, float]:
    """OpenMM's well-tempered metadynamics on phi, psi; ΔF(t) from its own free-energy grid."""
    pdb = app.PDBFile(str(PDB))
    system = app.ForceField("amber99sbildn.xml").createSystem(pdb.topology, nonbondedMethod=app.NoCutoff,
                                                              constraints=app.HBonds)
    variables = []
    for idx in (PHI, PSI):
        force = openmm.CustomTorsionForce("theta")
        force.addTorsion(*idx, [])
        variables.append(app.BiasVariable(force, -np.pi, np.pi, SIGMA_RAD, True))
    meta = app.Metadynamics(system, variables, T * unit.kelvin, 10.0, 1.2 * unit.kilojoule_per_mole, 500)
    integrator = openmm.LangevinMiddleIntegrator(T * unit.kelvin, 1 / unit.picosecond, 2 * unit.femtosecond)
    integrator.setRandomNumberSeed(seed + 1)
    sim = app.Simulation(pdb.topology, system, integrator, openmm.Platform.getPlatformByName("Reference"))
    sim.context.setPositions(pdb.positions)
    sim.context.setVelocitiesToTemperature(T * unit.kelvin, seed + 1)
    total = int(ns * 5e5)
    chunk = total // points
    curve, wall = [], 0.0
    for k in range(points):
        t0 = time.perf_counter()
        for _ in range(chunk // 500):  # record the CVs every 500 steps, as the neuralmd runs do
            meta.step(sim, 500)
            meta.getCollectiveVariables(sim)
        wall += time.perf_counter() - t0
        free = meta.getFreeEnergy().value_in_unit(unit.kilojoule_per_mole)  # (psi, phi) grid
        phi = np.linspace(-np.pi, np.pi, free.shape[1])
        boltz = np.exp(-(free - free.min()) / F.kT_kjmol(T))
        p_b, p_a = boltz[:, phi > 0].sum(), boltz[:, phi < 0].sum()
        curve.append([(k + 1) * chunk / 5e5, float(-F.kT_kjmol(T) * np.log(p_b / p_a))])
    tail = np.array([c[1] for c in curve[points // 2:]])
    return {"deltaF_kjmol": curve[-1][1], "deltaF_err_kjmol": float(tail.std(ddof=1) / np.sqrt(len(tail))),
            "curve": curve}, wall / ns


def ns_to_within(curve: list, reference: float, tol: float = 1.0) -> float | None:
    """Simulated ns after which ΔF(t) stays within ``tol`` of ``reference``."""
    ok = [d is not None and abs(d - reference) <= tol for _, d in curve]  # NaN compares False
    if not ok[-1]:
        return None
    k = len(ok) - 1
    while k > 0 and ok[k - 1]:
        k -= 1
    return curve[k][0]


def finite_or_null(obj):
    """``obj`` with NaN and infinities replaced by None (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: finite_or_null(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_null(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def combine(per_seed: list[dict], reference: float) -> dict:
    """One method's seeds combined: mean ΔF with the standard error between seeds and the mean
    curve (both over the seeds that visited both basins), the median of the seeds'
    ``ns_to_1kjmol`` (None where the median seed never converges), the mean wall time; the seeds
    themselves (each with its own ``ns_to_1kjmol``) under ``seeds``."""
    for run in per_seed:
        run["ns_to_1kjmol"] = ns_to_within(run["curve"], reference)
    sampled = [run for run in per_seed if run["deltaF_kjmol"] is not None and np.isfinite(run["deltaF_kjmol"])]
    finals = np.array([run["deltaF_kjmol"] for run in sampled])
    err = (float(finals.std(ddof=1) / np.sqrt(len(finals))) if len(finals) > 1
           else sampled[0]["deltaF_err_kjmol"] if sampled else None)
    ns = np.median([run["ns_to_1kjmol"] if run["ns_to_1kjmol"] is not None else np.inf for run in per_seed])
    curves = (np.array([[[t, np.nan if d is None else d] for t, d in run["curve"]] for run in sampled])
              if sampled else None)  # a stored curve has null where a basin was not visited yet
    return {"deltaF_kjmol": float(finals.mean()) if sampled else None, "deltaF_err_kjmol": err,
            "ns_to_1kjmol": float(ns) if np.isfinite(ns) else None,
            "wall_s_per_ns": float(np.mean([run["wall_s_per_ns"] for run in per_seed])),
            "curve": curves.mean(axis=0).tolist() if curves is not None else [],
            "seeds_sampling_both_basins": len(sampled), "seeds": per_seed}


def learned_cv_run(learned: Path, ns: dict, seed: int, args: argparse.Namespace) -> dict:
    """(d) for one seed: short unbiased run -> multithermal exploration -> Deep-TICA -> OPES on it."""
    t_learn = time.perf_counter()
    run_neuralmd(learned / "short", ns["short"], BiasSettings(cv="phi", bias="none"), seed)
    explore, _ = run_neuralmd(learned / "explore", ns["explore"],
                              BiasSettings(cv="energy", bias="opes-multithermal", tmax_K=args.explore_tmax), seed + 1,
                              timestep_fs=1.0)
    # unweighted: the slow modes of the multithermal dynamics are the transitions that stay rare even
    # at high temperature; exp(βV) weights would hand almost all weight to the 300 K frames again
    tica = train_cv_from_runs([learned / "short", learned / "explore"], learned / "cv-tica", method="deep-tica",
                              lag_ps=args.lag_ps, n_cv=args.learned_ncv, epochs=100, reweight=False, seed=seed,
                              restarts=args.cv_restarts)
    sigma, spread = run_sigma(str(learned / "cv-tica"), learned / "short", T, 2.0)  # the widths `sample` would choose
    prep_wall = time.perf_counter() - t_learn
    report, wall = run_neuralmd(learned / "opes", ns["learned"],
                                BiasSettings(cv=str(learned / "cv-tica"), barrier_kjmol=40, sigma=sigma), seed + 2)
    report.update({"seed": seed, "wall_s_per_ns": wall, "preparation": {
        "unbiased_ns": ns["short"], "explore_ns": ns["explore"], "wall_s": prep_wall, "deep_tica_cvs": args.learned_ncv,
        "explore": f"opes-multithermal on the energy, {T:.0f}-{args.explore_tmax:.0f} K, 1 fs",
        "explore_deltaF_kjmol": explore["deltaF_kjmol"], "lag_ps": args.lag_ps, "sigma": sigma,
        "sigma_cv_std_short_run": spread,
        "cv_restarts": args.cv_restarts, "deep_tica_valid_losses": tica["restarts_best_valid_loss"],
        "steepness_per_A": tica.get("steepness_per_A")}})
    return report


def discovery_run(folder: Path, seed: int, ns: float, reference: float) -> dict:
    """One seed of the README's blind recipe, as written there: ``neuralmd cv discover`` (its
    defaults: 0.5 ns unbiased, multithermal exploration in 1 ns steps until Deep-TICA's CV passes
    its eigenvalue and crossing checks) then ``sample --config DIR/opes.toml`` for ``ns`` and the
    ΔF verdict of ``fes``. Resumes a seed whose folder exists."""
    from neuralmd.config import load_config
    from neuralmd.rundir import CHECKPOINT
    from neuralmd.sampling.discovery import OPES_SETTINGS, Discovery, DiscoverySettings
    from neuralmd.sampling.runs import resume_run

    t0 = time.perf_counter()
    loop = (Discovery.resume(folder / "discover") if (folder / "discover" / "discover.toml").exists()
            else Discovery.start(DiscoverySettings(pdb=str(PDB), seed=seed), folder / "discover"))
    history = loop.run()
    prep_wall = time.perf_counter() - t0
    last = history["iterations"][-1] if history["iterations"] else {}
    row = {"seed": seed, "exploration_ns": last.get("explore_ns"), "iterations": len(history["iterations"]),
           "eigenvalue": last.get("eigenvalue"), "crossings": last.get("crossings"), "found": history["found"],
           "discovery_wall_s": round(prep_wall, 1), "discovery": history["iterations"]}
    if not history["found"]:
        return {**row, "deltaF_kjmol": None, "deltaF_err_kjmol": None, "converged": False,
                "reason": f"no CV: {history['stop_reason']}", "ns_to_1kjmol": None, "curve": []}
    bias = load_config(BiasSettings, folder / "discover" / OPES_SETTINGS)
    opes = folder / "opes"
    settings = OpenMMSettings(pdb=str(PDB), temperature_K=T, seed=seed + 2, timestep_fs=2.0, report_every=500,
                              checkpoint_every=500_000, total_steps=int(round(ns * 5e5)))
    t0 = time.perf_counter()
    if (opes / CHECKPOINT).exists():
        run = resume_run(opes)
        run.settings.total_steps = settings.total_steps
    else:
        shutil.rmtree(opes, ignore_errors=True)
        run = start_openmm(settings, bias, opes)
    run.run()
    wall = time.perf_counter() - t0
    s = load_samples(opes, "phi")
    report = basin_report(s.values, s.weights, s.time_ns, A, B, T, segments=s.replica, points=40)
    return {**row, "deltaF_kjmol": report["deltaF_kjmol"], "deltaF_err_kjmol": report["deltaF_err_kjmol"],
            "converged": report["converged"], "reason": report["reason"],
            "ns_to_1kjmol": ns_to_within(report["curve"], reference), "transitions":
            report["diagnostics"]["transitions"], "ess": report["diagnostics"]["ess"], "sigma": bias.sigma,
            "opes_wall_s_per_ns": wall / ns, "curve": report["curve"]}


def discovery_summary(rows: list[dict], reference: float, results: dict) -> str:
    """The issue's targets for the blind recipe, one line each."""
    wrong = [r["seed"] for r in rows if r["converged"] and abs(r["deltaF_kjmol"] - reference) > 1.5]
    honest = [r["seed"] for r in rows if not r["converged"] or abs(r["deltaF_kjmol"] - reference) <= 1.0]
    ns = [r["ns_to_1kjmol"] if r["ns_to_1kjmol"] is not None else np.inf for r in rows]
    metad = results.get("openmm_metad", {}).get("ns_to_1kjmol")
    extra = [r["seed"] for r in rows if (r["iterations"] or 0) > 1]
    return (f"discovery: {len(rows)} seeds; within 1 kJ/mol or reported unconverged: {len(honest)}/{len(rows)}; "
            f"converged but > 1.5 kJ/mol off: {wrong or 'none'}; median ns to 1 kJ/mol {np.median(ns):g} "
            f"(OpenMM metad {metad}); seeds that needed more than one exploration step: {extra}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiply all simulated times")
    parser.add_argument("--work", type=Path, default=Path("/tmp/neuralmd-ala2-bench"))
    parser.add_argument("--learned-ncv", type=int, default=1, help="Deep-TICA components biased in (d)")
    parser.add_argument("--explore-ns", type=float, default=3.0, help="(d): length of the multithermal run")
    parser.add_argument("--ns", type=float, default=10.0, help="length of the biased runs (b), (c), (d)")
    parser.add_argument("--explore-tmax", type=float, default=1000.0, help="(d): top of the multithermal ladder, K")
    parser.add_argument("--lag-ps", type=float, default=5.0,
                        help="(d): Deep-TICA lag time (session 8 ran 20 ps: longer than many of the exploration "
                             "run's short phi > 0 visits)")
    parser.add_argument("--only", default="", help="comma-separated subset of unbiased,metad,opes,learned,reference "
                                                   "(summary: none; recombine the stored runs)")
    parser.add_argument("--reference-ns", type=float, default=20.0, help="length of the long reference run")
    parser.add_argument("--seeds", type=int, default=3, help="runs of (b), (c) and (d) with different seeds")
    parser.add_argument("--discovery-seeds", default="100,110,120,130,140",
                        help="seeds of the blind recipe (cv discover -> OPES on its CV), part 'discovery'")
    parser.add_argument("--resume", action="store_true", help="part 'discovery': keep the seeds already stored and "
                                                               "continue an interrupted one")
    parser.add_argument("--cv-restarts", type=int, default=3,
                        help="(d): Deep-TICA trainings per seed, the largest eigenvalue kept (session 8 ran 1)")
    args = parser.parse_args()
    set_threads(1)
    torch.manual_seed(0)
    work = args.work
    out = HERE / "results" / "ala2_sampling.json"
    parts = set(args.only.split(",")) if args.only else {"unbiased", "metad", "opes", "learned", "reference"}
    results: dict = json.loads(out.read_text()) if args.only and out.exists() else {}  # keep the other parts
    for part in parts:
        if not (part == "discovery" and args.resume):
            shutil.rmtree(work / part, ignore_errors=True)
    if "discovery" in parts:
        reference = results.get("reference_deltaF_kjmol") or 9.13
        done = {row["seed"]: row for row in results.get("discovery", [])} if args.resume else {}
        for seed in [int(v) for v in args.discovery_seeds.split(",")]:
            if seed in done:
                continue
            print(f"discovery, seed {seed}: cv discover -> OPES on its CV ({args.ns:g} ns)")
            done[seed] = discovery_run(work / "discovery" / str(seed), seed, args.ns * args.scale, reference)
            results["discovery"] = finite_or_null(list(done.values()))
            out.write_text(json.dumps(finite_or_null(results), indent=1))  # seed by seed: --resume keeps them
            row = done[seed]
            print(f"  explored {row['exploration_ns']} ns in {row['iterations']} iterations; ΔF "
                  f"{row['deltaF_kjmol']} ± {row['deltaF_err_kjmol']}, converged {row['converged']} {row['reason']}; "
                  f"ns to 1 kJ/mol {row['ns_to_1kjmol']}")
        if parts == {"discovery"}:
            print(discovery_summary(results["discovery"], reference, results))
            return
    ns = {k: v * args.scale for k, v in {"unbiased": 10.0, "metad": args.ns, "opes": args.ns, "short": 0.5,
                                         "explore": args.explore_ns, "learned": args.ns}.items()}
    load = LoadMonitor()
    previous_load = results.get("machine_load", {}).get("other_processes_cpu_cores", {})
    if "unbiased" in parts:
        print("(a) unbiased MD")
        results["unbiased"], wall = run_neuralmd(work / "unbiased", ns["unbiased"], BiasSettings(cv="phi", bias="none"),
                                                 1)
        results["unbiased"]["wall_s_per_ns"] = wall
    load.phase("unbiased")
    seeds = [10 * k for k in range(args.seeds)]
    per_seed: dict[str, list[dict]] = {}
    if "metad" in parts:
        per_seed["openmm_metad"] = []
        for seed in seeds:
            print(f"(b) OpenMM Metadynamics on phi, psi, seed {seed + 2}")
            report, wall = run_openmm_metad(ns["metad"], seed + 2)
            per_seed["openmm_metad"].append({**report, "seed": seed + 2, "wall_s_per_ns": wall})
    load.phase("metad")
    if "opes" in parts:
        per_seed["opes_phipsi"] = []
        for seed in seeds:
            print(f"(c) neuralmd OPES on phi, psi, seed {seed + 3}")
            report, wall = run_neuralmd(work / "opes" / str(seed), ns["opes"],
                                        BiasSettings(cv="phi,psi", barrier_kjmol=40, sigma=[SIGMA_RAD] * 2), seed + 3)
            per_seed["opes_phipsi"].append({**report, "seed": seed + 3, "wall_s_per_ns": wall})
    load.phase("opes")
    if "learned" in parts:
        per_seed["opes_learned"] = []
        for seed in seeds:
            print(f"(d) learned CV, seed {seed + 4}: short unbiased run -> multithermal OPES on the energy -> "
                  "Deep-TICA -> OPES")
            per_seed["opes_learned"].append(learned_cv_run(work / "learned" / str(seed), ns, seed + 4, args))

    load.phase("learned")
    if "reference" in parts:
        print(f"reference: {args.reference_ns:g} ns of neuralmd OPES on phi, psi")
        results["reference_run"], wall = run_neuralmd(work / "reference", args.reference_ns,
                                                      BiasSettings(cv="phi,psi", barrier_kjmol=40,
                                                                   sigma=[SIGMA_RAD] * 2), 7)
        results["reference_run"]["wall_s_per_ns"] = wall
    load.phase("reference")
    measured = {k: v for k, v in load.phases.items() if k in parts}
    results["machine_load"] = {"other_processes_cpu_cores": {**previous_load, **measured}}
    busy = [k for k, v in measured.items() if v is not None and v > 0.25]
    if busy:
        print(f"WARNING: other processes used CPU during {busy}: their wall times are not comparable")

    def seed_runs(key: str) -> list[dict]:  # this run's seeds, else those kept from an earlier run
        if key in per_seed:
            return per_seed[key]
        kept = results[key]
        return kept["seeds"] if "seeds" in kept else [{k: kept[k] for k in ("deltaF_kjmol", "deltaF_err_kjmol",
                                                                            "curve", "wall_s_per_ns")}]

    if "reference_run" in results:
        reference = results["reference_run"]["deltaF_kjmol"]
        reference_text = (f"final value of a {results['reference_run']['curve'][-1][0]:g} ns OPES run on phi, psi "
                          f"(± {results['reference_run']['deltaF_err_kjmol']:.2f} kJ/mol)")
    else:
        reference = float(np.mean([np.mean([r["deltaF_kjmol"] for r in seed_runs(key)])
                                   for key in ("openmm_metad", "opes_phipsi")]))
        reference_text = "mean of the final openmm_metad and opes_phipsi values"
    for key in ("unbiased", "openmm_metad", "opes_phipsi", "opes_learned"):
        results[key] = combine(seed_runs(key), reference)
    bridge_ratio = results["opes_phipsi"]["wall_s_per_ns"] / results["openmm_metad"]["wall_s_per_ns"]
    results.update({
        "reference_deltaF_kjmol": reference, "reference": reference_text,
        "bridge_wall_ratio_opes_vs_openmm_metad": bridge_ratio,
        "learned_cv_wall_ratio_vs_openmm_metad": results["opes_learned"]["wall_s_per_ns"]
        / results["openmm_metad"]["wall_s_per_ns"],
        "settings": {"temperature_K": T, "timestep_fs": 2.0, "constraints": "HBonds", "platform": "Reference",
                     "opes_barrier_kjmol": 40, "opes_sigma_rad": SIGMA_RAD,
                     "metad": f"height 1.2 kJ/mol, sigma {SIGMA_RAD} rad, pace 500, biasfactor 10",
                     "ns": ns, "seeds": args.seeds},
        "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, torch threads 1",
        "versions": {"openmm": openmm.__version__, "torch": torch.__version__,
                     "neuralmd": __import__("neuralmd").__version__},
    })
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(finite_or_null(results), indent=1))
    print(f"{'run':14s} {'ΔF kJ/mol':>16s} {'ns to 1 kJ/mol':>15s} {'wall s/ns':>10s}")
    for key in ("unbiased", "openmm_metad", "opes_phipsi", "opes_learned"):
        r = results[key]
        by_seed = [s["ns_to_1kjmol"] for s in r.get("seeds", [])]
        value = "-" if r["deltaF_kjmol"] is None else f"{r['deltaF_kjmol']:8.2f} ± {r['deltaF_err_kjmol'] or 0:5.2f}"
        print(f"{key:14s} {value:>16s} {str(r['ns_to_1kjmol']):>15s} {r['wall_s_per_ns']:10.1f}"
              + (f"  seeds: {by_seed}" if by_seed else ""))
    print(f"reference ΔF {reference:.2f} kJ/mol; OPES (grid) / OpenMM metad wall per step: {bridge_ratio:.2f}")
    print(f"-> {out}")


if __name__ == "__main__":
    main()
