"""``neuralmd refine``: refine a potential against experimental data (DiffTRe), QM data fused."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError
from ..refine.difftre import RefineSettings
from .common import app, comma_list, console, default, given, refuse_given

D = RefineSettings  # the defaults live in RefineSettings


@app.command()
def refine(
    ctx: typer.Context,
    model: Optional[Path] = typer.Argument(None, help="model file to refine (neuralmd train's model.pt)"),
    structure: Optional[Path] = typer.Option(None, help="starting structure (one frame, or one per replica)"),
    target: List[str] = typer.Option([], help="a measurement, repeatable: rdf:O-O=FILE, density=0.997[,ERROR] "
                                              "(g/cm³, npt), observable:FILE.py:FUNCTION=VALUE,ERROR"),
    rdf_unit: str = typer.Option(default(D, "rdf_unit"), help="unit of the r column of RDF files: A or nm"),
    rdf_error: float = typer.Option(default(D, "rdf_error"), help="uncertainty of g(r) where a file gives none"),
    rdf_range: Optional[str] = typer.Option(None, help="r range of the RDF targets in Å, START,END (default: the "
                                                       "file's, cut just below half the box)"),
    ensemble: str = typer.Option(default(D, "ensemble"), help="npt or nvt"),
    thermostat: str = typer.Option(default(D, "thermostat"), help="csvr (velocity rescaling) or langevin (BAOAB)"),
    temperature: float = typer.Option(default(D, "temperature_K"), help="temperature in K"),
    pressure_bar: float = typer.Option(default(D, "pressure_bar"), help="pressure in bar (npt)"),
    timestep_fs: float = typer.Option(default(D, "timestep_fs"), help="MD timestep in fs"),
    replicas: int = typer.Option(default(D, "replicas"), help="replicas sampled side by side"),
    sample_ps: float = typer.Option(default(D, "sample_ps"), help="production per replica per sampling, ps"),
    equilibration_ps: float = typer.Option(default(D, "equilibration_ps"), help="discarded at the start of each "
                                                                                 "sampling, ps"),
    frame_every_fs: float = typer.Option(default(D, "frame_every_fs"), help="time between kept frames, fs"),
    updates: int = typer.Option(default(D, "updates"), help="parameter updates (with --resume: a new total)"),
    lr: float = typer.Option(default(D, "lr"), help="Adam's learning rate (cosine-decayed to a tenth)"),
    ess_threshold: float = typer.Option(default(D, "ess_threshold"), help="resample when the effective sample size "
                                                                          "falls below this fraction"),
    qm_data: List[Path] = typer.Option([], help="QM frames fused into the loss (files or DeePMD folders), "
                                                "repeatable"),
    qm_weight: float = typer.Option(default(D, "qm_weight"), help="weight of the QM loss (relative to its value "
                                                                  "before refinement)"),
    qm_batch: int = typer.Option(default(D, "qm_batch"), help="QM frames per update"),
    check_ps: float = typer.Option(default(D, "check_ps"), help="production of the check simulation with the "
                                                                "refined model, ps (0: none)"),
    seed: int = typer.Option(default(D, "seed"), help="random seed"),
    threads: int = typer.Option(0, help="torch threads (0: all cores)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="refinement directory"),
    resume: Optional[Path] = typer.Option(None, help="continue the refinement in this directory"),
) -> None:
    """Refine MODEL until its simulated averages match measurements (differentiable trajectory
    reweighting, Thaler & Zavadlav 2021), with the QM data's energy/force loss fused in. Writes
    model.pt (a normal neuralmd model), results.json, targets.png (before/after against the
    measurements), history.png, samples/ (each sampling's MD run) and check-md/ (a fresh
    simulation with the refined model, ready for neuralmd analyze)."""
    from ..refine.runs import resume_refinement, start_refinement
    from ..threads import set_threads

    set_threads(threads or None)
    if resume is not None:
        refuse_given(ctx, [p for p in ctx.params if p not in ("resume", "updates", "model", "threads")],
                     f"not used with --resume (the refinement in {resume} keeps its stored settings, refine.toml; "
                     f"only --updates may raise the number of updates)")
        if model is not None:
            raise InputError("MODEL: not used with --resume (the refinement keeps its model)")
        refinement = resume_refinement(resume, updates if given(ctx, "updates") else None, progress=True)
    else:
        if model is None or structure is None or output is None:
            raise InputError("refine: give MODEL --structure FILE --target ... -o DIR (or --resume DIR)")
        bounds = comma_list(rdf_range, "rdf-range", float) if rdf_range else []
        settings = RefineSettings(
            model_path=str(model), structure=str(structure), targets=list(target), rdf_unit=rdf_unit,
            rdf_error=rdf_error, rdf_range=bounds, ensemble=ensemble, thermostat=thermostat, temperature_K=temperature,
            pressure_bar=pressure_bar, timestep_fs=timestep_fs, replicas=replicas, sample_ps=sample_ps,
            equilibration_ps=equilibration_ps, frame_every_fs=frame_every_fs, updates=updates, lr=lr,
            ess_threshold=ess_threshold, qm_data=[str(p) for p in qm_data], qm_weight=qm_weight, qm_batch=qm_batch,
            check_ps=check_ps, seed=seed)
        refinement = start_refinement(settings, output, progress=True)
    results = refinement.run()
    run_dir = refinement.run_dir
    for name, t in results["targets"].items():
        after = t.get("after")
        console.print(f"{name}: χ² per point {t['before']['chi2']:.3g} before"
                      + (f", {after['chi2']:.3g} after (check simulation)" if after else ""), markup=False)
    if "qm_errors" in results:
        b, a = results["qm_errors"]["before"], results["qm_errors"]["after"]
        console.print(f"QM force MAE {b['force_mae_mev_per_A']:.1f} -> {a['force_mae_mev_per_A']:.1f} meV/Å",
                      markup=False)
    console.print(f"{results['updates']} updates, {results['samplings']} samplings, {results['md_ps']:.1f} ps of MD "
                  f"-> {run_dir}/ (model.pt, results.json, targets.png, history.png, check-md/)", markup=False)

