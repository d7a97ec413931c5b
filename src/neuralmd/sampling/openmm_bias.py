"""neuralmd's CVs and biases inside OpenMM.

Two ways to put a bias into an :class:`~neuralmd.md.openmm_engine.OpenMMRun`, both
:class:`~neuralmd.md.openmm_engine.OpenMMTerm` objects the engine updates every ``pace`` steps:

- :class:`GridBias` (default): the CV outputs become OpenMM forces (native custom forces for
  distances, angles and torsions; a ``PythonForce`` for anything else, such as a learned CV) and
  the bias is tabulated on a grid in a ``CustomCVForce`` (natural cubic spline), refreshed
  after each deposition. This is the scheme of OpenMM's own ``app.Metadynamics``: between
  depositions nothing leaves OpenMM unless the CV itself needs Python.
- :class:`PythonForceBias`: the whole bias as one ``PythonForce`` evaluated exactly by torch at
  every step (any number of CV dimensions; slower).

:func:`biased_run` builds an OpenMM run of a PDB with a bias and a colvar.csv.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import openmm
import torch
from openmm import unit

from ..errors import InputError
from ..md.integrators import MDState
from ..md.protocols import AdaptiveTerm
from ..md.openmm_engine import OpenMMRun, OpenMMSettings, OpenMMSystem, system_template
from ..md.openmm_force import python_force
from ..md.simulation import terms_force_fn
from ..rundir import COLVAR
from ..units import EV_IN_KJMOL, NM_IN_A
from .biases import Bias, KernelBias
from .colvar import ColvarReporter
from .cvs import CV, Angle, Distance, Stack, Torsion
from .energy_cv import energy_cvs
from .fast_cv import MLPDistanceCV


@runtime_checkable
class NativeCV(Protocol):
    """A CV with its own OpenMM force whose energy is the CV's value (the force-field energy,
    the host–guest coordinates of :mod:`neuralmd.binding.funnel`)."""

    def openmm_force(self) -> openmm.Force: ...


class PythonForceBias:
    """A bias as one ``openmm.PythonForce`` whose energy is ``bias`` (forces by autograd), exact
    at every step (an :class:`~neuralmd.md.openmm_engine.OpenMMTerm`: OpenMM calls the bias as
    it is now, so an update needs no refresh)."""

    def __init__(self, bias: Bias) -> None:
        self.bias = bias
        self.pace = _pace(bias)

    def add_to(self, system: openmm.System) -> None:
        self.bias.check_atoms(system.getNumParticles())
        system.addForce(python_force(terms_force_fn([self.bias]), system_template(system), periodic=False,
                                     name="neuralmd-bias"))

    def attach(self, context: openmm.Context) -> None:
        """Nothing to push: the force reads the bias at every call."""

    def update(self, state: MDState) -> None:
        self.bias.update(state)

    def get_state(self) -> dict[str, Any]:
        return {"bias": _bias_state(self.bias), "grid": {}}

    def set_state(self, state: dict[str, Any]) -> None:
        _set_bias_state(self.bias, state["bias"])


def _pace(bias: Bias) -> int:
    """Steps between updates of ``bias``: its ``pace`` if it adapts, else 0 (never)."""
    return bias.pace if isinstance(bias, AdaptiveTerm) else 0


def _bias_state(bias: Bias) -> dict[str, Any]:
    return bias.get_state() if isinstance(bias, AdaptiveTerm) else {}


def _set_bias_state(bias: Bias, state: dict[str, Any]) -> None:
    if isinstance(bias, AdaptiveTerm):
        bias.set_state(state)


class _CVComponent:
    """``PythonForce`` callback (picklable, as ``CustomCVForce`` requires): output ``component``
    of ``cv`` as the 'energy' and minus its gradient per nm as the 'forces'; ``periodic``: the
    CV is given the state's box."""

    def __init__(self, cv: CV, component: int, periodic: bool = False) -> None:
        self.cv, self.component, self.periodic = cv, component, periodic

    def __call__(self, state: openmm.State) -> tuple[float, np.ndarray]:
        pos = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)) * NM_IN_A
        x = torch.as_tensor(pos, dtype=torch.float64).requires_grad_(True)
        cell = None
        if self.periodic:
            box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)) * NM_IN_A
            cell = torch.as_tensor(box, dtype=torch.float64).unsqueeze(0)
        s = self.cv(x.unsqueeze(0), cell)[0, self.component]
        (grad,) = torch.autograd.grad(s, x)
        return float(s.detach()), (-grad * NM_IN_A).numpy()


def cv_forces(cv: CV, system: openmm.System) -> list[openmm.Force]:
    """One OpenMM force per CV output whose energy equals that output (Å, radians or kJ/mol):
    OpenMM custom forces for distances, angles and torsions, a ``CustomCVForce`` for the
    force-field energy and other CVs with their own OpenMM force (:class:`NativeCV`), a NumPy ``PythonForce`` for learned distance CVs, a torch
    ``PythonForce`` otherwise."""
    cv.check_atoms(system.getNumParticles())
    if isinstance(cv, Stack):
        return [f for part in cv.cvs for f in cv_forces(part, system)]
    if isinstance(cv, NativeCV):
        return [cv.openmm_force()]
    if isinstance(cv, Torsion):
        force = openmm.CustomTorsionForce("theta")
        force.addTorsion(*(int(i) for i in cv.idx), [])
    elif isinstance(cv, Angle):
        force = openmm.CustomAngleForce("theta")
        force.addAngle(*(int(i) for i in cv.idx), [])
    elif isinstance(cv, Distance):
        force = openmm.CustomBondForce(f"{NM_IN_A}*r")
        force.addBond(*(int(i) for i in cv.idx), [])
        force.setUsesPeriodicBoundaryConditions(system.usesPeriodicBoundaryConditions())  # as the CV's minimum image
    else:
        periodic = system.usesPeriodicBoundaryConditions()
        fast = None if periodic else MLPDistanceCV.components(cv, system.getNumParticles())  # no minimum image
        callbacks = fast or [_CVComponent(cv, k, periodic) for k in range(cv.dim)]
        forces = [openmm.PythonForce(callback) for callback in callbacks]
        for k, f in enumerate(forces):
            f.setName(f"neuralmd-cv-{cv.names[k]}")
        return forces
    return [force]


class GridBias:
    """A bias tabulated on a grid inside an OpenMM ``CustomCVForce`` (an
    :class:`~neuralmd.md.openmm_engine.OpenMMTerm`: each update re-tabulates it and pushes the
    table into the context).

    Args:
        bias: a bias over a 1- or 2-dimensional CV.
        system: the OpenMM System whose atoms the CV forces act on (or later, :meth:`add_to`).
        ranges: (low, high) per CV output; periodic outputs use one period and need none.
            Outside a non-periodic range the bias is held at its boundary value (no force).
        spacing: grid spacing per output (default: a third of the kernel width, or 1/100 of
            the range for biases without kernels).
    """

    def __init__(self, bias: Bias, system: openmm.System | None = None,
                 ranges: Sequence[tuple[float, float] | None] | None = None,
                 spacing: Sequence[float] | None = None) -> None:
        d = bias.cv.dim
        if d > 2:
            raise InputError(f"grid bias: {d} CV dimensions; at most 2 (use the exact PythonForce bias)")
        periods = [float(p) for p in bias.periods]
        periodic = [p > 0 for p in periods]
        if any(periodic) and not all(periodic):
            raise InputError("grid bias: mixes periodic and non-periodic CVs (OpenMM tables are periodic in "
                             "every dimension or none); use the exact PythonForce bias")
        ranges = list(ranges) if ranges is not None else [None] * d
        axes, self.bounds = [], []
        for k in range(d):
            lo, hi = (-periods[k] / 2, periods[k] / 2) if periodic[k] else (ranges[k] or (None, None))
            if lo is None or not hi > lo:
                raise InputError(f"grid bias: CV {bias.cv.names[k]!r} is not periodic; give its range (low, high)")
            if spacing is not None:
                step = spacing[k]
            elif isinstance(bias, KernelBias):
                step = float(bias.sigma0[k]) / 3
            else:
                step = (hi - lo) / 100
            n = int(min(max(math.ceil((hi - lo) / step) + 1, 32), 400 if d == 1 else 160))
            axes.append(torch.linspace(lo, hi, n, dtype=torch.float64))
            self.bounds.append((lo, hi))
        mesh = torch.meshgrid(*reversed(axes), indexing="ij")  # x fastest: values[i + nx * j]
        self.points = torch.stack([m.reshape(-1) for m in reversed(mesh)], dim=-1)
        self.shape = [len(a) for a in axes]
        self.bias, self.periodic = bias, all(periodic)
        # held strictly inside the table: OpenMM places the last knot at lo + (n-1)·(hi-lo)/(n-1),
        # which can fall an ulp short of hi, and a spline evaluated beyond it aborts the process
        inset = [1e-9 * (hi - lo) for lo, hi in self.bounds]
        args = [f"s{k}" if periodic[k] else
                f"min(max(s{k},{self.bounds[k][0] + inset[k]!r}),{self.bounds[k][1] - inset[k]!r})" for k in range(d)]
        self.force = openmm.CustomCVForce(f"table({','.join(args)})")
        self.force.setName("neuralmd-grid-bias")
        self.force.addTabulatedFunction("table", self._function(np.zeros(len(self.points))))
        self._sum = torch.zeros(len(self.points), dtype=torch.float64)
        self._kernels = None
        self.pace = _pace(bias)
        self._contexts: list[openmm.Context] = []
        self.refresh()
        if system is not None:
            self._add_cvs(system)

    def _add_cvs(self, system: openmm.System) -> None:
        """The CV outputs as the table's arguments (OpenMM forces acting on ``system``'s atoms)."""
        for k, f in enumerate(cv_forces(self.bias.cv, system)):
            self.force.addCollectiveVariable(f"s{k}", f)

    def add_to(self, system: openmm.System) -> None:
        if self.force.getNumCollectiveVariables() == 0:
            self._add_cvs(system)
        system.addForce(self.force)

    def attach(self, context: openmm.Context) -> None:
        """Push the table into ``context`` now and after every update (each walker's context is
        attached: they share the bias)."""
        self._contexts.append(context)
        self.refresh([context])

    def update(self, state: MDState) -> None:
        self.bias.update(state)
        self.refresh(self._contexts)

    def _function(self, values: np.ndarray):
        flat = values.tolist()
        if len(self.shape) == 1:
            return openmm.Continuous1DFunction(flat, *self.bounds[0], self.periodic)
        return openmm.Continuous2DFunction(*self.shape, flat, *self.bounds[0], *self.bounds[1], self.periodic)

    def _kernel_sum(self) -> torch.Tensor:
        """The kernel sum on the grid, updated for kernels added or changed since the last call."""
        b = self.bias
        new = (b.centres.clone(), b.widths.clone(), b.heights.clone())
        if self._kernels is None:
            self._sum = b.kernels(self.points, *new)
        else:
            c, w, h = self._kernels
            k = len(h)
            changed = torch.nonzero((new[0][:k] != c).any(-1) | (new[1][:k] != w).any(-1) | (new[2][:k] != h)).flatten()
            self._sum += b.kernels(self.points, new[0][k:], new[1][k:], new[2][k:])
            if len(changed):
                self._sum += b.kernels(self.points, new[0][changed], new[1][changed], new[2][changed])
                self._sum -= b.kernels(self.points, c[changed], w[changed], h[changed])
        self._kernels = new
        return self._sum.clamp(min=0.0)

    def get_state(self) -> dict[str, Any]:
        """The bias's state, the tabulated kernel sum and the kernels it holds (so a restart
        re-tabulates the very same numbers an uninterrupted run would)."""
        grid = {"sum": self._sum.clone(), "kernels": list(self._kernels) if self._kernels is not None else []}
        return {"bias": _bias_state(self.bias), "grid": grid}

    def set_state(self, state: dict[str, Any]) -> None:
        _set_bias_state(self.bias, state["bias"])
        self._sum = state["grid"]["sum"].clone()
        self._kernels = tuple(state["grid"]["kernels"]) if state["grid"]["kernels"] else None
        self.refresh(self._contexts)

    @torch.no_grad()
    def refresh(self, contexts: Sequence[openmm.Context] = ()) -> None:
        """Re-tabulate the bias (kJ/mol) and push it into ``contexts``."""
        if isinstance(self.bias, KernelBias):
            values = self.bias.energy_from_kernel_sum(self._kernel_sum())
        else:
            values = self.bias.energy_of_cv(self.points)
        values = (values * EV_IN_KJMOL).numpy().reshape(list(reversed(self.shape)))
        if self.periodic:  # OpenMM's periodic splines need identical end points
            values[..., -1] = values[..., 0]
            if values.ndim == 2:
                values[-1, :] = values[0, :]
        values = values.reshape(-1)
        table = self.force.getTabulatedFunction(0)
        if len(self.shape) == 1:
            table.setFunctionParameters(values.tolist(), *self.bounds[0])
        else:
            table.setFunctionParameters(*self.shape, values.tolist(), *self.bounds[0], *self.bounds[1])
        for context in contexts:
            self.force.updateParametersInContext(context)


def biased_run(settings: OpenMMSettings, run_dir: str | Path | None, bias: Bias | None = None, cv: CV | None = None,
               grid: bool = True, grid_ranges: Sequence[tuple[float, float] | None] | None = None,
               progress: bool = False) -> OpenMMRun:
    """An :class:`~neuralmd.md.openmm_engine.OpenMMRun` of ``settings`` with ``bias`` (None:
    unbiased) as a :class:`GridBias` (``grid``) or a :class:`PythonForceBias`, and ``cv``
    (default: the bias's CV) recorded in colvar.csv with the bias each frame felt."""
    terms, reporters = openmm_bias_terms(settings, run_dir, bias, cv, grid, grid_ranges)
    return OpenMMRun(settings, run_dir, terms=terms, reporters=reporters, progress=progress)


def openmm_bias_terms(settings: OpenMMSettings, run_dir: str | Path | None, bias: Bias | None, cv: CV | None,
                      grid: bool = True, grid_ranges: Sequence[tuple[float, float] | None] | None = None
                      ) -> tuple[list, list]:
    """The OpenMM terms (the bias, tabulated or exact) and reporters (colvar.csv) of a run of
    ``settings`` biased by ``bias`` and recording ``cv`` (default: the bias's CV). Energy CVs
    not bound yet are bound to the force field of ``settings`` first."""
    cv = cv if cv is not None else (bias.cv if bias is not None else None)
    unbound = [e for e in energy_cvs(cv) + energy_cvs(bias.cv if bias is not None else None) if not e.bound]
    if unbound:
        system = OpenMMSystem.from_settings(settings).system
        for energy in unbound:
            energy.bind(system)
    terms = []
    if bias is not None:
        terms = [GridBias(bias, ranges=grid_ranges) if grid else PythonForceBias(bias)]
    reporters = []
    if cv is not None and run_dir is not None:
        reporters = [ColvarReporter(Path(run_dir) / COLVAR, cv, bias, settings.report_every)]
    return terms, reporters

