"""Experimental targets of a refinement: what a simulation should reproduce, with its uncertainty.

A target turns sampled frames into per-frame values O_t (T, K) and compares their (reweighted)
average with the measurement through χ² = mean_k ((⟨O⟩_k − O_exp,k) / σ_k)². Per-frame values
depend on positions and cells only, never on the potential's parameters, so they are computed
once per sampled trajectory; the gradient reaches the parameters through the reweighting.

Targets from the command line (:func:`parse_target`):

- ``rdf:O-O=FILE`` (or ``rdf:O-H=FILE@1.3,6`` for r from 1.3 to 6 Å only, e.g. without the
  intramolecular peak, which classical nuclei cannot reproduce): a partial RDF, the file's ``r`` column (Å; ``rdf_unit="nm"`` for nm) and its
  g and error columns for the pair (a header names them: ``O_O``/``g_OO``/``OO`` and
  ``OOError``/``err_OO``), or a two- or three-column file ``r g [err]`` for that one pair. Errors
  below :data:`MIN_RDF_ERROR` are raised to it; a file without errors gets ``rdf_error``
  (default :data:`DEFAULT_RDF_ERROR`).
- ``density=0.997`` or ``density=0.997,0.002``: the mass density in g/cm³ (NPT only), default
  uncertainty :data:`DEFAULT_DENSITY_ERROR`.
- ``observable:FILE.py:FUNCTION=VALUE,ERROR``: any average of a torch function
  ``FUNCTION(positions (T, N, 3) Å, cell (T, 3, 3) Å, numbers (N,)) -> (T,)`` or ``(T, K)``
  (a radius of gyration, a population, a J-coupling through a Karplus relation).
"""

from __future__ import annotations

import importlib.util
import math
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols

from ..analysis.observables import soft_rdf_frames
from ..errors import InputError
from ..units import AMU_PER_A3_IN_G_PER_CM3

#: uncertainty of a g(r) point when the file gives none
DEFAULT_RDF_ERROR = 0.05
#: smallest uncertainty of a g(r) point: experimental files give 0 where g vanishes
MIN_RDF_ERROR = 0.01
#: uncertainty of a density target given without one (g/cm³): 0.3 % of water's
DEFAULT_DENSITY_ERROR = 0.003
#: width of the Gaussians of the differentiable RDF (Å)
RDF_SMOOTHING_A = 0.05
#: a box that shrinks under NPT must still hold the RDF's range: the range ends this fraction
#: below half the starting box's narrowest width
BOX_MARGIN = 0.97
#: frames per chunk when computing RDFs (memory: chunk × N_A × N_B × R floats)
RDF_CHUNK_ELEMENTS = 20_000_000

ObservableFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Frames:
    """Sampled frames of one composition, float64: positions (T, N, 3) Å, cell (T, 3, 3) Å
    (zeros where not periodic), numbers (N,), masses (N,) amu, pbc (3,) bool."""

    positions: torch.Tensor
    cell: torch.Tensor
    numbers: torch.Tensor
    masses: torch.Tensor
    pbc: torch.Tensor

    def __len__(self) -> int:
        return len(self.positions)


class Target(ABC):
    """A measured average: ``reference`` (K,) and its uncertainty ``error`` (K,) > 0; ``axis``
    (K,) the x values of a curve (r in Å for an RDF), None for a scalar."""

    name: str
    reference: torch.Tensor
    error: torch.Tensor
    axis: np.ndarray | None = None
    unit: str = ""

    @abstractmethod
    def frame_values(self, frames: Frames) -> torch.Tensor:
        """The observable of each frame, (T, K) float64 (no gradient needed)."""

    def check(self, numbers: Sequence[int], cell: np.ndarray, ensemble: str) -> None:
        """InputError if the target cannot be evaluated on this system (elements (N,), cell
        (3, 3) Å of the start) in this ensemble. Default: anything goes."""

    def chi2(self, mean: torch.Tensor, sampling_error: torch.Tensor | None = None) -> torch.Tensor:
        """χ² per point of the average ``mean`` (K,) against the measurement; with
        ``sampling_error`` (K,), the simulated average's own statistical error is added to the
        measurement's in quadrature."""
        error = self.error if sampling_error is None else torch.sqrt(self.error**2 + sampling_error**2)
        return (((mean - self.reference) / error) ** 2).mean()

    def rms(self, mean: torch.Tensor) -> float:
        """RMS difference of ``mean`` (K,) from the measurement."""
        return float(torch.sqrt(((mean - self.reference) ** 2).mean()))


def _errors(name: str, error: np.ndarray) -> torch.Tensor:
    if not np.all(np.isfinite(error)) or np.any(error < 0):
        raise InputError(f"{name}: negative or non-finite uncertainty; expected errors >= 0")
    return torch.as_tensor(error, dtype=torch.float64)


class RDFTarget(Target):
    """A partial RDF g_AB(r) (the soft, differentiable histogram of
    :func:`~neuralmd.analysis.observables.soft_rdf_frames`) at the measured radii ``r`` (Å)
    within ``r_range``; an atom is never its own neighbour."""

    unit = ""

    def __init__(self, pair: str, r: np.ndarray, g: np.ndarray, error: np.ndarray,
                 r_range: tuple[float, float] | None = None, source: str = "") -> None:
        self.pair = pair
        self.elements = _pair(pair, source or "rdf")
        self.name = f"rdf:{pair}"
        self.source = source or self.name
        self._r, self._g, self._err = (np.asarray(a, dtype=float) for a in (r, g, error))
        self.r_range = r_range
        self._select(r_range or (0.0, float(self._r.max())))

    def _select(self, r_range: tuple[float, float]) -> None:
        keep = (self._r > max(r_range[0], 1e-6)) & (self._r <= r_range[1])
        if keep.sum() < 2:
            raise InputError(f"{self.source}: fewer than 2 points of {self.name} within {r_range[0]:g}-{r_range[1]:g} Å")
        self.axis = self._r[keep]
        self.reference = torch.as_tensor(self._g[keep], dtype=torch.float64)
        self.error = _errors(self.source, self._err[keep]).clamp(min=MIN_RDF_ERROR)

    def check(self, numbers: Sequence[int], cell: np.ndarray, ensemble: str) -> None:
        present = {int(z) for z in numbers}
        for z in self.elements:
            if z not in present:
                raise InputError(f"{self.name}: the structure has no {chemical_symbols[z]} atoms (it has "
                                 f"{', '.join(sorted(chemical_symbols[p] for p in present))})")
        half = BOX_MARGIN * 0.5 * narrowest_width(cell)
        if self.r_range is not None and self.r_range[1] > half:
            raise InputError(f"{self.name}: r range up to {self.r_range[1]:g} Å, beyond {half:.2f} Å (just under half "
                             f"the box's narrowest width); give --rdf-range with a smaller end or a bigger box")
        if self.r_range is None:
            self._select((0.0, min(float(self._r.max()), half)))

    def frame_values(self, frames: Frames) -> torch.Tensor:
        a = torch.nonzero(frames.numbers == self.elements[0]).flatten()
        b = torch.nonzero(frames.numbers == self.elements[1]).flatten()
        r = torch.as_tensor(self.axis, dtype=torch.float64)
        chunk = max(1, RDF_CHUNK_ELEMENTS // max(1, len(a) * len(b) * len(r)))
        with torch.no_grad():
            return torch.cat([soft_rdf_frames(frames.positions[s:s + chunk], frames.cell[s:s + chunk], a, b, r,
                                              RDF_SMOOTHING_A) for s in range(0, len(frames), chunk)])


class DensityTarget(Target):
    """The mass density (g/cm³) of an NPT ensemble."""

    unit = "g/cm³"

    def __init__(self, value: float, error: float = DEFAULT_DENSITY_ERROR) -> None:
        self.name = "density"
        if not 0 < value < 30:
            raise InputError(f"density: {value}; expected a density in g/cm³ (water 0.997)")
        self.reference = torch.tensor([float(value)], dtype=torch.float64)
        self.error = _errors("density", np.array([error]))
        if not float(self.error[0]) > 0:
            raise InputError("density: uncertainty 0; expected > 0 g/cm³")

    def check(self, numbers: Sequence[int], cell: np.ndarray, ensemble: str) -> None:
        if ensemble != "npt":
            raise InputError(f"density target under --ensemble {ensemble}: the density only changes at constant "
                             f"pressure; use --ensemble npt")

    def frame_values(self, frames: Frames) -> torch.Tensor:
        volume = torch.linalg.det(frames.cell).abs()
        return (float(frames.masses.sum()) / volume * AMU_PER_A3_IN_G_PER_CM3).unsqueeze(-1)


class ObservableTarget(Target):
    """The average of ``function(positions (T, N, 3), cell (T, 3, 3), numbers (N,))`` -> (T,)
    or (T, K), against ``value`` (K,) ± ``error``."""

    def __init__(self, name: str, function: ObservableFn, value: Sequence[float] | float,
                 error: Sequence[float] | float) -> None:
        self.name, self.function = name, function
        self.reference = torch.as_tensor(np.atleast_1d(np.asarray(value, dtype=float)), dtype=torch.float64)
        self.error = _errors(name, np.atleast_1d(np.asarray(error, dtype=float))).expand_as(self.reference).clone()
        if not bool((self.error > 0).all()):
            raise InputError(f"{name}: uncertainty 0; expected > 0")

    def frame_values(self, frames: Frames) -> torch.Tensor:
        with torch.no_grad():
            values = torch.as_tensor(self.function(frames.positions, frames.cell, frames.numbers), dtype=torch.float64)
        values = values.reshape(len(frames), -1)
        if values.shape[1] != len(self.reference):
            raise InputError(f"{self.name}: the function gives {values.shape[1]} values per frame, the target has "
                             f"{len(self.reference)}")
        return values


def narrowest_width(cell: np.ndarray) -> float:
    """The smallest distance (Å) between opposite faces of ``cell`` (3, 3)."""
    cell = np.asarray(cell, dtype=float)
    volume = abs(np.linalg.det(cell))
    return float(min(volume / np.linalg.norm(np.cross(cell[(k + 1) % 3], cell[(k + 2) % 3])) for k in range(3)))


def _pair(pair: str, where: str) -> tuple[int, int]:
    parts = pair.split("-")
    if len(parts) != 2 or any(p not in atomic_numbers for p in parts):
        raise InputError(f"{where}: pair {pair!r}; expected two element symbols such as O-H")
    return atomic_numbers[parts[0]], atomic_numbers[parts[1]]


def _column_key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.lower())


def read_rdf_file(path: str | Path, pair: str, unit: str = "A",
                  default_error: float = DEFAULT_RDF_ERROR) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """r (Å), g and its uncertainty for ``pair`` from a whitespace table (``#`` comments; the
    last comment line before the numbers names the columns). InputError naming the file when
    it is missing, unreadable, lacks the pair's columns, or its first peak lies outside 1-10 Å
    (an r in nm read as Å)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: not found (rdf target)")
    if unit not in ("A", "nm"):
        raise InputError(f"rdf unit: {unit!r}; expected A or nm")
    header: list[str] = []
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        if text.startswith("#"):
            header = text.lstrip("#").split()
            continue
        try:
            rows.append([float(x) for x in text.replace(",", " ").split()])
        except ValueError:
            raise InputError(f"{path}: line {number}: {text[:40]!r} is not a row of numbers") from None
    if not rows or len({len(r) for r in rows}) != 1:
        raise InputError(f"{path}: expected a table of numbers with the same number of columns on every row")
    table = np.array(rows)
    g_col, err_col = _rdf_columns(path, table.shape[1], header, pair)
    r = table[:, 0] * (10.0 if unit == "nm" else 1.0)
    g = table[:, g_col]
    err = table[:, err_col] if err_col is not None else np.full(len(r), float(default_error))
    if not (np.all(np.isfinite(table)) and np.all(np.diff(r) > 0)):
        raise InputError(f"{path}: column r must increase and every value be finite")
    peak = float(r[int(np.argmax(g))])
    if not 1.0 <= peak <= 10.0:
        hint = "in nm? give --rdf-unit nm" if peak < 1.0 else "in Å? give --rdf-unit A"
        raise InputError(f"{path}: the first peak of g_{pair} lies at r = {peak:g} {'Å' if unit == 'A' else 'Å (after nm → Å)'}"
                         f", outside 1-10 Å: is r {hint}")
    if np.any(err < 0):
        raise InputError(f"{path}: negative uncertainty in the error column of {pair}; expected errors >= 0")
    return r, g, err


def _rdf_columns(path: Path, n_columns: int, header: list[str], pair: str) -> tuple[int, int | None]:
    """Indices of the g and error columns of ``pair`` in a table of ``n_columns``."""
    a, b = (p.lower() for p in pair.split("-"))
    names = {a + b, b + a, "g" + a + b, "g" + b + a}
    keys = [_column_key(h) for h in header] if len(header) == n_columns else []
    g_cols = [k for k, key in enumerate(keys) if key in names]
    err_cols = [k for k, key in enumerate(keys) if "err" in key and re.sub(r"errors?|err", "", key) in names]
    if g_cols:
        return g_cols[0], (err_cols[0] if err_cols else None)
    if n_columns in (2, 3) and (not keys or keys[1] in ("g", "gr", "rdf")):  # one unnamed pair: r g [err]
        return 1, (2 if n_columns == 3 else None)
    raise InputError(f"{path}: no column for g_{pair}; the header names {header or 'none'} (expected e.g. "
                     f"'r {a.upper()}_{b.upper()} {a.upper()}{b.upper()}Error', or two columns 'r g' for one pair)")


def load_observable(path: str | Path, function: str) -> ObservableFn:
    """The function ``function`` of the Python file ``path``."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".py":
        raise InputError(f"{path}: not a Python file (observable target)")
    spec = importlib.util.spec_from_file_location(f"neuralmd_observable_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        raise InputError(f"{path}: cannot be imported ({type(exc).__name__}: {exc})") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise InputError(f"{path}: no function {function!r}")
    return fn


def _numbers(text: str, spec: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"target {spec!r}: cannot read {text!r} as VALUE or VALUE,ERROR") from None
    if not all(math.isfinite(v) for v in values) or len(values) not in (1, 2):
        raise InputError(f"target {spec!r}: expected VALUE or VALUE,ERROR (finite numbers)")
    return values


def parse_target(spec: str, rdf_unit: str = "A", rdf_error: float = DEFAULT_RDF_ERROR,
                 rdf_range: tuple[float, float] | None = None) -> Target:
    """A target from its command-line form (see the module docstring)."""
    kind, _, value = spec.partition("=")
    if not value:
        raise InputError(f"target {spec!r}: expected rdf:A-B=FILE, density=VALUE[,ERROR] or "
                         f"observable:FILE.py:FUNCTION=VALUE,ERROR")
    if kind.startswith("rdf:"):
        pair = kind[4:]
        _pair(pair, f"target {spec!r}")
        if not rdf_error > 0:
            raise InputError(f"rdf error: {rdf_error}; expected > 0")
        path, _, bounds = value.partition("@")
        if bounds:  # this target's own range, e.g. only the intermolecular part of g_OH
            rdf_range = tuple(_numbers(bounds, spec))
            if len(rdf_range) != 2 or not 0 <= rdf_range[0] < rdf_range[1]:
                raise InputError(f"target {spec!r}: range {bounds!r}; expected @START,END in Å with 0 <= START < END")
        r, g, err = read_rdf_file(path, pair, rdf_unit, rdf_error)
        return RDFTarget(pair, r, g, err, rdf_range, source=path)
    if kind == "density":
        numbers = _numbers(value, spec)
        if len(numbers) == 2 and numbers[1] < 0:
            raise InputError(f"target {spec!r}: negative uncertainty; expected >= 0")
        return DensityTarget(*numbers)
    if kind.startswith("observable:"):
        file, _, function = kind[len("observable:"):].rpartition(":")
        numbers = _numbers(value, spec)
        if len(numbers) != 2:
            raise InputError(f"target {spec!r}: an observable needs VALUE,ERROR")
        return ObservableTarget(f"{Path(file).stem}.{function}", load_observable(file, function), *numbers)
    raise InputError(f"target {spec!r}: unknown kind {kind!r}; expected rdf:A-B, density or observable:FILE.py:FUNCTION")


def with_absolute_path(spec: str) -> str:
    """``spec`` with the file it names made absolute, so that a stored refinement can be resumed
    from any directory."""
    kind, _, value = spec.partition("=")
    if kind.startswith("rdf:") and value:
        path, sep, bounds = value.partition("@")
        return f"{kind}={Path(path).resolve()}{sep}{bounds}"
    if kind.startswith("observable:"):
        file, _, function = kind[len("observable:"):].rpartition(":")
        return f"observable:{Path(file).resolve()}:{function}={value}"
    return spec
