"""The native engine: MD of an AtomsBatch of replicas with a neural potential plus extra
energy terms (the hook biases use), on the shared run loop of :class:`~.run.MDRun` (reporters,
stability guards, stop conditions, checkpoints that continue bit for bit).

    sim = Simulation(potential, AtomsBatch.from_atoms(frames), ensemble="nvt", timestep_fs=0.5,
                     temperature_K=300, seed=1, run_dir="runs/md")
    sim.run(10_000)
    sim = Simulation.resume("runs/md", potential)   # after a kill: same trajectory, same end
"""

from __future__ import annotations

import copy
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..errors import InputError
from ..geometry import narrowest_box
from ..models.base import Potential
from ..rundir import CHECKPOINT, LOG
from ..state import AtomsBatch
from .integrators import (COUPLINGS, ForceFn, MDState, ReplicaNoise, StressForceFn, check_pressure,
                          check_temperature, check_timestep, csvr, langevin, maxwell_boltzmann, moving_dof, npt_csvr,
                          npt_langevin, nve, temperature)
from .protocols import AdaptiveTerm, EnergyTerm, Reporter
from .reporters import H5MDReporter, LogReporter, barostat_view
from .run import MDRun, RunSettings, SimulationUnstable, StopCondition

CHECKPOINT_FORMAT = "neuralmd.md-checkpoint"
CHECKPOINT_VERSION = 1

__all__ = ["MDSettings", "Simulation", "SimulationUnstable", "make_force_fn", "terms_force_fn"]


THERMOSTATS = ("langevin", "csvr")
ENSEMBLES = ("nve", "nvt", "npt")


@dataclass
class MDSettings(RunSettings):
    """What defines a native run (stored in md.toml and its checkpoint). Units in the names."""

    engine: str = "native"
    ensemble: str = "nvt"
    #: the thermostat of nvt and npt: langevin (BAOAB, friction_per_ps) or csvr (velocity
    #: rescaling, tau_ps; dynamics as in NVE, the command line's choice for npt)
    thermostat: str = "langevin"
    tau_ps: float = 0.1
    #: npt: target pressure (one value or one per replica), the barostat's relaxation time and
    #: the compressibility it assumes (water's; it sets how fast the volume relaxes, not where to)
    pressure_bar: list[float] = field(default_factory=lambda: [1.0])
    tau_p_ps: float = 2.0
    compressibility_per_bar: float = 4.5e-5
    #: npt: isotropic (one volume: liquids), anisotropic (each axis on its own: orthorhombic
    #: solids) or triclinic (the six components of a standard-form cell, shear included)
    barostat: str = "isotropic"
    temperature_K: list[float] = field(default_factory=lambda: [300.0])
    max_force_eV_per_A: float = 100.0
    max_spread_A: float = 10.0
    model_path: str = ""
    #: where the starting frames came from and how many replicas were made of them (the command
    #: line's --structure and --replicas; a Python caller that passes a batch may leave them)
    structure: str = ""
    replicas: int = 1
    #: replicas with a trajectory file (the first N; -1: all). Thousands of small CG replicas
    #: would otherwise mean thousands of HDF5 files, each written at every report.
    trajectory_replicas: int = -1
    #: compile the model for this batch of molecules (see neuralmd.models.compiled): faster
    #: steps after a compilation of tens of seconds
    compile: bool = False
    #: the command line's precision of the model: float64 (exact energy conservation) or the
    #: model's own (False: ``--no-float64``); ``md --resume`` continues in the stored one
    float64: bool = True

    def validate(self) -> None:
        super().validate()
        check_timestep(self.timestep_fs)
        if self.engine != "native":
            raise InputError(f"engine: {self.engine!r}; these are native-engine settings")
        if self.ensemble not in ENSEMBLES:
            raise InputError(f"ensemble: {self.ensemble!r}; expected one of {', '.join(ENSEMBLES)}")
        check_pressure(self.pressure_bar)
        if self.barostat not in COUPLINGS:
            raise InputError(f"barostat: {self.barostat!r}; expected one of {', '.join(COUPLINGS)}")
        if not 0 < self.tau_p_ps < float("inf") or not 0 < self.compressibility_per_bar < 1:
            raise InputError(f"tau_p_ps {self.tau_p_ps}, compressibility_per_bar {self.compressibility_per_bar}: "
                             f"expected a relaxation time > 0 ps and a compressibility in 1/bar (water 4.5e-5)")
        if self.thermostat not in THERMOSTATS:
            raise InputError(f"thermostat: {self.thermostat!r}; expected one of {', '.join(THERMOSTATS)}")
        if self.ensemble == "nve" and self.thermostat != "langevin":
            raise InputError(f"thermostat: {self.thermostat!r} with ensemble 'nve', which has none; use --ensemble nvt")
        if not 0 < self.tau_ps < float("inf"):
            raise InputError(f"tau_ps: {self.tau_ps}; expected a relaxation time > 0 ps (typical 0.1-1)")
        check_temperature(self.temperature_K)
        if self.replicas < 1:
            raise InputError(f"replicas: {self.replicas}; expected >= 1")
        if self.trajectory_replicas < -1:
            raise InputError(f"trajectory_replicas: {self.trajectory_replicas}; expected >= 0, or -1 for all")


def potential_fingerprint(potential: Potential) -> str:
    """A hash of the potential's weights and buffers: a checkpoint remembers which model made it."""
    h = hashlib.sha256()
    for name, tensor in sorted(potential.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def precision_hint(potential: Potential, fingerprint: str) -> str:
    """What to say when ``fingerprint`` is ``potential``'s in another floating-point precision
    (a run made with ``--no-float64`` resumed without it, or the reverse); empty otherwise."""
    for dtype, flag in ((torch.float32, "--no-float64"), (torch.float64, "--float64")):
        if potential_fingerprint(copy.deepcopy(potential).to(dtype)) == fingerprint:
            return (f"; it is this model evaluated in {str(dtype).removeprefix('torch.')}: resume in that precision "
                    f"(neuralmd md --resume ... {flag})")
    return ""


def terms_force_fn(terms: Sequence[EnergyTerm]) -> ForceFn:
    """Energy (B,) eV and forces (N, 3) eV/Å, float64, of the sum of ``terms`` (by autograd)."""

    def force_fn(batch: AtomsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        pos = batch.positions.detach().to(torch.float64).requires_grad_(True)
        extra = sum(term(batch.replace(positions=pos)) for term in terms)
        if not extra.requires_grad:  # a bias with nothing deposited yet is a constant
            return extra.detach(), torch.zeros_like(pos)
        (grad,) = torch.autograd.grad(extra.sum(), pos)
        return extra.detach(), -grad

    return force_fn


def make_stress_force_fn(potential: Potential) -> StressForceFn:
    """Energy (B,) eV, forces (N, 3) eV/Å and stress (B, 3, 3) eV/Å³ of ``potential``, float64."""

    def force_fn(batch: AtomsBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = potential(batch, stress=True)
        return (out["energy"].detach(), out["forces"].detach().to(torch.float64),
                out["stress"].detach().to(torch.float64))

    return force_fn


def make_force_fn(potential: Potential, terms: Sequence[EnergyTerm] = ()) -> ForceFn:
    """Energy and forces of ``potential`` plus ``terms`` (each differentiated by autograd), in
    float64."""
    extra_fn = terms_force_fn(terms) if terms else None

    def force_fn(batch: AtomsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        out = potential(batch)
        energy, forces = out["energy"].detach(), out["forces"].detach().to(torch.float64)
        if extra_fn is not None:
            extra_energy, extra_forces = extra_fn(batch)
            energy, forces = energy + extra_energy, forces + extra_forces
        return energy, forces

    return force_fn


class Simulation(MDRun):
    """The native engine: MD of a batch of replicas with one potential.

    Args:
        potential: any :class:`~neuralmd.models.base.Potential`.
        batch: starting structures (positions Å); velocities are drawn from Maxwell-Boltzmann
            at the (first) temperature unless the batch carries them.
        settings: an :class:`MDSettings` (or keyword arguments for one).
        terms: extra energy terms (biases, restraints) added to the potential; those that are
            :class:`~.protocols.AdaptiveTerm` objects are updated every ``pace`` steps.
        run_dir: where the trajectory, log and checkpoints go (None: nothing is written).
        stop_conditions: checked at every report; a returned string stops the run.
        reporters: extra :class:`~.protocols.Reporter` objects, each called every ``interval`` steps.
        progress: show a progress bar.
    """

    checkpoint_format = CHECKPOINT_FORMAT
    label = "MD"

    def __init__(self, potential: Potential, batch: AtomsBatch, settings: MDSettings | None = None, *,
                 terms: Sequence[EnergyTerm] = (), run_dir: str | Path | None = None,
                 stop_conditions: Sequence[StopCondition] = (), reporters: Sequence[Reporter] = (),
                 progress: bool = False, _restore: dict | None = None, **kwargs) -> None:
        settings = settings or MDSettings(**kwargs)
        if isinstance(settings.temperature_K, (int, float)):
            settings.temperature_K = [float(settings.temperature_K)]
        settings.validate()
        if len(settings.temperature_K) not in (1, batch.n_systems):
            raise InputError(f"temperature: {len(settings.temperature_K)} values for {batch.n_systems} replicas")
        potential.check_elements(batch.numbers, where="structure")
        batch = batch.to(device=potential.device, dtype=torch.float64)  # the run goes where the model is
        self.potential = potential.eval()
        self.settings = settings
        self.terms = list(terms)
        for term in self.terms:
            term.check_atoms(int(batch.counts.min()))
        self.adaptive = [t for t in self.terms if isinstance(t, AdaptiveTerm)]
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.stop_conditions = list(stop_conditions)
        self.progress = progress
        self.fingerprint = potential_fingerprint(potential)
        if settings.compile:
            from ..models.compiled import StaticGraphPotential

            potential = self.potential = StaticGraphPotential(potential, batch).eval()
        # replica b draws from seed + b: replica b of a batch follows the single run seeded seed + b
        self.noise = ReplicaNoise([settings.seed + b for b in range(batch.n_systems)])
        force_fn = make_force_fn(potential, self.terms)
        if settings.ensemble == "npt":
            narrow = narrowest_box(batch.cell, potential.cutoff)
            if narrow is not None:
                raise InputError(f"structure: replica {narrow[0]}'s cell is {narrow[1]:.2f} Å across, below twice the "
                                 f"model's cutoff ({2 * potential.cutoff:.2f} Å); replicate it (neuralmd build "
                                 f"replicate)")
            if self.terms:
                raise InputError("npt: biases and other energy terms are not yet part of the pressure; run them at "
                                 "constant volume (--ensemble nvt)")
            if len(settings.pressure_bar) not in (1, batch.n_systems):
                raise InputError(f"pressure: {len(settings.pressure_bar)} values for {batch.n_systems} replicas")
            npt, bath = (npt_csvr, settings.tau_ps) if settings.thermostat == "csvr" else (
                npt_langevin, settings.friction_per_ps)  # the thermostat's own parameter
            init_fn, self.step_fn = npt(make_stress_force_fn(potential), settings.timestep_fs, settings.temperature_K,
                                        settings.pressure_bar, bath, settings.tau_p_ps,
                                        settings.compressibility_per_bar, self.noise, settings.barostat)
        elif settings.ensemble == "nve":
            init_fn, self.step_fn = nve(force_fn, settings.timestep_fs)
        elif settings.thermostat == "csvr":
            init_fn, self.step_fn = csvr(force_fn, settings.timestep_fs, settings.temperature_K, settings.tau_ps,
                                         self.noise)
        else:
            init_fn, self.step_fn = langevin(force_fn, settings.timestep_fs, settings.temperature_K,
                                             settings.friction_per_ps, self.noise)
        if _restore is not None:
            self.noise.set_state(_restore["noise"])
            stress = _restore.get("stress")
            self.state = MDState(batch, _restore["forces"].to(batch.positions.device),
                                 _restore["energy"].to(batch.positions.device), _restore["step"],
                                 dof=moving_dof(batch) if settings.thermostat == "csvr" else None,
                                 stress=stress.to(batch.positions.device) if stress is not None else None)
        else:
            if batch.velocities is None:
                batch = maxwell_boltzmann(batch, settings.temperature_K, self.noise)
            self.state = init_fn(batch)
        self.reporters: list[Reporter] = []
        if self.run_dir is not None:
            n_traj = batch.n_systems if settings.trajectory_replicas < 0 else settings.trajectory_replicas
            self.reporters = [H5MDReporter(self.run_dir, settings.report_every, list(range(min(n_traj, batch.n_systems)))),
                              LogReporter(self.run_dir / LOG, settings.report_every,
                                          pressure=settings.ensemble == "npt")]
        self.reporters += list(reporters)
        self._last_good = self.state
        self._centres_ok = self._spread(self.state.batch) + settings.max_spread_A
        self.wall_seconds = 0.0

    # --- the engine's part of the run loop --------------------------------------------------
    @property
    def step(self) -> int:
        return self.state.step

    def _advance(self, steps: int) -> None:
        for _ in range(steps):
            self.state = self.step_fn(self.state)

    def current_state(self) -> MDState:
        return self.state

    def _status(self, state: MDState) -> str:
        text = f"T {float(temperature(state.batch, dof=state.dof).mean()):.0f} K"
        view = self.barostat_view(state)
        if view is not None:
            text += f" | P {view[0].mean():.0f} bar | {view[2].mean():.4f} g/cm³"
        return f"{text} | {self.ns_per_day():.2f} ns/day"

    def barostat_view(self, state: MDState) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """The instantaneous pressure (virial + kinetic), volume and density of an NPT state."""
        return None if state.stress is None else barostat_view(state)

    @staticmethod
    def _spread(batch: AtomsBatch) -> torch.Tensor:
        """Largest distance of an atom from its system's centroid, per system (Å)."""
        n = batch.counts.to(batch.positions.dtype).unsqueeze(-1)
        centroid = batch.positions.new_zeros(batch.n_systems, 3).index_add(0, batch.system, batch.positions) / n
        d = torch.linalg.vector_norm(batch.positions - centroid[batch.system], dim=-1)
        return d.new_zeros(batch.n_systems).scatter_reduce(0, batch.system, d, "amax", include_self=False)

    def _problem(self, state: MDState) -> str | None:
        """Non-finite numbers, a force over ``max_force_eV_per_A``, or (molecules) an atom that
        left its molecule: the reason, naming replica and atom; None if the state is fine."""
        b = state.batch
        bad_atom = ~(torch.isfinite(b.positions).all(-1) & torch.isfinite(state.forces).all(-1))
        bad = ~torch.isfinite(state.energy) | (
            state.energy.new_zeros(b.n_systems, dtype=torch.float64).index_add(0, b.system, bad_atom.double()) > 0)
        if bad.any():
            return f"replica {int(torch.nonzero(bad)[0, 0])}: non-finite energy, forces or positions"
        fmax = torch.linalg.vector_norm(state.forces, dim=-1)
        if float(fmax.max()) > self.settings.max_force_eV_per_A:
            atom = int(fmax.argmax())
            return (f"replica {int(b.system[atom])}: force {float(fmax[atom]):.1f} eV/Å on atom {atom} exceeds "
                    f"max_force_eV_per_A={self.settings.max_force_eV_per_A}")
        narrow = narrowest_box(b.cell, self.potential.cutoff) if state.stress is not None else None  # npt
        if narrow is not None:
            r, width = narrow
            return (f"replica {r}: the box shrank to {width:.2f} Å across, below twice the cutoff "
                    f"({2 * self.potential.cutoff:.2f} Å); cell {np.round(b.cell[r].cpu().numpy(), 3).tolist()}")
        if not b.periodic:
            spread = self._spread(b)
            over = spread > self._centres_ok
            if over.any():
                r = int(torch.nonzero(over)[0, 0])
                return (f"replica {r}: an atom is {float(spread[r]):.1f} Å from its molecule's centre "
                        f"(limit {float(self._centres_ok[r]):.1f} Å): atoms flying apart")
        return None

    def _results(self) -> dict[str, Any]:
        temps = temperature(self.state.batch).cpu().numpy()
        return {"replicas": self.state.batch.n_systems, "final_temperature_K": np.round(temps, 2).tolist(),
                "model_fingerprint": self.fingerprint}

    # --- checkpoints -----------------------------------------------------------------------
    def _checkpoint_payload(self) -> dict[str, Any]:
        b = self.state.batch
        return {
            "format_version": CHECKPOINT_VERSION, "model_fingerprint": self.fingerprint,
            "settings": asdict(self.settings),
            "batch": {k: getattr(b, k) for k in ("positions", "numbers", "system", "cell", "pbc", "masses", "velocities")},
            "forces": self.state.forces, "energy": self.state.energy, "step": self.state.step,
            "stress": self.state.stress,
            "noise": self.noise.get_state(), "wall_seconds": self.wall_seconds,
            "terms": [t.get_state() if isinstance(t, AdaptiveTerm) else {} for t in self.terms],
        }

    @classmethod
    def resume(cls, run_dir: str | Path, potential: Potential, progress: bool = False,
               stop_conditions: Sequence[StopCondition] = (), terms: Sequence[EnergyTerm] = (),
               reporters: Sequence[Reporter] = ()) -> "Simulation":
        """Continue the run in ``run_dir`` from its checkpoint; trajectory frames and log rows
        written after the checkpoint are dropped first, so the files match an uninterrupted run."""
        ckpt = cls.read_checkpoint(run_dir)
        path = Path(run_dir) / CHECKPOINT
        if ckpt.get("format_version") != CHECKPOINT_VERSION:
            raise InputError(f"{path}: field 'format_version': not a neuralmd MD checkpoint of version "
                             f"{CHECKPOINT_VERSION}")
        if ckpt["model_fingerprint"] != potential_fingerprint(potential):
            raise InputError(f"{path}: field 'model_fingerprint': the checkpoint was written with another model "
                             f"({ckpt['model_fingerprint']}, given {potential_fingerprint(potential)})"
                             f"{precision_hint(potential, ckpt['model_fingerprint'])}")
        sim = cls(potential, AtomsBatch(**ckpt["batch"]), MDSettings(**ckpt["settings"]), terms=terms,
                  run_dir=run_dir, stop_conditions=stop_conditions, reporters=reporters, progress=progress,
                  _restore=ckpt)
        if len(ckpt["terms"]) != len(sim.terms):
            raise InputError(f"{path}: the run had {len(ckpt['terms'])} extra energy terms, {len(sim.terms)} given")
        for term, state in zip(sim.terms, ckpt["terms"]):
            if isinstance(term, AdaptiveTerm):
                term.set_state(state)
        sim._resumed_at(ckpt)
        return sim
