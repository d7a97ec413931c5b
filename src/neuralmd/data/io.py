"""Reading and writing labelled frames.

A frame is an ``ase.Atoms`` with ``info["energy"]`` (eV), ``arrays["forces"]`` (eV/Å) and
optionally ``info["stress"]`` (eV/Å³), ``info["charge"]``, ``info["spin"]``,
``info["config_type"]``. Readers convert foreign units once, at load time, and validate every
frame; a problem raises :class:`~neuralmd.errors.InputError` naming file, frame and field.

Formats: extxyz (and plain xyz), MD17-style npz, DeePMD raw/npy folders, ase.db (SQLite).
extxyz, DeePMD and ase.db are eV/Å by their own conventions; npz files do not say, so the
caller must give ``energy_unit`` and ``force_unit``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import ase.db
import numpy as np
from ase import Atoms
from ase.data import chemical_symbols
from ase.io import iread, write

from ..errors import InputError, where
from ..io_utils import atomic_path
from ..units import energy_factor, force_factor

FORMATS = ("extxyz", "npz", "deepmd", "db")


def detect_format(path: Path) -> str:
    """Guess a format from the path: folder -> deepmd, suffix otherwise."""
    if path.is_dir():
        return "deepmd"
    suffix = path.suffix.lower()
    if suffix in (".xyz", ".extxyz"):
        return "extxyz"
    if suffix == ".npz":
        return "npz"
    if suffix == ".db":
        return "db"
    raise InputError(f"{path}: cannot tell the format from the name; expected .xyz/.extxyz, .npz, .db or a DeePMD folder")


def read_frames(path: str | os.PathLike, format: str | None = None, energy_unit: str | None = None,
                force_unit: str | None = None, require_labels: bool = True) -> list[Atoms]:
    """Read all frames of a file, converted to eV and eV/Å and validated.

    Args:
        path: file (or DeePMD folder) to read.
        format: one of :data:`FORMATS`; guessed from the path when None.
        energy_unit, force_unit: units of the file's energies and forces, e.g. ``"kcal/mol"``
            and ``"kcal/mol/A"``; default eV and eV/Å where the format defines them.
        require_labels: if True every frame must carry a finite energy and forces.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    fmt = format or detect_format(path)
    if fmt not in FORMATS:
        raise InputError(f"{path}: unknown format {fmt!r}; expected one of {FORMATS}")
    if fmt == "npz" and (energy_unit is None or force_unit is None):
        raise InputError(
            f"{path}: npz files do not record units; give energy_unit and force_unit "
            "(e.g. energy_unit='kcal/mol', force_unit='kcal/mol/A' for MD17)"
        )
    e_fac = energy_factor(energy_unit or "eV")
    f_fac = force_factor(force_unit or "eV/A")
    reader = {"extxyz": _read_extxyz, "npz": _read_npz, "deepmd": _read_deepmd, "db": _read_db}[fmt]
    frames = list(reader(path))
    if not frames:
        raise InputError(f"{path}: no frames found")
    for k, atoms in enumerate(frames):
        _convert_and_validate(atoms, path, k, e_fac, f_fac, require_labels)
    return frames


def _take_labels(atoms: Atoms) -> Atoms:
    """Move energy/forces/stress from an attached SinglePointCalculator into info/arrays."""
    if atoms.calc is not None:
        results = atoms.calc.results
        if "energy" in results:
            atoms.info["energy"] = float(results["energy"])
        if "forces" in results:
            atoms.arrays["forces"] = np.array(results["forces"], dtype=float)
        if "stress" in results:
            atoms.info["stress"] = np.array(results["stress"], dtype=float)
        atoms.calc = None
    return atoms


#: Atoms closer than this (Å) are an input error: no chemistry happens there.
MIN_DISTANCE_A = 0.1


def _check_positions(atoms: Atoms, path: Path, k: int) -> None:
    if not np.isfinite(atoms.positions).all():
        raise InputError(f"{where(path, k, 'positions')}: non-finite coordinates")
    if 1 < len(atoms) <= 1000 and not atoms.pbc.any():
        d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
        d[np.diag_indices(len(atoms))] = np.inf
        if d.min() < MIN_DISTANCE_A:
            i, j = np.unravel_index(np.argmin(d), d.shape)
            raise InputError(f"{where(path, k, 'positions')}: atoms {min(i, j)} and {max(i, j)} are "
                             f"{d.min():.3f} Å apart (expected > {MIN_DISTANCE_A} Å)")


def _check_cell(atoms: Atoms, path: Path, k: int) -> None:
    """A periodic frame needs a cell with a non-zero vector along each periodic direction;
    periodic along some directions only (a slab) is not supported yet."""
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        return
    if not pbc.all():
        raise InputError(f"{where(path, k, 'pbc')}: periodic along {pbc.tolist()} only; expected all three "
                         f"directions or none (slabs are not supported yet)")
    cell = np.asarray(atoms.cell[:], dtype=float)
    if not np.isfinite(cell).all() or abs(np.linalg.det(cell)) < 1e-6:
        raise InputError(f"{where(path, k, 'cell')}: the frame is periodic (pbc=True) but its cell {cell.tolist()} "
                         f"has no volume; expected three lattice vectors in Å (extxyz: Lattice=\"...\")")


def _convert_stress(atoms: Atoms, path: Path, k: int, e_fac: float) -> None:
    """info["stress"] as a full (3, 3) tensor in eV/Å³ (ASE sign: (1/V) dE/dε); Voigt order
    xx yy zz yz xz xy accepted."""
    stress = atoms.info.get("stress")
    if stress is None:
        return
    try:
        stress = np.asarray(stress, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{where(path, k, 'stress')}: expected 6 or 9 numbers in eV/Å³") from None
    if stress.size == 6:
        xx, yy, zz, yz, xz, xy = stress.ravel()
        stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    if stress.size != 9 or not np.isfinite(stress).all():
        raise InputError(f"{where(path, k, 'stress')}: expected 6 (Voigt) or 9 finite numbers in eV/Å³, "
                         f"found {stress.size} values")
    if not atoms.pbc.all():
        raise InputError(f"{where(path, k, 'stress')}: a stress needs a periodic frame (pbc=True with a cell)")
    atoms.info["stress"] = stress.reshape(3, 3) * e_fac


def _convert_and_validate(atoms: Atoms, path: Path, k: int, e_fac: float, f_fac: float, require: bool) -> None:
    _check_positions(atoms, path, k)
    _check_cell(atoms, path, k)
    _convert_stress(atoms, path, k, e_fac)
    energy = atoms.info.get("energy")
    if energy is None:
        if require:
            raise InputError(f"{where(path, k, 'energy')}: missing; every training frame needs an energy in eV")
    else:
        try:
            energy = float(energy)
        except (TypeError, ValueError):
            raise InputError(f"{where(path, k, 'energy')}: expected a number, found {energy!r}") from None
        if not np.isfinite(energy):
            raise InputError(f"{where(path, k, 'energy')}: not finite ({energy})")
        atoms.info["energy"] = energy * e_fac
    forces = atoms.arrays.get("forces")
    if forces is None:
        if require:
            raise InputError(f"{where(path, k, 'forces')}: missing; every training frame needs forces in eV/Å")
        return
    if forces.shape != (len(atoms), 3):
        raise InputError(f"{where(path, k, 'forces')}: shape {forces.shape}, expected ({len(atoms)}, 3) for {len(atoms)} atoms")
    if not np.isfinite(forces).all():
        bad = int(np.argwhere(~np.isfinite(forces))[0, 0])
        raise InputError(f"{where(path, k, 'forces')}: non-finite value on atom {bad}")
    atoms.arrays["forces"] = forces * f_fac


def _read_extxyz(path: Path) -> Iterable[Atoms]:
    k = 0
    try:
        for atoms in iread(path, index=":", format="extxyz"):
            yield _take_labels(atoms)
            k += 1
    except InputError:
        raise
    except Exception as exc:  # ASE raises many types for malformed or truncated files
        raise InputError(f"{where(path, k)}: cannot parse extxyz ({type(exc).__name__}: {exc})") from None


def _npz_key(data, path: Path, names: Sequence[str], field: str, required: bool = True):
    for name in names:
        if name in data:
            return np.asarray(data[name])
    if required:
        raise InputError(f"{where(path, None, field)}: none of the keys {list(names)} found (keys: {list(data.keys())})")
    return None


def _read_npz(path: Path) -> Iterable[Atoms]:
    try:
        data = np.load(path)
    except Exception as exc:
        raise InputError(f"{path}: cannot read npz ({type(exc).__name__}: {exc})") from None
    coords = _npz_key(data, path, ("R", "coords"), "coordinates")
    numbers = _npz_key(data, path, ("z", "nuclear_charges"), "atomic numbers").astype(int)
    energies = _npz_key(data, path, ("E", "energies"), "energies", required=False)
    forces = _npz_key(data, path, ("F", "forces"), "forces", required=False)
    if coords.ndim != 3 or coords.shape[1:] != (len(numbers), 3):
        raise InputError(f"{where(path, None, 'coordinates')}: shape {coords.shape}, expected (frames, {len(numbers)}, 3)")
    for name, arr in (("energies", energies), ("forces", forces)):
        if arr is not None and arr.shape[0] != coords.shape[0]:
            raise InputError(f"{where(path, None, name)}: {arr.shape[0]} frames but {coords.shape[0]} coordinate frames")
    for k in range(coords.shape[0]):
        atoms = Atoms(numbers=numbers, positions=coords[k])
        if energies is not None:
            atoms.info["energy"] = float(np.ravel(energies[k])[0])
        if forces is not None:
            atoms.arrays["forces"] = np.array(forces[k], dtype=float)
        yield atoms


def _read_deepmd_system(folder: Path) -> Iterable[Atoms]:
    types = np.loadtxt(folder / "type.raw", dtype=int, ndmin=1)
    type_map_file = folder / "type_map.raw"
    if not type_map_file.exists():
        raise InputError(f"{type_map_file}: missing; needed to know which element each type index is")
    type_map = type_map_file.read_text().split()
    unknown = [name for name in type_map if name not in chemical_symbols[1:]]
    if unknown:
        raise InputError(f"{type_map_file}: {unknown[0]!r} is not a chemical element symbol; expected names like "
                         f"O H C, one per type index")
    if types.max() >= len(type_map):
        raise InputError(f"{folder / 'type.raw'}: type index {types.max()} but type_map.raw names {len(type_map)} types")
    symbols = [type_map[t] for t in types]
    n = len(types)
    for set_dir in sorted(folder.glob("set.*")):
        coord = np.load(set_dir / "coord.npy").reshape(-1, n, 3)
        nframes = coord.shape[0]
        energy = np.load(set_dir / "energy.npy").reshape(nframes) if (set_dir / "energy.npy").exists() else None
        force = np.load(set_dir / "force.npy").reshape(nframes, n, 3) if (set_dir / "force.npy").exists() else None
        box = np.load(set_dir / "box.npy").reshape(nframes, 3, 3) if (set_dir / "box.npy").exists() else None
        virial = np.load(set_dir / "virial.npy").reshape(nframes, 3, 3) if (set_dir / "virial.npy").exists() else None
        if virial is not None and box is None:
            raise InputError(f"{set_dir / 'virial.npy'}: a virial needs box.npy (the cell) beside it")
        for k in range(nframes):
            atoms = Atoms(symbols=symbols, positions=coord[k].astype(float))
            if box is not None:
                atoms.cell = box[k].astype(float)
                atoms.pbc = True
            if energy is not None:
                atoms.info["energy"] = float(energy[k])
            if force is not None:
                atoms.arrays["forces"] = force[k].astype(float)
            if virial is not None:  # DeePMD's virial is -dE/dε in eV: stress = -virial / V
                atoms.info["stress"] = -virial[k].astype(float) / abs(np.linalg.det(box[k]))
            atoms.info["source"] = f"{set_dir.relative_to(folder.parent)}:{k}"
            yield atoms


def _read_deepmd(path: Path) -> Iterable[Atoms]:
    systems = sorted({p.parent for p in path.rglob("type.raw")})
    if not systems:
        raise InputError(f"{path}: no DeePMD system found (expected type.raw and set.*/coord.npy)")
    for folder in systems:
        try:
            yield from _read_deepmd_system(folder)
        except (OSError, ValueError) as exc:
            raise InputError(f"{folder}: cannot read DeePMD data ({type(exc).__name__}: {exc})") from None


def _read_db(path: Path) -> Iterable[Atoms]:
    try:
        with ase.db.connect(path, type="db") as db:
            rows = list(db.select())
    except Exception as exc:
        raise InputError(f"{path}: cannot read ase.db ({type(exc).__name__}: {exc})") from None
    for row in rows:
        atoms = _take_labels(row.toatoms())
        atoms.info.update(row.key_value_pairs)
        yield atoms


def write_frames(frames: Iterable[Atoms], path: str | os.PathLike) -> None:
    """Write frames to extxyz (.xyz/.extxyz) or ase.db (.db) atomically, in eV and eV/Å."""
    path = Path(path)
    fmt = detect_format(path)
    if fmt not in ("extxyz", "db"):
        raise InputError(f"{path}: can write .xyz/.extxyz or .db, not {path.suffix}")
    with atomic_path(path) as tmp:
        if fmt == "extxyz":
            write(tmp, list(frames), format="extxyz")
        else:
            tmp.unlink()
            with ase.db.connect(tmp, type="db") as db:
                for atoms in frames:
                    _write_db_row(db, atoms)


def _write_db_row(db, atoms: Atoms) -> None:
    from ase.calculators.singlepoint import SinglePointCalculator

    copy = atoms.copy()
    results = {}
    if "energy" in copy.info:
        results["energy"] = copy.info.pop("energy")
    if "forces" in copy.arrays:
        results["forces"] = copy.arrays.pop("forces")
    if "stress" in copy.info:
        results["stress"] = copy.info.pop("stress")
    if results:
        copy.calc = SinglePointCalculator(copy, **results)
    kvp = {k: v for k, v in copy.info.items() if isinstance(v, (str, int, float, bool, np.integer, np.floating))}
    db.write(copy, key_value_pairs=kvp)
