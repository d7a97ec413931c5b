"""The MD run loop over an AtomsBatch of replicas: potential plus extra energy terms (the hook
biases use), reporters, stability guards, stop conditions, and checkpoint/restart that
continues bit for bit.

    sim = Simulation(potential, AtomsBatch.from_atoms(frames), ensemble="nvt", timestep_fs=0.5,
                     temperature_K=300, seed=1, run_dir="runs/md")
    sim.run(10_000)
    sim = Simulation.resume("runs/md", potential)   # after a kill: same trajectory, same end
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from ..data.io import write_frames
from ..errors import InputError, NeuralMDError
from ..io_utils import atomic_save, atomic_write_json
from ..models.base import Potential
from ..state import AtomsBatch
from .integrators import (ForceFn, MDState, ReplicaNoise, check_temperature, check_timestep, langevin,
                          maxwell_boltzmann, nve, temperature)
from .reporters import H5MDReporter, LogReporter

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_FORMAT = "neuralmd.md-checkpoint"
CHECKPOINT_VERSION = 1

#: An extra energy term: a torch module or function of the batch -> energy per system (B,) eV.
EnergyTerm = Callable[[AtomsBatch], torch.Tensor]
#: A stop condition: state -> reason to stop, or None.
StopCondition = Callable[[MDState], "str | None"]


class SimulationUnstable(NeuralMDError):
    """The run blew up (NaN, huge force, atoms flying apart); the last good frame was kept."""


@dataclass
class MDSettings:
    """What defines a run (stored in its checkpoint). Units in the names."""

    ensemble: str = "nvt"
    timestep_fs: float = 0.5
    temperature_K: list[float] = field(default_factory=lambda: [300.0])
    friction_per_ps: float = 1.0
    seed: int = 0
    report_every: int = 100
    checkpoint_every: int = 1000
    max_force_eV_per_A: float = 100.0
    max_spread_A: float = 10.0
    total_steps: int = 0
    model_path: str = ""
    #: replicas with a trajectory file (the first N; -1: all). Thousands of small CG replicas
    #: would otherwise mean thousands of HDF5 files, each written at every report.
    trajectory_replicas: int = -1
    #: compile the model for this batch of molecules (see neuralmd.models.compiled): faster
    #: steps after a compilation of tens of seconds
    compile: bool = False

    def validate(self) -> None:
        if self.ensemble not in ("nve", "nvt"):
            raise InputError(f"ensemble: {self.ensemble!r}; expected 'nve' or 'nvt'")
        check_timestep(self.timestep_fs)
        check_temperature(self.temperature_K)
        if self.report_every < 1 or self.checkpoint_every < 1:
            raise InputError("report_every and checkpoint_every must be >= 1")
        if self.trajectory_replicas < -1:
            raise InputError(f"trajectory_replicas: {self.trajectory_replicas}; expected >= 0, or -1 for all")


def potential_fingerprint(potential: Potential) -> str:
    """A hash of the potential's weights and buffers: a checkpoint remembers which model made it."""
    h = hashlib.sha256()
    for name, tensor in sorted(potential.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


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


class Simulation:
    """MD of a batch of replicas with one potential.

    Args:
        potential: any :class:`~neuralmd.models.base.Potential`.
        batch: starting structures (positions Å); velocities are drawn from Maxwell-Boltzmann
            at the (first) temperature unless the batch carries them.
        settings: an :class:`MDSettings` (or keyword arguments for one).
        terms: extra energy terms (biases, restraints) added to the potential.
        run_dir: where the trajectory, log and checkpoints go (None: nothing is written).
        stop_conditions: checked at every report; a returned string stops the run.
        reporters: extra objects with ``report(simulation, state)``, called every
            ``report_every`` steps (they skip steps themselves if they want fewer).
    """

    def __init__(self, potential: Potential, batch: AtomsBatch, settings: MDSettings | None = None, *,
                 terms: Sequence[EnergyTerm] = (), run_dir: str | Path | None = None,
                 stop_conditions: Sequence[StopCondition] = (), reporters: Sequence = (),
                 progress: bool = False, _restore: dict | None = None, **kwargs) -> None:
        settings = settings or MDSettings(**kwargs)
        if isinstance(settings.temperature_K, (int, float)):
            settings.temperature_K = [float(settings.temperature_K)]
        settings.validate()
        if len(settings.temperature_K) not in (1, batch.n_systems):
            raise InputError(f"temperature: {len(settings.temperature_K)} values for {batch.n_systems} replicas")
        if hasattr(potential, "check_elements"):
            potential.check_elements(batch.numbers, where="structure")
        batch = batch.to(device=potential.device, dtype=torch.float64)  # the run goes where the model is
        self.potential = potential.eval()
        self.settings = settings
        self.terms = list(terms)
        for term in self.terms:
            if hasattr(term, "cv"):
                term.cv.check_atoms(int(batch.counts.min()))
        #: terms that learn as the run goes (adaptive biases): updated after every step
        self.adaptive = [t for t in self.terms if hasattr(t, "update")]
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
        if settings.ensemble == "nve":
            init_fn, self.step_fn = nve(force_fn, settings.timestep_fs)
        else:
            init_fn, self.step_fn = langevin(force_fn, settings.timestep_fs, settings.temperature_K,
                                             settings.friction_per_ps, self.noise)
        if _restore is not None:
            self.noise.set_state(_restore["noise"])
            self.state = MDState(batch, _restore["forces"].to(batch.positions.device),
                                 _restore["energy"].to(batch.positions.device), _restore["step"])
        else:
            if batch.velocities is None:
                batch = maxwell_boltzmann(batch, settings.temperature_K, self.noise)
            self.state = init_fn(batch)
        self.reporters: list = []
        if self.run_dir is not None:
            n_traj = batch.n_systems if settings.trajectory_replicas < 0 else settings.trajectory_replicas
            self.reporters = [H5MDReporter(self.run_dir, settings.report_every, list(range(min(n_traj, batch.n_systems)))),
                              LogReporter(self.run_dir / "log.csv", settings.report_every)]
        self.reporters += list(reporters)
        self._last_good = self.state
        self._centres_ok = self._spread(self.state.batch) + settings.max_spread_A
        self.wall_seconds = 0.0

    # --- helpers ---------------------------------------------------------------------
    def time_ps(self, step: int) -> float:
        return step * self.settings.timestep_fs / 1000.0

    @staticmethod
    def _spread(batch: AtomsBatch) -> torch.Tensor:
        """Largest distance of an atom from its system's centroid, per system (Å)."""
        n = batch.counts.to(batch.positions.dtype).unsqueeze(-1)
        centroid = batch.positions.new_zeros(batch.n_systems, 3).index_add(0, batch.system, batch.positions) / n
        d = torch.linalg.vector_norm(batch.positions - centroid[batch.system], dim=-1)
        return d.new_zeros(batch.n_systems).scatter_reduce(0, batch.system, d, "amax", include_self=False)

    def _check(self, state: MDState) -> str | None:
        """Reason the state is unphysical, or None."""
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
        if not b.periodic:
            spread = self._spread(b)
            over = spread > self._centres_ok
            if over.any():
                r = int(torch.nonzero(over)[0, 0])
                return (f"replica {r}: an atom is {float(spread[r]):.1f} Å from its molecule's centre "
                        f"(limit {float(self._centres_ok[r]):.1f} Å): atoms flying apart")
        return None

    # --- checkpoints -----------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.run_dir is None:
            return
        b = self.state.batch
        atomic_save({
            "format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION,
            "model_fingerprint": self.fingerprint, "settings": asdict(self.settings),
            "batch": {k: getattr(b, k) for k in ("positions", "numbers", "system", "cell", "pbc", "masses", "velocities")},
            "forces": self.state.forces, "energy": self.state.energy, "step": self.state.step,
            "noise": self.noise.get_state(), "wall_seconds": self.wall_seconds,
            "terms": [t.get_state() if hasattr(t, "get_state") else {} for t in self.terms],
        }, self.run_dir / CHECKPOINT)

    @classmethod
    def resume(cls, run_dir: str | Path, potential: Potential, progress: bool = False,
               stop_conditions: Sequence[StopCondition] = (), terms: Sequence[EnergyTerm] = (),
               reporters: Sequence = ()) -> "Simulation":
        """Continue the run in ``run_dir`` from its checkpoint; trajectory frames and log rows
        written after the checkpoint are dropped first, so the files match an uninterrupted run."""
        path = Path(run_dir) / CHECKPOINT
        if not path.is_file():
            raise InputError(f"{path}: no MD checkpoint to resume from")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)  # moved to the model's device
        except Exception as exc:
            raise InputError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
        if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("format_version") != CHECKPOINT_VERSION:
            raise InputError(f"{path}: field 'format': not a neuralmd MD checkpoint of version {CHECKPOINT_VERSION}")
        if ckpt["model_fingerprint"] != potential_fingerprint(potential):
            raise InputError(f"{path}: field 'model_fingerprint': the checkpoint was written with another model "
                             f"({ckpt['model_fingerprint']}, given {potential_fingerprint(potential)})")
        sim = cls(potential, AtomsBatch(**ckpt["batch"]), MDSettings(**ckpt["settings"]), terms=terms,
                  run_dir=run_dir, stop_conditions=stop_conditions, reporters=reporters, progress=progress,
                  _restore=ckpt)
        sim.wall_seconds = ckpt["wall_seconds"]
        if len(ckpt["terms"]) != len(sim.terms):
            raise InputError(f"{path}: the run had {len(ckpt['terms'])} extra energy terms, {len(sim.terms)} given")
        for term, state in zip(sim.terms, ckpt["terms"]):
            if hasattr(term, "set_state"):
                term.set_state(state)
        for reporter in sim.reporters:
            getattr(reporter, "truncate", lambda step: None)(ckpt["step"])
        return sim

    # --- loop ------------------------------------------------------------------------
    def run(self, steps: int | None = None) -> MDState:
        """Advance ``steps`` steps (default: up to ``settings.total_steps``); returns the state.

        Raises SimulationUnstable (after writing ``last_good.xyz``) if the run blows up."""
        s = self.settings
        if steps is not None:
            s.total_steps = self.state.step + steps
        if s.total_steps < self.state.step:
            raise InputError(f"steps: the run is already at step {self.state.step} > {s.total_steps}")
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.state.step == 0:
                self._report(self.state)
        columns = [TextColumn("MD"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[status]}")]
        reason = None
        with Progress(*columns, disable=not self.progress) as bar:
            task = bar.add_task("md", total=s.total_steps, completed=self.state.step, status="")
            while self.state.step < s.total_steps and reason is None:
                t0 = time.perf_counter()
                self.state = self.step_fn(self.state)
                self.wall_seconds += time.perf_counter() - t0
                if self.state.step % s.report_every == 0 or self.state.step == s.total_steps:
                    # before the adaptive terms learn from this step: a frame is recorded with the
                    # bias it felt (reweighting needs exactly that one)
                    reason = self._report(self.state)
                    if self.progress:
                        mean_t = float(temperature(self.state.batch).mean())
                        bar.update(task, completed=self.state.step,
                                   status=f"T {mean_t:.0f} K | {self.ns_per_day():.2f} ns/day")
                t0 = time.perf_counter()
                for term in self.adaptive:
                    term.update(self.state)
                self.wall_seconds += time.perf_counter() - t0
                if self.state.step % s.checkpoint_every == 0:
                    self.save_checkpoint()
        self.save_checkpoint()
        self._finish(reason)
        return self.state

    def _report(self, state: MDState) -> str | None:
        problem = self._check(state)
        if problem is not None:
            self._keep_last_good()
            raise SimulationUnstable(
                f"step {state.step}: {problem}; last good frame (step {self._last_good.step}) kept"
                + (f" in {self.run_dir / 'last_good.xyz'}" if self.run_dir is not None else ""))
        self._last_good = state
        for reporter in self.reporters:
            reporter.report(self, state)
        for condition in self.stop_conditions:
            reason = condition(state)
            if reason:
                return reason
        return None

    def _keep_last_good(self) -> None:
        for reporter in self.reporters:
            getattr(reporter, "close", lambda: None)()
        if self.run_dir is not None:
            write_frames(self._last_good.batch.to_atoms(), self.run_dir / "last_good.xyz")

    def ns_per_day(self) -> float:
        """Simulated ns per day of wall time (per replica)."""
        if self.wall_seconds == 0:
            return 0.0
        return self.time_ps(self.state.step) / 1000.0 / self.wall_seconds * 86400.0

    def _finish(self, reason: str | None) -> None:
        for reporter in self.reporters:
            getattr(reporter, "close", lambda: None)()
        if self.run_dir is None:
            return
        frames = self.state.batch.to_atoms()
        write_frames(frames, self.run_dir / "final.xyz")
        temps = temperature(self.state.batch).cpu().numpy()
        atomic_write_json({
            "steps": self.state.step, "time_ps": self.time_ps(self.state.step), "stop_reason": reason or "steps done",
            "replicas": len(frames), "wall_seconds": round(self.wall_seconds, 2), "ns_per_day": self.ns_per_day(),
            "final_temperature_K": np.round(temps, 2).tolist(), "settings": asdict(self.settings),
            "model_fingerprint": self.fingerprint,
        }, self.run_dir / "results.json")
