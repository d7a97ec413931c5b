"""Periodic boxes from periodic frames: :func:`replicate` a frame into an a×b×c supercell (the
start of a condensed-phase run larger than the training cells)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from ase import Atoms

from ..errors import InputError


def replicate(frame: Atoms, repeat: Sequence[int], where: str = "frame") -> Atoms:
    """``frame`` repeated ``repeat`` = (a, b, c) times along its cell vectors (positions in Å,
    cell rows the lattice vectors); labels (energy, forces) are dropped, since they belong to
    the original cell. InputError naming ``where`` unless the frame is periodic in all three
    directions with a cell of positive volume and every count is a positive integer."""
    counts = [int(n) for n in repeat]
    if len(counts) != 3 or min(counts) < 1 or list(repeat) != counts:
        raise InputError(f"repeat: {list(repeat)}; expected three positive integers, e.g. 2,2,2")
    if not frame.pbc.all() or not abs(frame.cell.volume) > 0:
        raise InputError(f"{where}: not periodic in all three directions with a cell (pbc {frame.pbc.tolist()}, "
                         f"volume {abs(frame.cell.volume):.3g} Å³); only a periodic frame can be replicated")
    bare = Atoms(frame.numbers, positions=frame.positions, cell=frame.cell, pbc=True,
                 masses=frame.get_masses())
    box = bare.repeat(counts)
    box.info["replicated_from"] = where
    box.info["repeat"] = " ".join(map(str, counts))
    assert np.isclose(box.cell.volume, np.prod(counts) * frame.cell.volume)
    return box
