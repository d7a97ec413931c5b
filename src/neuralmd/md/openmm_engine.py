"""Classical force fields through OpenMM on the shared run loop of :class:`~.run.MDRun`, writing
the same run files as the native engine (H5MD trajectory, log.csv, checkpoints, results.json).

:class:`OpenMMRun` integrates a PDB + force-field system with OpenMM's
``LangevinMiddleIntegrator`` in chunks up to the next event (report, update, checkpoint), with
exact checkpoint/restart (OpenMM checkpoints carry the integrator's random state). Extra forces
that change as the run goes (the biases of :mod:`neuralmd.sampling.openmm_bias`) plug in as
:class:`OpenMMTerm` objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import openmm
import torch
from openmm import app, unit

from ..errors import InputError
from ..rundir import LOG
from ..state import AtomsBatch
from ..units import AMU_PER_A3_IN_G_PER_CM3, EV_IN_KJMOL, NM_IN_A, VELOCITY_TO_A_PER_PS
from .integrators import MDState, check_temperature
from .protocols import Reporter
from .reporters import H5MDReporter, LogReporter
from .run import MDRun, RunSettings

CHECKPOINT_FORMAT = "neuralmd.openmm-checkpoint"
CONSTRAINTS = ("None", "HBonds", "AllBonds", "HAngles")


@runtime_checkable
class OpenMMTerm(Protocol):
    """An extra OpenMM force that may learn as the run goes (a bias): :meth:`add_to` puts its
    force(s) into the System before the context is made; :meth:`attach` receives the context
    once it exists; :meth:`update` is called every ``pace`` steps (0: never) with the state of
    that step; :meth:`get_state`/:meth:`set_state` go into and come back from checkpoints."""

    pace: int

    def add_to(self, system: openmm.System) -> None: ...

    def attach(self, context: openmm.Context) -> None: ...

    def update(self, state: MDState) -> None: ...

    def get_state(self) -> dict[str, Any]: ...

    def set_state(self, state: dict[str, Any]) -> None: ...


class FixedTerm:
    """An :class:`OpenMMTerm` that only adds forces that never change (a restraint, an ML/MM
    embedding): subclasses implement :meth:`add_to`; nothing to push, update or checkpoint."""

    pace = 0

    def add_to(self, system: openmm.System) -> None:
        raise NotImplementedError

    def attach(self, context: openmm.Context) -> None:
        """Nothing to push."""

    def update(self, state: MDState) -> None:
        """Never called (pace 0)."""

    def get_state(self) -> dict[str, Any]:
        return {}

    def set_state(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""


def system_template(system: openmm.System, numbers: Sequence[int] | None = None, copies: int = 1) -> AtomsBatch:
    """An AtomsBatch of ``copies`` copies of the System with its masses (amu) and the given
    atomic numbers (default 1: biases need no element types); positions are filled in per call."""
    n = system.getNumParticles()
    masses = torch.tensor([system.getParticleMass(i).value_in_unit(unit.dalton) for i in range(n)], dtype=torch.float64)
    numbers = torch.tensor(list(numbers), dtype=torch.long) if numbers is not None else torch.ones(n, dtype=torch.long)
    return AtomsBatch(positions=torch.zeros(copies * n, 3, dtype=torch.float64), numbers=numbers.repeat(copies),
                      system=torch.arange(copies).repeat_interleave(n), cell=torch.zeros(copies, 3, 3, dtype=torch.float64),
                      pbc=torch.zeros(copies, 3, dtype=torch.bool), masses=masses.repeat(copies))


@dataclass
class OpenMMSettings(RunSettings):
    """An OpenMM run of a PDB with a force field (stored as md.toml). Units in the names."""

    engine: str = "openmm"
    pdb: str = ""
    forcefield: list[str] = field(default_factory=lambda: ["amber99sbildn.xml"])
    temperature_K: float = 300.0
    timestep_fs: float = 2.0
    constraints: str = "HBonds"
    report_every: int = 500
    checkpoint_every: int = 50_000
    platform: str = "Reference"
    #: copies of the system run side by side (one context each), e.g. walkers sharing a bias
    walkers: int = 1

    def validate(self, pdb: bool = True) -> None:
        """InputError naming the first setting out of range (``pdb``: also that the PDB exists,
        which a run given its System does not need)."""
        super().validate()
        if self.engine != "openmm":
            raise InputError(f"engine: {self.engine!r}; these are OpenMM-engine settings")
        if pdb and not Path(self.pdb).is_file():
            raise InputError(f"pdb: {self.pdb}: file not found")
        if self.walkers < 1:
            raise InputError(f"walkers: {self.walkers}; expected >= 1")
        if self.constraints not in CONSTRAINTS:
            raise InputError(f"constraints: {self.constraints!r}; expected one of {', '.join(CONSTRAINTS)}")
        check_temperature(self.temperature_K)
        platforms = [openmm.Platform.getPlatform(k).getName() for k in range(openmm.Platform.getNumPlatforms())]
        if self.platform not in platforms:
            raise InputError(f"platform: {self.platform!r}; this OpenMM has {', '.join(platforms)}")


def read_pdb(pdb: str | Path) -> app.PDBFile:
    """OpenMM's reading of a PDB file, or an InputError naming the file."""
    try:
        return app.PDBFile(str(pdb))
    except Exception as exc:  # OpenMM's PDB reader raises bare exceptions on junk
        raise InputError(f"{pdb}: not a readable PDB file ({type(exc).__name__}: {exc})") from None


def pdb_numbers(pdb: str | Path) -> np.ndarray:
    """Atomic numbers of the atoms of a PDB file."""
    return np.array([a.element.atomic_number for a in read_pdb(pdb).topology.atoms()])


@dataclass
class OpenMMSystem:
    """What a run is made of: the topology, the System (forces in kJ/mol, nm), the starting
    positions (nm) and the atomic numbers."""

    topology: app.Topology
    system: openmm.System
    positions: Any
    numbers: np.ndarray

    @classmethod
    def from_settings(cls, settings: OpenMMSettings) -> "OpenMMSystem":
        """The PDB of ``settings`` with its force field (PME if the PDB has a box, else no cutoff)."""
        pdb = read_pdb(settings.pdb)
        try:
            forcefield = app.ForceField(*settings.forcefield)
            system = forcefield.createSystem(
                pdb.topology, nonbondedMethod=app.PME if pdb.topology.getPeriodicBoxVectors() else app.NoCutoff,
                constraints=getattr(app, settings.constraints) if settings.constraints != "None" else None)
        except (ValueError, OSError) as exc:
            raise InputError(f"{settings.pdb} with force field {settings.forcefield}: {exc}") from None
        return cls(pdb.topology, system, pdb.positions, np.array([a.element.atomic_number for a in pdb.topology.atoms()]))

    def copy(self, positions: Any = None) -> "OpenMMSystem":
        """The same system with its own copy of the System, so forces added to it (an
        :class:`OpenMMRun`'s terms, a restraint) leave this one alone; at ``positions`` (nm, or
        an OpenMM Quantity; default this system's)."""
        system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(self.system))
        return OpenMMSystem(self.topology, system, self.positions if positions is None else positions, self.numbers)


class OpenMMRun(MDRun):
    """Langevin (BAOAB-type ``LangevinMiddleIntegrator``) MD in OpenMM.

    Args:
        settings: the run's :class:`OpenMMSettings`.
        run_dir: where traj_000.h5md, log.csv and checkpoints go (None: nothing is written,
            as for a probe run).
        system: the system to run (default: built from ``settings``); callers that add forces
            (biases, CV forces) build it first with :meth:`OpenMMSystem.from_settings`.
        terms: :class:`OpenMMTerm` objects: their forces are added to the System here.
        reporters: extra reporters (a colvar file).
        progress: show a progress bar.
    """

    checkpoint_format = CHECKPOINT_FORMAT
    label = "MD (OpenMM)"

    def __init__(self, settings: OpenMMSettings, run_dir: str | Path | None, system: OpenMMSystem | None = None,
                 terms: Sequence[OpenMMTerm] = (), reporters: Sequence[Reporter] = (),
                 progress: bool = False) -> None:
        settings.validate(pdb=system is None)
        self.settings, self.progress = settings, progress
        self.run_dir = Path(run_dir) if run_dir is not None else None
        parts = system or OpenMMSystem.from_settings(settings)
        self.numbers = parts.numbers
        self.template = system_template(parts.system, self.numbers, settings.walkers)
        self.periodic = parts.system.usesPeriodicBoundaryConditions()
        self.barostat = next((f for f in parts.system.getForces() if isinstance(f, openmm.MonteCarloBarostat)), None)
        self.terms = list(terms)
        for term in self.terms:
            term.add_to(parts.system)
        self.adaptive = self.terms
        self.stop_conditions = []
        n = parts.system.getNumParticles()
        removes_com = any(isinstance(f, openmm.CMMotionRemover) for f in parts.system.getForces())
        dof = 3.0 * n - parts.system.getNumConstraints() - (3 if removes_com else 0)
        self.dof = torch.full((settings.walkers,), dof, dtype=torch.float64)
        platform = openmm.Platform.getPlatformByName(settings.platform)
        self.simulations = []
        for k in range(settings.walkers):  # walker k: its own context and random stream
            integrator = openmm.LangevinMiddleIntegrator(settings.temperature_K * unit.kelvin,
                                                         settings.friction_per_ps / unit.picosecond,
                                                         settings.timestep_fs * unit.femtosecond)
            integrator.setRandomNumberSeed(settings.seed + 1 + k)  # OpenMM draws a random seed for 0
            simulation = app.Simulation(parts.topology, parts.system, integrator, platform)
            simulation.context.setPositions(parts.positions)
            simulation.context.setVelocitiesToTemperature(settings.temperature_K * unit.kelvin, settings.seed + 1 + k)
            for term in self.terms:
                term.attach(simulation.context)
            self.simulations.append(simulation)
        self.simulation = self.simulations[0]
        self._step = 0
        self.wall_seconds = 0.0
        self.reporters: list[Reporter] = []
        if self.run_dir is not None:  # velocities live in the checkpoints; the trajectory keeps positions only
            self.reporters = [H5MDReporter(self.run_dir, settings.report_every, velocities=False),
                              LogReporter(self.run_dir / LOG, settings.report_every, pressure=self.barostat is not None)]
        self.reporters += list(reporters)

    # --- the engine's part of the run loop --------------------------------------------------
    @property
    def step(self) -> int:
        return self._step

    def _advance(self, steps: int) -> None:
        for simulation in self.simulations:
            simulation.step(steps)
        self._step += steps

    def current_state(self) -> MDState:
        """The current state as an MDState (positions Å, unwrapped as OpenMM keeps them;
        velocities in ASE units, energy eV including the biases, degrees of freedom net of
        constraints; a periodic System's boxes as the cells, Å)."""
        pos, vel, energy, box = [], [], [], []
        for simulation in self.simulations:
            s = simulation.context.getState(getPositions=True, getVelocities=True, getEnergy=True)
            pos.append(np.asarray(s.getPositions(asNumpy=True).value_in_unit(unit.nanometer)) * NM_IN_A)
            vel.append(np.asarray(s.getVelocities(asNumpy=True).value_in_unit(unit.nanometer / unit.picosecond)) * NM_IN_A)
            energy.append(s.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_IN_KJMOL)
            box.append(np.asarray(s.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer)) * NM_IN_A)
        batch = self.template.replace(positions=torch.as_tensor(np.concatenate(pos), dtype=torch.float64),
                                      velocities=torch.as_tensor(np.concatenate(vel) / VELOCITY_TO_A_PER_PS,
                                                                 dtype=torch.float64))
        if self.periodic:
            batch = batch.replace(cell=torch.as_tensor(np.array(box), dtype=torch.float64),
                                  pbc=torch.ones(len(box), 3, dtype=torch.bool))
        return MDState(batch, None, torch.tensor(energy, dtype=torch.float64), self._step, self.dof)

    def _problem(self, state: MDState) -> str | None:
        if super()._problem(state) is None:
            return None
        return (f"non-finite positions or energy (forces too steep for a {self.settings.timestep_fs} fs step, "
                f"from the force field or a bias)")

    def _status(self, state: MDState) -> str:
        view = self.barostat_view(state)
        density = "" if view is None else f"P {view[0].mean():.0f} bar | {view[2].mean():.4f} g/cm³ | "
        return f"{density}{self.ns_per_day():.1f} ns/day"

    def barostat_view(self, state: MDState) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """With a Monte Carlo barostat: OpenMM's instantaneous pressure of each walker (bar;
        ``computeCurrentPressure``, the molecular virial the barostat uses), and the volume (Å³)
        and density (g/cm³) of its box."""
        if self.barostat is None:
            return None
        b = state.batch
        volume = torch.linalg.det(b.cell).abs()
        mass = torch.zeros(b.n_systems, dtype=volume.dtype).index_add(0, b.system, b.masses)
        p = [self.barostat.computeCurrentPressure(s.context).value_in_unit(unit.bar) for s in self.simulations]
        return np.array(p), volume.numpy(), (mass / volume * AMU_PER_A3_IN_G_PER_CM3).numpy()

    def _results(self) -> dict[str, Any]:
        return {"platform": self.settings.platform}

    def sample_positions(self, steps: int, every: int = 10) -> tuple[np.ndarray, np.ndarray | None]:
        """Run ``steps`` steps of the first walker without reports or updates (a probe before
        step 0: nothing is written and the step count stays) and return its positions (n, N, 3)
        Å every ``every`` steps, and its cells (n, 3, 3) Å (None if the System is not periodic)."""
        positions, cells = [], []
        n = len(self.numbers)
        for _ in range(steps // every):
            self.simulation.step(every)
            batch = self.current_state().batch
            positions.append(batch.positions[:n].numpy().copy())
            cells.append(batch.cell[0].numpy().copy())
        return np.array(positions), (np.array(cells) if self.periodic else None)

    # --- checkpoints -----------------------------------------------------------------------
    def _checkpoint_payload(self) -> dict[str, Any]:
        """The OpenMM checkpoint (state and random numbers), the step and the terms' states."""
        blobs = [torch.frombuffer(bytearray(s.context.createCheckpoint()), dtype=torch.uint8) for s in self.simulations]
        return {"step": self._step, "wall_seconds": self.wall_seconds, "context": blobs[0], "walker_contexts": blobs[1:],
                "terms": [t.get_state() for t in self.terms]}

    def restore(self) -> None:
        """Continue from the checkpoint in ``run_dir``: state, random numbers and terms as they
        were; files written after the checkpoint are cut back first."""
        ckpt = self.read_checkpoint(self.run_dir)
        if "terms" not in ckpt:  # written before the terms were generic: one bias and its grid
            ckpt["terms"] = [{"bias": ckpt["bias"], "grid": ckpt["grid"]}] if self.terms else []
        if len(ckpt["terms"]) != len(self.terms):
            raise InputError(f"{self.run_dir / 'checkpoint.pt'}: the run had {len(ckpt['terms'])} bias term(s), "
                             f"{len(self.terms)} given")
        blobs = [ckpt["context"], *ckpt.get("walker_contexts", [])]
        if len(blobs) != len(self.simulations):
            raise InputError(f"{self.run_dir / 'checkpoint.pt'}: {len(blobs)} walker(s) stored, {len(self.simulations)} "
                             f"in the settings")
        for simulation, blob in zip(self.simulations, blobs):
            simulation.context.loadCheckpoint(blob.numpy().tobytes())
        for term, state in zip(self.terms, ckpt["terms"]):
            term.set_state(state)
        self._step = int(ckpt["step"])
        self._resumed_at(ckpt)
