"""``neuralmd label``: energies and forces from xTB or DFT."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ..rundir import check_writable, refuse_existing_files
from .common import Method, app, console


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
    from ..data.io import detect_format, read_frames, write_frames
    from ..io_utils import atomic_write_json
    from ..reference.factory import make_labeler

    detect_format(output)  # fail before any work if the output cannot be written
    failures_file = output.with_name(output.name + ".failures.json")
    check_writable(output, folder=False)
    refuse_existing_files([output, failures_file], "labels of an earlier run")
    frames = read_frames(geometries, require_labels=False, energy_unit="eV", force_unit="eV/A")
    labeler = make_labeler(method.value, functional, basis, density_fit, charge, spin, threads or None)
    labeler.check_frames(frames, str(geometries))  # an impossible charge or spin: before any QM call
    result = labeler.label(frames, progress=True)
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
