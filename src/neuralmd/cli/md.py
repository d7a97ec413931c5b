"""``neuralmd md``: plain MD with a neural potential (native engine) or a force field (OpenMM)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ..md.simulation import MDSettings
from ..rundir import COLVAR, LOG, engine_in
from .common import (CONFIG_HELP, app, comma_list, console, default, given, one_temperature, refuse_given,
                     refuse_with_resume, settings_from)


class Ensemble(str, Enum):
    nvt = "nvt"
    nve = "nve"
    npt = "npt"


class Thermostat(str, Enum):
    langevin = "langevin"
    csvr = "csvr"


class Engine(str, Enum):
    native = "native"
    openmm = "openmm"


def check_device(device: str) -> None:
    """InputError unless ``device`` is a torch device this machine has."""
    import torch

    try:
        torch.device(device)
    except RuntimeError:
        raise InputError(f"device: {device!r} is not a torch device; expected cpu, cuda or cuda:N") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device: {device!r}, but torch sees no CUDA GPU on this machine; use --device cpu")


def temperatures(text: str) -> list[float]:
    """Temperatures in K, comma-separated (one, or one per replica)."""
    try:
        return [float(t) for t in text.split(",")]
    except ValueError:
        raise InputError(f"temperature: cannot read {text!r} as K values") from None


def wants_openmm(ctx: typer.Context, engine: Engine, config: Optional[Path]) -> bool:
    """The OpenMM engine: as --engine says, or as the settings file says when --engine is not given."""
    if config is not None and not given(ctx, "engine"):
        return engine_in(config) == "openmm"
    return engine == Engine.openmm


def run_options(friction_per_ps: float, seed: int, report_every: int, checkpoint_every: int,
                timestep_fs: Optional[float]) -> dict:
    """The options every engine's settings take (:class:`~neuralmd.md.run.RunSettings`), as
    ``settings_from`` wants them; the timestep only where given (each engine has its default)."""
    options = {"friction_per_ps": ("friction_per_ps", friction_per_ps), "seed": ("seed", seed),
               "report_every": ("report_every", report_every), "checkpoint_every": ("checkpoint_every", checkpoint_every)}
    if timestep_fs is not None:
        options["timestep_fs"] = ("timestep_fs", timestep_fs)
    return options


def openmm_settings(ctx: typer.Context, config: Optional[Path], options: dict, pdb: Optional[Path], forcefield: str,
                    platform: str, temperature: str, command: str):
    """:class:`~neuralmd.md.openmm_engine.OpenMMSettings` from ``config`` and the options."""
    from ..md.openmm_engine import OpenMMSettings

    settings = settings_from(ctx, OpenMMSettings, config, {
        **options, "pdb": ("pdb", str(pdb or "")), "platform": ("platform", platform),
        "forcefield": ("forcefield", [f.strip() for f in forcefield.split(",")]),
        "temperature_K": ("temperature", one_temperature(temperature))})
    if not settings.pdb:
        raise InputError(f"{command} --engine openmm: give --pdb FILE (or --config FILE.toml)")
    return settings


def finish(run, what: str, export_xyz: bool = False) -> None:
    """The log plot (and, with ``export_xyz``, extxyz copies of the trajectories) and the
    one-line summary of a finished run."""
    from ..analysis.plots import plot_md_log

    plot_md_log(run.run_dir / LOG, run.run_dir / "md.png")
    if export_xyz:
        from ..data.io import write_frames
        from ..md.reporters import read_h5md

        for path in sorted(run.run_dir.glob("traj_*.h5md")):
            write_frames(read_h5md(path), path.with_suffix(".xyz"))
    files = ", ".join(["traj_*.h5md", "log.csv", "md.png"] + (["colvar.csv"] if (run.run_dir / COLVAR).exists()
                                                               else []))
    console.print(f"{run.step} steps ({run.time_ps(run.step) / 1000:.4f} ns) of {what} at {run.ns_per_day():.2f} "
                  f"ns/day -> {run.run_dir}/ ({files})")


def run_resumed(run_dir: Path, steps: Optional[int], potential=None, export_xyz: bool = False) -> None:
    """Continue the run in ``run_dir`` (plain MD or sampling, either engine) up to ``steps``
    steps in all (default: its stored total); fewer steps than done is refused before any file
    is touched."""
    from ..md.start import checkpoint_step
    from ..sampling.runs import resume_run

    done = checkpoint_step(run_dir) if steps is not None else 0
    if steps is not None and steps < done:
        raise InputError(f"steps: {steps}; the run in {run_dir} is already at step {done}")
    run = resume_run(run_dir, potential, progress=True)
    if steps is not None:
        run.settings.total_steps = steps
    run.run()
    finish(run, "a resumed run", export_xyz)


@app.command()
def md(
    ctx: typer.Context,
    model: Optional[Path] = typer.Argument(None, help="model file (model.pt; native engine)"),
    structure: Optional[Path] = typer.Option(None, help="starting structure(s): one frame, or one per replica"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this directory"),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    engine: Engine = typer.Option(Engine.native, help="native (neural potential) or openmm (PDB + force field)"),
    pdb: Optional[Path] = typer.Option(None, help="PDB file (openmm engine)"),
    forcefield: str = typer.Option("amber99sbildn.xml", help="OpenMM force-field files, comma-separated (openmm engine)"),
    platform: str = typer.Option("Reference", help="OpenMM platform (Reference is fastest for small molecules)"),
    ensemble: Ensemble = typer.Option(Ensemble.nvt, help="nvt (--thermostat), nve (velocity Verlet) or npt "
                                                         "(stochastic cell rescaling + csvr, or + langevin "
                                                         "with --thermostat langevin; periodic cells)"),
    temperature: str = typer.Option("300", help="K; one value or one per replica, comma-separated"),
    timestep_fs: Optional[float] = typer.Option(None, help="timestep in fs (default 0.5 native, 2 openmm)"),
    friction_per_ps: float = typer.Option(default(MDSettings, "friction_per_ps"), help="Langevin friction in 1/ps"),
    thermostat: Thermostat = typer.Option(default(MDSettings, "thermostat"), help="nvt, npt: langevin (BAOAB) or csvr "
                                                                                 "(stochastic velocity rescaling: "
                                                                                 "dynamics undisturbed; native engine)"),
    tau_ps: float = typer.Option(default(MDSettings, "tau_ps"), help="csvr: relaxation time in ps"),
    pressure_bar: str = typer.Option(",".join(f"{p:g}" for p in default(MDSettings, "pressure_bar")),
                                     help="npt: pressure in bar; one value or one per replica, comma-separated"),
    tau_p_ps: float = typer.Option(default(MDSettings, "tau_p_ps"), help="npt: barostat relaxation time in ps"),
    compressibility_per_bar: float = typer.Option(default(MDSettings, "compressibility_per_bar"),
                                                  help="npt: compressibility the barostat assumes, 1/bar (water)"),
    barostat: str = typer.Option(default(MDSettings, "barostat"), help="npt: isotropic (one volume: liquids), "
                                                                       "anisotropic (each axis on its own: orthorhombic "
                                                                       "solids) or triclinic (shear too: any crystal, "
                                                                       "cell in standard form)"),
    steps: int = typer.Option(default(MDSettings, "total_steps"), help="total number of steps (with --resume: a "
                                                                      "new total)"),
    replicas: int = typer.Option(default(MDSettings, "replicas"), help="replicas of the structure, run as one batch"),
    report_every: int = typer.Option(default(MDSettings, "report_every"), help="steps between trajectory frames "
                                                                               "and log rows"),
    checkpoint_every: int = typer.Option(default(MDSettings, "checkpoint_every"), help="steps between checkpoints"),
    seed: int = typer.Option(default(MDSettings, "seed")),
    float64: bool = typer.Option(True, help="evaluate the model in float64 (exact energy conservation); "
                                                   "--resume: the run's own unless given"),
    export_xyz: bool = typer.Option(False, help="also write each replica's trajectory as extxyz (traj_XXX.xyz)"),
    compile: bool = typer.Option(False, "--compile", help="compile the model for these molecules (all-pairs graph "
                                                          "+ torch.compile): faster steps after ~30 s of compiling; "
                                                          "molecules of up to 64 atoms, needs a C++ compiler"),
    threads: int = typer.Option(0, help="torch threads (0: all cores; the openmm engine: 1)"),
    device: str = typer.Option("cpu", help="torch device of the native engine: cpu, or cuda for a GPU"),
) -> None:
    """Molecular dynamics with a neural potential (many replicas in one batch) or a classical
    force field through OpenMM: H5MD trajectories, CSV log, checkpoints; --resume continues
    exactly where a run stopped; --config RUN/md.toml reruns a run from its own record."""
    import torch

    from ..md import start
    from ..models.neural import load_potential
    from ..rundir import engine_of
    from ..threads import set_threads

    if resume is not None:
        refuse_with_resume(ctx, ["structure", "output", "config", "engine", "pdb", "forcefield", "platform", "ensemble",
                                 "temperature", "timestep_fs", "friction_per_ps", "thermostat", "tau_ps", "replicas",
                                 "report_every", "checkpoint_every", "seed", "compile", "pressure_bar", "tau_p_ps",
                                 "compressibility_per_bar", "barostat"], resume)
        native = engine_of(resume) == "native"
        set_threads((threads or None) if native else (threads or 1))
        potential = None
        if native:
            check_device(device)
            stored = start.load_md_settings(resume)
            in_float64 = float64 if given(ctx, "float64") else stored.float64
            potential = load_potential(model or stored.model_path, dtype=torch.float64 if in_float64 else None,
                                       device=device)
        return run_resumed(resume, steps if given(ctx, "steps") else None, potential, export_xyz)
    if output is None:
        raise InputError("md: give -o RUN_DIR (or --resume RUN_DIR)")
    common = {**run_options(friction_per_ps, seed, report_every, checkpoint_every, timestep_fs),
              "total_steps": ("steps", steps)}
    if wants_openmm(ctx, engine, config):
        refuse_given(ctx, ["model", "structure", "replicas", "ensemble", "thermostat", "tau_ps", "pressure_bar", "float64",
                           "tau_p_ps", "compressibility_per_bar", "barostat", "compile", "device"],
                     "not used by the OpenMM engine (one PDB system, Langevin dynamics)")
        set_threads(threads or 1)  # torch only evaluates CVs here; one thread is fastest
        settings = openmm_settings(ctx, config, common, pdb, forcefield, platform, temperature, "md")
        run = start.start_openmm(settings, output, progress=True)
        run.run()
        return finish(run, "OpenMM MD")
    refuse_given(ctx, ["pdb", "forcefield", "platform"], "an option of the OpenMM engine (--engine openmm)")
    set_threads(threads or None)
    check_device(device)
    settings = settings_from(ctx, MDSettings, config, {
        **common, "ensemble": ("ensemble", ensemble.value), "thermostat": ("thermostat", thermostat.value),
        "tau_ps": ("tau_ps", tau_ps), "temperature_K": ("temperature", temperatures(temperature)),
        "pressure_bar": ("pressure_bar", comma_list(pressure_bar, "pressure", float)), "tau_p_ps": ("tau_p_ps", tau_p_ps),
        "compressibility_per_bar": ("compressibility_per_bar", compressibility_per_bar),
        "barostat": ("barostat", barostat),
        "model_path": ("model", str(model.resolve()) if model else ""),
        "structure": ("structure", str(structure.resolve()) if structure else ""),
        "replicas": ("replicas", replicas), "compile": ("compile", compile), "float64": ("float64", float64)})
    if not settings.model_path or not settings.structure:
        raise InputError("md: give MODEL --structure FILE -o RUN_DIR (or --config FILE.toml, or --resume RUN_DIR)")
    if settings.ensemble == "npt" and not given(ctx, "thermostat"):
        settings.thermostat = "csvr"  # npt's thermostat
    from ..rundir import refuse_existing

    refuse_existing(output, "an MD run")
    settings.validate()
    potential = load_potential(settings.model_path, dtype=torch.float64 if settings.float64 else None, device=device)
    sim = start.start_native(settings, output, potential, progress=True)
    sim.run()
    finish(sim, f"{sim.state.batch.n_systems} replica(s)", export_xyz)
