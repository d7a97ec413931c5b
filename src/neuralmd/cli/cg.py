"""``neuralmd cg train | md | refine``: coarse-grained ML force fields."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ..rundir import refuse_existing
from ..surrogates.cg_training import CGTrainSettings
from .common import app, comma_list, console, default, given, load_npy, settings_from


def _d(name: str):
    return default(CGTrainSettings, name)


cg_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Coarse-grained ML force fields.")
app.add_typer(cg_app, name="cg")


@cg_app.command("train")
def cg_train(
    ctx: typer.Context,
    coords: Optional[Path] = typer.Option(None, help="coordinates .npy (frames, atoms or beads, 3) in Å"),
    forces: Optional[Path] = typer.Option(None, help="forces .npy, same shape"),
    force_unit: Optional[str] = typer.Option(None, help="unit of the forces, e.g. kcal/mol/A, eV/A (required)"),
    mapping: Optional[Path] = typer.Option(None, help="TOML of [[bead]] atoms=[...] element=...: map all-atom data; "
                                                      "without it the data are taken as already mapped"),
    bead_elements: str = typer.Option("", help="elements of pre-mapped beads, comma-separated (default C)"),
    torsion_names: str = typer.Option("", help="names of the consecutive-bead torsions (default phi,psi for 5 beads)"),
    temperature: float = typer.Option(_d("temperature_K"), help="temperature of the data in K"),
    prior_torsion_order: int = typer.Option(_d("prior_torsion_order"), help="Fourier order of the prior's torsion "
                                                                            "terms (0: none, CGnet's bonds + angles + "
                                                                            "repulsion only)"),
    prior_torsion_pair: bool = typer.Option(_d("prior_torsion_pair"), help="one 2D surface in the first two torsions "
                                                                          "(CMAP-like) instead of 1D terms"),
    valid_fraction: float = typer.Option(_d("valid_fraction"), help="last fraction of the frames held out"),
    hidden: str = typer.Option(",".join(map(str, _d("hidden"))), help="hidden layer widths"),
    epochs: int = typer.Option(_d("epochs")), batch_size: int = typer.Option(_d("batch_size")),
    lr: float = typer.Option(_d("lr")),
    patience: int = typer.Option(_d("patience"), help="epochs without held-out improvement before stopping"),
    seed: int = typer.Option(_d("seed")), threads: int = typer.Option(_d("threads"), help="torch threads (0: all cores)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory"),
    resume: Optional[Path] = typer.Option(None, help="continue the training in this directory"),
    config: Optional[Path] = typer.Option(None, "--config", help="settings TOML (e.g. a run's own cg.toml); options "
                                                                 "given on the command line override it"),
) -> None:
    """CGnet-style force matching: a prior (bonds, angles, repulsion by Boltzmann inversion) plus a
    network trained on mapped forces; held-out force error against the prior alone."""
    from ..surrogates.cg_training import CGTrainer

    if resume is not None:
        trainer = CGTrainer.resume(resume)
    else:
        if output is None or config is None and (coords is None or forces is None):
            raise InputError("cg train: give --coords FILE --forces FILE --force-unit UNIT -o RUN_DIR (or --config "
                             "FILE.toml, or --resume)")
        if config is None and force_unit is None:
            raise InputError(f"{forces}: .npy files do not record units; give --force-unit (e.g. kcal/mol/A)")
        refuse_existing(output, "a CG training run")
        settings = settings_from(ctx, CGTrainSettings, config, {
            "coords": ("coords", str(coords.resolve()) if coords else ""),
            "forces": ("forces", str(forces.resolve()) if forces else ""), "force_unit": ("force_unit", force_unit),
            "mapping": ("mapping", str(mapping.resolve()) if mapping else ""),
            "bead_elements": ("bead_elements", comma_list(bead_elements, "bead_elements")),
            "torsion_names": ("torsion_names", comma_list(torsion_names, "torsion_names")),
            "temperature_K": ("temperature", temperature), "prior_torsion_order": ("prior_torsion_order",
                                                                                   prior_torsion_order),
            "prior_torsion_pair": ("prior_torsion_pair", prior_torsion_pair),
            "valid_fraction": ("valid_fraction", valid_fraction), "hidden": ("hidden", comma_list(hidden, "hidden", int)),
            "epochs": ("epochs", epochs), "batch_size": ("batch_size", batch_size), "lr": ("lr", lr),
            "patience": ("patience", patience), "seed": ("seed", seed), "threads": ("threads", threads)})
        trainer = CGTrainer(settings, output)
    results = trainer.run()
    rmse = results["valid_force_rmse_eV_per_A"]
    console.print(f"held-out force RMSE {rmse['model']:.4f} eV/Å (prior alone {rmse['prior']:.4f}) after "
                  f"{results['epochs']} epochs -> {trainer.run_dir}/ (model.pt, learning_curve.png, results.json)")


@cg_app.command("md")
def cg_md(
    ctx: typer.Context,
    model: Optional[Path] = typer.Argument(None, help="CG model file from `neuralmd cg train`"),
    ns: float = typer.Option(1.0, help="simulated time per replica in ns (with --resume: a new total)"),
    replicas: int = typer.Option(16, help="replicas, started from frames stored in the model"),
    timestep_fs: float = typer.Option(2.0, help="timestep in fs"),
    friction_per_ps: float = typer.Option(1.0, help="Langevin friction in 1/ps"),
    temperature: Optional[float] = typer.Option(None, help="K (default: the training data's)"),
    report_every: int = typer.Option(500, help="steps between trajectory frames"),
    trajectory_replicas: int = typer.Option(16, help="replicas that write a trajectory file (-1: all); every "
                                                     "replica's torsions go to colvar.csv"),
    bias: str = typer.Option("none", help="none, or opes, opes-explore, metad on the model's first two torsions "
                                          "(walkers sharing one bias; frames reweighted in the analysis)"),
    barrier_kjmol: float = typer.Option(30.0, help="OPES barrier / metadynamics scale in kJ/mol"),
    reference: Optional[Path] = typer.Option(None, help="mapped coordinates .npy (Å) to compare the torsion FES with"),
    skip_ps: float = typer.Option(0.0, help="equilibration time left out of the analysis, ps"),
    seed: int = typer.Option(0), threads: int = typer.Option(0, help="torch threads (0: all cores)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this directory"),
    config: Optional[Path] = typer.Option(None, "--config", help="a CG run's md.toml (its sample.toml beside it "
                                                                 "gives the bias): rerun it; options given on the "
                                                                 "command line override it"),
) -> None:
    """Langevin CG MD of many replicas in one batch, then the torsion FES, the basin ΔF and (with
    --reference) the FES error against the all-atom data."""

    from ..config import load_config
    from ..md.simulation import MDSettings
    from ..md.start import load_md_settings
    from ..models.neural import load_potential
    from ..sampling.runs import resume_run
    from ..surrogates.cg_md import analyse_cg_run, start_cg_md
    from ..threads import set_threads

    set_threads(threads or None)
    ref = load_npy(reference) if reference is not None else None
    if not 0 <= skip_ps < ns * 1000:
        raise InputError(f"skip-ps: {skip_ps}; expected >= 0 and shorter than the run ({ns * 1000:g} ps)")
    if resume is not None:
        potential = load_potential(model or load_md_settings(resume).model_path)
        sim = resume_run(resume, potential, progress=True)
        sim.settings.total_steps = int(round(ns * 1e6 / sim.settings.timestep_fs))
        run_dir = resume
    else:
        # start_cg_md's arguments from the options (parameter names where they differ)
        args = {"ns": ns, "replicas": replicas, "timestep_fs": timestep_fs, "friction_per_ps": friction_per_ps,
                "temperature_K": temperature, "seed": seed, "report_every": report_every, "bias": bias,
                "barrier_kjmol": barrier_kjmol, "trajectory_replicas": trajectory_replicas}
        if config is not None:  # the stored run's settings where the command line does not give them
            from ..sampling.runs import load_bias_settings

            stored, stored_bias = load_config(MDSettings, config), load_bias_settings(config.parent)
            model = model or Path(stored.model_path)
            record = {"ns": stored.total_steps * stored.timestep_fs * 1e-6, "replicas": stored.replicas,
                      "timestep_fs": stored.timestep_fs, "friction_per_ps": stored.friction_per_ps,
                      "temperature_K": stored.temperature_K[0], "seed": stored.seed,
                      "report_every": stored.report_every, "bias": stored_bias.bias,
                      "barrier_kjmol": stored_bias.barrier_kjmol, "trajectory_replicas": stored.trajectory_replicas}
            args.update({k: v for k, v in record.items() if not given(ctx, "temperature" if k == "temperature_K" else k)})
        if model is None or output is None:
            raise InputError("cg md: give MODEL -o RUN_DIR (or --config RUN/md.toml, or --resume RUN_DIR)")
        check_reference(ref, reference, load_potential(model))
        sim = start_cg_md(model, output, **args)
        potential, run_dir = sim.potential, output
    check_reference(ref, reference, potential)
    sim.run()
    result = analyse_cg_run(run_dir, potential, ref, skip_ps)
    line = (f"{sim.state.batch.n_systems} replicas x {sim.time_ps(sim.state.step) / 1000:.3f} ns, "
            f"{sim.ns_per_day():.1f} ns/day per replica; ΔF(first torsion > 0) = {result['deltaF_kjmol']:.2f} ± "
            f"{result['deltaF_err_kjmol']:.2f} kJ/mol")
    if ref is not None:
        line += f" (data {result['reference_deltaF_kjmol']:.2f}), FES error {result['fes_mae_kT']:.2f} kT"
    console.print(line + f" -> {run_dir}/ (traj_*.h5md, log.csv, cg_fes.png, cg_analysis.json)")
    if not result["converged"]:
        console.print(f"[red]ΔF UNCONVERGED: {result['reason']}[/red] -> "
                      + "; ".join(result["diagnostics"]["advice"]))


def check_reference(ref, path: Optional[Path], model) -> None:
    """InputError unless the reference coordinates are (frames, beads, 3) for ``model``."""
    if ref is not None and (ref.ndim != 3 or ref.shape[1:] != (len(model.elements), 3)):
        raise InputError(f"{path}: shape {ref.shape}; expected (frames, {len(model.elements)}, 3) bead coordinates "
                         f"in Å for this model")


@cg_app.command("refine")
def cg_refine(
    model: Path = typer.Argument(..., help="CG model file from `neuralmd cg train`"),
    reference: Path = typer.Option(..., help="mapped coordinates .npy (Å) whose torsion distribution to match"),
    iterations: int = typer.Option(3, help="Boltzmann-inversion iterations (each one CG MD run)"),
    ns: float = typer.Option(0.05, help="simulated time per replica per iteration, ns"),
    replicas: int = typer.Option(128, help="replicas per iteration, walkers of one OPES bias on the two torsions"),
    timestep_fs: float = typer.Option(2.0, help="timestep in fs"),
    order: int = typer.Option(4, help="Fourier order of the 2D torsion correction"),
    damping: float = typer.Option(0.8, help="fraction of each iteration's k_BT ln(p_CG / p_data) applied"),
    seed: int = typer.Option(0), threads: int = typer.Option(0, help="torch threads (0: all cores)"),
    output: Path = typer.Option(..., "-o", "--output", help="directory; running the command again resumes it"),
) -> None:
    """Iterative Boltzmann inversion of the model's (φ, ψ) free energy against the mapped data:
    CG MD, compare, add the difference to a 2D torsion correction, repeat. Writes model.pt,
    iter_XX/ (each model and its MD run) and refine.json (FES error per iteration)."""
    from ..surrogates.cg_refine import refine_cg_model
    from ..threads import set_threads

    set_threads(threads or None)
    state = refine_cg_model(model, load_npy(reference), output, iterations, ns, replicas, timestep_fs, order,
                            damping, seed=seed)
    for row in state["history"]:
        console.print(f"iteration {row['iteration']}: FES error {row['fes_mae_kT']:.2f} kT, "
                      f"ΔF {row['deltaF_kjmol']:.2f} ± {row['deltaF_err_kjmol']:.2f} kJ/mol (model before its update)")
    console.print(f"-> {output / 'model.pt'} (run `neuralmd cg md` on it to measure the refined FES)")
