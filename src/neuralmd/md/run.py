"""The run loop every MD engine shares (the native engine and OpenMM are two implementations).

:class:`MDRun` owns the clock (``time_ps``, ``ns_per_day``), the schedule of events (reports,
adaptive-term updates, checkpoints: the engine integrates straight to the next one, as OpenMM's
``describeNextReport``), the stability check and the last good frame, atomic checkpoints and
their cadence, the reporters (the progress bar is one), stop conditions and ``results.json``.
An engine implements the few methods that touch its integrator: :meth:`MDRun._advance`,
:meth:`MDRun.current_state`, :meth:`MDRun._checkpoint_payload` and its restore, and, if it has
more to check than finite numbers, :meth:`MDRun._problem`.

Adding an ensemble (an NPT integrator) or an engine (ML/MM) means writing one such class.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..data.io import write_frames
from ..errors import InputError, NeuralMDError
from ..io_utils import atomic_save, atomic_write_json
from ..rundir import CHECKPOINT, FINAL, LAST_GOOD, RESULTS, RunLock, read_checkpoint
from .integrators import MDState
from .protocols import AdaptiveTerm, Reporter
from .reporters import ProgressReporter

#: A stop condition: state -> reason to stop, or None.
StopCondition = Callable[[MDState], "str | None"]


class SimulationUnstable(NeuralMDError):
    """The run blew up (NaN, huge force, atoms flying apart); the last good frame was kept."""


@dataclass
class RunSettings:
    """What every engine's run settings hold (stored in the run's md.toml). Units in the names."""

    #: which engine made the run: "native" or "openmm"
    engine: str = "native"
    timestep_fs: float = 0.5
    friction_per_ps: float = 1.0
    seed: int = 0
    #: steps between trajectory frames, log rows and stability checks
    report_every: int = 100
    checkpoint_every: int = 1000
    #: the step the run goes to (``run(steps)`` sets it to the current step + steps)
    total_steps: int = 10_000

    def validate(self) -> None:
        """InputError naming the first option out of range."""
        if not 0 < self.timestep_fs < float("inf"):
            raise InputError(f"timestep_fs: {self.timestep_fs}; expected > 0 fs")
        if not self.friction_per_ps >= 0:
            raise InputError(f"friction_per_ps: {self.friction_per_ps}; expected >= 0 (1/ps)")
        if self.report_every < 1 or self.checkpoint_every < 1:
            raise InputError(f"report_every {self.report_every}, checkpoint_every {self.checkpoint_every}: "
                             f"expected >= 1 step")
        if self.total_steps < 0:
            raise InputError(f"total_steps: {self.total_steps}; expected >= 0")


class MDRun(ABC):
    """The shared run loop. Subclasses set ``settings``, ``run_dir``, ``reporters``,
    ``adaptive`` (terms with ``pace`` and ``update``), ``stop_conditions`` and ``progress`` in
    their constructor and implement the abstract methods.

    Attributes:
        wall_seconds: wall time spent integrating and updating (not reporting), s.
    """

    #: the ``format`` field of this engine's checkpoints
    checkpoint_format: str = ""
    #: the label of its progress bar
    label: str = "MD"

    settings: RunSettings
    run_dir: Path | None
    reporters: list[Reporter]
    adaptive: list[AdaptiveTerm]
    stop_conditions: list[StopCondition]
    progress: bool
    #: the lock on ``run_dir``, taken when the run's first file is written (md.start) or when
    #: :meth:`run` starts, released when :meth:`run` returns
    lock: RunLock | None = None
    wall_seconds: float = 0.0
    _last_good: MDState | None = None

    # --- what an engine implements ------------------------------------------------------
    @property
    @abstractmethod
    def step(self) -> int:
        """The current step."""

    @abstractmethod
    def _advance(self, steps: int) -> None:
        """Integrate ``steps`` steps."""

    @abstractmethod
    def current_state(self) -> MDState:
        """The state now (positions Å, velocities in ASE units, energies eV)."""

    @abstractmethod
    def _checkpoint_payload(self) -> dict[str, Any]:
        """Everything the engine needs to continue bit for bit (``format`` is added here)."""

    def _problem(self, state: MDState) -> str | None:
        """Why ``state`` is unphysical, or None (default: non-finite positions or energies)."""
        if torch.isfinite(state.batch.positions).all() and torch.isfinite(state.energy).all():
            return None
        return "non-finite positions or energy"

    def _status(self, state: MDState) -> str:
        """The progress bar's status text."""
        return f"{self.ns_per_day():.2f} ns/day"

    def barostat_view(self, state: MDState) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Pressure (bar), volume (Å³) and density (g/cm³) per replica of a run at constant
        pressure (for the log and the progress bar), None at constant volume."""
        return None

    def _results(self) -> dict[str, Any]:
        """Engine-specific entries of results.json."""
        return {}

    # --- clock ----------------------------------------------------------------------------
    def time_ps(self, step: int) -> float:
        """Simulated time (ps) at ``step``."""
        return step * self.settings.timestep_fs / 1000.0

    def ns_per_day(self) -> float:
        """Simulated ns per day of wall time (per replica)."""
        if self.wall_seconds == 0:
            return 0.0
        return self.time_ps(self.step) / 1000.0 / self.wall_seconds * 86400.0

    # --- checkpoints ----------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write the checkpoint atomically (nothing without a run directory)."""
        if self.run_dir is None:
            return
        atomic_save({"format": self.checkpoint_format, **self._checkpoint_payload()}, self.run_dir / CHECKPOINT)

    @classmethod
    def read_checkpoint(cls, run_dir: str | Path) -> dict[str, Any]:
        """The checkpoint in ``run_dir`` (CPU tensors), checked to be this engine's; InputError
        naming the file otherwise."""
        return read_checkpoint(run_dir, cls.checkpoint_format, cls.label)

    def _resumed_at(self, ckpt: dict[str, Any]) -> None:
        """Common part of a restore: the wall clock, and reporters cut back to the checkpoint's
        step, so the files match those of an uninterrupted run."""
        self.wall_seconds = float(ckpt["wall_seconds"])
        for reporter in self.reporters:
            reporter.truncate(self.step)

    # --- loop -----------------------------------------------------------------------------
    def _next_event(self) -> int:
        """Steps until the next report, update, checkpoint or the end."""
        s, step = self.settings, self.step
        every = [s.report_every, s.checkpoint_every, *(r.interval for r in self.reporters),
                 *(t.pace for t in self.adaptive if t.pace > 0)]
        return min(min(e - step % e for e in every), s.total_steps - step)

    def run(self, steps: int | None = None) -> MDState:
        """Advance ``steps`` steps (default: up to ``settings.total_steps``); returns the state.

        Raises SimulationUnstable (after writing ``last_good.xyz``) if the run blows up."""
        s = self.settings
        if steps is not None:
            s.total_steps = self.step + steps
        if s.total_steps < self.step:
            raise InputError(f"steps: the run is already at step {self.step} > {s.total_steps}")
        if self.run_dir is None:
            return self._loop()
        self.lock = (self.lock or RunLock(self.run_dir)).acquire()
        try:
            return self._loop()
        finally:
            self.lock.release()

    def _loop(self) -> MDState:
        s = self.settings
        bar = ProgressReporter(self.label, s.total_steps, self.step, s.report_every, self._status) if self.progress else None
        reporters = self.reporters + ([bar] if bar is not None else [])
        reason = None
        try:
            if self.run_dir is not None and self.step == 0:
                reason = self._report(self.current_state(), reporters)
            while self.step < s.total_steps and reason is None:
                t0 = time.perf_counter()
                self._advance(self._next_event())
                step = self.step
                due = [r for r in reporters if step % r.interval == 0]
                updates = [t for t in self.adaptive if t.pace > 0 and step % t.pace == 0]
                checked = step % s.report_every == 0 or step == s.total_steps
                state = self.current_state() if (due or updates or checked) else None
                self.wall_seconds += time.perf_counter() - t0
                if state is not None:
                    # reported before the adaptive terms learn from this step: a frame is recorded
                    # with the bias it felt (reweighting needs exactly that one); checked first, so
                    # a NaN never reaches a bias or the files
                    reason = self._report(state, due, stop=checked)
                t0 = time.perf_counter()
                for term in updates:
                    term.update(state)
                self.wall_seconds += time.perf_counter() - t0
                if step % s.checkpoint_every == 0:
                    self.save_checkpoint()
        finally:
            if bar is not None:
                bar.close()
        self.save_checkpoint()
        self._finish(reason)
        return self.current_state()

    def _report(self, state: MDState, reporters: Sequence[Reporter], stop: bool = True) -> str | None:
        """Check ``state`` (raise SimulationUnstable if it is bad), hand it to ``reporters`` and,
        with ``stop``, ask the stop conditions; returns a reason to stop or None."""
        problem = self._problem(state)
        if problem is not None:
            self._keep_last_good()
            good = self._last_good
            kept = (f"; last good frame (step {good.step}) kept"
                    + (f" in {self.run_dir / LAST_GOOD}" if self.run_dir is not None else "")) if good else ""
            raise SimulationUnstable(f"step {state.step}: {problem}{kept}")
        self._last_good = state
        for reporter in reporters:
            reporter.report(self, state)
        if stop:
            for condition in self.stop_conditions:
                reason = condition(state)
                if reason:
                    return reason
        return None

    def _keep_last_good(self) -> None:
        for reporter in self.reporters:
            reporter.close()
        if self.run_dir is not None and self._last_good is not None:
            write_frames(self._last_good.batch.to_atoms(), self.run_dir / LAST_GOOD)

    def _finish(self, reason: str | None) -> None:
        for reporter in self.reporters:
            reporter.close()
        if self.run_dir is None:
            return
        state = self.current_state()
        write_frames(state.batch.to_atoms(), self.run_dir / FINAL)
        atomic_write_json({
            "steps": self.step, "time_ps": self.time_ps(self.step), "stop_reason": reason or "steps done",
            "engine": self.settings.engine, "wall_seconds": round(self.wall_seconds, 2),
            "ns_per_day": self.ns_per_day(), **self._results(), "settings": asdict(self.settings),
        }, self.run_dir / RESULTS)
