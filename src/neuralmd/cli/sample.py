"""``neuralmd sample`` (enhanced sampling in OpenMM or the native engine) and ``neuralmd fes``
(free energies from a finished run)."""

from __future__ import annotations

import dataclasses
from enum import Enum
from pathlib import Path
from typing import Optional

import torch
import typer

from ..errors import InputError
from ..rundir import check_writable
from ..sampling.bias_factory import BiasSettings
from .common import app, console, default, given, one_temperature, refuse_given, refuse_with_resume, settings_from
from .md import Engine, finish, openmm_settings, run_options, run_resumed, wants_openmm


def _b(name: str):
    return default(BiasSettings, name)


class BiasKind(str, Enum):
    opes = "opes"
    opes_explore = "opes-explore"
    opes_multithermal = "opes-multithermal"
    metad = "metad"
    none = "none"


@app.command()
def sample(
    ctx: typer.Context,
    cv: Optional[str] = typer.Option(None, help="CVs: phi,psi | torsion(i,j,k,l) | distance(i,j) | angle(i,j,k) | "
                                               "an exported CV folder (0-based atoms) | energy (force-field "
                                               "potential energy, kJ/mol; the default of opes-multithermal)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this directory"),
    config: Optional[list[Path]] = typer.Option(None, "--config", help="a run's md.toml and/or sample.toml (give "
                                                                      "--config twice for both); options given on "
                                                                      "the command line override them"),
    engine: Engine = typer.Option(Engine.openmm, help="openmm (PDB + force field) or native (--model)"),
    pdb: Optional[Path] = typer.Option(None, help="PDB file (openmm engine)"),
    forcefield: str = typer.Option("amber99sbildn.xml", help="OpenMM force-field files, comma-separated"),
    platform: str = typer.Option("Reference", help="OpenMM platform"),
    model: Optional[Path] = typer.Option(None, help="neural potential model.pt (native engine)"),
    structure: Optional[Path] = typer.Option(None, help="starting structure(s) (native engine)"),
    replicas: int = typer.Option(1, help="walkers sharing one bias (native engine: replicas of the batch; openmm: one "
                                         "context each, run in turn)"),
    bias: BiasKind = typer.Option(_b("bias"), help="opes (OPES_METAD), opes-explore, metad (well-tempered), "
                                                      "opes-multithermal (OPES_EXPANDED on the energy, T..--tmax), "
                                                      "none"),
    tmax: float = typer.Option(_b("tmax_K"), help="opes-multithermal: highest temperature in K (0: twice --temperature)"),
    barrier_kjmol: float = typer.Option(_b("barrier_kjmol"), help="OPES BARRIER: the free-energy barrier to overcome (kJ/mol)"),
    biasfactor: float = typer.Option(_b("biasfactor"), help="bias factor γ (0: OPES's βΔE, metad 10)"),
    sigma: Optional[str] = typer.Option(None, help="kernel widths per CV, comma-separated (default: CV std in a "
                                                  "short unbiased probe, widened where the bias would be too "
                                                  "stiff for the timestep)"),
    pace: int = typer.Option(_b("pace"), help="steps between kernel depositions"),
    height_kjmol: float = typer.Option(_b("height_kjmol"), help="initial Gaussian height (metad)"),
    grid: bool = typer.Option(_b("grid"), help="tabulate the bias on a grid inside OpenMM (fast); --no-grid: exact "
                                         "PythonForce"),
    grid_range: Optional[str] = typer.Option(None, help="LOW:HIGH per non-periodic CV, comma-separated"),
    ns: Optional[float] = typer.Option(None, help="simulated time in ns (or --steps)"),
    steps: Optional[int] = typer.Option(None, help="number of steps"),
    temperature: str = typer.Option("300", help="K"),
    timestep_fs: Optional[float] = typer.Option(None, help="fs (default 2 openmm, 0.5 native)"),
    friction_per_ps: float = typer.Option(1.0, help="Langevin friction in 1/ps"),
    report_every: int = typer.Option(500, help="steps between trajectory frames and colvar rows"),
    checkpoint_every: int = typer.Option(50_000, help="steps between checkpoints"),
    seed: int = typer.Option(0),
    threads: int = typer.Option(0, help="torch threads (0: 1 for openmm, all cores for native)"),
) -> None:
    """Enhanced sampling: OPES, OPES_EXPLORE or well-tempered metadynamics along CVs (torsions,
    distances or a learned CV), in OpenMM or the native engine, or multithermal OPES on the
    force-field energy (OpenMM; no CV needed); writes colvar.csv for `neuralmd fes`."""
    from ..md.simulation import MDSettings
    from ..rundir import engine_of, read_toml
    from ..threads import set_threads

    if resume is not None:
        refuse_with_resume(ctx, ["output", "config", "cv", "engine", "pdb", "forcefield", "platform", "model",
                                 "structure", "replicas", "bias", "tmax", "barrier_kjmol", "biasfactor", "sigma", "pace",
                                 "height_kjmol", "grid", "grid_range", "temperature", "timestep_fs", "friction_per_ps",
                                 "report_every", "checkpoint_every", "seed"], resume)
        set_threads((threads or None) if engine_of(resume) == "native" else (threads or 1))
        if ns is not None and steps is None:
            from ..md.start import load_md_settings

            steps = int(round(ns * 1e6 / load_md_settings(resume).timestep_fs))
        return run_resumed(resume, steps)
    if output is None:
        raise InputError("sample: give -o RUN_DIR (or --resume RUN_DIR)")
    bias_fields = {f.name for f in dataclasses.fields(BiasSettings)}
    bias_file = next((c for c in config or [] if set(read_toml(c)) <= bias_fields), None)
    engine_file = next((c for c in config or [] if c != bias_file), None)
    try:
        sigmas = [float(v) for v in sigma.split(",")] if sigma else []
        ranges = [[float(x) for x in r.split(":")] for r in grid_range.split(",")] if grid_range else []
    except ValueError:
        raise InputError(f"sigma/grid-range: cannot read {sigma!r} / {grid_range!r} as numbers") from None
    if cv is None and bias == BiasKind.opes_multithermal and bias_file is None:
        cv = "energy"
    bias_settings = settings_from(ctx, BiasSettings, bias_file, {
        "cv": ("cv", cv or ""), "bias": ("bias", bias.value), "barrier_kjmol": ("barrier_kjmol", barrier_kjmol),
        "biasfactor": ("biasfactor", biasfactor), "sigma": ("sigma", sigmas), "pace": ("pace", pace),
        "height_kjmol": ("height_kjmol", height_kjmol), "grid": ("grid", grid), "grid_ranges": ("grid_range", ranges),
        "tmax_K": ("tmax", tmax)})
    common = run_options(friction_per_ps, seed, report_every, checkpoint_every, timestep_fs)
    if wants_openmm(ctx, engine, engine_file):
        from ..sampling.runs import start_openmm

        set_threads(threads or 1)  # torch only evaluates CVs here; one thread is fastest
        settings = openmm_settings(ctx, engine_file, common, pdb, forcefield, platform, temperature, "sample")
        if given(ctx, "replicas") or engine_file is None:
            if replicas < 1:
                raise InputError(f"replicas: {replicas}; expected >= 1 walker")
            settings.walkers = replicas
        settings.validate()  # the timestep before it divides
        settings.total_steps = total_steps(settings, ns, steps, engine_file)
        run = start_openmm(settings, bias_settings, output, progress=True)
    else:
        from ..md.start import starting_frames
        from ..models.neural import load_potential
        from ..sampling.runs import start_native

        set_threads(threads or None)
        settings = settings_from(ctx, MDSettings, engine_file, {
            **common, "temperature_K": ("temperature", [one_temperature(temperature)]),
            "model_path": ("model", str(model.resolve()) if model else ""),
            "structure": ("structure", str(structure.resolve()) if structure else ""),
            "replicas": ("replicas", replicas)})
        if not settings.model_path or not settings.structure:
            raise InputError("--engine native: give --model FILE --structure FILE -o RUN_DIR (or --config, or "
                             "--resume RUN_DIR)")
        settings.validate()  # the timestep before it divides
        settings.total_steps = total_steps(settings, ns, steps, engine_file)
        run = start_native(load_potential(settings.model_path, dtype=torch.float64), starting_frames(settings),
                           settings, bias_settings, output, progress=True)
    run.run()
    finish(run, "sampling")


def total_steps(settings, ns: Optional[float], steps: Optional[int], config: Optional[Path]) -> int:
    """The run's length: --steps, else --ns at the run's timestep, else the config file's, else 0.1 ns."""
    if steps is not None:
        return steps
    if ns is None and config is not None:
        return settings.total_steps
    if ns is not None and not 0 < ns < float("inf"):
        raise InputError(f"ns: {ns}; expected a simulated time > 0 ns")
    return int(round((ns if ns is not None else 0.1) * 1e6 / settings.timestep_fs))


@app.command()
def fes(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="run directory (sample or md)"),
    cv: Optional[str] = typer.Option(None, help="CVs to project on (default: the run's biased CV), e.g. phi,psi"),
    basin_a: Optional[str] = typer.Option(None, help="basin A, e.g. 'phi<0' (default for phi: phi<0)"),
    basin_b: Optional[str] = typer.Option(None, help="basin B, e.g. 'phi>0' (default for phi: phi>0)"),
    bins: int = typer.Option(60, help="histogram bins per CV"),
    blocks: int = typer.Option(0, help="blocks for the error bar (0: block length from the data, where the block "
                                       "error levels off)"),
    skip_ns: float = typer.Option(0.0, help="discard the first ns (transient of the bias)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="folder for fes.png/fes.json (default: RUN)"),
    binding: bool = typer.Option(False, "--binding", help="a `neuralmd bind` run: ΔG°bind (1 M) with its error, "
                                                          "ΔG°(t) and the PMF along the funnel axis "
                                                          "(binding.json/.png)"),
) -> None:
    """Reweighted free-energy surface on one or two CVs, the free-energy difference between two
    basins with a block error, its convergence curve ΔF(t) and the verdict whether it converged
    (transitions between the basins, effective sample sizes, the weight of the heaviest stretch
    of the run, the drift of ΔF, the plateau of the block error): an unconverged ΔF is printed
    and stored as such, with the reason and what to do."""
    import numpy as np

    from ..analysis.plots import plot_convergence, plot_fes
    from ..io_utils import atomic_write_json
    from ..sampling import fes as F
    from ..sampling.convergence import MIN_BLOCKS, basin_report
    from ..sampling.samples import load_samples

    if binding:
        from .bind import report_binding

        refuse_given(ctx, ["cv", "basin_a", "basin_b", "bins"], "not used with --binding (the run's funnel defines "
                                                                "the bound and unbound states)")
        report_binding(run, skip_ns, blocks, output)
        return
    if bins < 2 or blocks < 0 or blocks == 1 or not skip_ns >= 0:
        raise InputError(f"bins {bins}, blocks {blocks}, skip-ns {skip_ns}: expected bins >= 2, blocks 0 (from the "
                         f"data) or >= 2, skip-ns >= 0")
    if bool(basin_a) != bool(basin_b):
        raise InputError("basin-a/basin-b: give both basins (or neither: phi<0 and phi>0 where the run has phi)")
    samples = load_samples(run, cv)
    keep = samples.time_ns >= skip_ns
    least = 2 * max(blocks, MIN_BLOCKS)
    if keep.sum() < least:
        raise InputError(f"{run}: {int(keep.sum())} frames after --skip-ns {skip_ns}; need at least {least}")
    values, weights, t = samples.values[keep], samples.weights[keep], samples.time_ns[keep]
    names = samples.names
    if len(names) > 2:
        raise InputError(f"fes: {len(names)} CVs {names}; project on one or two (--cv)")
    ranges = [(-p / 2, p / 2) if p else (float(values[:, k].min()), float(values[:, k].max()))
              for k, p in enumerate(samples.periods)]
    if basin_a is None and basin_b is None and "phi" in names:
        basin_a, basin_b = "phi<0", "phi>0"
    regions = [F.parse_region(b, names) for b in (basin_a, basin_b)] if basin_a else []
    for text, region in zip((basin_a, basin_b), regions):
        if not F.in_region(values, region).any():
            raise InputError(f"{run}: basin {text!r} holds none of the {int(keep.sum())} frames; the run never "
                             f"visited it (run longer, or check the basin)")
    centres, surface = F.fes(values, weights, bins, ranges, samples.temperature_K)
    out = check_writable(output or run)
    out.mkdir(parents=True, exist_ok=True)
    plot_fes(centres, surface, names, out / "fes.png", title=f"free energy ({samples.temperature_K:.0f} K), {run.name}")
    result = {"run": str(run), "cvs": names, "frames": int(keep.sum()), "temperature_K": samples.temperature_K,
              "simulated_ns": float(samples.time_ns.max())}
    if regions:
        region_a, region_b = regions
        report = basin_report(values, weights, t, region_a, region_b, samples.temperature_K,
                              segments=samples.replica[keep], blocks=blocks)
        result.update({"basin_a": basin_a, "basin_b": basin_b, **report})
        curve = np.array(report["curve"])
        plot_convergence(curve[:, 0], curve[:, 1], out / "fes_convergence.png",
                         verdict="converged" if report["converged"] else f"UNCONVERGED: {report['reason']}")
        diagnostics = report["diagnostics"]
        text = (f"ΔF = F({basin_b}) - F({basin_a}) = {report['deltaF_kjmol']:.2f} ± {report['deltaF_err_kjmol']:.2f} "
                f"kJ/mol ({int(keep.sum())} frames, {diagnostics['transitions']} transitions, effective samples "
                f"{diagnostics['ess'][0]:.0f}/{diagnostics['ess'][1]:.0f}, blocks of {diagnostics['block_frames']} "
                f"frames)")
        if report["converged"]:
            console.print(f"{text}: converged")
        else:
            console.print(f"[red]{text}: UNCONVERGED[/red]")
            for reason, advice in zip(diagnostics["reasons"], diagnostics["advice"]):
                console.print(f"[red]  {reason}[/red] -> {advice}")
    atomic_write_json(result, out / "fes.json")
    console.print(f"-> {out / 'fes.png'}, {out / 'fes.json'}" + (", fes_convergence.png" if basin_a else ""))
