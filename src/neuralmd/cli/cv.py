"""``neuralmd cv train``: learned collective variables from run trajectories."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ..errors import InputError
from .common import app, console

cv_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Learned collective variables.")
app.add_typer(cv_app, name="cv")


class CVMethod(str, Enum):
    deep_tica = "deep-tica"
    autoencoder = "autoencoder"
    deep_lda = "deep-lda"


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
    force: bool = typer.Option(False, help="keep the CV even if the training trajectories rarely cross between "
                                           "the modes of its distribution"),
    threads: int = typer.Option(0, help="torch threads (0: all cores)"),
) -> None:
    """Train a learned CV (Deep-TICA, autoencoder, Deep-LDA) on run trajectories and export it
    for `neuralmd sample --cv` and PLUMED's PYTORCH_MODEL. Refuses (exit 2, nothing written)
    a CV whose training trajectories cross between the modes of its distribution fewer than
    ten times: their exploration did not sample the process (--force keeps it)."""
    from ..sampling.cv_training import MIN_CV_CROSSINGS, SLOW_TICA_EIGENVALUE, STEEP_CV_PER_A, train_cv_from_runs
    from ..threads import set_threads

    set_threads(threads or None)
    try:
        layers = tuple(int(v) for v in hidden.split(","))
    except ValueError:
        raise InputError(f"hidden: {hidden!r}; expected sizes like 24,12") from None
    summary = train_cv_from_runs(runs, output, method.value, descriptors, lag_ps, n_cv, layers, epochs, seed,
                                 reweight, scale_floor, smoothness, progress=True, restarts=restarts, force=force)
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
    if eigenvalues and summary["implied_timescales_ps"][0]:
        console.print(f"TICA eigenvalue {eigenvalues[0]:.3f} at lag {lag_ps:g} ps: the CV decorrelates in "
                      f"{summary['implied_timescales_ps'][0]:.3g} ps (implied timescale -lag/ln λ)")
    modes = summary["modes"]
    if modes is not None:
        crossing = (f"two modes at {modes['modes'][0]:.3g} and {modes['modes'][1]:.3g}; the training trajectories "
                    f"cross between them {modes['crossings']} times" if modes["boundary"] is not None
                    else "one mode: the training data hold one state")
        console.print(f"CV distribution: {crossing}")
        if modes["crossings"] < MIN_CV_CROSSINGS:
            console.print(f"[yellow]warning (--force): fewer than {MIN_CV_CROSSINGS} crossings; the exploration did "
                          f"not sample the process and OPES on this CV may never cross it[/yellow]")
    if eigenvalues and eigenvalues[0] < SLOW_TICA_EIGENVALUE:
        console.print(f"[yellow]warning: the slowest CV's autocorrelation at {lag_ps:g} ps is {eigenvalues[0]:.3f}: it "
                      f"follows no process slower than the lag (a stalled training, or rare-state visits shorter "
                      f"than the lag); try --restarts 3 or a shorter --lag-ps[/yellow]")
    if max(summary["steepness_per_A"]) > STEEP_CV_PER_A:
        console.print(f"[yellow]warning: a CV changes by more than {STEEP_CV_PER_A:g} of its standard deviations per Å "
                      f"of descriptor change; biasing it may need a shorter timestep (raise --smoothness or "
                      f"--scale-floor)[/yellow]")
