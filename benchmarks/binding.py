"""CB7–B2 binding free energy (GAFF/AM1-BCC, OBC2, 300 K): neuralmd's funnel OPES on the learned
CV and on the host–guest distance, 3 seeds each, against a peer on the same force field.

Parts (``--only``, each resumable with ``--resume``; results saved part by part to the JSON):

- ``opes``: ``neuralmd bind --cv learned`` and ``--cv distance`` for seeds 0, 1, 2, ``--ns`` each
  (a run that exists is continued with ``bind --resume`` up to ``--ns``), then
  ``neuralmd fes --binding``: ΔG° (1 M) ± block error, recrossings, ΔG°(t), wall time per ns.
- ``peer``: umbrella sampling along the same funnel axis z, in the same funnel (so the standard
  state correction is the same), windows every ``--us-spacing`` Å with k = ``--us-k``, each started
  from the previous window's end in one of two chains (``--us-chain``: up from the bound pose, down
  from the unbound plateau; two calls run them side by side), saved one file per window under
  ``--us-dir`` (in ``results/``, so the windows outlive the work folder); MBAR (pymbar) gives the
  unbiased weights and the same ΔG° formula is applied; error from five time blocks; the PMF along z
  is saved with it. The issue names openmmtools' alchemical absolute binding free energy as the
  first choice of peer; it installs here but its complex and solvent legs (≈ 40 alchemical states)
  cost several times this peer's CPU time on 2 cores, so umbrella sampling + MBAR, the other method
  the issue allows, is the peer (stated in the JSON).
- ``mlmm``: the guest's conformations from MM MD of the complex (bound and unbound), GFN2-xTB
  labels (``neuralmd label``), a neuralmd model of the guest (``neuralmd train``), and the MM ->
  ML/MM correction to ΔG° (``bind --ml-correction``'s code on a run of the complex with the OPES
  runs' settings: λ windows in both states, MBAR, overlap).
- ``explicit``: the learned-CV run (seed 0) of the complex in its TIP3P box (PME, Monte Carlo
  barostat; the CV's descriptors gain the guest's and the site's water coordination), up to
  ``--explicit-ns`` and continued by later calls: ns/day, ΔG° so far.
- ``report``: ns to reach and stay within 4 kJ/mol of the peer (per run, medians per CV), the
  results table, and ``binding_pmf.png`` beside the results file (the PMFs along z, ΔG°(t)).

Run dirs under ``--work-dir``; every run stores what it needs to continue.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import forcefield_rmd17 as ff  # noqa: E402  (machine, log)

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "cb7_b2"
NEURALMD = str(Path(sys.executable).parent / "neuralmd")
TEMPERATURE_K = 300.0
EXPERIMENT_KJMOL = -56.07  # 298 K, ITC (Moghaddam et al. 2011): for context only
TOLERANCE_KJMOL = 4.0
log = ff.log


def env(threads: int) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OPENMM_CPU_THREADS": str(threads)}


def complex_args(solvent: str = "obc2") -> list[str]:
    """``neuralmd bind``'s input arguments: the complex in OBC2, or its TIP3P box (``explicit``)."""
    files = "complex-explicit" if solvent == "explicit" else "complex-vacuum"
    return ["--prmtop", str(DATA / f"{files}.prmtop"), "--inpcrd", str(DATA / f"{files}.inpcrd"),
            "--host-residue", "CUC", "--guest-residue", "B2", "--solvent", solvent]


def opes_run(args: argparse.Namespace, cv: str, seed: int, solvent: str = "obc2") -> dict[str, Any]:
    """One funnel OPES run with ``args.walkers`` walkers sharing the bias, ``args.unbound_walkers``
    of them started on the unbound plateau (started or continued up to ``args.ns``,
    ``args.explicit_ns`` in explicit solvent, simulated ns of all walkers together) and its
    analysis; times in the result (``ns``, the ΔG°(t) curve, per ns) count every walker."""
    walkers, unbound = args.walkers, args.unbound_walkers
    protocol = "" if walkers == 1 else f"-w{walkers}u{unbound}"
    run = args.work_dir / (f"opes-{cv}-{seed}{protocol}" + ("-explicit" if solvent == "explicit" else ""))
    ns = (args.explicit_ns if solvent == "explicit" else args.ns) / walkers
    if (run / "checkpoint.pt").exists():
        stored = tomllib.loads((run / "bind.toml").read_text())["barrier_kjmol"]
        if stored != args.barrier:
            raise SystemExit(f"{run}: a run with an OPES barrier of {stored} kJ/mol, not --barrier {args.barrier}; "
                             "move it aside or pass its barrier")
        cmd = [NEURALMD, "bind", "--resume", str(run), "--ns", str(ns)]
    else:
        cmd = [NEURALMD, "bind", *complex_args(solvent), "--cv", cv, "--seed", str(seed), "--ns", str(ns),
               "--walkers", str(walkers), "--unbound-walkers", str(unbound), "--temperature", str(TEMPERATURE_K),
               "--barrier-kjmol", str(args.barrier), "-o", str(run)]
    log(" ".join(cmd))
    subprocess.run(cmd, check=True, env=env(args.threads))
    analysis = subprocess.run([NEURALMD, "fes", str(run), "--binding", "--skip-ns", str(args.skip_ns)],
                              env=env(args.threads), capture_output=True, text=True)
    results = json.loads((run / "results.json").read_text())
    ns = results["time_ps"] / 1000 * walkers
    out = {"cv": cv, "seed": seed, "walkers": walkers, "unbound_walkers": unbound, "barrier_kjmol": args.barrier,
           "ns": ns, "wall_s_per_ns": results["wall_seconds"] / ns, "command": " ".join(cmd)}
    if analysis.returncode != 0:  # e.g. the guest has not left the host yet
        return {**out, "dG_kjmol": None, "dG_err_kjmol": None, "recrossings": 0, "curve": [],
                "analysis": analysis.stderr.strip()}
    report = json.loads((run / "binding.json").read_text())
    return {**out, "dG_kjmol": report["dG_kjmol"], "dG_err_kjmol": report["dG_err_kjmol"],
            "recrossings": report["recrossings"], "converged": report["converged"],
            "curve": [[t * walkers, g] for t, g in report["curve"]], "pmf": report["pmf"],
            "escaped_frames": report["escaped"]["frames"]}


def protocol(run: dict[str, Any]) -> tuple[int, int]:
    """A run's walkers and unbound walkers (runs saved before walkers were recorded had one)."""
    return run.get("walkers", 1), run.get("unbound_walkers", 0)


# --- the peer: umbrella sampling along z in the same funnel, MBAR ------------------------------
def _bind_settings(args: argparse.Namespace):
    """The system and binding settings neuralmd bind would use (same funnel, same regions)."""
    from neuralmd.binding.runs import build_settings
    from neuralmd.binding.system import ComplexInput, load_complex

    spec = ComplexInput(prmtop=str(DATA / "complex-vacuum.prmtop"), inpcrd=str(DATA / "complex-vacuum.inpcrd"),
                        host="CUC", guest="B2", solvent="obc2")
    parts = load_complex(spec, TEMPERATURE_K)
    return parts, build_settings(parts, spec, "axial")


def umbrella_window(args: argparse.Namespace, parts, settings, centre: float, start_nm: np.ndarray, seed: int
                    ) -> tuple[np.ndarray, np.ndarray, float]:
    """z samples (every ps) of one window at ``centre`` Å, its final positions (nm) and wall s."""
    from openmm import unit

    from neuralmd.binding.funnel import AxialPosition
    from neuralmd.binding.runs import FunnelTerm
    from neuralmd.md.openmm_engine import OpenMMRun, OpenMMSettings

    window = parts.copy(start_nm * unit.nanometer)
    frame = settings.frame_cv(AxialPosition)
    FunnelTerm(settings.make_funnel(), frame).add_to(window.system)
    umbrella = frame.centroid_force(f"0.5*{args.us_k * 100!r}*(z - {centre / 10!r})^2")  # kJ/mol/nm², nm
    window.system.addForce(umbrella)
    engine = OpenMMSettings(pdb="", forcefield=[], temperature_K=TEMPERATURE_K, timestep_fs=2.0, seed=seed,
                            platform="CPU")
    run = OpenMMRun(engine, None, window)
    t0 = time.perf_counter()
    run.sample_positions(int(args.us_equil_ps * 500), every=500)
    positions, _ = run.sample_positions(int(args.us_ns * 500_000), every=500)  # one frame per ps (implicit solvent)
    import torch

    with torch.no_grad():
        z = frame.coordinates(torch.as_tensor(positions))[0].numpy()
    return z, positions[-1] / 10.0, time.perf_counter() - t0


def peer(args: argparse.Namespace, saved: dict[str, Any]) -> dict[str, Any]:
    """Umbrella windows and the MBAR estimate. Windows are saved one by one in ``--us-dir`` (kept
    with the results, so a later session continues them) as two chains that can run side by side
    (``--us-chain``): ``up`` from the crystal pose through the lower half of the windows, each
    window started from the previous one's end, and ``down`` from the guest on the unbound plateau
    through the upper half, top first. Until every window exists the estimate is not made."""
    from neuralmd.binding.runs import guest_on_plateau
    from neuralmd.binding.system import positions_A

    parts, settings = _bind_settings(args)
    funnel = settings.make_funnel()
    centres = np.arange(funnel.lower_z_A + 0.5, funnel.upper_z_A - 0.49, args.us_spacing)
    half = len(centres) // 2
    chains = {"up": (list(range(half)), positions_A(parts) / 10.0),
              "down": (list(range(len(centres) - 1, half - 1, -1)), guest_on_plateau(parts, settings) / 10.0)}
    folder = args.us_dir
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("up", "down") if args.us_chain == "both" else (args.us_chain,):
        order, start = chains[name]
        for k in order:
            path = folder / f"window_{k:03d}.npz"
            if path.exists():
                start = np.load(path)["final_nm"]
                continue
            log(f"umbrella window {k + 1}/{len(centres)} at z = {centres[k]:.2f} Å ({name} chain)")
            z, start, seconds = umbrella_window(args, parts, settings, float(centres[k]), start, seed=k)
            tmp = path.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, z=z.astype(np.float32), final_nm=start, wall_s=seconds, centre=centres[k])
            tmp.replace(path)
    done = [folder / f"window_{k:03d}.npz" for k in range(len(centres)) if (folder / f"window_{k:03d}.npz").exists()]
    out = {"method": "umbrella sampling along the funnel axis + MBAR (pymbar), same funnel and standard-state "
                     "correction; openmmtools ABFE not run (CPU cost on 2 cores)",
           "windows": len(centres), "windows_done": len(done), "ns_per_window": args.us_ns, "k_kjmol_A2": args.us_k,
           "cpu_hours": sum(float(np.load(f)["wall_s"]) for f in done) * args.threads / 3600}
    if len(done) < len(centres):
        log(f"umbrella: {len(done)} of {len(centres)} windows; no estimate yet")
        return {**saved.get("peer", {}), **out}
    samples = [np.load(folder / f"window_{k:03d}.npz")["z"].astype(float) for k in range(len(centres))]
    dg, err, pmf = us_binding_free_energy(samples, centres, args.us_k, settings, funnel)
    return {**out, "dG_kjmol": dg, "dG_err_kjmol": err, "pmf": pmf}


def us_binding_free_energy(samples: list[np.ndarray], centres: np.ndarray, k: float, settings, funnel,
                           blocks: int = 5, bin_A: float = 0.25) -> tuple[float, float, list[list[float]]]:
    """ΔG° from umbrella windows by MBAR, with the error of ``blocks`` time blocks, and the PMF
    along z (kJ/mol, zero on the unbound plateau; [z Å, F] per ``bin_A`` bin)."""
    import pymbar
    from scipy.special import logsumexp

    from neuralmd.binding.analysis import funnel_correction_kjmol
    from neuralmd.sampling.fes import kT_kjmol

    kT = kT_kjmol(TEMPERATURE_K)
    lo, hi = settings.unbound_z_A
    shift = funnel_correction_kjmol(funnel.cross_section_A2(TEMPERATURE_K), hi - lo, TEMPERATURE_K)

    def log_weights(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The samples' z and their unbiased log weights (logs: the well and the plateau differ by
        tens of orders of magnitude)."""
        z = np.concatenate(parts)
        n_k = np.array([len(p) for p in parts])
        u_kn = 0.5 * k * (z[None, :] - centres[:, None]) ** 2 / kT
        mbar = pymbar.MBAR(u_kn, n_k, solver_protocol="robust")
        return z, -logsumexp(mbar.f_k[:, None] - u_kn + np.log(n_k)[:, None], axis=0)

    def estimate(parts: list[np.ndarray]) -> float:
        z, log_w = log_weights(parts)
        bound, unbound = logsumexp(log_w[z < settings.bound_z_A]), logsumexp(log_w[(z >= lo) & (z < hi)])
        return float(-kT * (bound - unbound) + shift)

    whole = estimate(samples)
    cuts = [np.array_split(s, blocks) for s in samples]
    per_block = [estimate([c[b] for c in cuts]) for b in range(blocks)]
    z, log_w = log_weights(samples)
    index = np.floor((z - z.min()) / bin_A).astype(int)
    seen = np.unique(index)
    free = np.array([-kT * logsumexp(log_w[index == i]) for i in seen])
    centre_z = z.min() + (seen + 0.5) * bin_A
    free -= free[(centre_z >= lo) & (centre_z < hi)].mean()
    pmf = [[round(float(a), 3), round(float(b), 2)] for a, b in zip(centre_z, free)]
    return whole, float(np.std(per_block, ddof=1) / np.sqrt(blocks)), pmf


# --- the ML/MM correction: a GFN2-xTB model of the guest -----------------------------------------
def guest_frames(args: argparse.Namespace, path: Path) -> int:
    """The guest's conformations from MM MD of the complex (``--mlmm-frames`` per state, bound and
    on the unbound plateau, 1 ps apart) written to ``path`` (extxyz); returns the guest's charge
    (e, the MM charges summed and rounded)."""
    import openmm
    from ase import Atoms
    from ase.io import write

    from neuralmd.binding.learned import sample_state
    from neuralmd.binding.runs import FunnelTerm, plateau_funnel, unbound_start
    from neuralmd.binding.funnel import AxialPosition
    from neuralmd.binding.system import positions_A
    from neuralmd.md.openmm_engine import OpenMMSettings

    parts, settings = _bind_settings(args)
    nonbonded = next(f for f in parts.system.getForces() if isinstance(f, openmm.NonbondedForce))
    charge = round(sum(nonbonded.getParticleParameters(i)[0].value_in_unit(openmm.unit.elementary_charge)
                       for i in settings.guest))
    if path.exists():
        return charge
    engine = OpenMMSettings(pdb="", forcefield=[], temperature_K=TEMPERATURE_K, timestep_fs=2.0, seed=args.seed_mlmm,
                            platform="CPU")
    frame = settings.frame_cv(AxialPosition)
    frames = []
    for funnel, start in ((settings.make_funnel(), positions_A(parts)),
                          (plateau_funnel(settings), unbound_start(parts, settings, engine))):
        positions, _ = sample_state(parts, engine, [FunnelTerm(funnel, frame)], start / 10.0, args.mlmm_frames * 500,
                                    500)
        numbers = parts.numbers[settings.guest]
        frames += [Atoms(numbers=numbers, positions=x[settings.guest]) for x in positions]
    write(path, frames, format="extxyz")
    return charge


def mlmm(args: argparse.Namespace) -> dict[str, Any]:
    """GFN2-xTB labels of the guest's conformations (``neuralmd label``), a neuralmd model of the
    guest (``neuralmd train``, ``--mlmm-train-min``), then the MM -> ML/MM correction (what ``bind
    --ml-correction`` runs) of a binding run of the complex with the OPES runs' settings (a 2 ps
    distance-CV run: the correction samples its own bound and unbound states), with MBAR's overlap."""
    from neuralmd.binding.correction import correct_binding

    folder = args.work_dir / "mlmm"
    folder.mkdir(parents=True, exist_ok=True)
    run_dir = folder / "complex"  # the correction needs the run's system and states, not its OPES history
    if not (run_dir / "checkpoint.pt").exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        cmd = [NEURALMD, "bind", *complex_args(), "--cv", "distance", "--seed", str(args.seed_mlmm), "--ns", "0.002",
               "--temperature", str(TEMPERATURE_K), "--barrier-kjmol", str(args.barrier), "-o", str(run_dir)]
        log(" ".join(cmd))
        subprocess.run(cmd, check=True, env=env(args.threads))
    charge = guest_frames(args, folder / "guest.xyz")
    labelled, model = folder / "guest-xtb.xyz", folder / "model" / "model.pt"
    steps = [("label", labelled, [NEURALMD, "label", str(folder / "guest.xyz"), "--method", "xtb", "--charge",
                                  str(charge), "--threads", str(args.threads), "-o", str(labelled)]),
             ("train", model, [NEURALMD, "train", "--train", str(labelled), "--time-budget-min",
                               str(args.mlmm_train_min), "--threads", str(args.threads), "-o", str(model.parent)])]
    for name, product, cmd in steps:
        if product.exists():
            continue
        if name == "train" and (model.parent / "checkpoint.pt").exists():
            cmd = [NEURALMD, "train", "--resume", str(model.parent)]
        log(" ".join(cmd))
        subprocess.run(cmd, check=True, env=env(args.threads))
    started = time.perf_counter()
    out = correct_binding(run_dir, model, args.mlmm_ps)
    trained = json.loads((model.parent / "results.json").read_text())
    return {"value": out["ddG_kjmol"], "error": out["ddG_err_kjmol"], "overlap": out["min_neighbour_overlap"],
            "states": out["states"], "lambdas": out["lambdas"], "ps_per_window": out["ps_per_window"],
            "run": str(run_dir), "guest_charge_e": charge, "frames": 2 * args.mlmm_frames,
            "labels": "GFN2-xTB (tblite)", "model_valid": trained["valid"],
            "correction_wall_s": round(time.perf_counter() - started, 1)}


# --- report -----------------------------------------------------------------------------------
def time_to_tolerance(curve: list[list[float]], reference: float, tolerance: float = TOLERANCE_KJMOL) -> float | None:
    """The simulated ns from which ΔG°(t) stays within ``tolerance`` of ``reference`` (None: never)."""
    inside = [abs(g - reference) <= tolerance for _, g in curve]
    for i in range(len(curve)):
        if all(inside[i:]):
            return float(curve[i][0])
    return None


def report(data: dict[str, Any]) -> dict[str, Any]:
    """ns to the peer ± 4 kJ/mol per run (None: never), and per CV and protocol (``"learned, 2
    walkers (1 unbound)"``) the medians over seeds; runs whose ΔG°(t) curve was lost
    (``runs_without_curves``) count in the ΔG° medians but not in the time to tolerance."""
    runs, ref = data.get("runs", []), data.get("peer", {}).get("dG_kjmol")
    for r in runs:
        r["ns_to_4kjmol"] = time_to_tolerance(r["curve"], ref) if ref is not None else None
    uncurved = data.get("runs_without_curves", {}).get("runs", [])
    summary = {}
    for key in sorted({(r["cv"], *protocol(r)) for r in runs + uncurved}):
        mine, lost = ([r for r in group if (r["cv"], *protocol(r)) == key] for group in (runs, uncurved))
        values = [r for r in mine + lost if r["dG_kjmol"] is not None]
        times = [r["ns_to_4kjmol"] if r["ns_to_4kjmol"] is not None else float("inf") for r in mine]
        median_time = float(np.median(times)) if times else float("inf")
        summary["{}, {} walker(s) ({} unbound)".format(*key)] = {
            "runs": len(mine), "runs_without_curves": len(lost), "seeds": sorted(r["seed"] for r in values),
            "median_dG_kjmol": float(np.median([r["dG_kjmol"] for r in values])) if values else None,
            "median_ns_to_4kjmol": median_time if np.isfinite(median_time) else None,
            "median_err_kjmol": float(np.median([r["dG_err_kjmol"] for r in values])) if values else None,
            "wall_s_per_ns": float(np.median([r["wall_s_per_ns"] for r in mine + lost]))}
    return summary


def plot(data: dict[str, Any], path: Path) -> None:
    """``path`` (PNG): the PMFs along z (the peer's and each OPES run's reweighted one) and ΔG°(t)
    of every run against the peer's value ± 4 kJ/mol."""
    from neuralmd.analysis.plots import plt, save_figure

    peer_out, runs = data.get("peer", {}), data.get("runs", [])
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4))
    if "pmf" in peer_out:
        z, w = np.array(peer_out["pmf"]).T
        left.plot(z, w, color="k", lw=2, label="umbrella + MBAR (peer)")
    styles = {"learned": "-", "distance": "--"}
    for r in runs:
        walkers, unbound = protocol(r)
        label = f"{r['cv']} CV, seed {r['seed']}, {walkers}w/{unbound}u"
        if r.get("pmf"):
            w = np.array([np.nan if v is None else v for v in r["pmf"]["W_kjmol"]])
            left.plot(r["pmf"]["z_A"], w, styles[r["cv"]], color=f"C{r['seed'] + 3 * (walkers > 1)}", label=label)
        if r["curve"]:
            t, g = np.array(r["curve"]).T
            right.plot(t, g, styles[r["cv"]], color=f"C{r['seed'] + 3 * (walkers > 1)}", label=label)
    left.set_xlabel("z along the funnel axis (Å)")
    left.set_ylabel("PMF (kJ/mol, 0 on the plateau)")
    left.legend(fontsize=7)
    if "dG_kjmol" in peer_out:
        ref = peer_out["dG_kjmol"]
        right.axhspan(ref - TOLERANCE_KJMOL, ref + TOLERANCE_KJMOL, color="0.85", label="peer ± 4 kJ/mol")
    right.axhline(EXPERIMENT_KJMOL, color="r", lw=0.8, label="experiment (298 K, water)")
    right.set_xlabel("simulated ns (all walkers)")
    right.set_ylabel("ΔG° (kJ/mol)")
    right.legend(fontsize=7)
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="opes,peer,report", help="parts to run, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resume", action="store_true", help="keep what the results file already holds")
    p.add_argument("--ns", type=float, default=5.0, help="simulated ns per OPES run (all walkers together)")
    p.add_argument("--walkers", type=int, default=1, help="OPES walkers sharing the bias")
    p.add_argument("--unbound-walkers", type=int, default=0, help="of them, started on the unbound plateau")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--cvs", default="learned,distance")
    p.add_argument("--barrier", type=float, default=120.0,
                   help="OPES barrier (kJ/mol): near the escape free energy the umbrella peer's PMF measures "
                        "(≈ 111 kJ/mol from the bound minimum over the portal barrier to the plateau)")
    p.add_argument("--skip-ns", type=float, default=0.5, help="OPES: the bias's transient, not analysed")
    p.add_argument("--us-spacing", type=float, default=0.5, help="umbrella windows every this many Å")
    p.add_argument("--us-k", type=float, default=40.0, help="umbrella stiffness (kJ/mol/Å²)")
    p.add_argument("--us-ns", type=float, default=1.0, help="production per window (ns)")
    p.add_argument("--us-equil-ps", type=float, default=100.0)
    p.add_argument("--us-chain", choices=("up", "down", "both"), default="both",
                   help="umbrella: the lower half of the windows from the bound pose (up), the upper half from "
                        "the unbound plateau (down), or both; two calls with up and down run side by side")
    p.add_argument("--us-dir", type=Path, default=HERE / "results" / "binding_us",
                   help="umbrella windows, one file each (kept with the results)")
    p.add_argument("--mlmm-frames", type=int, default=200, help="ML/MM: guest frames per state (1 ps apart)")
    p.add_argument("--mlmm-train-min", type=float, default=10.0, help="ML/MM: training minutes of the guest model")
    p.add_argument("--mlmm-ps", type=float, default=100.0, help="ML/MM: MD per λ window and state (ps)")
    p.add_argument("--seed-mlmm", type=int, default=0)
    p.add_argument("--explicit-ns", type=float, default=2.0,
                   help="explicit: ns of the TIP3P-box run (learned CV with the water descriptors, seed 0)")
    p.add_argument("--out", type=Path, default=HERE / "results" / "binding.json")
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/neuralmd-binding"))
    args = p.parse_args(argv)
    os.environ["OPENMM_CPU_THREADS"] = str(args.threads)  # the in-process OpenMM runs (peer, mlmm) too
    args.work_dir.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = json.loads(args.out.read_text()) if args.resume and args.out.exists() else {}
    data.update({"machine": ff.machine_info(), "threads": args.threads, "versions": versions(),
                 "system": "CB7-B2, GAFF/AM1-BCC, OBC2 (mbondi2), 300 K", "experiment_kjmol_298K": EXPERIMENT_KJMOL})
    parts = args.only.split(",")

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=1))

    if "opes" in parts:
        done = {(r["cv"], r["seed"], *protocol(r)): r for r in data.get("runs", [])}
        for seed in (int(s) for s in args.seeds.split(",")):  # seed-major: partial results compare the CVs
            for cv in args.cvs.split(","):
                done[(cv, seed, args.walkers, args.unbound_walkers)] = opes_run(args, cv, seed)
                data["runs"] = list(done.values())
                save()
    if "peer" in parts:
        data["peer"] = peer(args, data)
        save()
    if "mlmm" in parts:
        data["ml_mm_correction_kjmol"] = mlmm(args)
        save()
    if "explicit" in parts:
        run = opes_run(args, "learned", 0, solvent="explicit")
        data["explicit"] = {"ns": run["ns"], "ns_per_day": 86400.0 / run["wall_s_per_ns"], "dG_kjmol": run["dG_kjmol"],
                            "dG_err_kjmol": run["dG_err_kjmol"], "cv": "learned", "seed": 0,
                            "recrossings": run["recrossings"], "command": run["command"],
                            **({"analysis": run["analysis"]} if "analysis" in run else {})}
        save()
    if "report" in parts:
        data["summary"] = report(data)
        plot(data, args.out.with_name(args.out.stem + "_pmf.png"))
        data.setdefault("ml_mm_correction_kjmol", None)
        data.setdefault("explicit", None)
        save()
        print(json.dumps({"peer": data.get("peer"), "summary": data["summary"]}, indent=1))


def versions() -> dict[str, str]:
    import platform

    import openmm

    import neuralmd

    return {"python": platform.python_version(), "openmm": openmm.__version__, "neuralmd": neuralmd.__version__}


if __name__ == "__main__":
    main()
