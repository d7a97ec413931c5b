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


def _molecule(spec: str) -> tuple:
    """FILE:COUNT (or NAME:COUNT for a molecule of ASE's g2 set, e.g. H2O:64)."""
    from ase.build import molecule
    from ase.collections import g2

    from ..data.io import read_frames

    source, _, count = spec.rpartition(":")
    if not source or not count.isdigit():
        raise InputError(f"--molecule {spec!r}: expected FILE:COUNT or NAME:COUNT, e.g. water.xyz:64 or H2O:64")
    path = Path(source)
    if path.exists():
        frames = read_frames(path, require_labels=False)
        atoms = frames[0]
    elif source in g2.names:
        atoms = molecule(source)
    else:
        raise InputError(f"--molecule {spec!r}: {source} is neither a file nor a molecule of ASE's g2 set (e.g. H2O)")
    atoms.pbc = False
    return atoms, int(count)


@build_app.command("pack")
def pack_cmd(
    molecule: list[str] = typer.Option(..., "--molecule", help="FILE:COUNT or NAME:COUNT (ASE's g2 names, e.g. "
                                                               "H2O:64); repeat for a mixture"),
    output: Path = typer.Option(..., "-o", "--output", help="the box (.xyz or .db)"),
    density: float = typer.Option(None, help="target density in g/cm³ (sets the cubic box)"),
    box: float = typer.Option(None, help="cubic box edge in Å (instead of --density)"),
    tolerance: float = typer.Option(2.0, help="minimum distance between atoms of different molecules, Å "
                                              "(packmol's default)"),
    seed: int = typer.Option(0),
) -> None:
    """Pack molecules at random positions and orientations into a periodic cubic box, no two
    atoms of different molecules closer than --tolerance: a liquid or a solution to start NPT
    from."""
    from ..data.build import pack, pack_box_length
    from ..data.io import write_frames
    from ..rundir import check_writable, refuse_existing_files
    from ..units import AMU_PER_A3_IN_G_PER_CM3

    if (density is None) == (box is None):
        raise InputError("pack: give either --density G_CM3 or --box EDGE_A")
    molecules = [_molecule(spec) for spec in molecule]
    refuse_existing_files([output], "a box")
    check_writable(output, folder=False)
    edge = box if box is not None else pack_box_length(molecules, density)
    packed = pack(molecules, edge, tolerance, seed)
    write_frames([packed], output)
    console.print(f"{sum(c for _, c in molecules)} molecules, {len(packed)} atoms in a {edge:.3f} Å box, "
                  f"{packed.get_masses().sum() / packed.cell.volume * AMU_PER_A3_IN_G_PER_CM3:.4f} g/cm³ -> {output}")
