"""Starting and resuming MD runs in either engine: the settings in, a run ready to ``run()`` out.

Every command that makes an MD run directory goes through here (``md``, ``sample`` through
:mod:`neuralmd.sampling.runs`, ``cg md``): the directory is checked (:mod:`neuralmd.rundir`),
the settings validated, the engine built, and ``md.toml`` (plus ``topology.pdb`` for OpenMM)
written only once everything that can be checked has been. Resuming reads ``md.toml`` to tell
the engine and rebuilds the run from its checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Sequence

import torch
from ase import Atoms

from ..config import load_config, save_config
from ..data.io import read_frames
from ..errors import InputError
from ..models.base import Potential
from ..rundir import BIND_SETTINGS, MD_SETTINGS, TOPOLOGY, RunLock, engine_of, refuse_existing, require_existing
from ..state import AtomsBatch
from .openmm_engine import OpenMMRun, OpenMMSettings, OpenMMTerm
from .protocols import EnergyTerm, Reporter
from .run import MDRun
from .simulation import MDSettings, Simulation


def starting_frames(settings: MDSettings) -> list[Atoms]:
    """The replicas' starting frames: ``settings.structure`` copied ``settings.replicas`` times
    when it holds one frame, or its frames one per replica."""
    frames = read_frames(settings.structure, require_labels=False)
    if len(frames) == 1:
        return [frames[0].copy() for _ in range(settings.replicas)]
    if settings.replicas != len(frames):
        raise InputError(f"{settings.structure}: {len(frames)} frames for {settings.replicas} replica(s); give "
                         f"--replicas {len(frames)} to start one replica from each frame, or a one-frame structure")
    return frames


def claim(run_dir: Path) -> RunLock:
    """The lock on a new run's directory, taken before its first file is written; a second
    process starting a run into the same directory meanwhile is refused (and writes nothing)."""
    lock = RunLock(run_dir).acquire()
    try:
        refuse_existing(run_dir, "an MD run")  # another process may have finished one there meanwhile
    except InputError:
        lock.release()
        raise
    return lock


def start_native(settings: MDSettings, run_dir: str | Path, potential: Potential, frames: Sequence[Atoms] | None = None,
                 terms: Sequence[EnergyTerm] = (), reporters: Sequence[Reporter] = (),
                 progress: bool = False) -> Simulation:
    """A new native-engine run in ``run_dir`` of ``frames`` (default: from ``settings.structure``)
    with ``potential``; writes md.toml."""
    run_dir = refuse_existing(run_dir, "an MD run")
    settings.validate()
    frames = list(frames) if frames is not None else starting_frames(settings)
    for k, atoms in enumerate(frames):
        potential.check_elements(atoms.numbers, where=f"{settings.structure or 'structure'}: frame {k}")
    sim = Simulation(potential, AtomsBatch.from_atoms(frames), settings, terms=terms, run_dir=run_dir,
                     reporters=reporters, progress=progress)
    sim.lock = claim(run_dir)
    save_config(settings, run_dir / MD_SETTINGS)
    return sim


def start_openmm(settings: OpenMMSettings, run_dir: str | Path, terms: Sequence[OpenMMTerm] = (),
                 reporters: Sequence[Reporter] = (), progress: bool = False) -> OpenMMRun:
    """A new OpenMM run in ``run_dir``; writes md.toml and topology.pdb (the PDB the run resumes
    from, so it does not depend on the original file staying where it was)."""
    run_dir = refuse_existing(run_dir, "an MD run")
    settings.pdb = str(Path(settings.pdb).resolve())
    settings.validate()
    run = OpenMMRun(settings, run_dir, terms=terms, reporters=reporters, progress=progress)
    run.lock = claim(run_dir)
    shutil.copyfile(settings.pdb, run_dir / TOPOLOGY)
    save_config(settings, run_dir / MD_SETTINGS)
    return run


def load_md_settings(run_dir: str | Path) -> MDSettings | OpenMMSettings:
    """The settings of the MD run in ``run_dir`` (an OpenMM run's PDB is its topology.pdb)."""
    run_dir = require_existing(run_dir, "an MD run directory")
    if (run_dir / BIND_SETTINGS).exists():
        raise InputError(f"{run_dir}: a binding run; continue it with neuralmd bind --resume {run_dir}")
    if engine_of(run_dir) == "openmm":
        settings = load_config(OpenMMSettings, run_dir / MD_SETTINGS)
        settings.pdb = str(run_dir / TOPOLOGY)
        return settings
    return load_config(MDSettings, run_dir / MD_SETTINGS)


def checkpoint_step(run_dir: str | Path) -> int:
    """The step of the checkpoint of the MD run in ``run_dir`` (either engine), read without
    rebuilding the run (so a refused resume touches no file)."""
    engine = OpenMMRun if engine_of(run_dir) == "openmm" else Simulation
    return int(engine.read_checkpoint(run_dir)["step"])


def resume_md(run_dir: str | Path, potential: Potential | None = None, terms: Sequence = (),
              reporters: Sequence[Reporter] = (), progress: bool = False) -> MDRun:
    """The MD run in ``run_dir`` rebuilt from md.toml and its checkpoint, ready to ``run()``.
    A native run loads its model from md.toml (float64) unless ``potential`` is given; ``terms``
    are the run's energy terms (native) or :class:`OpenMMTerm` objects, in the order it had them."""
    settings = load_md_settings(run_dir)
    if isinstance(settings, OpenMMSettings):
        run = OpenMMRun(settings, run_dir, terms=terms, reporters=reporters, progress=progress)
        run.restore()
        return run
    if potential is None:
        from ..models.neural import load_potential

        potential = load_potential(settings.model_path, dtype=torch.float64)
    return Simulation.resume(run_dir, potential, progress=progress, terms=terms, reporters=reporters)
