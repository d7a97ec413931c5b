"""``neuralmd active``: the active-learning loop."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import InputError
from ..rundir import refuse_existing
from ..active.loop import ActiveSettings
from .common import CONFIG_HELP, Method, app, comma_list, console, default, settings_from


def _d(name: str):
    return default(ActiveSettings, name)


@app.command()
def active(
    ctx: typer.Context,
    structure: Optional[Path] = typer.Option(None, help="starting structure"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="run directory"),
    resume: Optional[Path] = typer.Option(None, help="continue the loop in this directory"),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    labeler: Method = typer.Option(_d("labeler"), help="xtb, gfn1 (tblite) or dft, hf (PySCF)"),
    functional: str = typer.Option(_d("functional")), basis: str = typer.Option(_d("basis")),
    charge: int = typer.Option(_d("charge")), spin: int = typer.Option(_d("spin")),
    committee: int = typer.Option(_d("committee"), help="committee members (different seeds)"),
    temperatures: str = typer.Option(",".join(f"{t:g}" for t in _d("temperatures_K")),
                                     help="exploration temperatures in K, comma-separated"),
    rounds: int = typer.Option(_d("rounds")),
    initial_frames: int = typer.Option(_d("initial_frames"), help="displaced copies labelled first"),
    md_steps: int = typer.Option(_d("md_steps"), help="exploration steps per round"),
    replicas: int = typer.Option(_d("replicas_per_temperature"), help="exploration replicas per temperature"),
    trust_low: float = typer.Option(_d("trust_low_eV_per_A"), help="lower trust level: force deviation in eV/Å"),
    trust_high: float = typer.Option(_d("trust_high_eV_per_A"), help="upper trust level: force deviation in eV/Å"),
    max_select: int = typer.Option(_d("max_select"), help="frames labelled per round at most"),
    explore_cv: str = typer.Option(_d("explore_cv"), help="explore under an OPES_EXPLORE bias on this CV "
                                                          "(e.g. 'torsion(1,0,2,8)'); default plain MD"),
    explore_barrier_kjmol: float = typer.Option(_d("explore_barrier_kjmol"), help="OPES_EXPLORE barrier in kJ/mol"),
    train_steps: int = typer.Option(_d("train_steps"), help="training steps per member per round"),
    architecture: str = typer.Option(_d("architecture"), help="the committee's network: auto (tensornet for molecules, "
                                      "painn for periodic frames), tensornet or painn"),
    workers: int = typer.Option(_d("workers"), help="Dask workers of a local cluster"),
    scheduler: str = typer.Option(_d("scheduler"), help="address of an existing Dask scheduler (tcp://host:8786)"),
    store: str = typer.Option(_d("store"), help="label store: .db path or postgresql:// URL (default RUN/labels.db)"),
    seed: int = typer.Option(_d("seed")),
) -> None:
    """Active learning: committee MD explores, frames between the trust levels are labelled on a
    Dask cluster into an SQLite store, the committee retrains; --resume continues after a kill."""
    from ..active.loop import ActiveLearning

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
        if output is None or (structure is None and config is None):
            raise InputError("active: give --structure FILE (or --config FILE.toml) and -o RUN_DIR (or --resume RUN_DIR)")
        refuse_existing(output, "an active-learning run", marker="state.json")
        settings = settings_from(ctx, ActiveSettings, config, {
            "structure": ("structure", str(structure.resolve()) if structure else ""),
            "labeler": ("labeler", labeler.value), "functional": ("functional", functional), "basis": ("basis", basis),
            "charge": ("charge", charge), "spin": ("spin", spin), "committee": ("committee", committee),
            "temperatures_K": ("temperatures", comma_list(temperatures, "temperatures", float)),
            "rounds": ("rounds", rounds), "initial_frames": ("initial_frames", initial_frames),
            "md_steps": ("md_steps", md_steps), "replicas_per_temperature": ("replicas", replicas),
            "trust_low_eV_per_A": ("trust_low", trust_low), "trust_high_eV_per_A": ("trust_high", trust_high),
            "max_select": ("max_select", max_select), "train_steps": ("train_steps", train_steps),
            "architecture": ("architecture", architecture),
            "explore_cv": ("explore_cv", explore_cv), "explore_barrier_kjmol": ("explore_barrier_kjmol",
                                                                                explore_barrier_kjmol),
            "workers": ("workers", workers), "scheduler": ("scheduler", scheduler), "store": ("store", store),
            "seed": ("seed", seed)})
        loop = ActiveLearning(settings, output, report)
    summary = loop.run()
    console.print(f"{summary['labels']} labels ({summary['failed']} failed); final committee validation force MAE "
                  f"{summary['final_valid_force_mae_mev_per_A']:.1f} meV/Å -> {loop.run_dir}/ (final/member_*/model.pt, "
                  f"labels.db, error_vs_labels.png)")
