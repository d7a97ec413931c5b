"""The COLVAR file of a sampling run: CV values and the bias each replica felt, per report.

``colvar.csv`` columns: step, time_ps, replica, one column per CV output, bias_kjmol (the bias
at that moment, which is what reweighting needs). Written by :class:`ColvarReporter` in either
engine (the same ``report(run, state)`` shape as the MD reporters, with ``truncate`` for
resumed runs).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..md.reporters import CsvReporter
from ..units import EV_IN_KJMOL
from .biases import Bias
from ..geometry import replica_cells, replica_positions
from .cvs import CV


class ColvarReporter(CsvReporter):
    """Appends CV values and bias energies every ``interval`` steps to ``path``.

    Args:
        path: the CSV file.
        cv: the CV to record.
        bias: the bias acting (None: unbiased, bias 0), on ``cv`` or on a CV of its own.
        interval: steps between rows.
    """

    def __init__(self, path: str | Path, cv: CV, bias: Bias | None, interval: int) -> None:
        super().__init__(path, interval)
        self.cv, self.bias = cv, bias
        self.fields = ["step", "time_ps", "replica", *cv.names, "bias_kjmol"]

    def rows(self, run, state) -> list[list]:
        with torch.no_grad():
            x = replica_positions(state.batch).to(torch.float64)
            cell = replica_cells(state.batch)
            cell = None if cell is None else cell.to(torch.float64)
            s = self.cv(x, cell).to(torch.float64)
            if self.bias is None:
                v = torch.zeros(len(s), dtype=torch.float64)
            else:  # the recorded CV need not be the biased one
                v = self.bias.energy_of_cv(s if self.bias.cv is self.cv else self.bias.cv(x, cell).to(torch.float64))
        t = run.time_ps(state.step)
        return [[state.step, f"{t:.6f}", b, *(f"{x:.8g}" for x in row), f"{bias * EV_IN_KJMOL:.8g}"]
                for b, (row, bias) in enumerate(zip(s.numpy(), v.numpy()))]


def read_colvar(path: str | Path) -> dict[str, np.ndarray]:
    """Columns of a colvar.csv as arrays (step and replica as integers). A row that is torn (the
    run stopped while writing it), has another number of fields or a value that is not a finite
    number is an InputError naming its line; no row is dropped silently."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no colvar file (is this a sampling run directory?)")
    lines = path.read_text().splitlines(keepends=True)
    header = lines[0].strip().split(",") if lines else []
    if "bias_kjmol" not in header or header[:3] != ["step", "time_ps", "replica"]:
        raise InputError(f"{path}: field 'bias_kjmol' missing; not a neuralmd colvar file")
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.endswith("\n"):
            raise InputError(f"{path}: line {n}: incomplete (the run stopped while writing it); resume the run "
                             f"(--resume), which cuts it, or delete the line")
        fields = line.rstrip("\n").split(",")
        try:
            row = [float(x) for x in fields]
        except ValueError:
            row = []
        if len(fields) != len(header) or len(row) != len(header) or not np.isfinite(row).all():
            raise InputError(f"{path}: line {n}: {line.strip()!r}; expected {len(header)} finite numbers "
                             f"({','.join(header)})")
        rows.append(row)
    data = np.array(rows, dtype=float).reshape(len(rows), len(header))
    out = {name: data[:, k] for k, name in enumerate(header)}
    out["step"] = out["step"].astype(int)
    out["replica"] = out["replica"].astype(int)
    return out
