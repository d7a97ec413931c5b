"""``neuralmd build``: starting structures for condensed-phase runs."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import InputError
from .common import app, comma_list, console

build_app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build periodic boxes.")
app.add_typer(build_app, name="build")


@build_app.command("replicate")
def replicate_cmd(
    source: Path = typer.Argument(..., help="periodic frames: extxyz, ase.db or a DeePMD folder"),
    output: Path = typer.Option(..., "-o", "--output", help="the supercell (.xyz or .db)"),
    frame: int = typer.Option(0, help="which frame of SOURCE (0-based)"),
    repeat: str = typer.Option("2,2,2", help="copies along the three cell vectors, e.g. 2,2,2"),
) -> None:
    """Repeat one periodic frame along its cell vectors: e.g. 64 waters -> 512 with 2,2,2."""
    from ..data.build import replicate
    from ..data.io import read_frames, write_frames
    from ..rundir import check_writable, refuse_existing_files
    from ..units import AMU_PER_A3_IN_G_PER_CM3

    counts = comma_list(repeat, "repeat", int)
    refuse_existing_files([output], "a box")
    check_writable(output, folder=False)
    frames = read_frames(source, require_labels=False)
    if not 0 <= frame < len(frames):
        raise InputError(f"{source}: frame {frame}; it has frames 0-{len(frames) - 1}")
    box = replicate(frames[frame], counts, where=f"{source} frame {frame}")
    write_frames([box], output)
    console.print(f"{len(frames[frame])} atoms x {'x'.join(map(str, counts))} = {len(box)} atoms, cell "
                  f"{box.cell.lengths().round(3).tolist()} Å, "
                  f"{box.get_masses().sum() / box.cell.volume * AMU_PER_A3_IN_G_PER_CM3:.4f} g/cm³ -> {output}")
