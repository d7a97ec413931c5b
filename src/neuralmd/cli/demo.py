"""``neuralmd demo``: every stage on built-in ethanol, in a few minutes."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

from .common import app

@app.command()
def demo(
    output: Path = typer.Option(Path("neuralmd-demo"), "-o", "--output", help="run directory"),
    train_minutes: float = typer.Option(1.5, help="training time budget in minutes"),
    threads: int = typer.Option(0, help="torch threads (0: all cores)"),
) -> None:
    """Built-in ethanol: xTB-sampled geometries, xTB labels, training, evaluation, plots."""
    from ..demo import run_demo

    run_demo(output, train_minutes=train_minutes, threads=threads or None, console=Console())
