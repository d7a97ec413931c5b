"""A finished run read back as weighted samples (for ``fes``, ``cv train`` and the CG analysis):
CV values, reweighting weights exp(βV) (and exp(β(V - c(t))) for metadynamics), time, replica."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import torch

from ..config import load_config
from ..errors import InputError
from ..md.openmm_engine import CHECKPOINT_FORMAT as OPENMM_CHECKPOINT
from ..rundir import BIAS_SETTINGS, CHECKPOINT, COLVAR, TOPOLOGY, md_settings, replica_temperature
from ..units import KJMOL
from .bias_factory import BiasSettings, make_bias
from .colvar import read_colvar
from .cvs import CV
from .fes import metad_ct, weights_from_bias
from .spec import parse_cv


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
    settings = md_settings(run_dir)
    temperature_K = replica_temperature(settings)
    trajectories = sorted(run_dir.glob("traj_*.h5md"))
    if not trajectories:
        raise InputError(f"{run_dir}: no trajectory (traj_*.h5md)")
    colvar = read_colvar(run_dir / COLVAR) if (run_dir / COLVAR).exists() else None
    pdb = run_dir / TOPOLOGY
    pdb = pdb if pdb.exists() else None
    with h5py.File(trajectories[0], "r") as f:
        numbers = f["particles/trajectory/species"][()]
    own = not isinstance(cv, CV) and not cv
    if not isinstance(cv, CV):
        spec = cv or (load_config(BiasSettings, run_dir / BIAS_SETTINGS).cv if (run_dir / BIAS_SETTINGS).exists()
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
        cells = None
        if frames[0][0].pbc.any():
            cells = torch.as_tensor(np.stack([[a.cell.array for a in f[:n]] for f in frames], axis=1).reshape(-1, 3, 3))
        with torch.no_grad():
            flat = torch.as_tensor(positions.reshape(-1, *positions.shape[2:]), dtype=torch.float64)
            values = cv(flat, cells).numpy().reshape(n * len(frames), -1)
        steps, replica = np.repeat(frame_steps, len(frames)), np.tile(np.arange(len(frames)), n)
        bias_kjmol = np.zeros(len(steps))
        walkers = len(frames)
        if colvar is not None:
            walkers = len(np.unique(colvar["replica"]))
            by_key = dict(zip(zip(colvar["replica"].tolist(), colvar["step"].tolist()), colvar["bias_kjmol"]))
            missing = [(int(b), int(t)) for b, t in zip(replica, steps) if (b, t) not in by_key]
            if missing:
                raise InputError(f"{run_dir / COLVAR}: no row for replica {missing[0][0]} at step {missing[0][1]}")
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
    path = run_dir / BIAS_SETTINGS
    if not path.exists():
        return None
    settings = load_config(BiasSettings, path)
    if settings.bias != "metad" or not (run_dir / CHECKPOINT).exists():
        return None
    bias = make_bias(settings, parse_cv(settings.cv, numbers, pdb), temperature_K, settings.sigma)
    bias.set_state(_bias_state(torch.load(run_dir / CHECKPOINT, weights_only=True)))
    return bias


def _bias_state(ckpt: dict) -> dict:
    """The state of the run's (one) bias in its checkpoint: the native engine keeps it as its
    first term; the OpenMM engine as its first term's ``bias`` (older OpenMM checkpoints: the
    top-level ``bias``)."""
    if "bias" in ckpt:
        return ckpt["bias"]
    term = ckpt["terms"][0]
    return term["bias"] if ckpt.get("format") == OPENMM_CHECKPOINT else term
