"""Starting and resuming a refinement from its settings (what ``neuralmd refine`` does): the
model, structure, targets and QM data are read and checked before anything is written; then
``refine.toml`` holds the settings a resume rebuilds the same refinement from."""

from __future__ import annotations

from pathlib import Path

from ..config import load_config, save_config
from ..data.dataset import FrameDataset
from ..data.io import read_frames
from ..errors import InputError
from ..rundir import CHECKPOINT, RunLock, check_writable, require_existing
from .difftre import SETTINGS, Refinement, RefineSettings
from .targets import parse_target, with_absolute_path


def build_refinement(settings: RefineSettings, run_dir: str | Path, progress: bool = False) -> Refinement:
    """The refinement ``settings`` describe (model, structure, targets, QM data read and
    checked); writes nothing."""
    from ..models.neural import load_network

    settings.validate()
    if not settings.model_path or not settings.structure:
        raise InputError("refine: give a model file and --structure FILE")
    potential = load_network(settings.model_path)
    structure = read_frames(settings.structure, require_labels=False)
    rdf_range = tuple(settings.rdf_range) if settings.rdf_range else None
    targets = [parse_target(spec, settings.rdf_unit, settings.rdf_error, rdf_range) for spec in settings.targets]
    names = [t.name for t in targets]
    if len(set(names)) != len(names):
        raise InputError(f"refine: a target given twice ({', '.join(names)})")
    qm = None
    if settings.qm_data:
        qm = FrameDataset([atoms for path in settings.qm_data for atoms in read_frames(path)])
        qm.has_forces(", ".join(settings.qm_data))
        for k, atoms in enumerate(qm.frames):
            potential.check_elements(atoms.numbers, where=f"QM data frame {k}")
    return Refinement(potential, structure, targets, settings, run_dir, qm, progress)


def start_refinement(settings: RefineSettings, run_dir: str | Path, progress: bool = False) -> Refinement:
    """A new refinement in ``run_dir`` (refused if one is there); writes refine.toml once every
    input has been checked."""
    run_dir = check_writable(run_dir)
    if (run_dir / SETTINGS).exists():
        raise InputError(f"{run_dir}: already holds a refinement; use neuralmd refine --resume {run_dir} or another -o")
    # absolute paths: a stored refinement resumes from any directory
    settings.model_path = str(Path(settings.model_path).resolve()) if settings.model_path else ""
    settings.structure = str(Path(settings.structure).resolve()) if settings.structure else ""
    settings.qm_data = [str(Path(path).resolve()) for path in settings.qm_data]
    settings.targets = [with_absolute_path(spec) for spec in settings.targets]
    refinement = build_refinement(settings, run_dir, progress)
    lock = RunLock(run_dir).acquire()
    try:
        save_config(settings, run_dir / SETTINGS)
    finally:
        lock.release()
    return refinement


def resume_refinement(run_dir: str | Path, updates: int | None = None, progress: bool = False) -> Refinement:
    """The refinement in ``run_dir`` rebuilt from refine.toml and its checkpoint (a run killed
    before its first checkpoint starts again, its first sampling continuing where it stopped);
    ``updates`` raises the number of updates."""
    run_dir = require_existing(run_dir, "a refinement directory", SETTINGS)
    settings = load_config(RefineSettings, run_dir / SETTINGS)
    if updates is not None:
        settings.updates = updates
    refinement = build_refinement(settings, run_dir, progress)
    if (run_dir / CHECKPOINT).is_file():
        refinement.restore()
    if updates is not None:
        if updates < refinement.update:
            raise InputError(f"updates: {updates}; the refinement in {run_dir} is already at update {refinement.update}")
        save_config(settings, run_dir / SETTINGS)
    return refinement
