"""CVs from short text specifications (the command line's ``--cv``) and from exported learned CVs.

A specification is a comma-separated list of

- ``phi``, ``psi`` (backbone torsions read from a PDB topology; ``phi2``/``psi2`` name the
  residue number when the chain has several),
- ``torsion(i,j,k,l)``, ``angle(i,j,k)``, ``distance(i,j)`` with 0-based atom indices,
- the path of a learned CV exported by ``neuralmd cv train`` (its folder or its ``cv.pt``),
- ``energy``: the force field's potential energy in kJ/mol (OpenMM runs; see :mod:`.energy_cv`).

Descriptor sets for learned CVs: ``heavy-atom-distances`` (all pairs of non-hydrogen atoms),
``all-distances``, or ``atoms(i,j,...)`` (all pairs among the given atoms).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .cvs import CV, Angle, Distance, PairwiseDistances, Stack, Torsion
from .energy_cv import PotentialEnergy
from .learned import load_exported

_CALL = re.compile(r"^(torsion|angle|distance|atoms)\(([-+\d,\s]+)\)$")
_ARITY = {"torsion": 4, "angle": 3, "distance": 2}


def split_spec(text: str) -> list[str]:
    """Split at commas that are not inside parentheses."""
    items, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += ch
    items.append(current.strip())
    return [item for item in items if item]


def backbone_torsions(pdb: str | Path) -> dict[str, tuple[int, int, int, int]]:
    """Backbone phi/psi atom indices (0-based) of every residue of a PDB file that has them,
    keyed ``phi<resSeq>``/``psi<resSeq>``, plus plain ``phi``/``psi`` when there is only one."""
    from openmm import app

    topology = app.PDBFile(str(pdb)).topology
    residues = list(topology.residues())
    names = [{atom.name: atom.index for atom in res.atoms()} for res in residues]
    out: dict[str, tuple[int, int, int, int]] = {}
    for k, res in enumerate(residues):
        here = names[k]
        if not all(a in here for a in ("N", "CA", "C")):
            continue
        if k > 0 and "C" in names[k - 1]:
            out[f"phi{res.id}"] = (names[k - 1]["C"], here["N"], here["CA"], here["C"])
        if k + 1 < len(residues) and "N" in names[k + 1]:
            out[f"psi{res.id}"] = (here["N"], here["CA"], here["C"], names[k + 1]["N"])
    for kind in ("phi", "psi"):
        keys = [key for key in out if key.startswith(kind)]
        if len(keys) == 1:
            out[kind] = out[keys[0]]
    return out


def _indices(text: str, item: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"CV {item!r}: atom indices must be integers") from None


def descriptor_atoms(kind: str, numbers: np.ndarray) -> list[int]:
    """Atoms whose pairwise distances form the descriptors (see the module docstring)."""
    if kind == "heavy-atom-distances":
        atoms = [i for i, z in enumerate(numbers) if z > 1]
    elif kind == "all-distances":
        atoms = list(range(len(numbers)))
    else:
        m = _CALL.match(kind.replace(" ", ""))
        if not m or m.group(1) != "atoms":
            raise InputError(f"descriptors: {kind!r}; expected heavy-atom-distances, all-distances or atoms(i,j,...)")
        atoms = _indices(m.group(2), kind)
    bad = [a for a in atoms if not 0 <= a < len(numbers)]
    if bad:
        raise InputError(f"descriptors {kind!r}: atom indices {bad} out of range for {len(numbers)} atoms")
    if len(atoms) < 2:
        raise InputError(f"descriptors {kind!r}: fewer than two atoms selected")
    return atoms


class ExportedCV(CV):
    """A learned CV loaded from its export: pairwise distances -> TorchScript model."""

    def __init__(self, descriptors: PairwiseDistances, model: torch.jit.ScriptModule, names: list[str],
                 meta: dict, source: Path, numbers: np.ndarray) -> None:
        super().__init__()
        self.descriptors = descriptors
        self.model = model
        self.names = list(names)
        self.meta = meta
        self._source = (str(source), np.asarray(numbers))

    def __reduce__(self):
        """Pickled as its export folder (TorchScript modules do not pickle), for OpenMM."""
        return load_cv, self._source

    def forward(self, x: torch.Tensor, cell: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(self.descriptors(x, cell).float()).to(x.dtype)


def load_cv(path: str | Path, numbers: np.ndarray) -> ExportedCV:
    """The exported learned CV in ``path`` (a folder or its cv.pt), checked against a system
    with atomic numbers ``numbers``: the descriptor atoms must exist and have the elements the
    CV was trained on."""
    path = Path(path)
    folder = path.parent if path.suffix == ".pt" else path
    model, meta = load_exported(folder)
    where = folder / "descriptors.json"
    if "atoms_0based" not in meta or "pairs_0based" not in meta:
        raise InputError(f"{where}: field 'atoms_0based': missing; only pairwise-distance descriptors can be loaded")
    atoms = [int(a) for a in meta["atoms_0based"]]
    if max(atoms) >= len(numbers):
        raise InputError(f"{where}: the CV uses atom {max(atoms)} but the system has {len(numbers)} atoms; "
                         f"the CV was trained on another system")
    if "n_atoms" in meta and int(meta["n_atoms"]) != len(numbers):
        raise InputError(f"{where}: field 'n_atoms': the CV was trained on a {meta['n_atoms']}-atom system, "
                         f"this one has {len(numbers)} atoms")
    if "elements" in meta:
        expected = [int(z) for z in meta["elements"]]
        found = [int(numbers[a]) for a in atoms]
        if expected != found:
            raise InputError(f"{where}: field 'elements': descriptor atoms {atoms} should have atomic numbers "
                             f"{expected}, the system has {found}")
    descriptors = PairwiseDistances(atoms)
    if descriptors.pairs.tolist() != meta["pairs_0based"]:
        raise InputError(f"{where}: field 'pairs_0based' does not match the pairs of 'atoms_0based'")
    n_in = model.normalise.mean.shape[0]
    if n_in != descriptors.dim:
        raise InputError(f"{folder / 'cv.pt'}: the model takes {n_in} descriptors, descriptors.json defines "
                         f"{descriptors.dim}")
    return ExportedCV(descriptors, model, meta.get("cv_names", []), meta, folder.resolve(), numbers)


def parse_cv(spec: str, numbers: np.ndarray, pdb: str | Path | None = None) -> CV:
    """The CV described by ``spec`` for a system with atomic numbers ``numbers``; ``pdb`` gives
    the topology that names like ``phi`` need."""
    cvs: list[CV] = []
    torsions: dict | None = None
    for item in split_spec(spec):
        m = _CALL.match(item.replace(" ", ""))
        if m and m.group(1) in _ARITY:
            idx = _indices(m.group(2), item)
            if len(idx) != _ARITY[m.group(1)]:
                raise InputError(f"CV {item!r}: expected {_ARITY[m.group(1)]} atom indices")
            if min(idx) < 0 or len(set(idx)) != len(idx):
                raise InputError(f"CV {item!r}: atom indices must be distinct and >= 0 (0-based)")
            cls = {"torsion": Torsion, "angle": Angle, "distance": Distance}[m.group(1)]
            cv = cls(*idx)
        elif item == "energy":
            cv = PotentialEnergy()
        elif re.fullmatch(r"(phi|psi)\d*", item):
            if pdb is None:
                raise InputError(f"CV {item!r}: backbone torsions need a PDB topology (--pdb)")
            torsions = torsions if torsions is not None else backbone_torsions(pdb)
            if item not in torsions:
                raise InputError(f"CV {item!r}: not found in {pdb}; available: {sorted(torsions) or 'none'}")
            cv = Torsion(*torsions[item], name=item)
        elif Path(item).exists():
            cv = load_cv(item, numbers)
        else:
            raise InputError(f"CV {item!r}: not a CV name (phi, psi, energy), torsion(...)/angle(...)/distance(...), "
                             f"or an exported CV folder")
        cv.check_atoms(len(numbers))
        cvs.append(cv)
    if not cvs:
        raise InputError("CV: empty specification")
    return cvs[0] if len(cvs) == 1 else Stack(cvs)
