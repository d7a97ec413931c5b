"""Classical force fields through OpenMM, biased with neuralmd's CVs and biases, writing the same
run files as the native engine (H5MD trajectory, log.csv, colvar.csv, checkpoints).

Two ways to put a bias into OpenMM:

- :class:`GridBias` (default): the CV outputs become OpenMM forces (native custom forces for
  distances, angles and torsions; a ``PythonForce`` for anything else, such as a learned CV) and
  the bias is tabulated on a grid in a ``CustomCVForce`` (natural cubic spline), refreshed
  after each deposition. This is the scheme of OpenMM's own ``app.Metadynamics``: between
  depositions nothing leaves OpenMM unless the CV itself needs Python.
- :func:`bias_force`: the whole bias as one ``PythonForce`` evaluated exactly by torch at every
  step (any number of CV dimensions; slower).

:class:`OpenMMRun` runs a PDB + force field system in chunks of the bias's pace, updating the
bias between chunks, with reporters and exact checkpoint/restart (OpenMM checkpoints carry
the integrator's random state).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import openmm
import torch
from openmm import app, unit

from ..data.io import write_frames
from ..errors import InputError
from ..io_utils import atomic_save, atomic_write_json
from ..md.integrators import MDState
from ..md.openmm_force import NM_IN_A, python_force
from ..md.reporters import VELOCITY_TO_A_PER_PS, H5MDReporter, LogReporter
from ..md.simulation import SimulationUnstable, terms_force_fn
from ..state import AtomsBatch
from ..units import EV_IN_KJMOL
from .biases import Bias, _KernelBias
from .colvar import ColvarReporter
from .cvs import CV, Angle, Distance, Stack, Torsion
from .energy_cv import PotentialEnergy, energy_cvs
from .fast_cv import MLPDistanceCV

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "neuralmd.openmm-checkpoint"


def system_template(system: openmm.System, numbers: Sequence[int] | None = None) -> AtomsBatch:
    """A one-system AtomsBatch with the System's masses (amu) and the given atomic numbers
    (default 1: biases need no element types); positions are filled in per call."""
    n = system.getNumParticles()
    masses = [system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n)]
    numbers = torch.tensor(list(numbers), dtype=torch.long) if numbers is not None else torch.ones(n, dtype=torch.long)
    return AtomsBatch(positions=torch.zeros(n, 3, dtype=torch.float64), numbers=numbers,
                      system=torch.zeros(n, dtype=torch.long), cell=torch.zeros(1, 3, 3, dtype=torch.float64),
                      pbc=torch.zeros(1, 3, dtype=torch.bool), masses=torch.tensor(masses, dtype=torch.float64))


def bias_force(bias: Bias, system: openmm.System) -> openmm.PythonForce:
    """An ``openmm.PythonForce`` whose energy is ``bias`` (forces by autograd), exact at every step."""
    bias.cv.check_atoms(system.getNumParticles())
    return python_force(terms_force_fn([bias]), system_template(system), periodic=False, name="neuralmd-bias")


class _CVComponent:
    """``PythonForce`` callback (picklable, as ``CustomCVForce`` requires): output ``component``
    of ``cv`` as the 'energy' and minus its gradient per nm as the 'forces'."""

    def __init__(self, cv: CV, component: int) -> None:
        self.cv, self.component = cv, component

    def __call__(self, state: openmm.State) -> tuple[float, np.ndarray]:
        pos = np.asarray(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)) * NM_IN_A
        x = torch.as_tensor(pos, dtype=torch.float64).requires_grad_(True)
        s = self.cv(x.unsqueeze(0))[0, self.component]
        (grad,) = torch.autograd.grad(s, x)
        return float(s.detach()), (-grad * NM_IN_A).numpy()


def cv_forces(cv: CV, system: openmm.System) -> list[openmm.Force]:
    """One OpenMM force per CV output whose energy equals that output (Å, radians or kJ/mol):
    OpenMM custom forces for distances, angles and torsions, a ``CustomCVForce`` for the
    force-field energy, a NumPy ``PythonForce`` for learned distance CVs, a torch
    ``PythonForce`` otherwise."""
    cv.check_atoms(system.getNumParticles())
    if isinstance(cv, Stack):
        return [f for part in cv.cvs for f in cv_forces(part, system)]
    if isinstance(cv, PotentialEnergy):
        return [cv.openmm_force()]
    idx = [int(i) for i in cv.idx] if hasattr(cv, "idx") else []
    if isinstance(cv, Torsion):
        force = openmm.CustomTorsionForce("theta")
        force.addTorsion(*idx, [])
    elif isinstance(cv, Angle):
        force = openmm.CustomAngleForce("theta")
        force.addAngle(*idx, [])
    elif isinstance(cv, Distance):
        force = openmm.CustomBondForce(f"{NM_IN_A}*r")
        force.addBond(*idx, [])
    else:
        callbacks = MLPDistanceCV.components(cv, system.getNumParticles()) or [_CVComponent(cv, k)
                                                                                for k in range(cv.dim)]
        forces = [openmm.PythonForce(callback) for callback in callbacks]
        for k, f in enumerate(forces):
            f.setName(f"neuralmd-cv-{cv.names[k]}")
        return forces
    return [force]


class GridBias:
    """A bias tabulated on a grid inside an OpenMM ``CustomCVForce``.

    Args:
        bias: a bias over a 1- or 2-dimensional CV.
        system: the OpenMM System (for atom counts).
        ranges: (low, high) per CV output; periodic outputs use one period and need none.
            Outside a non-periodic range the bias is held at its boundary value (no force).
        spacing: grid spacing per output (default: a third of the kernel width, or 1/100 of
            the range for biases without kernels).
    """

    def __init__(self, bias: Bias, system: openmm.System, ranges: Sequence[tuple[float, float] | None] | None = None,
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
            elif isinstance(bias, _KernelBias):
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
        args = [f"s{k}" if periodic[k] else f"min(max(s{k},{self.bounds[k][0]!r}),{self.bounds[k][1]!r})"
                for k in range(d)]
        self.force = openmm.CustomCVForce(f"table({','.join(args)})")
        for k, f in enumerate(cv_forces(bias.cv, system)):
            self.force.addCollectiveVariable(f"s{k}", f)
        self.force.setName("neuralmd-grid-bias")
        self.force.addTabulatedFunction("table", self._function(np.zeros(len(self.points))))
        self._sum = torch.zeros(len(self.points), dtype=torch.float64)
        self._kernels = None
        self.refresh()

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

    def get_state(self) -> dict:
        """The tabulated kernel sum and the kernels it holds (so a restart re-tabulates the
        very same numbers an uninterrupted run would)."""
        return {"sum": self._sum.clone(), "kernels": list(self._kernels) if self._kernels is not None else []}

    def set_state(self, state: dict) -> None:
        self._sum = state["sum"].clone()
        self._kernels = tuple(state["kernels"]) if state["kernels"] else None

    @torch.no_grad()
    def refresh(self, context: openmm.Context | None = None) -> None:
        """Re-tabulate the bias (kJ/mol) and, given a context, push it into that context."""
        if isinstance(self.bias, _KernelBias):
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
        if context is not None:
            self.force.updateParametersInContext(context)


@dataclass
class OpenMMSettings:
    """An OpenMM run of a PDB with a force field (stored as md.toml). Units in the names."""

    pdb: str
    forcefield: list[str] = field(default_factory=lambda: ["amber99sbildn.xml"])
    engine: str = "openmm"
    temperature_K: float = 300.0
    timestep_fs: float = 2.0
    friction_per_ps: float = 1.0
    constraints: str = "HBonds"
    seed: int = 0
    report_every: int = 500
    checkpoint_every: int = 50_000
    total_steps: int = 0
    platform: str = "Reference"

    def validate(self) -> None:
        if not Path(self.pdb).is_file():
            raise InputError(f"pdb: {self.pdb}: file not found")
        if self.constraints not in ("None", "HBonds", "AllBonds", "HAngles"):
            raise InputError(f"constraints: {self.constraints!r}; expected None, HBonds, AllBonds or HAngles")
        if not self.temperature_K > 0 or not self.timestep_fs > 0 or not self.friction_per_ps >= 0:
            raise InputError("temperature_K and timestep_fs must be > 0, friction_per_ps >= 0")
        if self.report_every < 1 or self.checkpoint_every < 1:
            raise InputError("report_every and checkpoint_every must be >= 1")


class OpenMMRun:
    """Langevin (BAOAB-type ``LangevinMiddleIntegrator``) MD in OpenMM with an optional bias.

    Args:
        settings: the run's :class:`OpenMMSettings`.
        run_dir: where traj_000.h5md, log.csv, colvar.csv and checkpoints go.
        bias: an adaptive or static bias (None: unbiased).
        cv: the CV to record in colvar.csv (default: the bias's CV; None and no bias: none).
        grid: put the bias in as a :class:`GridBias` (else the exact PythonForce).
        grid_ranges: ranges of non-periodic CV outputs for the grid.
    """

    def __init__(self, settings: OpenMMSettings, run_dir: str | Path, bias: Bias | None = None,
                 cv: CV | None = None, grid: bool = True, grid_ranges=None, progress: bool = False) -> None:
        settings.validate()
        self.settings, self.run_dir, self.bias, self.progress = settings, Path(run_dir), bias, progress
        pdb = app.PDBFile(settings.pdb)
        try:
            forcefield = app.ForceField(*settings.forcefield)
            system = forcefield.createSystem(
                pdb.topology, nonbondedMethod=app.PME if pdb.topology.getPeriodicBoxVectors() else app.NoCutoff,
                constraints=getattr(app, settings.constraints) if settings.constraints != "None" else None)
        except (ValueError, OSError) as exc:
            raise InputError(f"{settings.pdb} with force field {settings.forcefield}: {exc}") from None
        self.numbers = np.array([a.element.atomic_number for a in pdb.topology.atoms()])
        self.template = system_template(system, self.numbers)
        self.grid = None
        for energy in energy_cvs(cv) + energy_cvs(bias.cv if bias is not None else None):
            energy.bind(system)
        if bias is not None:
            if grid:
                self.grid = GridBias(bias, system, grid_ranges)
                system.addForce(self.grid.force)
            else:
                system.addForce(bias_force(bias, system))
        n = system.getNumParticles()
        removes_com = any(isinstance(f, openmm.CMMotionRemover) for f in system.getForces())
        self.dof = torch.tensor([3.0 * n - system.getNumConstraints() - (3 if removes_com else 0)], dtype=torch.float64)
        integrator = openmm.LangevinMiddleIntegrator(settings.temperature_K * unit.kelvin,
                                                     settings.friction_per_ps / unit.picosecond,
                                                     settings.timestep_fs * unit.femtosecond)
        integrator.setRandomNumberSeed(settings.seed + 1)  # OpenMM draws a random seed for 0
        platform = openmm.Platform.getPlatformByName(settings.platform)
        self.simulation = app.Simulation(pdb.topology, system, integrator, platform)
        self.simulation.context.setPositions(pdb.positions)
        self.simulation.context.setVelocitiesToTemperature(settings.temperature_K * unit.kelvin, settings.seed + 1)
        if self.grid is not None:
            self.grid.refresh(self.simulation.context)
        self.step = 0
        self.wall_seconds = 0.0
        every = settings.report_every
        # velocities live in the checkpoints; the trajectory keeps positions only
        self.reporters: list = [H5MDReporter(self.run_dir, every, velocities=False),
                                LogReporter(self.run_dir / "log.csv", every)]
        cv = cv if cv is not None else (bias.cv if bias is not None else None)
        if cv is not None:
            cv.check_atoms(n)
            self.reporters.append(ColvarReporter(self.run_dir / "colvar.csv", cv, bias, every))

    def time_ps(self, step: int) -> float:
        return step * self.settings.timestep_fs / 1000.0

    def ns_per_day(self) -> float:
        return self.time_ps(self.step) / 1000.0 / self.wall_seconds * 86400.0 if self.wall_seconds else 0.0

    def md_state(self) -> MDState:
        """The current state as an MDState (positions Å, velocities in ASE units, energy eV
        including the bias, degrees of freedom net of constraints)."""
        s = self.simulation.context.getState(getPositions=True, getVelocities=True, getEnergy=True)
        pos = np.asarray(s.getPositions(asNumpy=True).value_in_unit(unit.nanometer)) * NM_IN_A
        vel = np.asarray(s.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)) * NM_IN_A
        batch = self.template.replace(positions=torch.as_tensor(pos, dtype=torch.float64),
                                      velocities=torch.as_tensor(vel / VELOCITY_TO_A_PER_PS, dtype=torch.float64))
        energy = s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_IN_KJMOL
        return MDState(batch, None, torch.tensor([energy], dtype=torch.float64), self.step, self.dof)

    def equilibrate(self, steps: int, cv: CV | None = None, every: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Run ``steps`` unbiased-by-updates steps before step 0 (nothing is written); returns
        the CV values (n, d) and positions (n, N, 3) Å every ``every`` steps (for choosing
        kernel widths)."""
        for energy in energy_cvs(cv):
            energy.bind(self.simulation.system)
        values, positions = [], []
        for _ in range(steps // every):
            self.simulation.step(every)
            pos = self.md_state().batch.positions
            positions.append(pos.numpy().copy())
            if cv is not None:
                with torch.no_grad():
                    values.append(cv(pos.unsqueeze(0))[0].numpy().copy())
        return np.array(values), np.array(positions)

    def run(self, steps: int | None = None) -> None:
        """Advance to ``settings.total_steps`` (or ``steps`` more), updating the bias every
        ``pace`` steps, reporting every ``report_every`` and checkpointing every
        ``checkpoint_every`` steps."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        s = self.settings
        if steps is not None:
            s.total_steps = self.step + steps
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pace = getattr(self.bias, "pace", 0) if hasattr(self.bias, "update") else 0
        if self.step == 0:
            self._report(self.md_state())
        columns = [TextColumn("MD (OpenMM)"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[status]}")]
        with Progress(*columns, disable=not self.progress) as bar:
            task = bar.add_task("md", total=s.total_steps, completed=self.step, status="")
            while self.step < s.total_steps:
                due = [s.report_every, s.checkpoint_every] + ([pace] if pace else [])
                n = min(min(d - self.step % d for d in due), s.total_steps - self.step)
                t0 = time.perf_counter()
                self.simulation.step(n)
                self.step += n
                due_report = self.step % s.report_every == 0 or self.step == s.total_steps
                due_bias = bool(pace) and self.step % pace == 0
                # checked first: a NaN never reaches the bias or the files
                state = self._checked(self.md_state()) if due_report or due_bias else None
                self.wall_seconds += time.perf_counter() - t0
                if due_report:  # before this step's deposition: colvar.csv holds the bias the frame felt
                    self._report(state)
                    bar.update(task, completed=self.step, status=f"{self.ns_per_day():.1f} ns/day")
                if due_bias:
                    t0 = time.perf_counter()
                    self.bias.update(state)
                    if self.grid is not None:
                        self.grid.refresh(self.simulation.context)
                    self.wall_seconds += time.perf_counter() - t0
                if self.step % s.checkpoint_every == 0:
                    self.save_checkpoint()
        self.save_checkpoint()
        for reporter in self.reporters:
            reporter.close()
        atomic_write_json({"steps": self.step, "time_ps": self.time_ps(self.step), "wall_seconds": self.wall_seconds,
                           "ns_per_day": self.ns_per_day(), "engine": "openmm", "platform": s.platform},
                          self.run_dir / "results.json")

    def _report(self, state: MDState) -> None:
        for reporter in self.reporters:
            reporter.report(self, state)
        self._last_good = state

    def _checked(self, state: MDState) -> MDState:
        """``state``, unless its positions or energy are not finite: then the reporters are
        closed (the trajectory ends at the last good frame), that frame is written to
        ``last_good.xyz`` and SimulationUnstable is raised."""
        if torch.isfinite(state.batch.positions).all() and torch.isfinite(state.energy).all():
            return state
        for reporter in self.reporters:
            reporter.close()
        good = getattr(self, "_last_good", None)
        where = ""
        if good is not None:
            write_frames(good.batch.to_atoms(), self.run_dir / "last_good.xyz")
            where = f"; last good frame (step {good.step}) kept in {self.run_dir / 'last_good.xyz'}"
        raise SimulationUnstable(f"step {self.step}: non-finite positions or energy (forces too steep for "
                                 f"a {self.settings.timestep_fs} fs step, from the force field or a bias){where}")

    def save_checkpoint(self) -> None:
        """The OpenMM checkpoint (state and random numbers), the step and the bias state."""
        blob = self.simulation.context.createCheckpoint()
        atomic_save({"format": CHECKPOINT_FORMAT, "step": self.step, "wall_seconds": self.wall_seconds,
                     "context": torch.frombuffer(bytearray(blob), dtype=torch.uint8),
                     "bias": self.bias.get_state() if hasattr(self.bias, "get_state") else {},
                     "grid": self.grid.get_state() if self.grid is not None else {}},
                    self.run_dir / CHECKPOINT)

    def restore(self) -> None:
        """Continue from the checkpoint in ``run_dir``: state, random numbers and bias as they
        were; files written after the checkpoint are cut back first."""
        path = self.run_dir / CHECKPOINT
        try:
            ckpt = torch.load(path, weights_only=True)
        except Exception as exc:
            raise InputError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
        if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"{path}: field 'format': not a neuralmd OpenMM checkpoint")
        self.simulation.context.loadCheckpoint(ckpt["context"].numpy().tobytes())
        if hasattr(self.bias, "set_state"):
            self.bias.set_state(ckpt["bias"])
        if self.grid is not None:
            self.grid.set_state(ckpt["grid"])
            self.grid.refresh(self.simulation.context)
        self.step, self.wall_seconds = ckpt["step"], ckpt["wall_seconds"]
        for reporter in self.reporters:
            reporter.truncate(self.step)
