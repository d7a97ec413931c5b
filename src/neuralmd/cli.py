"""The ``neuralmd`` command line. Bad input prints one line and exits with status 2."""

from __future__ import annotations

import json
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import InputError, NeuralMDError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="neuralmd: neural potentials, fast MD and enhanced sampling.")
console = Console(stderr=True)


class Method(str, Enum):
    xtb = "xtb"
    gfn1 = "gfn1"
    dft = "dft"
    hf = "hf"


@app.command()
def label(
    geometries: Path = typer.Argument(..., help="frames to label (.xyz/.extxyz, .db, .npz, DeePMD folder)"),
    output: Path = typer.Option(..., "-o", "--output", help="labelled frames (.xyz or .db)"),
    method: Method = typer.Option(Method.xtb, help="xtb (GFN2-xTB), gfn1 (GFN1-xTB), dft or hf (PySCF)"),
    functional: str = typer.Option("PBE", help="DFT functional (PySCF name)"),
    basis: str = typer.Option("def2-SVP", help="basis set (dft/hf)"),
    density_fit: bool = typer.Option(True, help="density fitting (dft/hf)"),
    charge: int = typer.Option(0, help="total charge in e (a frame's info['charge'] wins)"),
    spin: int = typer.Option(0, help="unpaired electrons, 2S (a frame's info['spin'] wins)"),
    threads: int = typer.Option(0, help="threads for the QM code (0: library default)"),
) -> None:
    """Label geometries with energies (eV) and forces (eV/Å) from xTB or DFT."""
    from .data.io import detect_format, read_frames, write_frames
    from .io_utils import atomic_write_json
    from .reference import PySCFLabeler, XTBLabeler

    detect_format(output)  # fail before any work if the output cannot be written
    frames = read_frames(geometries, require_labels=False, energy_unit="eV", force_unit="eV/A")
    if method in (Method.xtb, Method.gfn1):
        labeler = XTBLabeler("GFN2-xTB" if method == Method.xtb else "GFN1-xTB", charge=charge, uhf=spin)
    else:
        labeler = PySCFLabeler("HF" if method == Method.hf else functional, basis, density_fit, charge, spin,
                               threads or None)
    result = labeler.label(frames, progress=True)
    failures_file = output.with_name(output.name + ".failures.json")
    if result.failures:
        table = Table(title=f"{len(result.failures)} of {len(frames)} frames failed")
        table.add_column("frame")
        table.add_column("reason")
        for f in result.failures:
            table.add_row(str(f.index), f.reason)
        console.print(table)
        atomic_write_json({"input": str(geometries), "settings": labeler.settings(),
                           "failures": [{"frame": f.index, "reason": f.reason} for f in result.failures]},
                          failures_file)
        console.print(f"failures recorded in {failures_file}")
    if not result.frames:
        console.print("error: no frame could be labelled; nothing written")
        raise typer.Exit(1)
    write_frames(result.frames, output)
    console.print(f"labelled {len(result.frames)}/{len(frames)} frames with {labeler.name} in "
                  f"{result.seconds:.1f} s -> {output}")


@app.command()
def train(
    train_file: Optional[Path] = typer.Option(None, "--train", help="training frames"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this directory"),
    valid: Optional[Path] = typer.Option(None, help="validation frames (default: split off --train)"),
    valid_fraction: float = typer.Option(0.05, help="fraction of --train held out for validation"),
    energy_unit: Optional[str] = typer.Option(None, help="energy unit of the data (default eV; required for .npz)"),
    force_unit: Optional[str] = typer.Option(None, help="force unit of the data (default eV/A; required for .npz)"),
    isolated_atoms: Optional[Path] = typer.Option(None, help="single-atom frames giving reference energies"),
    features: int = typer.Option(64), interactions: int = typer.Option(3),
    cutoff: float = typer.Option(5.0, help="cutoff radius in Å"),
    batch_size: int = typer.Option(16), lr: float = typer.Option(1e-3),
    force_weight: float = typer.Option(100.0), energy_weight: float = typer.Option(1.0),
    force_loss: str = typer.Option("huber", help="huber (quadratic below --huber-delta, linear above) or mse"),
    huber_delta: float = typer.Option(0.02, help="eV/Å; where the Huber force loss turns linear"),
    ema_decay: float = typer.Option(0.99, help="decay of the weights' moving average (validated and saved)"),
    max_steps: int = typer.Option(200_000), time_budget_min: float = typer.Option(0.0, help="stop after this many minutes of training (0: no limit)"),
    eval_every: int = typer.Option(100), checkpoint_every: int = typer.Option(100),
    patience: int = typer.Option(25, help="evaluations without improvement before early stopping (plateau "
                                          "schedule; a cosine schedule runs to its end)"),
    lr_schedule: str = typer.Option("auto", help="cosine, plateau, or auto (cosine over --time-budget-min, else plateau)"),
    float64: bool = typer.Option(False, help="train in float64"),
    baseline: Optional[str] = typer.Option(None, help="Δ-learning: learn the labels minus this baseline: xtb, gfn1, or "
                                                   "openmm:SYSTEM.xml|TOPOLOGY.pdb (classical force field)"),
    seed: int = typer.Option(0), threads: int = typer.Option(0, help="torch threads (0: all cores)"),
) -> None:
    """Train a PaiNN potential on energies and forces (or, with --baseline, a correction to
    GFN2-xTB: Δ-learning); writes model.pt, results.json, plots."""
    from .training.trainer import TrainConfig, Trainer

    if resume is not None:
        trainer = Trainer.resume(resume)
    else:
        if train_file is None or output is None:
            raise InputError("train: give --train FILE and -o RUN_DIR (or --resume RUN_DIR)")
        cfg = TrainConfig(train=str(train_file), valid=str(valid or ""), valid_fraction=valid_fraction,
                          energy_unit=energy_unit or "", force_unit=force_unit or "",
                          isolated_atoms=str(isolated_atoms or ""), features=features, interactions=interactions,
                          cutoff_A=cutoff, batch_size=batch_size, lr=lr, force_weight=force_weight,
                          force_loss=force_loss, huber_delta=huber_delta, ema_decay=ema_decay,
                          energy_weight=energy_weight, max_steps=max_steps, time_budget_min=time_budget_min,
                          eval_every=eval_every, checkpoint_every=checkpoint_every, patience=patience, lr_schedule=lr_schedule,
                          dtype="float64" if float64 else "float32", seed=seed, threads=threads,
                          baseline=baseline or "")
        trainer = Trainer(cfg, output)
    results = trainer.run()
    if not trainer.is_main:  # torchrun: rank 0 reports
        return
    v, b = results["valid"], results["baseline_valid"]
    console.print(f"{results['stop_reason']} after {results['steps']} steps ({results['train_seconds']:.0f} s); "
                  f"validation: E {v['energy_mae_mev_per_atom']:.2f} meV/atom, F {v['force_mae_mev_per_A']:.1f} meV/Å "
                  f"(baseline F {b['force_mae_mev_per_A']:.0f} meV/Å) -> {trainer.run_dir / 'model.pt'}")


@app.command("eval")
def evaluate_cmd(
    model: Path = typer.Argument(..., help="model file (model.pt)"),
    data: Path = typer.Argument(..., help="labelled frames"),
    energy_unit: Optional[str] = typer.Option(None, help="energy unit of the data (default eV; required for .npz)"),
    force_unit: Optional[str] = typer.Option(None, help="force unit of the data (default eV/A; required for .npz)"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON on stdout"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="folder for the parity plot (default: beside the model)"),
    float64: bool = typer.Option(False, help="evaluate in float64"),
    threads: int = typer.Option(0, help="torch threads (0: all cores)"),
) -> None:
    """Energy and force errors of a model on labelled frames, and a parity plot."""
    import torch

    from .analysis.plots import plot_parity
    from .data.dataset import FrameDataset
    from .data.io import read_frames
    from .models.neural import load_potential
    from .threads import set_threads
    from .training.metrics import evaluate

    set_threads(threads or None)
    potential = load_potential(model, dtype=torch.float64 if float64 else None)
    frames = read_frames(data, energy_unit=energy_unit, force_unit=force_unit)
    for k, atoms in enumerate(frames):
        potential.check_elements(atoms.numbers, where=f"{data}: frame {k}")
    metrics, preds = evaluate(potential, FrameDataset(frames))
    plot = (output or model.parent) / f"parity_{data.stem}.png"
    plot_parity(preds.energy_true, preds.energy_pred, preds.n_atoms, preds.forces_true, preds.forces_pred,
                metrics, plot, title=f"{model.name} on {data.name}")
    if as_json:
        print(json.dumps(metrics, indent=2))
        return
    table = Table(title=f"{model} on {data} ({metrics['frames']} frames)")
    for col in ("property", "MAE", "RMSE", "unit"):
        table.add_column(col)
    table.add_row("energy per structure", f"{metrics['energy_mae_mev']:.2f}", f"{metrics['energy_rmse_mev']:.2f}", "meV")
    table.add_row("energy per atom", f"{metrics['energy_mae_mev_per_atom']:.3f}",
                  f"{metrics['energy_rmse_mev_per_atom']:.3f}", "meV/atom")
    table.add_row("force component", f"{metrics['force_mae_mev_per_A']:.2f}", f"{metrics['force_rmse_mev_per_A']:.2f}", "meV/Å")
    Console().print(table)
    console.print(f"parity plot: {plot}")


class Ensemble(str, Enum):
    nvt = "nvt"
    nve = "nve"


class Engine(str, Enum):
    native = "native"
    openmm = "openmm"


def _run_openmm(pdb: Optional[Path], forcefield: str, output: Optional[Path], temperature: str,
                timestep_fs: Optional[float], friction_per_ps: float, steps: int, seed: int, report_every: int,
                checkpoint_every: int, platform: str, bias_settings, threads: int) -> None:
    """A new OpenMM run (md --engine openmm, sample --engine openmm)."""
    from .sampling.openmm_engine import OpenMMSettings
    from .sampling.runs import start_openmm
    from .threads import set_threads

    set_threads(threads or 1)  # torch only evaluates CVs here; one thread is fastest
    if pdb is None or output is None:
        raise InputError("--engine openmm: give --pdb FILE and -o RUN_DIR (or --resume RUN_DIR)")
    settings = OpenMMSettings(pdb=str(pdb), forcefield=[f.strip() for f in forcefield.split(",")],
                              temperature_K=_one_temperature(temperature), timestep_fs=timestep_fs or 2.0,
                              friction_per_ps=friction_per_ps, seed=seed, report_every=report_every,
                              checkpoint_every=checkpoint_every, total_steps=steps, platform=platform)
    run = start_openmm(settings, bias_settings, output, progress=True)
    run.run()
    _finish_openmm(run)


def _finish_openmm(run) -> None:
    from .analysis.plots import plot_md_log

    plot_md_log(run.run_dir / "log.csv", run.run_dir / "md.png")
    console.print(f"{run.step} steps ({run.time_ps(run.step) / 1000:.3f} ns) with OpenMM at {run.ns_per_day():.0f} "
                  f"ns/day -> {run.run_dir}/ (traj_000.h5md, log.csv, md.png"
                  + (", colvar.csv)" if (run.run_dir / "colvar.csv").exists() else ")"))


def _one_temperature(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InputError(f"temperature: {text!r}; the OpenMM engine takes one value in K") from None


@app.command()
def md(
    model: Optional[Path] = typer.Argument(None, help="model file (model.pt; native engine)"),
    structure: Optional[Path] = typer.Option(None, help="starting structure(s): one frame, or one per replica"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this directory"),
    engine: Engine = typer.Option(Engine.native, help="native (neural potential) or openmm (PDB + force field)"),
    pdb: Optional[Path] = typer.Option(None, help="PDB file (openmm engine)"),
    forcefield: str = typer.Option("amber99sbildn.xml", help="OpenMM force-field files, comma-separated (openmm engine)"),
    platform: str = typer.Option("Reference", help="OpenMM platform (Reference is fastest for small molecules)"),
    ensemble: Ensemble = typer.Option(Ensemble.nvt, help="nvt (Langevin BAOAB) or nve (velocity Verlet)"),
    temperature: str = typer.Option("300", help="K; one value or one per replica, comma-separated"),
    timestep_fs: Optional[float] = typer.Option(None, help="timestep in fs (default 0.5 native, 2 openmm)"),
    friction_per_ps: float = typer.Option(1.0, help="Langevin friction in 1/ps"),
    steps: Optional[int] = typer.Option(None, help="total number of steps (default 10000; with --resume: a new total)"),
    replicas: int = typer.Option(1, help="replicas of the structure, run as one batch"),
    report_every: int = typer.Option(100, help="steps between trajectory frames and log rows"),
    checkpoint_every: int = typer.Option(1000, help="steps between checkpoints"),
    seed: int = typer.Option(0),
    float64: bool = typer.Option(True, help="evaluate the model in float64 (exact energy conservation)"),
    export_xyz: bool = typer.Option(False, help="also write each replica's trajectory as extxyz (traj_XXX.xyz)"),
    compile: bool = typer.Option(False, "--compile", help="compile the model for these molecules (all-pairs graph "
                                                          "+ torch.compile): faster steps after ~30 s of compiling; "
                                                          "molecules of up to 64 atoms, needs a C++ compiler"),
    threads: int = typer.Option(0, help="torch threads (0: all cores)"),
    device: str = typer.Option("cpu", help="torch device of the native engine: cpu, or cuda for a GPU"),
) -> None:
    """Molecular dynamics with a neural potential (many replicas in one batch) or a classical
    force field through OpenMM: H5MD trajectories, CSV log, checkpoints; --resume continues
    exactly where a run stopped."""
    import torch

    if resume is not None and _engine_of(resume) == "openmm":
        return _resume_openmm(resume, steps)
    if resume is None and engine == Engine.openmm:
        from .sampling.runs import BiasSettings

        return _run_openmm(pdb, forcefield, output, temperature, timestep_fs, friction_per_ps, steps or 10_000, seed,
                           report_every, checkpoint_every, platform, BiasSettings(bias="none"), threads)

    from .analysis.plots import plot_md_log
    from .data.io import read_frames
    from .md.simulation import MDSettings, Simulation
    from .models.neural import load_potential
    from .state import AtomsBatch
    from .threads import set_threads

    set_threads(threads or None)
    dtype = torch.float64 if float64 else None
    try:
        torch.device(device)
    except RuntimeError:
        raise InputError(f"device: {device!r} is not a torch device; expected cpu, cuda or cuda:N") from None
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"device: {device!r}, but torch sees no CUDA GPU on this machine; use --device cpu")
    if resume is not None:
        from .config import load_config

        settings_file = resume / "md.toml"
        if not settings_file.is_file():
            raise InputError(f"{settings_file}: not found; is {resume} an MD run directory?")
        stored = load_config(MDSettings, settings_file)
        potential = load_potential(model or stored.model_path, dtype=dtype, device=device)
        sim = Simulation.resume(resume, potential, progress=True)
        if steps is not None:
            sim.settings.total_steps = steps
        run_dir = resume
    else:
        if model is None or structure is None or output is None:
            raise InputError("md: give MODEL --structure FILE -o RUN_DIR (or --resume RUN_DIR)")
        if (output / "checkpoint.pt").exists():
            raise InputError(f"{output}: already holds an MD run; use --resume {output} or another -o")
        if replicas < 1:
            raise InputError(f"replicas: {replicas}; expected >= 1")
        try:
            temps = [float(t) for t in temperature.split(",")]
        except ValueError:
            raise InputError(f"temperature: cannot read {temperature!r} as K values") from None
        potential = load_potential(model, dtype=dtype, device=device)
        frames = read_frames(structure, require_labels=False)
        if len(frames) == 1:
            frames = [frames[0].copy() for _ in range(replicas)]
        elif replicas not in (1, len(frames)):
            raise InputError(f"{structure}: {len(frames)} frames for {replicas} replicas; give one frame or one per replica")
        settings = MDSettings(ensemble=ensemble.value, timestep_fs=timestep_fs or 0.5, temperature_K=temps,
                              friction_per_ps=friction_per_ps, seed=seed, report_every=report_every,
                              checkpoint_every=checkpoint_every, total_steps=steps or 10_000, model_path=str(model.resolve()),
                              compile=compile)
        sim = Simulation(potential, AtomsBatch.from_atoms(frames), settings, run_dir=output, progress=True)
        from .config import save_config

        output.mkdir(parents=True, exist_ok=True)
        save_config(settings, output / "md.toml")
        run_dir = output
    sim.run()
    plot_md_log(run_dir / "log.csv", run_dir / "md.png")
    if export_xyz:
        from .data.io import write_frames
        from .md.reporters import read_h5md

        for path in sorted(run_dir.glob("traj_*.h5md")):
            write_frames(read_h5md(path), path.with_suffix(".xyz"))
    console.print(f"{sim.state.step} steps ({sim.time_ps(sim.state.step):.2f} ps) of {sim.state.batch.n_systems} "
                  f"replica(s), {sim.ns_per_day():.2f} ns/day -> {run_dir}/ (traj_*.h5md, log.csv, md.png)")


def _engine_of(run_dir: Path) -> str:
    from .sampling.runs import engine_of

    return engine_of(run_dir)


def _resume_openmm(run_dir: Path, steps: Optional[int]) -> None:
    from .sampling.runs import resume_run
    from .threads import set_threads

    set_threads(1)
    run = resume_run(run_dir, progress=True)
    run.run(None if steps is None else max(steps - run.step, 0))
    _finish_openmm(run)


class BiasKind(str, Enum):
    opes = "opes"
    opes_explore = "opes-explore"
    opes_multithermal = "opes-multithermal"
    metad = "metad"
    none = "none"


@app.command()
def sample(
    cv: Optional[str] = typer.Option(None, help="CVs: phi,psi | torsion(i,j,k,l) | distance(i,j) | angle(i,j,k) | "
                                               "an exported CV folder (0-based atoms) | energy (force-field "
                                               "potential energy, kJ/mol; the default of opes-multithermal)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this directory"),
    engine: Engine = typer.Option(Engine.openmm, help="openmm (PDB + force field) or native (--model)"),
    pdb: Optional[Path] = typer.Option(None, help="PDB file (openmm engine)"),
    forcefield: str = typer.Option("amber99sbildn.xml", help="OpenMM force-field files, comma-separated"),
    platform: str = typer.Option("Reference", help="OpenMM platform"),
    model: Optional[Path] = typer.Option(None, help="neural potential model.pt (native engine)"),
    structure: Optional[Path] = typer.Option(None, help="starting structure(s) (native engine)"),
    replicas: int = typer.Option(1, help="walkers sharing one bias (native engine)"),
    bias: BiasKind = typer.Option(BiasKind.opes, help="opes (OPES_METAD), opes-explore, metad (well-tempered), "
                                                      "opes-multithermal (OPES_EXPANDED on the energy, T..--tmax), "
                                                      "none"),
    tmax: float = typer.Option(0.0, help="opes-multithermal: highest temperature in K (0: twice --temperature)"),
    barrier_kjmol: float = typer.Option(40.0, help="OPES BARRIER: the free-energy barrier to overcome (kJ/mol)"),
    biasfactor: float = typer.Option(0.0, help="bias factor γ (0: OPES's βΔE, metad 10)"),
    sigma: Optional[str] = typer.Option(None, help="kernel widths per CV, comma-separated (default: CV std in a "
                                                  "short unbiased probe, widened where the bias would be too "
                                                  "stiff for the timestep)"),
    pace: int = typer.Option(500, help="steps between kernel depositions"),
    height_kjmol: float = typer.Option(1.2, help="initial Gaussian height (metad)"),
    grid: bool = typer.Option(True, help="tabulate the bias on a grid inside OpenMM (fast); --no-grid: exact "
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
    from .sampling.runs import BiasSettings

    if resume is not None:
        if _engine_of(resume) == "openmm":
            return _resume_openmm(resume, steps)
        return _resume_native(resume, steps, threads)
    try:
        sigmas = [float(v) for v in sigma.split(",")] if sigma else []
        ranges = [[float(x) for x in r.split(":")] for r in grid_range.split(",")] if grid_range else []
    except ValueError:
        raise InputError(f"sigma/grid-range: cannot read {sigma!r} / {grid_range!r} as numbers") from None
    if any(len(r) != 2 for r in ranges):
        raise InputError(f"grid-range: {grid_range!r}; expected LOW:HIGH per CV")
    if cv is None and bias == BiasKind.opes_multithermal:
        cv = "energy"
    bias_settings = BiasSettings(cv=cv or "", bias=bias.value, barrier_kjmol=barrier_kjmol, biasfactor=biasfactor,
                                 sigma=sigmas, pace=pace, height_kjmol=height_kjmol, grid=grid, grid_ranges=ranges,
                                 tmax_K=tmax)
    dt = timestep_fs or (2.0 if engine == Engine.openmm else 0.5)
    if steps is None:
        steps = int(round((ns if ns is not None else 0.1) * 1e6 / dt))
    if engine == Engine.openmm:
        return _run_openmm(pdb, forcefield, output, temperature, dt, friction_per_ps, steps, seed, report_every,
                           checkpoint_every, platform, bias_settings, threads)
    _run_native_sample(model, structure, output, replicas, temperature, dt, friction_per_ps, steps, seed, report_every,
                       checkpoint_every, bias_settings, threads)


def _run_native_sample(model, structure, output, replicas, temperature, dt, friction_per_ps, steps, seed,
                       report_every, checkpoint_every, bias_settings, threads) -> None:
    import torch

    from .data.io import read_frames
    from .md.simulation import MDSettings
    from .models.neural import load_potential
    from .sampling.runs import start_native
    from .threads import set_threads

    set_threads(threads or None)
    if model is None or structure is None or output is None:
        raise InputError("--engine native: give --model FILE --structure FILE -o RUN_DIR (or --resume RUN_DIR)")
    frames = read_frames(structure, require_labels=False)
    frames = [frames[0].copy() for _ in range(replicas)] if len(frames) == 1 else frames
    settings = MDSettings(ensemble="nvt", timestep_fs=dt, temperature_K=[_one_temperature(temperature)],
                          friction_per_ps=friction_per_ps, seed=seed, report_every=report_every,
                          checkpoint_every=checkpoint_every, total_steps=steps, model_path=str(model.resolve()))
    sim = start_native(load_potential(model, dtype=torch.float64), frames, settings, bias_settings, output,
                       progress=True)
    sim.run()
    _finish_native(sim)


def _resume_native(run_dir: Path, steps: Optional[int], threads: int) -> None:
    from .sampling.runs import resume_run
    from .threads import set_threads

    set_threads(threads or None)
    sim = resume_run(run_dir, progress=True)
    if steps is not None:
        sim.settings.total_steps = steps
    sim.run()
    _finish_native(sim)


def _finish_native(sim) -> None:
    from .analysis.plots import plot_md_log

    plot_md_log(sim.run_dir / "log.csv", sim.run_dir / "md.png")
    console.print(f"{sim.state.step} steps ({sim.time_ps(sim.state.step):.2f} ps) of {sim.state.batch.n_systems} "
                  f"walker(s) at {sim.ns_per_day():.2f} ns/day -> {sim.run_dir}/ (colvar.csv, traj_*.h5md, log.csv)")


@app.command()
def fes(
    run: Path = typer.Argument(..., help="run directory (sample or md)"),
    cv: Optional[str] = typer.Option(None, help="CVs to project on (default: the run's biased CV), e.g. phi,psi"),
    basin_a: Optional[str] = typer.Option(None, help="basin A, e.g. 'phi<0' (default for phi: phi<0)"),
    basin_b: Optional[str] = typer.Option(None, help="basin B, e.g. 'phi>0' (default for phi: phi>0)"),
    bins: int = typer.Option(60, help="histogram bins per CV"),
    blocks: int = typer.Option(5, help="blocks for the error bar"),
    skip_ns: float = typer.Option(0.0, help="discard the first ns (transient of the bias)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="folder for fes.png/fes.json (default: RUN)"),
) -> None:
    """Reweighted free-energy surface on one or two CVs, the free-energy difference between two
    basins with a block error, and its convergence curve ΔF(t)."""
    import numpy as np

    from .analysis.plots import plot_convergence, plot_fes
    from .io_utils import atomic_write_json
    from .sampling import fes as F
    from .sampling.runs import load_samples

    samples = load_samples(run, cv)
    keep = samples.time_ns >= skip_ns
    if keep.sum() < 2 * blocks:
        raise InputError(f"{run}: {int(keep.sum())} frames after --skip-ns {skip_ns}; need at least {2 * blocks}")
    values, weights, t = samples.values[keep], samples.weights[keep], samples.time_ns[keep]
    names = samples.names
    if len(names) > 2:
        raise InputError(f"fes: {len(names)} CVs {names}; project on one or two (--cv)")
    ranges = [(-p / 2, p / 2) if p else (float(values[:, k].min()), float(values[:, k].max()))
              for k, p in enumerate(samples.periods)]
    centres, surface = F.fes(values, weights, bins, ranges, samples.temperature_K)
    out = output or run
    out.mkdir(parents=True, exist_ok=True)
    plot_fes(centres, surface, names, out / "fes.png", title=f"free energy ({samples.temperature_K:.0f} K), {run.name}")
    result = {"run": str(run), "cvs": names, "frames": int(keep.sum()), "temperature_K": samples.temperature_K,
              "simulated_ns": float(samples.time_ns.max())}
    if basin_a is None and basin_b is None and "phi" in names:
        basin_a, basin_b = "phi<0", "phi>0"
    if basin_a and basin_b:
        region_a, region_b = F.parse_region(basin_a, names), F.parse_region(basin_b, names)
        report = F.basin_report(values, weights, t, region_a, region_b, samples.temperature_K, blocks)
        result.update({"basin_a": basin_a, "basin_b": basin_b, **report})
        curve = np.array(report["curve"])
        plot_convergence(curve[:, 0], curve[:, 1], out / "fes_convergence.png")
        console.print(f"ΔF = F({basin_b}) - F({basin_a}) = {report['deltaF_kjmol']:.2f} ± "
                      f"{report['deltaF_err_kjmol']:.2f} kJ/mol ({int(keep.sum())} frames, {blocks} blocks)")
    atomic_write_json(result, out / "fes.json")
    console.print(f"-> {out / 'fes.png'}, {out / 'fes.json'}" + (", fes_convergence.png" if basin_a else ""))


cv_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Learned collective variables.")
app.add_typer(cv_app, name="cv")


class CVMethod(str, Enum):
    deep_tica = "deep-tica"
    autoencoder = "autoencoder"
    deep_lda = "deep-lda"


STEEP_CV_PER_A = 10.0  # see neuralmd.analysis.interpret: torsion-like CVs stay at a few per Å
#: a Deep-TICA CV whose autocorrelation at the lag is below this follows no process slower than the lag
#: (alanine dipeptide, from validation losses ≈ -λ²: trainings that found phi 0.35-0.94, stalled ones 0.01-0.13)
SLOW_TICA_EIGENVALUE = 0.2


@cv_app.command("train")
def cv_train(
    runs: list[Path] = typer.Argument(..., help="run directories with trajectories (deep-lda: one per state)"),
    output: Path = typer.Option(..., "-o", "--output", help="folder for cv.pt, descriptors.json, plumed.dat"),
    method: CVMethod = typer.Option(CVMethod.deep_tica),
    descriptors: str = typer.Option("heavy-atom-distances", help="heavy-atom-distances | all-distances | atoms(i,j,...)"),
    lag_ps: float = typer.Option(1.0, help="Deep-TICA lag time in ps"),
    n_cv: int = typer.Option(1, help="number of CV outputs"),
    hidden: str = typer.Option("24,12", help="hidden layer sizes"),
    epochs: int = typer.Option(200),
    seed: int = typer.Option(0),
    restarts: int = typer.Option(1, help="trainings from seeds seed, seed+1, ...; the lowest validation loss is "
                                         "kept (Deep-TICA: the slowest modes found)"),
    reweight: bool = typer.Option(True, help="weight biased frames by exp(βV) (Deep-TICA)"),
    scale_floor: float = typer.Option(0.5, help="least descriptor scale as a fraction of the RMS spread "
                                                "(0: each descriptor by its own std)"),
    smoothness: float = typer.Option(1e-3, help="Deep-TICA gradient penalty weight in Å² (0: none)"),
    threads: int = typer.Option(0, help="torch threads (0: all cores)"),
) -> None:
    """Train a learned CV (Deep-TICA, autoencoder, Deep-LDA) on run trajectories and export it
    for `neuralmd sample --cv` and PLUMED's PYTORCH_MODEL."""
    from .sampling.cv_training import train_cv_from_runs
    from .threads import set_threads

    set_threads(threads or None)
    try:
        layers = tuple(int(v) for v in hidden.split(","))
    except ValueError:
        raise InputError(f"hidden: {hidden!r}; expected sizes like 24,12") from None
    if smoothness < 0 or scale_floor < 0:
        raise InputError(f"smoothness {smoothness}, scale-floor {scale_floor}: expected values >= 0")
    summary = train_cv_from_runs(runs, output, method.value, descriptors, lag_ps, n_cv, layers, epochs, seed,
                                 reweight, scale_floor, smoothness, progress=True, restarts=restarts)
    table = Table(title=f"{method.value} CV from {summary['frames']} frames")
    table.add_column("descriptor")
    table.add_column("relevance")
    for name, rel in summary["top_descriptors"]:
        table.add_row(name, f"{rel:.3f}")
    Console().print(table)
    eigenvalues = summary["tica_eigenvalues"]
    console.print(f"CV range {summary['cv_range']}; steepness {summary['steepness_per_A']} std/Å; "
                  + (f"TICA eigenvalues {[round(v, 3) for v in eigenvalues]}; " if eigenvalues else "")
                  + f"best validation loss {summary['best_valid_loss']:.4f} -> {output}/ (cv.pt, descriptors.json, "
                  f"plumed.dat, relevance.png)")
    if eigenvalues and eigenvalues[0] < SLOW_TICA_EIGENVALUE:
        console.print(f"[yellow]warning: the slowest CV's autocorrelation at {lag_ps:g} ps is {eigenvalues[0]:.3f}: it "
                      f"follows no process slower than the lag (a stalled training, or rare-state visits shorter "
                      f"than the lag); try --restarts 3 or a shorter --lag-ps[/yellow]")
    if max(summary["steepness_per_A"]) > STEEP_CV_PER_A:
        console.print(f"[yellow]warning: a CV changes by more than {STEEP_CV_PER_A:g} of its standard deviations per Å "
                      f"of descriptor change; biasing it may need a shorter timestep (raise --smoothness or "
                      f"--scale-floor)[/yellow]")


cg_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Coarse-grained ML force fields.")
app.add_typer(cg_app, name="cg")


def _comma_list(text: str, what: str, kind: type = str) -> list:
    try:
        return [kind(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise InputError(f"{what}: cannot read {text!r} as a comma-separated list of {kind.__name__}") from None


@cg_app.command("train")
def cg_train(
    coords: Optional[Path] = typer.Option(None, help="coordinates .npy (frames, atoms or beads, 3) in Å"),
    forces: Optional[Path] = typer.Option(None, help="forces .npy, same shape"),
    force_unit: Optional[str] = typer.Option(None, help="unit of the forces, e.g. kcal/mol/A, eV/A (required)"),
    mapping: Optional[Path] = typer.Option(None, help="TOML of [[bead]] atoms=[...] element=...: map all-atom data; "
                                                      "without it the data are taken as already mapped"),
    bead_elements: str = typer.Option("", help="elements of pre-mapped beads, comma-separated (default C)"),
    torsion_names: str = typer.Option("", help="names of the consecutive-bead torsions (default phi,psi for 5 beads)"),
    temperature: float = typer.Option(300.0, help="temperature of the data in K"),
    prior_torsion_order: int = typer.Option(4, help="Fourier order of the prior's torsion terms (0: none, "
                                                     "CGnet's bonds + angles + repulsion only)"),
    prior_torsion_pair: bool = typer.Option(False, help="one 2D surface in the first two torsions (CMAP-like) "
                                                        "instead of 1D terms"),
    valid_fraction: float = typer.Option(0.2, help="last fraction of the frames held out"),
    hidden: str = typer.Option("128,128,128", help="hidden layer widths"),
    epochs: int = typer.Option(40), batch_size: int = typer.Option(128), lr: float = typer.Option(1e-3),
    patience: int = typer.Option(10, help="epochs without held-out improvement before stopping"),
    seed: int = typer.Option(0), threads: int = typer.Option(0, help="torch threads (0: all cores)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory"),
    resume: Optional[Path] = typer.Option(None, help="continue the training in this directory"),
) -> None:
    """CGnet-style force matching: a prior (bonds, angles, repulsion by Boltzmann inversion) plus a
    network trained on mapped forces; held-out force error against the prior alone."""
    from .surrogates.cg_training import CGTrainer, CGTrainSettings

    if resume is not None:
        trainer = CGTrainer.resume(resume)
    else:
        if coords is None or forces is None or output is None:
            raise InputError("cg train: give --coords FILE --forces FILE --force-unit UNIT -o RUN_DIR (or --resume)")
        if force_unit is None:
            raise InputError(f"{forces}: .npy files do not record units; give --force-unit (e.g. kcal/mol/A)")
        if (output / "checkpoint.pt").exists():
            raise InputError(f"{output}: already holds a CG training run; use --resume {output}")
        settings = CGTrainSettings(
            coords=str(coords.resolve()), forces=str(forces.resolve()), force_unit=force_unit,
            mapping=str(mapping.resolve()) if mapping else "", bead_elements=_comma_list(bead_elements, "bead_elements"),
            torsion_names=_comma_list(torsion_names, "torsion_names"), temperature_K=temperature,
            prior_torsion_order=prior_torsion_order, prior_torsion_pair=prior_torsion_pair,
            valid_fraction=valid_fraction, hidden=_comma_list(hidden, "hidden", int), epochs=epochs,
            batch_size=batch_size, lr=lr, patience=patience, seed=seed, threads=threads)
        trainer = CGTrainer(settings, output)
    results = trainer.run()
    rmse = results["valid_force_rmse_eV_per_A"]
    console.print(f"held-out force RMSE {rmse['model']:.4f} eV/Å (prior alone {rmse['prior']:.4f}) after "
                  f"{results['epochs']} epochs -> {trainer.run_dir}/ (model.pt, learning_curve.png, results.json)")


@cg_app.command("md")
def cg_md(
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
) -> None:
    """Langevin CG MD of many replicas in one batch, then the torsion FES, the basin ΔF and (with
    --reference) the FES error against the all-atom data."""

    from .config import load_config
    from .md.simulation import MDSettings
    from .models.neural import load_potential
    from .sampling.runs import resume_run
    from .surrogates.cg_md import analyse_cg_run, start_cg_md
    from .threads import set_threads

    set_threads(threads or None)
    if reference is not None and not reference.is_file():
        raise InputError(f"{reference}: reference coordinates not found")
    if resume is not None:
        potential = load_potential(model or load_config(MDSettings, resume / "md.toml").model_path)
        sim = resume_run(resume, potential, progress=True)
        sim.settings.total_steps = int(round(ns * 1e6 / sim.settings.timestep_fs))
        run_dir = resume
    else:
        if model is None or output is None:
            raise InputError("cg md: give MODEL -o RUN_DIR (or --resume RUN_DIR)")
        sim = start_cg_md(model, output, ns, replicas, timestep_fs, friction_per_ps, temperature, seed, report_every,
                          bias=bias, barrier_kjmol=barrier_kjmol, trajectory_replicas=trajectory_replicas)
        potential, run_dir = sim.potential, output
    sim.run()
    ref = _load_npy(reference) if reference is not None else None
    result = analyse_cg_run(run_dir, potential, ref, skip_ps)
    line = (f"{sim.state.batch.n_systems} replicas x {sim.time_ps(sim.state.step) / 1000:.3f} ns, "
            f"{sim.ns_per_day():.1f} ns/day per replica; ΔF(first torsion > 0) = {result['deltaF_kjmol']:.2f} ± "
            f"{result['deltaF_err_kjmol']:.2f} kJ/mol")
    if ref is not None:
        line += f" (data {result['reference_deltaF_kjmol']:.2f}), FES error {result['fes_mae_kT']:.2f} kT"
    console.print(line + f" -> {run_dir}/ (traj_*.h5md, log.csv, cg_fes.png, cg_analysis.json)")


def _load_npy(path: Path):
    """A NumPy array from a .npy file, or an InputError naming the file."""
    import numpy as np

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return np.load(path)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a NumPy .npy array ({exc})") from None


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
    from .surrogates.cg_refine import refine_cg_model
    from .threads import set_threads

    set_threads(threads or None)
    state = refine_cg_model(model, _load_npy(reference), output, iterations, ns, replicas, timestep_fs, order,
                            damping, seed=seed)
    for row in state["history"]:
        console.print(f"iteration {row['iteration']}: FES error {row['fes_mae_kT']:.2f} kT, "
                      f"ΔF {row['deltaF_kjmol']:.2f} ± {row['deltaF_err_kjmol']:.2f} kJ/mol (model before its update)")
    console.print(f"-> {output / 'model.pt'} (run `neuralmd cg md` on it to measure the refined FES)")


@app.command("screen")
def screen_cmd(
    smiles_file: Path = typer.Argument(..., help="SMILES file: one SMILES per line, optional name after it"),
    model: Path = typer.Option(..., "--model", help="model file (model.pt)"),
    output: Path = typer.Option(..., "-o", "--output", help="ranked conformers (.csv); .xyz, .json, .png beside it"),
    conformers: int = typer.Option(20, help="conformers embedded per molecule (before pruning)"),
    fmax: float = typer.Option(0.05, help="relaxed when the largest force is below this, eV/Å"),
    max_steps: int = typer.Option(200, help="BFGS steps per conformer at most"),
    prune_rms: float = typer.Option(0.25, help="drop conformers within this heavy-atom RMSD (Å) of another"),
    seed: int = typer.Option(0, help="RDKit embedding seed"),
    threads: int = typer.Option(0, help="torch threads (0: all cores)"),
) -> None:
    """Conformer screening: RDKit conformers of each SMILES, relaxed with a neural potential and
    ranked by energy (eV, kJ/mol); writes the CSV, relaxed geometries (.xyz), summary (.json), plot (.png)."""
    from rich.markup import escape

    from .surrogates.screen import screen
    from .threads import set_threads

    set_threads(threads or None)
    summary = screen(smiles_file, model, output, conformers=conformers, fmax_eV_A=fmax, max_steps=max_steps,
                     seed=seed, prune_rms_A=prune_rms, progress=True)
    if summary["failures"]:
        table = Table(title=f"{len(summary['failures'])} of {summary['molecules']} molecules failed")
        table.add_column("line")
        table.add_column("reason")
        for f in summary["failures"]:
            table.add_row(str(f["line"]), escape(f["reason"]))
        console.print(table)
    out = summary["outputs"]
    console.print(f"{summary['conformers']} conformers of {summary['screened']} molecules "
                  f"({summary['converged']} converged) in {summary['seconds']:.1f} s -> {out['csv']} "
                  f"({Path(out['xyz']).name}, {Path(out['json']).name}, {Path(out['png']).name})")


@app.command()
def active(
    structure: Optional[Path] = typer.Option(None, help="starting structure"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory"),
    resume: Optional[Path] = typer.Option(None, help="continue the loop in this directory"),
    labeler: Method = typer.Option(Method.xtb, help="xtb, gfn1 (tblite) or dft, hf (PySCF)"),
    functional: str = typer.Option("PBE"), basis: str = typer.Option("def2-SVP"),
    charge: int = typer.Option(0), spin: int = typer.Option(0),
    committee: int = typer.Option(4, help="committee members (different seeds)"),
    temperatures: str = typer.Option("300", help="exploration temperatures in K, comma-separated"),
    rounds: int = typer.Option(5), initial_frames: int = typer.Option(20, help="displaced copies labelled first"),
    md_steps: int = typer.Option(2000, help="exploration steps per round"),
    replicas: int = typer.Option(2, help="exploration replicas per temperature"),
    trust_low: float = typer.Option(0.05, help="lower trust level: force deviation in eV/Å"),
    trust_high: float = typer.Option(0.35, help="upper trust level: force deviation in eV/Å"),
    max_select: int = typer.Option(20, help="frames labelled per round at most"),
    explore_cv: Optional[str] = typer.Option(None, help="explore under an OPES_EXPLORE bias on this CV "
                                                        "(e.g. 'torsion(1,0,2,8)'); default plain MD"),
    explore_barrier_kjmol: float = typer.Option(20.0, help="OPES_EXPLORE barrier in kJ/mol"),
    train_steps: int = typer.Option(1000, help="training steps per member per round"),
    workers: int = typer.Option(1, help="Dask workers of a local cluster"),
    scheduler: Optional[str] = typer.Option(None, help="address of an existing Dask scheduler (tcp://host:8786)"),
    store: Optional[str] = typer.Option(None, help="label store: .db path or postgresql:// URL (default RUN/labels.db)"),
    seed: int = typer.Option(0),
) -> None:
    """Active learning: committee MD explores, frames between the trust levels are labelled on a
    Dask cluster into an SQLite store, the committee retrains; --resume continues after a kill."""
    from .active.loop import ActiveLearning, ActiveSettings

    table_rows: list[dict] = []

    def report(row: dict) -> None:
        table_rows.append(row)
        table = Table(title="active learning")
        for col in ("round", "labels", "candidates", "selected", "failed", "max dev (eV/Å)", "valid F MAE (meV/Å)",
                    "dev→error scale", "Spearman"):
            table.add_column(col)
        for r in table_rows:
            table.add_row(str(r["round"]), str(r["labels"]), str(r.get("candidates", "")), str(r.get("selected", "")),
                          str(r["failed_total"]), f"{r.get('max_deviation', float('nan')):.3f}",
                          f"{r.get('valid_force_mae_mev_per_A', float('nan')):.1f}",
                          f"{r.get('calibration_scale', float('nan')):.2f}",
                          f"{r.get('calibration_spearman', float('nan')):.2f}")
        Console().print(table)

    if resume is not None:
        loop = ActiveLearning.resume(resume, report)
    else:
        if structure is None or output is None:
            raise InputError("active: give --structure FILE and -o RUN_DIR (or --resume RUN_DIR)")
        if (output / "state.json").exists():
            raise InputError(f"{output}: already holds an active-learning run; use --resume {output}")
        try:
            temps = [float(t) for t in temperatures.split(",")]
        except ValueError:
            raise InputError(f"temperatures: cannot read {temperatures!r} as K values") from None
        settings = ActiveSettings(structure=str(structure.resolve()), labeler=labeler.value, functional=functional,
                                  basis=basis, charge=charge, spin=spin, committee=committee, temperatures_K=temps,
                                  rounds=rounds, initial_frames=initial_frames, md_steps=md_steps,
                                  replicas_per_temperature=replicas, trust_low_eV_A=trust_low,
                                  trust_high_eV_A=trust_high, max_select=max_select, train_steps=train_steps,
                                  explore_cv=explore_cv or "", explore_barrier_kjmol=explore_barrier_kjmol,
                                  workers=workers, scheduler=scheduler or "", store=store or "", seed=seed)
        loop = ActiveLearning(settings, output, report)
    summary = loop.run()
    console.print(f"{summary['labels']} labels ({summary['failed']} failed); final committee validation force MAE "
                  f"{summary['final_valid_force_mae_mev_per_A']:.1f} meV/Å -> {loop.run_dir}/ (final/member_*/model.pt, "
                  f"labels.db, error_vs_labels.png)")


@app.command()
def neb(
    start: Path = typer.Argument(..., help="initial state geometry (.xyz/.extxyz, .db; last frame)"),
    end: Path = typer.Argument(..., help="final state geometry, same atoms in the same order"),
    model: list[Path] = typer.Option(..., "--model", help="model file; give it several times for a committee"),
    images: int = typer.Option(9, help="intermediate images (>= 1)"),
    fmax: float = typer.Option(0.05, help="convergence threshold on the NEB forces in eV/Å"),
    steps: int = typer.Option(500, help="optimiser step limit"),
    climb: bool = typer.Option(True, "--climb/--no-climb", help="climbing image on the highest image"),
    relax_endpoints: bool = typer.Option(True, "--relax-endpoints/--no-relax-endpoints",
                                         help="minimise both endpoints with the model first"),
    trust: float = typer.Option(0.2, help="committee force deviation in eV/Å above which an image is flagged"),
    threads: int = typer.Option(0, help="torch threads (0: all cores; 1 is fastest for small molecules)"),
    output: Path = typer.Option(..., "-o", "--output", help="folder for path.xyz, neb.json, neb.png"),
) -> None:
    """Reaction path (climbing-image NEB) with a neural potential: forward and reverse barrier in
    eV and kJ/mol, the path plot, and with a committee the uncertainty of every image."""
    from .models.committee import load_committee
    from .models.neural import load_potential
    from .surrogates.neb import check_images, load_endpoints, run_neb
    from .threads import set_threads

    set_threads(threads or None)
    check_images(images)
    first, last = load_endpoints(start, end)
    potential = load_committee(model) if len(model) > 1 else load_potential(model[0])
    result = run_neb(first, last, potential, images=images, fmax_eV_A=fmax, steps=steps, climb=climb,
                     relax_endpoints=relax_endpoints, logfile="-", output=output, trust_eV_A=trust)
    summary = result.summary(trust)
    table = Table(title=f"NEB path ({'committee of ' + str(len(model)) if summary['committee'] else 'one model'})")
    columns = ["image", "s (Å)", "E - E0 (eV)"] + (["force dev (eV/Å)", "E std (eV)"] if summary["committee"] else [])
    for col in columns:
        table.add_column(col)
    for row in summary["images"]:
        cells = [str(row["image"]), f"{row['reaction_coordinate_A']:.3f}", f"{row['relative_energy_eV']:.4f}"]
        if summary["committee"]:
            cells += [f"{row['force_deviation_eV_A']:.3f}", f"{row['energy_std_eV']:.4f}"]
        table.add_row(*cells)
    Console().print(table)
    state = "converged" if result.converged else f"NOT converged (fmax {fmax} eV/Å not reached)"
    console.print(f"NEB {state} in {result.steps} steps; barrier forward {summary['barrier_forward_eV']:.4f} eV "
                  f"({summary['barrier_forward_kJmol']:.2f} kJ/mol), reverse {summary['barrier_reverse_eV']:.4f} eV "
                  f"({summary['barrier_reverse_kJmol']:.2f} kJ/mol) -> {output}/ (path.xyz, neb.json, neb.png)")
    if summary["warning"]:
        console.print(summary["warning"], markup=False, highlight=False, soft_wrap=True)


@app.command()
def demo(
    output: Path = typer.Option(Path("neuralmd-demo"), "-o", "--output", help="run directory"),
    train_minutes: float = typer.Option(1.5, help="training time budget in minutes"),
    threads: int = typer.Option(0, help="torch threads (0: all cores)"),
) -> None:
    """Built-in ethanol: xTB-sampled geometries, xTB labels, training, evaluation, plots."""
    from .demo import run_demo

    run_demo(output, train_minutes=train_minutes, threads=threads or None, console=Console())


def main() -> None:
    """Entry point. Usage errors exit 2 (click's own handling); an InputError prints its one-line
    message without a traceback and exits 2."""
    try:
        app()
    except InputError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except NeuralMDError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
