"""``neuralmd screen`` (conformers ranked by a potential) and ``neuralmd neb`` (reaction paths)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from .common import app, console

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

    from ..surrogates.screen import screen
    from ..threads import set_threads

    set_threads(threads or None)
    summary = screen(smiles_file, model, output, conformers=conformers, fmax_eV_per_A=fmax, max_steps=max_steps,
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
    from ..models.committee import load_committee
    from ..models.neural import load_potential
    from ..surrogates.neb import check_settings, load_endpoints, run_neb
    from ..threads import set_threads

    set_threads(threads or None)
    check_settings(images, fmax, steps, trust)
    first, last = load_endpoints(start, end)
    potential = load_committee(model) if len(model) > 1 else load_potential(model[0])
    potential.check_elements(first.numbers, where=str(start))
    result = run_neb(first, last, potential, images=images, fmax_eV_per_A=fmax, steps=steps, climb=climb,
                     relax_endpoints=relax_endpoints, logfile="-", output=output, trust_eV_per_A=trust)
    summary = result.summary(trust)
    table = Table(title=f"NEB path ({'committee of ' + str(len(model)) if summary['committee'] else 'one model'})")
    columns = ["image", "s (Å)", "E - E0 (eV)"] + (["force dev (eV/Å)", "E std (eV)"] if summary["committee"] else [])
    for col in columns:
        table.add_column(col)
    for row in summary["images"]:
        cells = [str(row["image"]), f"{row['reaction_coordinate_A']:.3f}", f"{row['relative_energy_eV']:.4f}"]
        if summary["committee"]:
            cells += [f"{row['force_deviation_eV_per_A']:.3f}", f"{row['energy_std_eV']:.4f}"]
        table.add_row(*cells)
    Console().print(table)
    state = "converged" if result.converged else f"NOT converged (fmax {fmax} eV/Å not reached)"
    console.print(f"NEB {state} in {result.steps} steps; barrier forward {summary['barrier_forward_eV']:.4f} eV "
                  f"({summary['barrier_forward_kjmol']:.2f} kJ/mol), reverse {summary['barrier_reverse_eV']:.4f} eV "
                  f"({summary['barrier_reverse_kjmol']:.2f} kJ/mol) -> {output}/ (path.xyz, neb.json, neb.png)")
    if summary["warning"]:
        console.print(summary["warning"], markup=False, highlight=False, soft_wrap=True)
    if not result.converged:  # the files are written (a start for more steps), but this is no answer yet
        console.print(f"error: the NEB did not converge in {steps} steps; the barrier above is not a saddle point "
                      f"(raise --steps, add --images, or check the endpoints)")
        raise typer.Exit(1)
