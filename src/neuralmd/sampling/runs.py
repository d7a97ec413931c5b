"""Sampling runs as the command line makes them: a CV specification and bias settings, an engine
(OpenMM with a PDB and force field, or the native engine with a neural potential), a run
directory, and resume. Also reading a finished run back as weighted samples (for ``fes`` and
``cv train``).

Run directory: ``md.toml`` (engine settings), ``sample.toml`` (:class:`BiasSettings`),
``traj_XXX.h5md`` (+ ``.pdb``), ``log.csv``, ``colvar.csv``, ``checkpoint.pt``, ``results.json``,
``topology.pdb`` (OpenMM runs).
"""

from __future__ import annotations

import dataclasses
import shutil
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from ..config import load_config, save_config
from ..errors import InputError
from ..units import KJMOL
from .biases import OPES, Bias, OPESMultithermal, WellTemperedMetaD
from .colvar import ColvarReporter, read_colvar
from .cvs import CV, replica_positions
from .energy_cv import energy_cvs
from .fes import kT_kjmol, metad_ct, weights_from_bias
from .spec import parse_cv

BIASES = ("none", "opes", "opes-explore", "metad", "opes-multithermal")


@dataclass
class BiasSettings:
    """What to bias and how (stored as sample.toml). Energies in kJ/mol, as PLUMED."""

    cv: str = ""
    bias: str = "opes"
    barrier_kjmol: float = 40.0
    biasfactor: float = 0.0  # 0: OPES's βΔE, or 10 for metadynamics
    sigma: list[float] = field(default_factory=list)  # empty: std of the CV in a short unbiased probe,
    # widened where the bias would be too stiff for the timestep (integrable_sigma)
    pace: int = 500
    height_kjmol: float = 1.2
    grid: bool = True
    grid_ranges: list[list[float]] = field(default_factory=list)
    probe_steps: int = 2000
    tmax_K: float = 0.0  # opes-multithermal: highest temperature (0: twice the run's)

    def validate(self) -> None:
        if self.bias not in BIASES:
            raise InputError(f"bias: {self.bias!r}; expected one of {', '.join(BIASES)}")
        if self.bias != "none" and not self.cv:
            raise InputError("bias: a biased run needs --cv")
        if self.bias != "none" and not self.barrier_kjmol > 0:
            raise InputError(f"barrier_kjmol: {self.barrier_kjmol}; expected > 0")
        if self.biasfactor and not self.biasfactor > 1:
            raise InputError(f"biasfactor: {self.biasfactor}; expected > 1 (or 0 for the default)")
        if self.sigma and min(self.sigma) <= 0:
            raise InputError(f"sigma: {self.sigma}; expected positive widths")
        if self.pace < 1 or self.probe_steps < 100:
            raise InputError("pace must be >= 1 and probe_steps >= 100")
        if self.tmax_K < 0:
            raise InputError(f"tmax_K: {self.tmax_K}; expected > 0 (or 0 for twice the temperature)")


def estimate_sigma(values: np.ndarray, periods: list[float]) -> list[float]:
    """Kernel widths from CV fluctuations (OPES's advice: the standard deviation in a basin);
    circular standard deviation for periodic CVs."""
    out = []
    for k, p in enumerate(periods):
        x = values[:, k]
        if p > 0:
            angle = x * 2 * np.pi / p
            r = np.hypot(np.cos(angle).mean(), np.sin(angle).mean())
            std = np.sqrt(-2 * np.log(max(r, 1e-12))) * p / (2 * np.pi)
        else:
            std = x.std()
        out.append(float(max(std, 1e-6)))
    return out


#: the largest ω·Δt of the bias (see :func:`bias_omega_per_fs`, on frames of the starting basin)
#: for which kernel widths are kept. Alanine dipeptide, OPES on Deep-TICA CVs at 2 fs: runs at
#: 0.42-0.50 reweighted to ΔF 2.8-12.5 kJ/mol off (the integrator's error, not the CV: the same CV
#: at 1 fs, or with 3x wider kernels, gave ΔF within 0.7 kJ/mol), and learned CVs steepen 1.6-2.5x
#: between the basins, where a probe of the starting basin does not look.
MAX_BIAS_OMEGA_DT = 0.15


def bias_omega_per_fs(cv: CV, positions: np.ndarray, masses: np.ndarray, sigma: list[float],
                      temperature_K: float) -> float:
    """Angular frequency (1/fs) of the stiffest motion a kernel bias of widths ``sigma`` along
    ``cv`` imposes on frames ``positions`` (n, N, 3) Å, 99th percentile over the frames:
    ω² = k_BT Σ_k Σ_i |∂s_k/∂x_i|² / (σ_k² m_i), since an OPES (or well-tempered) bias curves
    by about k_BT/σ² along the CV where its kernel estimate is resolved. ``masses`` in amu."""
    x = torch.as_tensor(np.asarray(positions), dtype=torch.float64).requires_grad_(True)
    inv_mass = torch.as_tensor(np.where(masses > 0, 1.0 / np.maximum(masses, 1e-12), 0.0), dtype=torch.float64)
    s = cv(x)
    total = torch.zeros(len(x), dtype=torch.float64)
    for k in range(s.shape[1]):
        (grad,) = torch.autograd.grad(s[:, k].sum(), x, retain_graph=k + 1 < s.shape[1])
        total += (grad.pow(2).sum(-1) * inv_mass).sum(-1) / sigma[k] ** 2
    omega2 = kT_kjmol(temperature_K) * float(np.percentile(total.detach().numpy(), 99)) * 1e26  # kJ/mol/(Å² amu) -> 1/s²
    return float(np.sqrt(omega2)) * 1e-15


def integrable_sigma(cv: CV, positions: np.ndarray, masses: np.ndarray, sigma: list[float], temperature_K: float,
                     timestep_fs: float) -> list[float]:
    """``sigma`` widened by one common factor until the bias's ω·Δt on ``positions`` is at most
    :data:`MAX_BIAS_OMEGA_DT` (unchanged if it already is); warns when it widens."""
    omega_dt = bias_omega_per_fs(cv, positions, masses, sigma, temperature_K) * timestep_fs
    if omega_dt <= MAX_BIAS_OMEGA_DT:
        return list(sigma)
    wider = [float(v * omega_dt / MAX_BIAS_OMEGA_DT) for v in sigma]
    warnings.warn(f"kernel widths {[round(v, 4) for v in sigma]} -> {[round(v, 4) for v in wider]}: with the probe's "
                  f"widths the bias along {cv.names} would curve faster than a {timestep_fs:g} fs step integrates "
                  f"(ω·Δt = {omega_dt:.2f} > {MAX_BIAS_OMEGA_DT}); give --sigma to override", stacklevel=2)
    return wider


def probe_sigma(cv: CV, values: np.ndarray, positions: np.ndarray, masses: np.ndarray, temperature_K: float,
                timestep_fs: float) -> list[float]:
    """The kernel widths ``sample`` chooses from an unbiased probe (CV ``values`` (n, d) at
    ``positions`` (n, N, 3) Å): the CV's fluctuation (:func:`estimate_sigma`), widened by
    :func:`integrable_sigma` where that bias would be too stiff for the timestep."""
    return integrable_sigma(cv, positions, masses, estimate_sigma(values, cv.periods), temperature_K, timestep_fs)


def check_bias_cv(settings: BiasSettings, cv: CV) -> None:
    """InputError unless the bias kind fits the CV: the multithermal bias takes the energy alone,
    kernel biases never take the energy (where their estimate falls off, their slope reverses the
    force field's forces)."""
    on_energy = bool(energy_cvs(cv))
    if settings.bias == "opes-multithermal" and not (on_energy and cv.dim == 1):
        raise InputError(f"bias opes-multithermal: biases the potential energy; use --cv energy (got {cv.names})")
    if on_energy and settings.bias not in ("none", "opes-multithermal"):
        raise InputError("CV 'energy': kernel biases on the energy can reverse the force field's forces where the "
                         "estimate falls off; use --bias opes-multithermal")


def make_bias(settings: BiasSettings, cv: CV, temperature_K: float, sigma: list[float]) -> Bias | None:
    """The bias named by ``settings`` over ``cv``."""
    if settings.bias == "none":
        return None
    check_bias_cv(settings, cv)
    if settings.bias == "opes-multithermal":
        return OPESMultithermal(cv, temperature_K, settings.tmax_K or 2 * temperature_K, sigma[0], settings.pace)
    if len(sigma) != cv.dim:
        raise InputError(f"sigma: {len(sigma)} widths for the {cv.dim} CV outputs {cv.names}")
    if settings.bias == "metad":
        return WellTemperedMetaD(cv, sigma, settings.height_kjmol, settings.pace, settings.biasfactor or 10.0,
                                 temperature_K)
    return OPES(cv, sigma, settings.barrier_kjmol, settings.pace, temperature_K, settings.biasfactor or None,
                mode="explore" if settings.bias == "opes-explore" else "metad")


def grid_ranges(settings: BiasSettings, cv: CV, probe: np.ndarray | None = None,
                temperature_K: float = 300.0) -> list[tuple[float, float] | None]:
    """Grid ranges for the non-periodic CV outputs: given ones, else a learned CV's training
    range widened by half its width on each side, else from ``probe`` (CV values of a short
    unbiased run, mean m, standard deviation σ): m ± (sqrt(2βB) + 3)σ, where a harmonic free
    energy along the CV has risen by the barrier B, plus a margin; for the multithermal bias,
    from m - 6σ to the mean energy at T_max (heat capacity σ²/k_BT²) + 6σ T_max/T."""
    if settings.grid_ranges:
        return [tuple(r) for r in settings.grid_ranges]
    out: list[tuple[float, float] | None] = []
    parts = list(cv.cvs) if hasattr(cv, "cvs") else [cv]
    column = 0
    for part in parts:
        meta = getattr(part, "meta", {})
        for k, p in enumerate(part.periods):
            if p > 0:
                out.append(None)
            elif "cv_range" in meta:
                lo, hi = meta["cv_range"][k]
                out.append((lo - 0.5 * (hi - lo), hi + 0.5 * (hi - lo)))
            elif probe is not None:
                x = probe[:, column]
                mean, std, kT = x.mean(), max(x.std(), 1e-6), kT_kjmol(temperature_K)
                if settings.bias == "opes-multithermal":
                    ratio = (settings.tmax_K or 2 * temperature_K) / temperature_K
                    out.append((float(mean - 6 * std), float(mean + std**2 / kT * (ratio - 1) + 6 * std * ratio)))
                else:
                    half = (np.sqrt(2 * settings.barrier_kjmol / kT) + 3) * std
                    out.append((float(mean - half), float(mean + half)))
            else:
                raise InputError(f"CV {part.names[k]!r} is not periodic: give its grid range (--grid-range LOW:HIGH) "
                                 f"or use --no-grid")
            column += 1
    return out


def _prepare(run_dir: Path, engine_settings, bias_settings: BiasSettings) -> None:
    """Check everything that can be checked before anything is written."""
    if (run_dir / "checkpoint.pt").exists():
        raise InputError(f"{run_dir}: already holds a run; use --resume {run_dir} or another -o")
    bias_settings.validate()
    engine_settings.validate()


def start_openmm(settings, bias_settings: BiasSettings, run_dir: str | Path, progress: bool = False):
    """A new OpenMM run (``settings``: :class:`~.openmm_engine.OpenMMSettings`), sigma probed
    if not given; returns the :class:`~.openmm_engine.OpenMMRun`, ready to ``run()``."""
    from .openmm_engine import OpenMMRun

    run_dir = Path(run_dir)
    settings.pdb = str(Path(settings.pdb).resolve())
    _prepare(run_dir, settings, bias_settings)
    numbers = _pdb_numbers(settings.pdb)
    cv = parse_cv(bias_settings.cv, numbers, settings.pdb) if bias_settings.cv else None
    if cv is not None:
        check_bias_cv(bias_settings, cv)
    bias, ranges = None, None
    run_dir.mkdir(parents=True, exist_ok=True)
    if cv is not None and bias_settings.bias != "none":
        values = None
        needs_range = bias_settings.grid and not bias_settings.grid_ranges and min(cv.periods) == 0
        if not bias_settings.sigma or needs_range:
            probe = OpenMMRun(settings, run_dir / "probe")
            values, positions = probe.equilibrate(bias_settings.probe_steps, cv)
        if not bias_settings.sigma and bias_settings.bias == "opes-multithermal":  # not a kernel bias
            bias_settings.sigma = estimate_sigma(values, cv.periods)
        elif not bias_settings.sigma:
            bias_settings.sigma = probe_sigma(cv, values, positions, probe.template.masses.numpy(),
                                              settings.temperature_K, settings.timestep_fs)
        bias = make_bias(bias_settings, cv, settings.temperature_K, bias_settings.sigma)
        if isinstance(bias, OPESMultithermal) and settings.timestep_fs > 1.0:
            warnings.warn(f"opes-multithermal at {settings.timestep_fs} fs: the energy-dependent force scale "
                          f"heats bond and angle vibrations above 1 fs; use --timestep-fs 1", stacklevel=2)
        if bias_settings.grid:
            ranges = grid_ranges(bias_settings, cv, values, settings.temperature_K)
            if all(r is not None for r in ranges):  # stored, so that a resumed run has the same grid
                bias_settings.grid_ranges = [list(r) for r in ranges]
    run = OpenMMRun(settings, run_dir, bias, cv, grid=bias_settings.grid, grid_ranges=ranges, progress=progress)
    shutil.copyfile(settings.pdb, run_dir / "topology.pdb")
    save_config(settings, run_dir / "md.toml")
    save_config(bias_settings, run_dir / "sample.toml")
    return run


def _pdb_numbers(pdb: str | Path) -> np.ndarray:
    from openmm import app

    return np.array([a.element.atomic_number for a in app.PDBFile(str(pdb)).topology.atoms()])


def native_bias(potential, batch, md_settings, bias_settings: BiasSettings, cv: CV) -> Bias | None:
    """The bias of ``bias_settings`` on ``cv`` for a native-engine run of ``batch``; kernel
    widths not given are estimated from a short unbiased probe run (and stored in
    ``bias_settings.sigma``)."""
    from ..md.simulation import Simulation

    if bias_settings.bias == "none":
        return None
    if not bias_settings.sigma:
        probe = Simulation(potential, batch, dataclasses.replace(md_settings))  # run() sets total_steps
        values, positions = [], []
        for _ in range(bias_settings.probe_steps // 10):
            pos = replica_positions(probe.run(10).batch).detach()
            positions.append(pos.numpy().copy())
            with torch.no_grad():
                values.append(cv(pos).numpy())
        bias_settings.sigma = probe_sigma(cv, np.concatenate(values), np.concatenate(positions),
                                          batch.masses[batch.system == 0].numpy(), md_settings.temperature_K[0],
                                          md_settings.timestep_fs)
    return make_bias(bias_settings, cv, md_settings.temperature_K[0], bias_settings.sigma)


def start_native(potential, frames, md_settings, bias_settings: BiasSettings, run_dir: str | Path,
                 progress: bool = False):
    """A new native-engine run of ``frames`` (one per replica; all replicas are walkers of one
    bias); returns the :class:`~neuralmd.md.simulation.Simulation`, ready to ``run()``."""
    from ..md.simulation import Simulation
    from ..state import AtomsBatch

    run_dir = Path(run_dir)
    _prepare(run_dir, md_settings, bias_settings)
    batch = AtomsBatch.from_atoms(frames)
    cv = parse_cv(bias_settings.cv, frames[0].numbers) if bias_settings.cv else None
    if energy_cvs(cv):
        raise InputError("CV 'energy': the force-field energy is a CV of OpenMM runs (--engine openmm)")
    run_dir.mkdir(parents=True, exist_ok=True)
    bias = native_bias(potential, batch, md_settings, bias_settings, cv) if cv is not None else None
    reporters = [ColvarReporter(run_dir / "colvar.csv", cv, bias, md_settings.report_every)] if cv is not None else []
    sim = Simulation(potential, batch, md_settings, terms=[bias] if bias is not None else [], run_dir=run_dir,
                     reporters=reporters, progress=progress)
    save_config(md_settings, run_dir / "md.toml")
    save_config(bias_settings, run_dir / "sample.toml")
    return sim


def engine_settings(run_dir: str | Path) -> dict:
    """The run's md.toml as a plain dict (either engine's settings)."""
    path = Path(run_dir) / "md.toml"
    if not path.is_file():
        raise InputError(f"{path}: not found; is {run_dir} a run directory?")
    return tomllib.loads(path.read_text())


def engine_of(run_dir: str | Path) -> str:
    """'openmm' or 'native', from the run's md.toml."""
    return engine_settings(run_dir).get("engine", "native")


def resume_run(run_dir: str | Path, potential=None, progress: bool = False):
    """The run in ``run_dir`` rebuilt from its settings and checkpoint, ready to ``run()``."""
    from ..md.simulation import MDSettings, Simulation
    from .openmm_engine import OpenMMRun, OpenMMSettings

    run_dir = Path(run_dir)
    bias_settings = (load_config(BiasSettings, run_dir / "sample.toml") if (run_dir / "sample.toml").exists()
                     else BiasSettings(bias="none"))
    if engine_of(run_dir) == "openmm":
        settings = load_config(OpenMMSettings, run_dir / "md.toml")
        settings.pdb = str(run_dir / "topology.pdb")
        numbers = _pdb_numbers(settings.pdb)
        cv = parse_cv(bias_settings.cv, numbers, settings.pdb) if bias_settings.cv else None
        bias = make_bias(bias_settings, cv, settings.temperature_K, bias_settings.sigma) if cv is not None else None
        ranges = grid_ranges(bias_settings, cv) if bias is not None and bias_settings.grid else None
        run = OpenMMRun(settings, run_dir, bias, cv, grid=bias_settings.grid, grid_ranges=ranges, progress=progress)
        run.restore()
        return run
    from ..models.neural import load_potential

    settings = load_config(MDSettings, run_dir / "md.toml")
    potential = potential or load_potential(settings.model_path, dtype=torch.float64)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True) if (run_dir / "checkpoint.pt").exists() else None
    if ckpt is None:
        raise InputError(f"{run_dir / 'checkpoint.pt'}: no checkpoint to resume from")
    numbers = ckpt["batch"]["numbers"][ckpt["batch"]["system"] == 0].numpy()
    cv = parse_cv(bias_settings.cv, numbers) if bias_settings.cv else None
    bias = make_bias(bias_settings, cv, settings.temperature_K[0], bias_settings.sigma) if cv is not None else None
    reporters = [ColvarReporter(run_dir / "colvar.csv", cv, bias, settings.report_every)] if cv is not None else []
    return Simulation.resume(run_dir, potential, progress=progress, terms=[bias] if bias is not None else [],
                             reporters=reporters)


@dataclass
class Samples:
    """Frames of a run read back: CV values (n, d), reweighting weights exp(βV), simulated
    time (ns) of each frame, replica index, temperature (K) and the CV's names."""

    values: np.ndarray
    weights: np.ndarray
    time_ns: np.ndarray
    replica: np.ndarray
    temperature_K: float
    names: list[str]
    periods: list[float]


def load_samples(run_dir: str | Path, cv: str | CV | None = None) -> Samples:
    """The frames of a run with their weights. With ``cv`` None, the CV the run was biased
    along, read from colvar.csv (every replica, also those without a trajectory file); with a
    CV module or specification, its values computed on the trajectories."""
    from ..md.reporters import read_h5md

    run_dir = Path(run_dir)
    settings = engine_settings(run_dir)
    temperature_K = settings["temperature_K"]  # native runs store one value per replica
    temperature_K = float(temperature_K[0] if isinstance(temperature_K, list) else temperature_K)
    trajectories = sorted(run_dir.glob("traj_*.h5md"))
    if not trajectories:
        raise InputError(f"{run_dir}: no trajectory (traj_*.h5md)")
    colvar = read_colvar(run_dir / "colvar.csv") if (run_dir / "colvar.csv").exists() else None
    pdb = run_dir / "topology.pdb"
    pdb = pdb if pdb.exists() else None
    with h5py.File(trajectories[0], "r") as f:
        numbers = f["particles/trajectory/species"][()]
    own = not isinstance(cv, CV) and not cv
    if not isinstance(cv, CV):
        spec = cv or (load_config(BiasSettings, run_dir / "sample.toml").cv if (run_dir / "sample.toml").exists()
                      else "")
        if not spec:
            raise InputError(f"{run_dir}: give the CVs (--cv) to compute on this run")
        cv = parse_cv(spec, numbers, pdb)
    if own and colvar is not None and all(name in colvar for name in cv.names):
        order = np.lexsort((colvar["replica"], colvar["step"]))
        steps, replica = colvar["step"][order], colvar["replica"][order]
        values = np.stack([colvar[name][order] for name in cv.names], axis=-1)
        bias_kjmol = colvar["bias_kjmol"][order]
        walkers = len(np.unique(replica))
    else:
        frames = [read_h5md(path) for path in trajectories]
        n = min(len(f) for f in frames)
        frame_steps = np.array([a.info["step"] for a in frames[0][:n]])
        positions = np.stack([[a.positions for a in f[:n]] for f in frames], axis=1)  # (n, B, atoms, 3)
        with torch.no_grad():
            flat = torch.as_tensor(positions.reshape(-1, *positions.shape[2:]), dtype=torch.float64)
            values = cv(flat).numpy().reshape(n * len(frames), -1)
        steps, replica = np.repeat(frame_steps, len(frames)), np.tile(np.arange(len(frames)), n)
        bias_kjmol = np.zeros(len(steps))
        walkers = len(frames)
        if colvar is not None:
            walkers = len(np.unique(colvar["replica"]))
            by_key = dict(zip(zip(colvar["replica"].tolist(), colvar["step"].tolist()), colvar["bias_kjmol"]))
            missing = [(int(b), int(t)) for b, t in zip(replica, steps) if (b, t) not in by_key]
            if missing:
                raise InputError(f"{run_dir / 'colvar.csv'}: no row for replica {missing[0][0]} at step {missing[0][1]}")
            bias_kjmol = np.array([by_key[(int(b), int(t))] for b, t in zip(replica, steps)])
    bias_eV = bias_kjmol * KJMOL
    metad = _metad_bias(run_dir, numbers, pdb, temperature_K)
    if metad is not None:  # well-tempered metadynamics: weights exp(β(V - c(t)))
        unique_steps, at = np.unique(steps, return_inverse=True)
        bias_eV = bias_eV - metad_ct(metad, unique_steps, walkers, temperature_K)[at]
    dt_ns = float(settings["timestep_fs"]) * 1e-6
    return Samples(values=values, weights=weights_from_bias(bias_eV, temperature_K), time_ns=steps * dt_ns,
                   replica=replica, temperature_K=temperature_K, names=cv.names,
                   periods=[float(p) for p in cv.periods])


def _metad_bias(run_dir: Path, numbers: np.ndarray, pdb: Path | None, temperature_K: float):
    """The run's well-tempered metadynamics bias with its final kernels, or None."""
    path = run_dir / "sample.toml"
    if not path.exists():
        return None
    settings = load_config(BiasSettings, path)
    if settings.bias != "metad" or not (run_dir / "checkpoint.pt").exists():
        return None
    bias = make_bias(settings, parse_cv(settings.cv, numbers, pdb), temperature_K, settings.sigma)
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    bias.set_state(ckpt["bias"] if "bias" in ckpt else ckpt["terms"][0])
    return bias
