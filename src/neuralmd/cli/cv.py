"""``neuralmd cv train``: learned collective variables from run trajectories."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import InputError
from ..sampling.discovery import DiscoverySettings
from .common import CONFIG_HELP, app, comma_list, console, default, given, refuse_with_resume, settings_from

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


def _d(name: str):
    return default(DiscoverySettings, name)


@cv_app.command("discover")
def cv_discover(
    ctx: typer.Context,
    pdb: Optional[Path] = typer.Option(None, help="PDB file (OpenMM engine)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="folder of the loop (short/, explore/, "
                                                                      "cv-NN/, cv/, opes.toml, discover.json)"),
    resume: Optional[Path] = typer.Option(None, help="continue the loop in this folder"),
    config: Optional[Path] = typer.Option(None, "--config", help=CONFIG_HELP),
    forcefield: str = typer.Option(",".join(_d("forcefield")), help="OpenMM force-field files, comma-separated"),
    platform: str = typer.Option(_d("platform"), help="OpenMM platform"),
    temperature: float = typer.Option(_d("temperature_K"), help="K"),
    tmax: float = typer.Option(_d("tmax_K"), help="top of the multithermal exploration's temperature ladder, K"),
    short_ns: float = typer.Option(_d("short_ns"), help="unbiased run at 2 fs, ns"),
    explore_ns: float = typer.Option(_d("explore_ns"), help="exploration added per iteration, ns (at 1 fs)"),
    max_explore_ns: float = typer.Option(_d("max_explore_ns"), help="exploration at most, ns (may be raised on "
                                                                    "--resume)"),
    descriptors: str = typer.Option(_d("descriptors"), help="heavy-atom-distances | all-distances | atoms(i,j,...)"),
    lag_ps: float = typer.Option(_d("lag_ps"), help="Deep-TICA lag time, ps"),
    restarts: int = typer.Option(_d("restarts"), help="Deep-TICA trainings per iteration (the slowest kept)"),
    n_cv: int = typer.Option(_d("n_cv"), help="Deep-TICA outputs trained; the slowest one crossed back and forth "
                                             "is kept"),
    epochs: int = typer.Option(_d("epochs")),
    min_eigenvalue: float = typer.Option(_d("min_eigenvalue"), help="least TICA eigenvalue of a CV that passes"),
    min_crossings: int = typer.Option(_d("min_crossings"), help="least crossings between the CV's modes"),
    time_limit_min: float = typer.Option(_d("time_limit_min"), help="wall-time limit in minutes, checked during "
                                                                    "runs and between stages (0: none; may be "
                                                                    "changed on --resume)"),
    seed: int = typer.Option(_d("seed")),
    threads: int = typer.Option(0, help="torch threads (0: 1, fastest for OpenMM's small molecules)"),
) -> None:
    """Find a CV of the slow process without naming it: explore (multithermal OPES on the
    force-field energy), train Deep-TICA, check its eigenvalue and the crossings between its
    modes, and extend the exploration until both pass; writes the CV (cv/) and the OPES settings
    to bias it (opes.toml: `neuralmd sample --pdb PDB --config DIR/opes.toml ...`). Resumable;
    exit 1 when the limits are reached without a CV."""
    from ..sampling.discovery import Discovery
    from ..threads import set_threads

    set_threads(threads or 1)
    if resume is not None:
        refuse_with_resume(ctx, ["pdb", "output", "config", "forcefield", "platform", "temperature", "tmax", "short_ns",
                                 "explore_ns", "descriptors", "lag_ps", "restarts", "n_cv", "epochs", "min_eigenvalue",
                                 "min_crossings", "seed"], resume)
        loop = Discovery.resume(resume, progress=True,
                                max_explore_ns=max_explore_ns if given(ctx, "max_explore_ns") else None,
                                time_limit_min=time_limit_min if given(ctx, "time_limit_min") else None)
    else:
        if output is None or (pdb is None and config is None):
            raise InputError("cv discover: give --pdb FILE -o DIR (or --config DIR/discover.toml -o DIR, or "
                             "--resume DIR)")
        settings = settings_from(ctx, DiscoverySettings, config, {
            "pdb": ("pdb", str(pdb) if pdb else ""), "forcefield": ("forcefield", comma_list(forcefield, "forcefield")),
            "platform": ("platform", platform), "temperature_K": ("temperature", temperature), "tmax_K": ("tmax", tmax),
            "short_ns": ("short_ns", short_ns), "explore_ns": ("explore_ns", explore_ns),
            "max_explore_ns": ("max_explore_ns", max_explore_ns), "descriptors": ("descriptors", descriptors),
            "lag_ps": ("lag_ps", lag_ps), "restarts": ("restarts", restarts), "n_cv": ("n_cv", n_cv),
            "epochs": ("epochs", epochs),
            "min_eigenvalue": ("min_eigenvalue", min_eigenvalue), "min_crossings": ("min_crossings", min_crossings),
            "time_limit_min": ("time_limit_min", time_limit_min), "seed": ("seed", seed)})
        loop = Discovery.start(settings, output, progress=True)
    history = loop.run()
    table = Table(title="CV discovery")
    for col in ("iteration", "exploration (ns)", "TICA eigenvalue", "crossings", "passed"):
        table.add_column(col)
    for row in history["iterations"]:
        table.add_row(str(row["iteration"]), f"{row['explore_ns']:g}", f"{row['eigenvalue']:.3f}", str(row["crossings"]),
                      "yes" if row["passed"] else "no")
    Console().print(table)
    if history["found"]:
        console.print(f"{history['stop_reason']} -> {loop.out / 'cv'}/; bias it with: neuralmd sample --pdb "
                      f"{loop.settings.pdb} --config {loop.out / 'opes.toml'} --ns 10 -o RUN_DIR")
        return
    console.print(f"[red]no CV found: {history['stop_reason']}[/red] -> continue with: neuralmd cv discover --resume "
                  f"{loop.out} --max-explore-ns {2 * loop.settings.max_explore_ns:g} (or a longer --time-limit-min)")
    raise typer.Exit(1)
