"""``neuralmd train`` and ``neuralmd eval``: fit a potential, measure its errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import InputError
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
    features: int = typer.Option(_d("features")), interactions: int = typer.Option(_d("interactions")),
    cutoff: float = typer.Option(_d("cutoff_A"), help="cutoff radius in Å"),
    batch_size: int = typer.Option(_d("batch_size")), lr: float = typer.Option(_d("lr")),
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
    """Train a PaiNN potential on energies and forces (or, with --baseline, a correction to
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

    from ..analysis.plots import plot_parity
    from ..data.dataset import FrameDataset
    from ..data.io import read_frames
    from ..models.neural import load_potential
    from ..threads import set_threads
    from ..training.metrics import evaluate

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
