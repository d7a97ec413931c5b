"""``neuralmd active``: the active-learning loop."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import InputError
from .common import Method, app, console

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
    from ..active.loop import ActiveLearning, ActiveSettings

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
