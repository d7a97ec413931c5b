"""``neuralmd bind``: the absolute binding free energy of a host–guest complex by OPES on a
host–guest CV inside a funnel (OpenMM), with ``--resume``; its analysis is ``neuralmd fes RUN
--binding`` (also run at the end of every bind run)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..binding.runs import BindSettings
from ..errors import InputError
from .common import app, console, default, given, refuse_with_resume


class Solvent(str, Enum):
    obc2 = "obc2"
    gbn2 = "gbn2"
    vacuum = "vacuum"
    explicit = "explicit"


class BindCV(str, Enum):
    axial = "axial"
    distance = "distance"
    learned = "learned"


def _d(name: str):
    return default(BindSettings, name)


FUNNEL_OPTIONS = {"funnel_radius": "radius_A", "funnel_angle": "cone_angle_deg", "funnel_switch": "switch_z_A",
                  "funnel_lower": "lower_z_A", "funnel_upper": "upper_z_A", "funnel_k": "k_kjmol_A2"}


def report_binding(run_dir: Path, skip_ns: float = 0.0, blocks: int = 0, output: Path | None = None) -> dict:
    """Analyse the binding run in ``run_dir``: binding.json and binding.png (in ``output``,
    default the run directory) and the verdict printed."""
    from ..analysis.plots import plot_binding
    from ..binding.analysis import binding_report
    from ..io_utils import atomic_write_json
    from ..rundir import check_writable

    report = binding_report(run_dir, skip_ns, blocks)
    out = check_writable(output or run_dir)
    out.mkdir(parents=True, exist_ok=True)
    plot_binding(report, out / "binding.png")
    atomic_write_json({"run": str(run_dir), **report}, out / "binding.json")
    text = (f"ΔG°bind = {report['dG_kjmol']:.2f} ± {report['dG_err_kjmol']:.2f} kJ/mol (1 M; {report['frames']} frames, "
            f"{report['simulated_ns']:.3f} ns, {report['recrossings']} recrossings)")
    if report["converged"]:
        console.print(f"{text}: converged")
    else:
        console.print(f"[red]{text}: UNCONVERGED[/red]")
        for reason, advice in zip(report["diagnostics"]["reasons"], report["diagnostics"]["advice"]):
            console.print(f"[red]  {reason}[/red] -> {advice}")
    escaped = report["escaped"]
    if escaped["frames"]:
        console.print(f"[red]{escaped['frames']} frames ({100 * escaped['fraction']:.2f} %) lie more than "
                      f"{escaped['beyond_A']:.2f} Å outside the funnel: the wall is too soft for this guest (raise "
                      f"--funnel-k) and ΔG° counts them as they were sampled[/red]")
    if "dG_mlmm_kjmol" in report:
        console.print(f"ΔG°bind (ML/MM) = {report['dG_mlmm_kjmol']:.2f} ± {report['dG_mlmm_err_kjmol']:.2f} kJ/mol")
    console.print(f"   bound: {report['definition']['bound']}; unbound: {report['definition']['unbound']}")
    console.print(f"-> {out / 'binding.json'}, {out / 'binding.png'}")
    return report


@app.command()
def bind(
    ctx: typer.Context,
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory"),
    resume: Optional[Path] = typer.Option(None, help="continue the binding run in this directory"),
    prmtop: Optional[Path] = typer.Option(None, help="AMBER topology of the complex (with --inpcrd)"),
    inpcrd: Optional[Path] = typer.Option(None, help="AMBER coordinates of the complex"),
    pdb: Optional[Path] = typer.Option(None, help="PDB of the complex (with --forcefield)"),
    forcefield: str = typer.Option("", help="OpenMM force-field XML files for --pdb, comma-separated"),
    solvent: Solvent = typer.Option(Solvent.obc2, help="obc2 or gbn2 (implicit), explicit (PME + barostat; the "
                                                       "input needs a box), vacuum"),
    host_residue: Optional[str] = typer.Option(None, help="the host's residue name (e.g. CUC)"),
    guest_residue: Optional[str] = typer.Option(None, help="the guest's residue name (e.g. B2)"),
    host_atoms: Optional[str] = typer.Option(None, help="the host's atoms, 0-based, e.g. 0-125"),
    guest_atoms: Optional[str] = typer.Option(None, help="the guest's atoms, 0-based"),
    cv: BindCV = typer.Option(BindCV.axial, help="biased CV: axial (z along the host axis, funnel metadynamics), "
                                                 "distance (host-guest centroid distance) or learned (a discriminant "
                                                 "of host-guest descriptors from short bound/unbound runs)"),
    barrier_kjmol: float = typer.Option(_d("barrier_kjmol"), help="OPES BARRIER (kJ/mol): about the bound state's "
                                                                   "depth (-ΔG° + ~10 in the default funnel); far above "
                                                                   "it the guest leaves and stays out for many ns, 30 "
                                                                   "below it the guest never leaves"),
    sigma: Optional[float] = typer.Option(None, help="initial kernel width in the CV's unit (default 0.5 Å; for the "
                                                     "learned CV its fluctuation in the bound and unbound states)"),
    cv_train_ps: float = typer.Option(_d("cv_train_ps"), help="learned CV: unbiased MD per state to train it on (ps)"),
    cv_method: str = typer.Option(_d("cv_method"), help="learned CV: lda (Fisher's linear discriminant; smooth "
                                                        "inside the states) or deep-lda"),
    equilibrate_ps: float = typer.Option(_d("equilibrate_ps"), help="explicit solvent: minimise, then this much NPT "
                                                                    "MD with the guest held bound, before the run "
                                                                    "(ps; 0: the input is equilibrated)"),
    pace: int = typer.Option(_d("pace"), help="steps between kernel depositions"),
    funnel_radius: Optional[float] = typer.Option(None, help="cylinder radius (Å; default 2)"),
    funnel_angle: Optional[float] = typer.Option(None, help="cone half-angle (degrees; default: as wide as the host)"),
    funnel_switch: Optional[float] = typer.Option(None, help="z where the cone becomes the cylinder (Å; default 2 Å "
                                                             "past the host's rim)"),
    funnel_lower: Optional[float] = typer.Option(None, help="lowest z (Å; default the far side of the host)"),
    funnel_upper: Optional[float] = typer.Option(None, help="highest z (Å; default 18 Å past the host's rim)"),
    funnel_k: Optional[float] = typer.Option(None, help="wall stiffness (kJ/mol/Å²; default 20)"),
    bound_z: Optional[float] = typer.Option(None, help="bound below this z (Å; default: the cone's end)"),
    unbound_z: Optional[str] = typer.Option(None, help="unbound plateau LOW:HIGH in z (Å; default the 7 Å below the "
                                                       "last)"),
    walkers: int = typer.Option(1, help="OPES walkers sharing the bias (one OpenMM context each, run in turn)"),
    unbound_walkers: int = typer.Option(0, help="of the walkers, this many start with the guest on the unbound "
                                                "plateau (the bias then grows in both states from the start)"),
    ml_guest: Optional[Path] = typer.Option(None, help="a neuralmd model.pt for the guest's internal energy (ML/MM, "
                                                       "mechanical embedding; host and solvent stay MM)"),
    ml_correction: Optional[Path] = typer.Option(None, help="after the run: the MM -> ML/MM correction to ΔG° for this "
                                                            "guest model.pt (λ windows in the bound and unbound "
                                                            "states, MBAR); also with --resume"),
    correction_ps: float = typer.Option(100.0, help="--ml-correction: MD per λ window and state (ps)"),
    ns: float = typer.Option(10.0, help="simulated time in ns (in all, also with --resume)"),
    temperature: float = typer.Option(300.0, help="K"),
    pressure_bar: float = typer.Option(1.0, help="bar (explicit solvent)"),
    timestep_fs: float = typer.Option(2.0, help="fs (hydrogen bonds constrained)"),
    friction_per_ps: float = typer.Option(1.0, help="Langevin friction (1/ps)"),
    report_every: int = typer.Option(500, help="steps between trajectory frames and colvar rows"),
    checkpoint_every: int = typer.Option(50_000, help="steps between checkpoints"),
    seed: int = typer.Option(0),
    platform: str = typer.Option("CPU", help="OpenMM platform"),
    skip_ns: float = typer.Option(0.0, help="analysis: discard the first ns (the bias's transient)"),
) -> None:
    """Absolute binding free energy (1 M standard state) of a guest to a host: OPES on the guest's
    position along the host's axis (or the centroid distance) inside a funnel restraint, in
    OpenMM; ΔG° from the reweighted bound and unbound populations with the funnel's analytic
    standard-state correction, block errors, ΔG°(t) and the binding PMF (binding.json/.png)."""
    from ..binding.runs import build_settings, load_settings, resume_binding, start_binding
    from ..binding.system import ComplexInput, load_complex
    from ..md.openmm_engine import OpenMMSettings
    from ..threads import set_threads

    set_threads(1)  # torch only records CVs here
    if not 0 < ns < float("inf"):
        raise InputError(f"ns: {ns}; expected > 0")
    if not 0 < correction_ps < float("inf"):
        raise InputError(f"correction-ps: {correction_ps}; expected > 0")
    if ml_correction is not None and not ml_correction.is_file():
        raise InputError(f"ml-correction: {ml_correction}: file not found")
    if resume is not None:
        refuse_with_resume(ctx, ["output", "prmtop", "inpcrd", "pdb", "forcefield", "solvent", "host_residue",
                                 "guest_residue", "host_atoms", "guest_atoms", "cv", "barrier_kjmol", "sigma", "pace",
                                 "cv_train_ps", "cv_method", "equilibrate_ps", "ml_guest", "walkers", "unbound_walkers",
                                 *FUNNEL_OPTIONS,
                                 "bound_z",
                                 "unbound_z", "temperature", "pressure_bar", "timestep_fs", "friction_per_ps",
                                 "report_every", "checkpoint_every", "seed", "platform"], resume)
        from ..md.start import checkpoint_step

        stored, engine = load_settings(resume)
        if ml_correction is not None:
            from ..binding.correction import check_correction_model
            from ..binding.runs import stored_system

            check_correction_model(ml_correction, stored_system(resume).numbers, stored)
        done, total = checkpoint_step(resume), int(round(ns * 1e6 / engine.timestep_fs))
        if total < done:
            raise InputError(f"ns: {ns}; the run in {resume} is already at {done * engine.timestep_fs * 1e-6:.4f} ns")
        run = resume_binding(resume, progress=True)
    else:
        if output is None:
            raise InputError("bind: give -o RUN_DIR (or --resume RUN_DIR)")
        for role, residue, atoms in (("host", host_residue, host_atoms), ("guest", guest_residue, guest_atoms)):
            if bool(residue) == bool(atoms):
                raise InputError(f"bind: give the {role} as --{role}-residue NAME or --{role}-atoms INDICES (one)")
        spec = ComplexInput(prmtop=str(prmtop.resolve()) if prmtop else "", inpcrd=str(inpcrd.resolve()) if inpcrd else "",
                            pdb=str(pdb.resolve()) if pdb else "",
                            forcefield=[f.strip() for f in forcefield.split(",") if f.strip()], solvent=solvent.value,
                            host=host_residue or host_atoms or "", guest=guest_residue or guest_atoms or "",
                            pressure_bar=pressure_bar)
        engine = OpenMMSettings(pdb="", forcefield=[], temperature_K=temperature, timestep_fs=timestep_fs,
                                friction_per_ps=friction_per_ps, report_every=report_every,
                                checkpoint_every=checkpoint_every, seed=seed, platform=platform, walkers=walkers)
        engine.validate(pdb=False)  # before the temperature builds a barostat or the timestep divides
        total = int(round(ns * 1e6 / engine.timestep_fs))
        if total < 1:
            raise InputError(f"ns: {ns} is less than one step of {timestep_fs} fs")
        parts = load_complex(spec, temperature)
        funnel = {field: value for option, field in FUNNEL_OPTIONS.items()
                  if (value := ctx.params[option]) is not None}
        settings = build_settings(parts, spec, cv.value, funnel, barrier_kjmol=barrier_kjmol, pace=pace,
                                  sigma=sigma if sigma is not None else (0.0 if cv == BindCV.learned else 0.5),
                                  cv_train_ps=cv_train_ps, cv_method=cv_method, equilibrate_ps=equilibrate_ps)
        settings.unbound_walkers = unbound_walkers
        if bound_z is not None:
            settings.bound_z_A = bound_z
        if unbound_z is not None:
            try:
                settings.unbound_z_A = [float(v) for v in unbound_z.split(":")]
            except ValueError:
                raise InputError(f"unbound-z: {unbound_z!r}; expected LOW:HIGH in Å") from None
        if cv != BindCV.learned and given(ctx, "cv_train_ps"):
            raise InputError("--cv-train-ps: only for --cv learned")
        if solvent != Solvent.explicit and given(ctx, "equilibrate_ps"):
            raise InputError("--equilibrate-ps: only for --solvent explicit")
        if ml_guest is not None and not ml_guest.is_file():
            raise InputError(f"ml-guest: {ml_guest}: file not found")
        if ml_correction is not None:
            from ..binding.correction import check_correction_model

            settings.ml_guest = ml_guest is not None
            check_correction_model(ml_correction, parts.numbers, settings)
        run = start_binding(parts, settings, engine, output, source=spec, ml_guest=ml_guest, progress=True)
    run.run(total - run.step)
    console.print(f"{run.step} steps ({run.time_ps(run.step) / 1000:.4f} ns) at {run.ns_per_day():.2f} ns/day "
                  f"-> {run.run_dir}/")
    if ml_correction is not None:
        from ..binding.correction import correct_binding

        c = correct_binding(run.run_dir, ml_correction, correction_ps)
        value = "not available" if c["ddG_kjmol"] is None else f"{c['ddG_kjmol']:.2f} ± {c['ddG_err_kjmol']:.2f} kJ/mol"
        console.print(f"ML/MM correction ΔΔG = {value} (smallest overlap of neighbouring λ windows "
                      f"{c['min_neighbour_overlap']:.3f})")
        for state, values in c["states"].items():
            if "reason" in values:
                console.print(f"[red]  {state}: {values['reason']}[/red]")
    try:
        report_binding(run.run_dir, skip_ns)
    except InputError as exc:  # too short to say anything yet: the run itself is fine
        console.print(f"[yellow]no ΔG° yet: {exc}[/yellow]")
