"""Conformer screening: SMILES in, RDKit conformers, relaxation with a neural potential, ranking out.

Each molecule of a ``.smi`` file is embedded with RDKit's ETKDGv3 (seeded, near-duplicates
pruned by heavy-atom RMSD), every conformer is relaxed with ASE's BFGS through a
:class:`~neuralmd.md.ase_calculator.NeuralCalculator` around one potential that is loaded once,
and the conformers of each molecule are ranked by energy. Energies in eV, relative energies in
kJ/mol, forces in eV/Å, lengths in Å. A molecule that cannot be parsed, embedded or evaluated is
a per-molecule failure; the rest of the file goes on.

Outputs, given ``output = ranked.csv``: ``ranked.csv`` (one row per conformer), ``ranked.xyz``
(relaxed geometries, extxyz), ``ranked.json`` (settings, counts, failures) and ``ranked.png``
(relative conformer energies per molecule). All are written atomically.
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from ase import Atoms
from rdkit import Chem, rdBase
from rdkit.Chem import AllChem

from ..analysis.plots import save_figure
from ..data.io import write_frames
from ..errors import InputError
from ..io_utils import atomic_write_json, atomic_write_text
from ..md.ase_calculator import NeuralCalculator, relax
from ..models.base import Potential
from ..models.neural import load_potential
from ..progress import progress_bar
from ..rundir import check_writable, refuse_existing_files
from ..state import AtomsBatch
from ..units import EV_IN_KJMOL

CSV_COLUMNS = ("name", "smiles", "line", "conformer", "rank", "energy_eV", "rel_energy_kjmol", "initial_energy_eV",
               "converged", "n_steps", "fmax_eV_per_A")


@dataclass(frozen=True)
class Molecule:
    """One parsed entry of a SMILES file (``line`` is 1-based)."""

    line: int
    smiles: str
    name: str
    mol: Chem.Mol


@dataclass(frozen=True)
class Failure:
    """A molecule that was not screened, and why."""

    line: int
    smiles: str
    name: str
    reason: str


@dataclass
class Conformer:
    """One relaxed conformer: energies in eV, ``fmax_eV_per_A`` the largest atomic force after
    relaxation (eV/Å), ``rel_energy_kjmol`` relative to the molecule's lowest conformer."""

    molecule: Molecule
    conformer: int
    atoms: Atoms
    initial_energy_eV: float
    energy_eV: float
    converged: bool
    n_steps: int
    fmax_eV_per_A: float
    rank: int = 0
    rel_energy_kjmol: float = 0.0


class _MoleculeFailed(Exception):
    """A molecule that cannot be screened; the message is the reason."""


# --- input --------------------------------------------------------------------------------
def _rdkit_reason(messages: str) -> str:
    """The first RDKit log line without its timestamp, or a generic reason."""
    for line in messages.splitlines():
        line = re.sub(r"^\[\d\d:\d\d:\d\d\]\s*", "", line).strip()
        if line:
            return line
    return "RDKit returned no molecule"


def parse_smiles(smiles: str) -> tuple[Chem.Mol | None, str]:
    """``(molecule, "")`` for a valid SMILES, ``(None, RDKit's reason)`` for an invalid one."""
    with rdBase.CaptureErrorLog() as log:
        mol = Chem.MolFromSmiles(smiles)
    return (mol, "") if mol is not None else (None, _rdkit_reason(log.messages))


def read_smiles(path: str | os.PathLike) -> tuple[list[Molecule], list[Failure]]:
    """Read a ``.smi`` file: one SMILES per line, optionally followed by a name (the rest of the
    line); blank lines and ``#`` comments are skipped. The default name is ``line<N>``.

    Returns the parsed molecules and one :class:`Failure` per unparsable line. Raises
    InputError if the file is missing, holds no SMILES, or none of them parses.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: SMILES file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read SMILES file ({exc})") from None
    molecules, failures = [], []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        smiles, *rest = line.split(maxsplit=1)
        name = rest[0].strip() if rest else f"line{number}"
        mol, reason = parse_smiles(smiles)
        if mol is None:
            failures.append(Failure(number, smiles, name, f"{path}: line {number}: cannot parse SMILES {smiles!r}: {reason}"))
        else:
            molecules.append(Molecule(number, smiles, name, mol))
    if not molecules and not failures:
        raise InputError(f"{path}: no SMILES found (expected one SMILES per line, optional name after it)")
    if not molecules:
        lines = ", ".join(str(f.line) for f in failures[:10])
        first = failures[0].reason.removeprefix(f"{path}: ")
        raise InputError(f"{path}: none of the {len(failures)} SMILES could be parsed (lines {lines}); first: {first}")
    return molecules, failures


# --- conformers ---------------------------------------------------------------------------
def embed_conformers(mol: Chem.Mol, n_conformers: int, seed: int = 0, prune_rms_A: float = 0.25) -> list[Atoms]:
    """Up to ``n_conformers`` ETKDGv3 conformers of ``mol`` (hydrogens added) as ase.Atoms (Å).

    Conformer ``k`` is embedded with the seed ``seed + k`` (RDKit's sequential seeds), so a run
    is reproducible and seed 0 is valid; conformers within ``prune_rms_A`` Å heavy-atom RMSD of
    an earlier one are dropped. Returns an empty list if RDKit cannot embed the molecule.
    """
    molh = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.enableSequentialRandomSeeds = True
    params.pruneRmsThresh = prune_rms_A
    with rdBase.CaptureErrorLog():
        ids = list(AllChem.EmbedMultipleConfs(molh, numConfs=n_conformers, params=params))
    numbers = [atom.GetAtomicNum() for atom in molh.GetAtoms()]
    return [Atoms(numbers=numbers, positions=molh.GetConformer(i).GetPositions(), pbc=False) for i in ids]


def _atomic_numbers(mol: Chem.Mol) -> list[int]:
    """Atomic numbers of ``mol`` with its hydrogens made explicit."""
    return [atom.GetAtomicNum() for atom in Chem.AddHs(mol).GetAtoms()]


@torch.no_grad()
def batch_energies(potential: Potential, frames: Sequence[Atoms]) -> np.ndarray:
    """Energies (eV) of ``frames`` in one batched forward pass of ``potential``."""
    batch = AtomsBatch.from_atoms(list(frames), dtype=torch.float64, device=potential.device)
    return potential(batch, forces=False)["energy"].double().cpu().numpy()


def max_force(atoms: Atoms) -> float:
    """Largest atomic force norm (eV/Å) of ``atoms`` from its calculator."""
    return float(np.linalg.norm(atoms.get_forces(), axis=1).max())


def rank_conformers(conformers: list[Conformer]) -> list[Conformer]:
    """Sort one molecule's conformers by energy, set ``rank`` (1 = lowest) and
    ``rel_energy_kjmol``; returns them sorted (ties keep conformer order)."""
    ordered = sorted(conformers, key=lambda c: (c.energy_eV, c.conformer))
    lowest = ordered[0].energy_eV
    for rank, conf in enumerate(ordered, start=1):
        conf.rank = rank
        conf.rel_energy_kjmol = (conf.energy_eV - lowest) * EV_IN_KJMOL
    return ordered


def screen_molecule(molecule: Molecule, potential: Potential, calculator: NeuralCalculator, n_conformers: int,
                    fmax_eV_per_A: float, max_steps: int, seed: int, prune_rms_A: float) -> list[Conformer]:
    """Embed, relax and rank the conformers of one molecule (units as in :func:`screen`).

    Raises _MoleculeFailed for elements unknown to the potential, embedding failures and
    non-finite energies."""
    try:
        potential.check_elements(_atomic_numbers(molecule.mol), where=f"SMILES {molecule.smiles!r}")
    except InputError as exc:
        raise _MoleculeFailed(str(exc)) from None
    frames = embed_conformers(molecule.mol, n_conformers, seed, prune_rms_A)
    if not frames:
        raise _MoleculeFailed(f"SMILES {molecule.smiles!r}: RDKit could not embed a 3D conformer")
    initial = batch_energies(potential, frames)
    conformers = []
    for k, atoms in enumerate(frames):
        atoms.calc = calculator
        converged, steps = relax(atoms, fmax_eV_per_A, max_steps)
        energy = float(atoms.get_potential_energy())
        if not (np.isfinite(energy) and np.isfinite(initial[k])):
            raise _MoleculeFailed(f"SMILES {molecule.smiles!r}: conformer {k}: non-finite energy from the potential")
        conformers.append(Conformer(molecule, k, atoms, float(initial[k]), energy, converged, steps, max_force(atoms)))
    return rank_conformers(conformers)


# --- output -------------------------------------------------------------------------------
def _csv_text(conformers: Sequence[Conformer]) -> str:
    """The ranked table: one row per conformer, energies in eV and kJ/mol, forces in eV/Å."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in conformers:
        writer.writerow([c.molecule.name, c.molecule.smiles, c.molecule.line, c.conformer, c.rank,
                         f"{c.energy_eV:.6f}", f"{c.rel_energy_kjmol:.4f}", f"{c.initial_energy_eV:.6f}",
                         int(c.converged), c.n_steps, f"{c.fmax_eV_per_A:.5f}"])
    return buffer.getvalue()


def _frame(c: Conformer) -> Atoms:
    """The relaxed geometry as a neuralmd frame: energy (eV) and forces (eV/Å), names in info."""
    atoms = Atoms(numbers=c.atoms.numbers, positions=c.atoms.positions, pbc=False)
    atoms.arrays["forces"] = c.atoms.get_forces().copy()
    atoms.info.update(energy=c.energy_eV, name=c.molecule.name, smiles=c.molecule.smiles, line=c.molecule.line,
                      conformer=c.conformer, rank=c.rank, rel_energy_kjmol=c.rel_energy_kjmol,
                      converged=c.converged, n_steps=c.n_steps, fmax_eV_per_A=c.fmax_eV_per_A)
    return atoms


def plot_conformer_energies(conformers: Sequence[Conformer], path: str | os.PathLike) -> None:
    """Relative conformer energies (kJ/mol) per molecule; hollow markers: not converged."""
    import matplotlib.pyplot as plt  # Agg, set by analysis.plots

    names = list(dict.fromkeys((c.molecule.line, c.molecule.name) for c in conformers))
    column = {key: k for k, key in enumerate(names)}
    fig, ax = plt.subplots(figsize=(min(2.0 + 0.6 * len(names), 16.0), 4.0))
    for converged, face in ((True, "C0"), (False, "none")):
        chosen = [c for c in conformers if c.converged == converged]
        if chosen:
            ax.scatter([column[(c.molecule.line, c.molecule.name)] for c in chosen],
                       [c.rel_energy_kjmol for c in chosen], facecolors=face, edgecolors="C0",
                       label="converged" if converged else "not converged")
    ax.set_xticks(range(len(names)), [name for _, name in names], rotation=45, ha="right")
    ax.set_ylabel("relative energy (kJ/mol)")
    ax.set_title("conformer energies relative to each molecule's lowest")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)


def output_paths(output: str | os.PathLike) -> dict[str, Path]:
    """The files a screen writes, given the ranked CSV path (InputError unless it ends in .csv)."""
    csv_path = Path(output)
    if csv_path.suffix.lower() != ".csv":
        raise InputError(f"output: {csv_path}; expected a .csv path (geometries, summary and plot go beside it)")
    return {"csv": csv_path, "xyz": csv_path.with_suffix(".xyz"), "json": csv_path.with_suffix(".json"),
            "png": csv_path.with_suffix(".png")}


def check_outputs(paths: dict[str, Path]) -> None:
    """InputError unless the screen's files can be written and none exists already."""
    check_writable(paths["csv"], folder=False)
    refuse_existing_files(list(paths.values()), "a screen's results")


def _check_settings(conformers: int, fmax_eV_per_A: float, max_steps: int, seed: int, prune_rms_A: float) -> None:
    if conformers < 1:
        raise InputError(f"conformers: {conformers}; expected at least 1")
    if not fmax_eV_per_A > 0:
        raise InputError(f"fmax: {fmax_eV_per_A} eV/Å; expected > 0")
    if max_steps < 0:
        raise InputError(f"max_steps: {max_steps}; expected >= 0")
    if seed < 0:
        raise InputError(f"seed: {seed}; expected >= 0")
    if prune_rms_A < 0:
        raise InputError(f"prune_rms: {prune_rms_A} Å; expected >= 0")


# --- driver -------------------------------------------------------------------------------
def screen(smiles_file: str | os.PathLike, potential: Potential | str | os.PathLike, output: str | os.PathLike,
           conformers: int = 20, fmax_eV_per_A: float = 0.05, max_steps: int = 200, seed: int = 0,
           prune_rms_A: float = 0.25, progress: bool = False) -> dict[str, Any]:
    """Screen the conformers of every molecule of ``smiles_file`` with one potential.

    Args:
        smiles_file: ``.smi`` file (see :func:`read_smiles`).
        potential: any neuralmd Potential, or the path of a model file (loaded once).
        output: ranked CSV path; ``.xyz``, ``.json`` and ``.png`` are written beside it.
        conformers: conformers embedded per molecule before pruning.
        fmax_eV_per_A: relaxation stops when the largest force is below this (eV/Å).
        max_steps: BFGS steps per conformer at most.
        seed: RDKit embedding seed (>= 0).
        prune_rms_A: conformers within this heavy-atom RMSD (Å) of another are dropped.
        progress: show a progress bar over molecules.

    Returns the summary also written to the ``.json`` file: settings, counts, the lowest
    energy (eV) per molecule, the failures and the output paths. Raises InputError, writing
    nothing, if the file holds no parsable SMILES or no molecule could be screened.
    """
    _check_settings(conformers, fmax_eV_per_A, max_steps, seed, prune_rms_A)
    paths = output_paths(output)
    check_outputs(paths)
    molecules, failures = read_smiles(smiles_file)
    n_entries = len(molecules) + len(failures)
    model = str(potential) if isinstance(potential, (str, os.PathLike)) else type(potential).__name__
    if not isinstance(potential, Potential):
        potential = load_potential(potential)
    calculator = NeuralCalculator(potential)
    start = time.perf_counter()
    ranked: list[Conformer] = []
    with progress_bar("screen", progress) as bar:
        task = bar.add_task("screen", total=len(molecules), status="")
        for molecule in molecules:
            bar.update(task, status=molecule.name)
            try:
                ranked.extend(screen_molecule(molecule, potential, calculator, conformers, fmax_eV_per_A, max_steps,
                                              seed, prune_rms_A))
            except _MoleculeFailed as exc:
                failures.append(Failure(molecule.line, molecule.smiles, molecule.name,
                                        f"{smiles_file}: line {molecule.line}: {exc}"))
            bar.advance(task)
    failures.sort(key=lambda f: f.line)
    if not ranked:
        first = failures[0].reason.removeprefix(f"{smiles_file}: ")
        raise InputError(f"{smiles_file}: no molecule could be screened; first failure: {first}")
    summary = {
        "input": str(smiles_file), "model": model,
        "settings": {"conformers": conformers, "fmax_eV_per_A": fmax_eV_per_A, "max_steps": max_steps, "seed": seed,
                     "prune_rms_A": prune_rms_A, "optimizer": "BFGS", "embedding": "RDKit ETKDGv3"},
        "molecules": n_entries,
        "screened": len({c.molecule.line for c in ranked}),
        "conformers": len(ranked), "converged": sum(c.converged for c in ranked),
        "seconds": time.perf_counter() - start,
        "lowest": [{"name": c.molecule.name, "smiles": c.molecule.smiles, "line": c.molecule.line,
                    "conformer": c.conformer, "energy_eV": c.energy_eV} for c in ranked if c.rank == 1],
        "failures": [asdict(f) for f in failures],
        "outputs": {key: str(p) for key, p in paths.items()},
    }
    atomic_write_text(_csv_text(ranked), paths["csv"])
    write_frames([_frame(c) for c in ranked], paths["xyz"])
    plot_conformer_energies(ranked, paths["png"])
    atomic_write_json(summary, paths["json"])
    return summary
