"""``neuralmd train`` and ``neuralmd eval``: fit a potential, measure its errors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import typer
from ase import Atoms
from rich.console import Console
from rich.table import Table

from ..analysis.scan import Profile
from ..data.dataset import FrameDataset
from ..errors import InputError, where
from ..models.base import Potential
from ..training.metrics import Predictions
from ..training.trainer import TrainConfig
from .common import CONFIG_HELP, app, console, default, settings_from

D = TrainConfig


def _d(name: str):
    return default(D, name)


@app.command()
def train(
    ctx: typer.Context,
    train_file: Optional[list[Path]] = typer.Option(None, "--train", help="training frames (a file or a DeePMD "
                                                    "folder); repeat for several"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory"),
    resume: Optional[Path] = typer.Option(None, help="continue the run in this directory"),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    train_weight: Optional[list[float]] = typer.Option(None, "--train-weight", help="weight of each --train path's "
                                                       "frames in the loss, one per --train (default 1)"),
    valid: Optional[list[Path]] = typer.Option(None, help="validation frames (default: split off --train); repeat "
                                                          "for several"),
    valid_fraction: float = typer.Option(_d("valid_fraction"), help="fraction of --train held out for validation"),
    energy_unit: str = typer.Option("", help="energy unit of the data (default eV; required for .npz)"),
    force_unit: str = typer.Option("", help="force unit of the data (default eV/A; required for .npz)"),
    isolated_atoms: Optional[Path] = typer.Option(None, help="single-atom frames giving reference energies"),
    architecture: str = typer.Option(_d("architecture"), help="network: auto (tensornet for molecules, painn "
                                      "for periodic frames), tensornet or painn"),
    repulsion: str = typer.Option(_d("repulsion"), help="short-range repulsion added to the network: zbl or none"),
    repulsion_range: str = typer.Option(_d("repulsion_range"), help="where the repulsion of each pair of elements "
                                        "ends: data (its shortest distance in the training frames) or covalent "
                                        "(the sum of covalent radii)"),
    features: int = typer.Option(_d("features")), interactions: int = typer.Option(_d("interactions")),
    cutoff: float = typer.Option(_d("cutoff_A"), help="cutoff radius in Å"),
    batch_size: int = typer.Option(_d("batch_size"), help="frames per training step (0: from the frames' size, "
                                   "8 for molecules, 1 for a 64-water box)"),
    lr: float = typer.Option(_d("lr")),
    force_weight: float = typer.Option(_d("force_weight")), energy_weight: float = typer.Option(_d("energy_weight")),
    virial_weight: float = typer.Option(_d("virial_weight"), help="weight of the virial per atom (eV) on frames "
                                                                  "that carry a stress"),
    force_loss: str = typer.Option(_d("force_loss"), help="huber (quadratic below --huber-delta, linear above) or mse"),
    huber_delta: float = typer.Option(_d("huber_delta"), help="eV/Å; where the Huber force loss turns linear"),
    ema_decay: float = typer.Option(_d("ema_decay"), help="decay of the weights' moving average (validated and saved)"),
    max_steps: int = typer.Option(_d("max_steps")),
    time_budget_min: float = typer.Option(_d("time_budget_min"), help="stop after this many minutes of training "
                                                                      "(0: no limit)"),
    eval_every: int = typer.Option(_d("eval_every")), checkpoint_every: int = typer.Option(_d("checkpoint_every")),
    patience: int = typer.Option(_d("patience"), help="evaluations without improvement before early stopping "
                                                      "(plateau schedule; a cosine schedule runs to its end)"),
    lr_schedule: str = typer.Option(_d("lr_schedule"), help="cosine, plateau, or auto (cosine over "
                                                            "--time-budget-min, else plateau)"),
    float64: bool = typer.Option(False, help="train in float64"),
    baseline: str = typer.Option(_d("baseline"), help="Δ-learning: learn the labels minus this baseline: xtb, gfn1, "
                                                      "or openmm:SYSTEM.xml|TOPOLOGY.pdb (classical force field)"),
    seed: int = typer.Option(_d("seed")), threads: int = typer.Option(_d("threads"), help="torch threads (0: all cores)"),
) -> None:
    """Train a neural potential (PaiNN or TensorNet) on energies and forces (or, with --baseline, a correction to
    GFN2-xTB: Δ-learning); writes model.pt, results.json, plots. The defaults are the best
    settings measured (benchmarks/RESULTS.md)."""
    from ..training.trainer import Trainer

    if resume is not None:
        trainer = Trainer.resume(resume)
    else:
        cfg = settings_from(ctx, TrainConfig, config, {
            "train": ("train_file", [str(f) for f in train_file or []]),
            "train_weights": ("train_weight", list(train_weight or [])), "valid": ("valid", [str(f) for f in valid or []]),
            "valid_fraction": ("valid_fraction", valid_fraction), "energy_unit": ("energy_unit", energy_unit),
            "force_unit": ("force_unit", force_unit), "isolated_atoms": ("isolated_atoms", str(isolated_atoms or "")),
            "architecture": ("architecture", architecture), "repulsion": ("repulsion", repulsion),
            "repulsion_range": ("repulsion_range", repulsion_range),
            "features": ("features", features), "interactions": ("interactions", interactions),
            "cutoff_A": ("cutoff", cutoff), "batch_size": ("batch_size", batch_size), "lr": ("lr", lr),
            "force_weight": ("force_weight", force_weight), "energy_weight": ("energy_weight", energy_weight),
            "virial_weight": ("virial_weight", virial_weight),
            "force_loss": ("force_loss", force_loss), "huber_delta": ("huber_delta", huber_delta),
            "ema_decay": ("ema_decay", ema_decay), "max_steps": ("max_steps", max_steps),
            "time_budget_min": ("time_budget_min", time_budget_min), "eval_every": ("eval_every", eval_every),
            "checkpoint_every": ("checkpoint_every", checkpoint_every), "patience": ("patience", patience),
            "lr_schedule": ("lr_schedule", lr_schedule), "dtype": ("float64", "float64" if float64 else "float32"),
            "seed": ("seed", seed), "threads": ("threads", threads), "baseline": ("baseline", baseline)})
        if not cfg.train or output is None:
            raise InputError("train: give --train FILE (or --config FILE.toml) and -o RUN_DIR (or --resume RUN_DIR)")
        cfg.validate()
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
    data: list[Path] = typer.Argument(..., help="labelled frames, one or more files: energies required, forces "
                                                "optional (energy errors only where a file has none)"),
    energy_unit: Optional[str] = typer.Option(None, help="energy unit of the data (default eV; required for .npz)"),
    force_unit: Optional[str] = typer.Option(None, help="force unit of the data (default eV/A; required for .npz)"),
    scan: Optional[str] = typer.Option(None, "--scan", metavar="KEY", help="info key of a scan coordinate (e.g. "
                                       "displacement): energy profile along it per config_type, predicted against "
                                       "reference after aligning the first frame, and both barriers"),
    as_json: bool = typer.Option(False, "--json", help="print the metrics as JSON on stdout (keyed by file stem "
                                                       "when several files are given)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="folder for the plots (default: beside the model)"),
    float64: bool = typer.Option(False, help="evaluate in float64"),
    threads: int = typer.Option(0, help="torch threads (0: all cores)"),
) -> None:
    """Energy and force errors of a model on labelled frames (one or more test sets), a parity
    plot with a row per set, and with --scan the energy profiles along a scan coordinate."""
    import torch

    from ..analysis.plots import plot_parity_sets, plot_scan
    from ..models.neural import load_potential
    from ..threads import set_threads

    set_threads(threads or None)
    _check_distinct_names(data)
    potential = load_potential(model, dtype=torch.float64 if float64 else None)
    frame_sets = [_read_test_set(path, potential, energy_unit, force_unit) for path in data]
    results = [_evaluate_test_set(potential, path, frames, scan) for path, frames in zip(data, frame_sets)]
    folder = output or model.parent
    parity = folder / (f"parity_{data[0].stem}.png" if len(data) == 1 else "parity.png")
    plot_parity_sets([(r.path.name if len(results) > 1 else "", r.preds, r.metrics) for r in results], parity,
                     title=f"{model.name} on {', '.join(path.name for path in data)}")
    scan_plots = [folder / f"scan_{r.path.stem}_{scan}.png" for r in results] if scan else []
    for r, plot in zip(results, scan_plots):
        plot_scan(r.profiles, plot, title=f"{model.name} on {r.path.name}: energy along {scan}")
    if as_json:
        report = {r.path.stem: r.metrics for r in results}
        print(json.dumps(results[0].metrics if len(results) == 1 else report, indent=2))
        return
    for r in results:
        Console().print(_error_table(model, r))
        if scan:
            Console().print(_scan_table(r, scan))
    console.print(f"parity plot: {parity}")
    for plot in scan_plots:
        console.print(f"scan plot: {plot}")


@dataclass
class _TestSetResult:
    """What ``eval`` found on one file: metrics (JSON-ready, with ``scan`` under --scan),
    parity data and the scan's energy profiles."""

    path: Path
    metrics: dict
    preds: Predictions
    profiles: list[Profile]


def _check_distinct_names(paths: list[Path]) -> None:
    """InputError if two data files share a stem: it keys their metrics and names their plots."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise InputError(f"eval: data files {seen[path.stem]} and {path} share the name {path.stem!r}, which "
                             f"keys their metrics and names their plots; evaluate them in separate calls")
        seen[path.stem] = path


def _read_test_set(path: Path, potential: Potential, energy_unit: str | None, force_unit: str | None) -> list[Atoms]:
    """Frames of ``path``, each with a reference energy (eV) and forces (eV/Å) on all or none;
    InputError naming the file and frame otherwise, or for an element the model does not know."""
    from ..data.io import read_frames

    frames = read_frames(path, energy_unit=energy_unit, force_unit=force_unit, require_labels=False)
    for k, atoms in enumerate(frames):
        if "energy" not in atoms.info:
            raise InputError(f"{where(path, k, 'energy')}: missing; eval needs a reference energy on every frame")
        potential.check_elements(atoms.numbers, where=f"{path}: frame {k}")
    FrameDataset(frames).has_forces(str(path))
    return frames


def _evaluate_test_set(potential: Potential, path: Path, frames: list[Atoms], scan: str | None) -> _TestSetResult:
    """Errors of ``potential`` on ``frames`` and, with ``scan`` (an info key), its energy profiles."""
    from ..analysis.scan import scan_profiles
    from ..training.metrics import evaluate

    metrics, preds = evaluate(potential, FrameDataset(frames))
    profiles = scan_profiles(frames, preds.energy_pred, scan, source=str(path)) if scan else []
    if scan:
        metrics["scan"] = {p.name: p.metrics() for p in profiles}
    return _TestSetResult(path, metrics, preds, profiles)


def _error_table(model: Path, result: _TestSetResult) -> Table:
    """MAE and RMSE per property of one test set (meV, meV/atom, meV/Å)."""
    m = result.metrics
    table = Table(title=f"{model} on {result.path} ({m['frames']} frames)")
    for col in ("property", "MAE", "RMSE", "unit"):
        table.add_column(col)
    table.add_row("energy per structure", f"{m['energy_mae_mev']:.2f}", f"{m['energy_rmse_mev']:.2f}", "meV")
    table.add_row("energy per atom", f"{m['energy_mae_mev_per_atom']:.3f}", f"{m['energy_rmse_mev_per_atom']:.3f}",
                  "meV/atom")
    if "force_mae_mev_per_A" in m:
        table.add_row("force component", f"{m['force_mae_mev_per_A']:.2f}", f"{m['force_rmse_mev_per_A']:.2f}", "meV/Å")
    else:
        table.caption = "no forces in this file: energy errors only"
    return table


def _scan_table(result: _TestSetResult, key: str) -> Table:
    """Per energy profile: frames, profile MAE/RMSE and both barriers (meV)."""
    table = Table(title=f"energy profiles along {key} in {result.path} (aligned at each profile's first frame)")
    for col in ("profile", "frames", "MAE (meV)", "RMSE (meV)", "barrier ref (meV)", "barrier pred (meV)"):
        table.add_column(col)
    for name, m in result.metrics["scan"].items():
        table.add_row(name, str(m["frames"]), f"{m['energy_profile_mae_mev']:.2f}",
                      f"{m['energy_profile_rmse_mev']:.2f}", f"{m['barrier_ref_mev']:.1f}", f"{m['barrier_pred_mev']:.1f}")
    return table
