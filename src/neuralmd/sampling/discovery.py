"""``neuralmd cv discover``: a learned CV for a process nobody named, found by exploring until
the data contain it.

The loop (OpenMM engine; every stage resumable, the directory is the state):

1. ``short/``: unbiased MD at 2 fs (``short_ns``), the starting basin as it is;
2. ``explore/``: multithermal OPES on the force-field energy (T..``tmax_K``, 1 fs), which needs
   no CV of the process, ``explore_ns`` at a time;
3. ``cv-NN/``: Deep-TICA (``restarts`` trainings, the slowest kept, unweighted frames, lag
   ``lag_ps``, ``n_cv`` outputs of which the slowest one crossed back and forth is kept) on both
   runs, with its checks: the TICA eigenvalue (at least ``min_eigenvalue``,
   0.5 by default: at most a decorrelation by half over the lag)
   and the crossings of the training trajectories between the modes of the CV's distribution
   (at least ``min_crossings``; :func:`neuralmd.sampling.cv_training.cv_modes`);
4. if both pass, the CV is copied to ``cv/`` with ``opes.toml``, the bias settings to run OPES
   on it (barrier 40 kJ/mol, kernel widths from the short run as ``sample`` would choose them);
   else the exploration is extended by ``explore_ns`` and the CV retrained, up to
   ``max_explore_ns`` or ``time_limit_min`` of wall time.

``discover.toml`` holds the settings, ``discover.json`` one row per training (exploration ns,
eigenvalue, crossings, passed, wall time) and the outcome. A rerun with ``--resume`` continues
where the directory stands (a killed training is redone from its seed; a killed exploration
continues from its checkpoint); the limits may be raised on resume.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import load_config, save_config
from ..errors import InputError
from ..io_utils import atomic_write_json
from ..md.integrators import check_temperature
from ..md.openmm_engine import OpenMMSettings
from ..md.start import checkpoint_step
from ..rundir import CHECKPOINT, refuse_existing, require_existing
from .bias_factory import BiasSettings
from .cv_training import MIN_CV_CROSSINGS, train_cv_from_runs

SETTINGS, HISTORY, CV_DIR, OPES_SETTINGS = "discover.toml", "discover.json", "cv", "opes.toml"
#: the least TICA eigenvalue of a discovered CV: on alanine dipeptide's exploration data, CVs that
#: followed phi had 0.6-0.93 at a 5 ps lag, CVs of fast modes (many crossings, no phi) 0.13-0.21
DISCOVERED_EIGENVALUE = 0.5
#: the barrier of the OPES run the discovered CV is written for (kJ/mol)
OPES_BARRIER_KJMOL = 40.0


@dataclass
class DiscoverySettings:
    """The discovery loop (stored as discover.toml). Times in ns and ps, temperatures in K."""

    pdb: str = ""
    forcefield: list[str] = field(default_factory=lambda: ["amber99sbildn.xml"])
    platform: str = "Reference"
    temperature_K: float = 300.0
    tmax_K: float = 1000.0
    short_ns: float = 0.5
    explore_ns: float = 1.0
    max_explore_ns: float = 16.0
    descriptors: str = "heavy-atom-distances"
    lag_ps: float = 5.0
    n_cv: int = 2  # Deep-TICA outputs trained; the slowest one crossed back and forth is kept
    restarts: int = 3
    epochs: int = 100
    min_eigenvalue: float = DISCOVERED_EIGENVALUE
    min_crossings: int = MIN_CV_CROSSINGS
    time_limit_min: float = 0.0  # 0: none
    seed: int = 0

    def validate(self) -> None:
        if not Path(self.pdb).is_file():
            raise InputError(f"pdb: {self.pdb}: file not found")
        for name in ("short_ns", "explore_ns", "max_explore_ns", "lag_ps"):
            if not 0 < getattr(self, name) < float("inf"):
                raise InputError(f"{name}: {getattr(self, name)}; expected > 0")
        if self.max_explore_ns < self.explore_ns:
            raise InputError(f"max_explore_ns: {self.max_explore_ns}; expected >= explore_ns ({self.explore_ns})")
        check_temperature(self.temperature_K)
        if not self.temperature_K < self.tmax_K < float("inf"):
            raise InputError(f"tmax_K: {self.tmax_K}; expected above temperature_K ({self.temperature_K})")
        if min(self.restarts, self.epochs, self.min_crossings, self.n_cv) < 1:
            raise InputError(f"restarts {self.restarts}, epochs {self.epochs}, min_crossings {self.min_crossings}, "
                             f"n_cv {self.n_cv}: expected each >= 1")
        if not -1 <= self.min_eigenvalue < 1 or not 0 <= self.time_limit_min < float("inf"):
            raise InputError(f"min_eigenvalue {self.min_eigenvalue}, time_limit_min {self.time_limit_min}: expected "
                             f"-1 <= min_eigenvalue < 1 (an autocorrelation) and time_limit_min >= 0")

    def engine(self, timestep_fs: float, ns: float, seed: int) -> OpenMMSettings:
        """Settings of one of the loop's OpenMM runs (a frame every ps)."""
        return OpenMMSettings(pdb=self.pdb, forcefield=list(self.forcefield), platform=self.platform,
                              temperature_K=self.temperature_K, timestep_fs=timestep_fs, seed=seed,
                              report_every=int(round(1000 / timestep_fs)), checkpoint_every=int(round(1e5 / timestep_fs)),
                              total_steps=int(round(ns * 1e6 / timestep_fs)))


class Discovery:
    """The loop over a directory (see the module docstring); :meth:`run` returns the history."""

    def __init__(self, settings: DiscoverySettings, out: str | Path, progress: bool = False) -> None:
        self.settings, self.out, self.progress = settings, Path(out), progress
        self.deadline = (time.monotonic() + 60 * settings.time_limit_min) if settings.time_limit_min else None
        path = self.out / HISTORY
        self.history: dict = {"iterations": [], "found": False, "stop_reason": ""}
        if path.exists():
            try:
                self.history = json.loads(path.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise InputError(f"{path}: not readable as the loop's history ({exc}); it is written atomically, "
                                 f"so it was edited or damaged by hand") from None

    @classmethod
    def start(cls, settings: DiscoverySettings, out: str | Path, progress: bool = False) -> "Discovery":
        settings.pdb = str(Path(settings.pdb).resolve())
        settings.validate()
        out = refuse_existing(out, "a CV discovery", marker=SETTINGS)
        out.mkdir(parents=True, exist_ok=True)
        save_config(settings, out / SETTINGS)
        return cls(settings, out, progress)

    @classmethod
    def resume(cls, out: str | Path, progress: bool = False, **limits) -> "Discovery":
        """The loop in ``out`` with its stored settings; ``limits`` (max_explore_ns,
        time_limit_min) given are raised or lowered and stored."""
        out = require_existing(out, "a CV discovery", marker=SETTINGS)
        settings = load_config(DiscoverySettings, out / SETTINGS)
        for key, value in limits.items():
            if value is not None:
                setattr(settings, key, value)
        settings.validate()
        save_config(settings, out / SETTINGS)
        return cls(settings, out, progress)

    # -- the stages ----------------------------------------------------------------------
    def run(self) -> dict:
        s = self.settings
        if self.history["found"]:
            return self.history
        self.history["stop_reason"] = ""
        self._md("short", BiasSettings(cv="", bias="none"), 2.0, s.short_ns, s.seed)
        explored = len(self.history["iterations"]) and self.history["iterations"][-1]["explore_ns"]
        while not self._out_of_time():
            target = explored + s.explore_ns if explored else s.explore_ns
            if target > s.max_explore_ns + 1e-9:
                self.history["stop_reason"] = (f"explored {explored:g} ns (max_explore_ns {s.max_explore_ns:g}) without a "
                                               f"CV that passes")
                break
            explore = BiasSettings(cv="energy", bias="opes-multithermal", tmax_K=s.tmax_K)
            if not self._md("explore", explore, 1.0, target, s.seed + 1):  # --resume continues it
                self.history["stop_reason"] = f"time limit of {s.time_limit_min:g} min, exploring"
                break
            row = self._train(len(self.history["iterations"]), target)
            self.history["iterations"].append(row)
            explored = target
            if row["passed"]:
                self._accept(row)
                break
            self._save()
        else:
            self.history["stop_reason"] = f"time limit of {s.time_limit_min:g} min"
        self._save()
        return self.history

    def _out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline

    def _md(self, name: str, bias: BiasSettings, timestep_fs: float, ns: float, seed: int) -> bool:
        """Run (or continue, or extend) the run ``name`` to ``ns``; False if the time limit stopped it."""
        from .runs import resume_run, start_openmm

        run_dir = self.out / name
        settings = self.settings.engine(timestep_fs, ns, seed)
        if run_dir.exists() and not (run_dir / CHECKPOINT).exists():
            shutil.rmtree(run_dir)  # killed before its first checkpoint: start it again, same seed
        if not run_dir.exists():
            run = start_openmm(settings, bias, run_dir, progress=self.progress)
        elif checkpoint_step(run_dir) >= settings.total_steps:
            return True
        else:
            run = resume_run(run_dir, progress=self.progress)
            run.settings.total_steps = settings.total_steps
        if self.deadline is not None:
            run.stop_conditions.append(lambda state: "time limit" if self._out_of_time() else None)
        run.run()
        return run.step >= settings.total_steps

    def _train(self, iteration: int, explore_ns: float) -> dict:
        s = self.settings
        folder = self.out / f"cv-{iteration:02d}"
        shutil.rmtree(folder, ignore_errors=True)  # a training killed halfway is redone from its seed
        t0 = time.perf_counter()
        summary = train_cv_from_runs([self.out / "short", self.out / "explore"], folder, method="deep-tica",
                                     descriptors=s.descriptors, lag_ps=s.lag_ps, n_cv=s.n_cv, epochs=s.epochs,
                                     seed=s.seed, reweight=False, restarts=s.restarts, progress=self.progress,
                                     force=True, keep_crossed=s.min_crossings)
        eigenvalue = float(summary["tica_eigenvalues"][0])
        crossings = int(summary["modes"]["crossings"])
        return {"iteration": iteration, "explore_ns": explore_ns, "eigenvalue": eigenvalue, "crossings": crossings,
                "output": summary["kept_output"],
                "passed": eigenvalue >= s.min_eigenvalue and crossings >= s.min_crossings, "cv": str(folder),
                "steepness_per_A": summary["steepness_per_A"], "train_wall_s": round(time.perf_counter() - t0, 1)}

    def _accept(self, row: dict) -> None:
        """cv/ (a copy of the passing training) and opes.toml (kernel widths from the short run,
        as ``sample`` chooses them for 2 fs steps)."""
        from .kernel_widths import run_sigma

        partial = self.out / (CV_DIR + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(row["cv"], partial)
        sigma, _ = run_sigma(str(partial), self.out / "short", self.settings.temperature_K, 2.0)
        partial.rename(self.out / CV_DIR)
        save_config(BiasSettings(cv=str((self.out / CV_DIR).resolve()), bias="opes", barrier_kjmol=OPES_BARRIER_KJMOL,
                                 sigma=sigma), self.out / OPES_SETTINGS)
        self.history.update({"found": True, "cv": str(self.out / CV_DIR), "sigma": sigma,
                             "stop_reason": f"CV passed after {row['explore_ns']:g} ns of exploration"})

    def _save(self) -> None:
        atomic_write_json(self.history, self.out / HISTORY)
