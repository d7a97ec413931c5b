"""The run directory: one home for what every command that writes one shares.

A run directory holds a run's settings (a TOML file named after the command: ``md.toml``,
``sample.toml``, ``config.toml``, ``cg.toml``, ``active.toml``, ``refine.toml``), its checkpoint, logs,
trajectories, plots and ``results.json``. This module knows the file names, refuses to start a
new run where one is stored already, finds a run to resume, tells which engine made an MD run,
and locks a directory against a second process writing into it at the same time.
"""

from __future__ import annotations

import fcntl
import os
import tomllib
from pathlib import Path

from .errors import InputError

CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"
LAST_GOOD = "last_good.xyz"
FINAL = "final.xyz"
LOG = "log.csv"
COLVAR = "colvar.csv"
MD_SETTINGS = "md.toml"
BIAS_SETTINGS = "sample.toml"
TOPOLOGY = "topology.pdb"
BIND_SETTINGS = "bind.toml"  # a binding run (neuralmd bind); with input.toml, system.xml, guest_model.pt, cv/
BIND_INPUT = "input.toml"
SYSTEM_XML = "system.xml"
GUEST_MODEL = "guest_model.pt"
LEARNED_CV = "cv"
ML_CORRECTION = "ml-correction"  # a binding run's MM -> ML/MM correction (windows/, correction.json)
LOCK = ".neuralmd.lock"


def check_writable(path: str | os.PathLike, folder: bool = True) -> Path:
    """``path`` as a Path if it can be made (a folder, or with ``folder`` False a file) where it
    is: InputError naming it if it, or a parent on the way, is a file where a folder is needed,
    or if the nearest existing folder cannot be written into. Nothing is created."""
    path = Path(path)
    if path.exists() and path.is_dir() != folder:
        raise InputError(f"{path}: is {'a file' if folder else 'a folder'}; expected {'a folder' if folder else 'a file'}"
                         f" (-o)")
    parent = path if folder else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{path}: {parent} is a file, not a folder (-o)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{path}: {parent} is not writable (-o)")
    return path


def refuse_existing(run_dir: str | os.PathLike, what: str, marker: str = CHECKPOINT, resumable: bool = True) -> Path:
    """``run_dir`` as a Path, unless it already holds a run (its ``marker`` file or folder
    exists; then an InputError that says to resume it (``resumable``) or choose another -o) or it
    cannot be made (:func:`check_writable`)."""
    run_dir = check_writable(run_dir)
    if (run_dir / marker).exists():
        advice = f"use --resume {run_dir} or another -o" if resumable else "remove it or choose another -o"
        raise InputError(f"{run_dir}: already holds {what}; {advice}")
    return run_dir


def refuse_existing_files(paths: list[Path], what: str) -> None:
    """InputError if any of ``paths`` (the files a command writes) exists already: results are
    never overwritten."""
    for path in paths:
        if path.exists():
            raise InputError(f"{path}: exists already ({what}); choose another -o or remove it")


def require_existing(run_dir: str | os.PathLike, what: str, marker: str = CHECKPOINT) -> Path:
    """``run_dir`` as a Path, if it holds a run to resume (its ``marker`` file); else an
    InputError naming the missing file."""
    run_dir = Path(run_dir)
    if not (run_dir / marker).is_file():
        raise InputError(f"{run_dir / marker}: not found; is {run_dir} {what}?")
    return run_dir


def read_checkpoint(run_dir: str | os.PathLike, fmt: str, what: str) -> dict:
    """The checkpoint in ``run_dir`` (CPU tensors) whose ``format`` field is ``fmt``; InputError
    naming the file if it is missing, unreadable or of another kind (``what``: "MD", "refinement")."""
    import torch

    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise InputError(f"{path}: no {what} checkpoint to resume from")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise InputError(f"{path}: field 'format': not a {what} checkpoint ({fmt})")
    return ckpt


def read_toml(path: str | os.PathLike) -> dict:
    """A TOML file as a plain dict; InputError naming the file if it is missing or not TOML."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: settings file not found")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid TOML ({exc})") from None


def md_settings(run_dir: str | os.PathLike) -> dict:
    """The MD run's ``md.toml`` as a plain dict (either engine's settings)."""
    return read_toml(require_existing(run_dir, "an MD or sampling run directory", MD_SETTINGS) / MD_SETTINGS)


def replica_temperature(settings: dict, replica: int = 0) -> float:
    """The bath temperature (K) of one replica in a run's ``md.toml`` (:func:`md_settings`):
    native runs store one value, or one per replica; OpenMM runs one value."""
    value = settings["temperature_K"]
    if isinstance(value, list):
        value = value[replica] if len(value) > replica else value[0]
    return float(value)


def engine_in(settings_file: str | os.PathLike) -> str:
    """'openmm' or 'native': the engine an MD settings file is for (files written before
    md.toml named its engine are native)."""
    return str(read_toml(settings_file).get("engine", "native"))


def engine_of(run_dir: str | os.PathLike) -> str:
    """'openmm' or 'native': the engine that made the MD run in ``run_dir``."""
    return engine_in(require_existing(run_dir, "an MD or sampling run directory", MD_SETTINGS) / MD_SETTINGS)


class RunLock:
    """An exclusive lock on a run directory (a ``flock`` on its lock file): a second process that
    tries to write into the same directory gets an InputError at once instead of interleaving its
    files with ours. Taken before a run's first file is written and held until it ends; the lock
    dies with the process (kill -9 included)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self._fh = None

    @property
    def held(self) -> bool:
        return self._fh is not None

    def acquire(self) -> "RunLock":
        """Take the lock (creating the directory); InputError if another process holds it."""
        if self._fh is not None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fh = open(self.run_dir / LOCK, "a")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise InputError(f"{self.run_dir}: another neuralmd process is writing into this run directory") from None
        self._fh = fh
        return self

    def release(self) -> None:
        if self._fh is not None:
            fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None
