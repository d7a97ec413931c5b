"""Host–guest systems for binding runs: OpenMM Systems from AMBER prmtop/inpcrd or PDB + force-field
XML, in implicit (OBC2, GBn2) or explicit solvent (PME + Monte Carlo barostat) or vacuum; host and
guest selected by residue name or atom indices; the host's axis and a funnel fitted to the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import openmm
from openmm import app, unit

from ..errors import InputError
from ..md.openmm_engine import OpenMMSystem, read_pdb
from ..units import NM_IN_A
from .funnel import Funnel

SOLVENTS = ("obc2", "gbn2", "vacuum", "explicit")
IMPLICIT = {"obc2": (app.OBC2, "implicit/obc2.xml"), "gbn2": (app.GBn2, "implicit/gbn2.xml")}
CUTOFF_NM = 0.9  # explicit solvent: PME real-space cutoff


@dataclass
class ComplexInput:
    """Where the complex comes from and how it is solvated (stored in bind.toml).

    ``prmtop`` + ``inpcrd`` (AMBER), or ``pdb`` + ``forcefield`` (OpenMM XML files; the implicit
    solvent's XML is added for obc2/gbn2). ``host``/``guest``: a residue name (``CUC``) or atom
    indices (``0-125`` or ``0,3,5-9``, 0-based).
    """

    prmtop: str = ""
    inpcrd: str = ""
    pdb: str = ""
    forcefield: list[str] = field(default_factory=list)
    solvent: str = "obc2"
    host: str = ""
    guest: str = ""
    pressure_bar: float = 1.0  # explicit solvent only

    def validate(self) -> None:
        if self.solvent not in SOLVENTS:
            raise InputError(f"solvent: {self.solvent!r}; expected one of {', '.join(SOLVENTS)}")
        if bool(self.prmtop) == bool(self.pdb):
            raise InputError("give the complex as --prmtop with --inpcrd, or as --pdb with --forcefield (one of them)")
        for name in ("prmtop", "inpcrd", "pdb"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise InputError(f"{name}: {path}: file not found")
        if self.prmtop and not self.inpcrd:
            raise InputError("--prmtop needs --inpcrd (the coordinates)")
        if self.pdb and not self.forcefield:
            raise InputError("--pdb needs --forcefield (OpenMM XML files, e.g. amber14-all.xml and the guest's GAFF XML)")
        if not self.host or not self.guest:
            raise InputError("name the host and the guest (--host-residue/--guest-residue or --host-atoms/--guest-atoms)")
        if not 0 < self.pressure_bar < float("inf"):
            raise InputError(f"pressure_bar: {self.pressure_bar}; expected > 0")


def _has_gb_radii(prmtop: app.AmberPrmtopFile) -> bool:
    radii = prmtop._prmtop._raw_data.get("RADII", [])
    return len(radii) > 0 and any(float(r) > 0 for r in radii)


def load_complex(spec: ComplexInput, temperature_K: float, constraints: str = "HBonds") -> OpenMMSystem:
    """The complex as an :class:`~neuralmd.md.openmm_engine.OpenMMSystem` (no cutoff in implicit
    solvent and vacuum; PME with a 0.9 nm cutoff, rigid water and a Monte Carlo barostat at
    ``spec.pressure_bar`` in explicit solvent)."""
    spec.validate()
    explicit = spec.solvent == "explicit"
    kwargs = {"constraints": getattr(app, constraints) if constraints != "None" else None,
              "nonbondedMethod": app.PME if explicit else app.NoCutoff}
    if explicit:
        kwargs["nonbondedCutoff"] = CUTOFF_NM * unit.nanometer
    try:
        if spec.prmtop:
            prmtop = app.AmberPrmtopFile(spec.prmtop)
            inpcrd = app.AmberInpcrdFile(spec.inpcrd)
            topology, positions = prmtop.topology, inpcrd.positions
            if inpcrd.boxVectors is not None:
                topology.setPeriodicBoxVectors(inpcrd.boxVectors)
            if spec.solvent in IMPLICIT:
                if not _has_gb_radii(prmtop):
                    raise InputError(f"{spec.prmtop}: no GB radii (RADII) for --solvent {spec.solvent}; make the "
                                     f"prmtop with 'set default PBRadii mbondi2' in tleap")
                kwargs["implicitSolvent"] = IMPLICIT[spec.solvent][0]
            if len(positions) != topology.getNumAtoms():
                raise InputError(f"{spec.inpcrd}: {len(positions)} coordinates for the {topology.getNumAtoms()} "
                                 f"atoms of {spec.prmtop}")
            make = prmtop.createSystem
        else:
            pdb = read_pdb(spec.pdb)
            topology, positions = pdb.topology, pdb.positions
            files = list(spec.forcefield) + ([IMPLICIT[spec.solvent][1]] if spec.solvent in IMPLICIT else [])
            make = lambda **kw: app.ForceField(*files).createSystem(topology, **kw)  # noqa: E731
        if explicit and topology.getPeriodicBoxVectors() is None:
            raise InputError(f"{spec.inpcrd or spec.pdb}: no periodic box for --solvent explicit")
        system = make(**kwargs)
    except InputError:
        raise
    except (ValueError, OSError, KeyError, IndexError) as exc:
        raise InputError(f"{spec.prmtop or spec.pdb}: cannot build the system ({type(exc).__name__}: {exc})") from None
    if explicit:
        system.addForce(openmm.MonteCarloBarostat(spec.pressure_bar * unit.bar, temperature_K * unit.kelvin))
    numbers = np.array([a.element.atomic_number if a.element is not None else 0 for a in topology.atoms()])
    return OpenMMSystem(topology, system, positions, numbers)


def parse_indices(text: str) -> list[int]:
    """``0-5,9`` → [0, 1, 2, 3, 4, 5, 9]; InputError on anything else."""
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi) + 1) if hi else [int(lo)])
    except ValueError:
        raise InputError(f"atom indices {text!r}: expected e.g. 0-125 or 0,3,5-9 (0-based)") from None
    return out


def select(topology: app.Topology, what: str, role: str) -> list[int]:
    """The atoms of ``role`` (host, guest): residue name ``what`` or indices (digits, commas, dashes)."""
    n = topology.getNumAtoms()
    if what and all(c.isdigit() or c in ",- " for c in what):
        atoms = parse_indices(what)
        bad = [i for i in atoms if not 0 <= i < n]
        if bad:
            raise InputError(f"{role} atoms: index {bad[0]} but the system has {n} atoms (0-based)")
        return sorted(set(atoms))
    atoms = [a.index for a in topology.atoms() if a.residue.name == what]
    if not atoms:
        names = sorted({r.name for r in topology.residues()})
        raise InputError(f"{role} residue {what!r} not found; the system's residues are {', '.join(names[:20])}")
    return atoms


def host_guest(topology: app.Topology, spec: ComplexInput) -> tuple[list[int], list[int]]:
    """Host and guest atom indices; InputError if a selection is empty or they overlap."""
    host, guest = select(topology, spec.host, "host"), select(topology, spec.guest, "guest")
    common = sorted(set(host) & set(guest))
    if common:
        raise InputError(f"host and guest selections overlap ({len(common)} atoms, e.g. {common[0]}); a binding "
                         f"run needs two distinct molecules")
    return host, guest


def water_molecules(parts: OpenMMSystem) -> list[list[int]]:
    """The water molecules (residues of one oxygen and two hydrogens, oxygen first; TIP4P's
    virtual site last) of a periodic (explicit-solvent) system; none in implicit solvent."""
    if not parts.system.usesPeriodicBoundaryConditions():
        return []
    out = []
    for residue in parts.topology.residues():
        atoms = list(residue.atoms())
        elements = sorted(a.element.symbol for a in atoms if a.element is not None)
        if len(atoms) in (3, 4) and elements == ["H", "H", "O"]:  # TIP3P/SPC, or TIP4P with its virtual site
            order = {"O": 0, "H": 1}
            out.append([a.index for a in sorted(atoms, key=lambda a: order.get(getattr(a.element, "symbol", ""), 2))])
    return out


def water_oxygens(parts: OpenMMSystem) -> list[int]:
    """The water oxygens of :func:`water_molecules`."""
    return [w[0] for w in water_molecules(parts)]


def box_A(parts: OpenMMSystem) -> np.ndarray:
    """The System's default periodic box (3, 3) Å, rows the box vectors."""
    return np.array([v.value_in_unit(unit.nanometer) for v in parts.system.getDefaultPeriodicBoxVectors()]) * NM_IN_A


def positions_A(parts: OpenMMSystem) -> np.ndarray:
    """The system's starting positions (n, 3) in Å."""
    pos = parts.positions.value_in_unit(unit.nanometer) if unit.is_quantity(parts.positions) else parts.positions
    return np.asarray([[v[0], v[1], v[2]] for v in pos], dtype=float) * NM_IN_A


def host_axis(positions: np.ndarray, host: Sequence[int], guest: Sequence[int]) -> tuple[list[int], np.ndarray]:
    """The anchor atoms that define the host's axis, and the unit axis (Å frame of ``positions``).

    A guest whose centroid lies within 3 Å of the host's (inside a macrocycle): the host's axis of
    largest moment of inertia (the normal of a ring), pointing away from the guest's offset. A
    guest further out (a pocket): the direction from the host's centroid to the guest's. The
    anchor is the host atoms on the positive side; their centroid fixes the axis as the host moves.
    """
    x = positions[list(host)]
    c = x.mean(0)
    offset = positions[list(guest)].mean(0) - c
    if np.linalg.norm(offset) > 3.0:
        axis = offset / np.linalg.norm(offset)
    else:
        r = x - c
        inertia = np.eye(3) * (r * r).sum() - r.T @ r
        axis = np.linalg.eigh(inertia)[1][:, -1]
        axis = axis if offset @ axis >= 0 else -axis
    anchor = [h for h, p in zip(host, (x - c) @ axis) if p > 0.25 * ((x - c) @ axis).max()]
    a = positions[anchor].mean(0) - c
    return anchor, a / np.linalg.norm(a)


def fitted_funnel(positions: np.ndarray, host: Sequence[int], axis: np.ndarray, radius_A: float = 2.0,
                  unbound_length_A: float = 18.0, k_kjmol_A2: float = 20.0) -> Funnel:
    """A funnel fitted to the host: the cone from the far side of the host (``lower_z``) to 2 Å
    past its near side (``switch_z``), as wide as the host at the far side; then a cylinder of
    ``radius_A`` up to ``unbound_length_A`` beyond the near side."""
    r = positions[list(host)] - positions[list(host)].mean(0)
    z = r @ axis
    rho = np.linalg.norm(r - np.outer(z, axis), axis=1)
    lower, near = float(z.min()), float(z.max())
    switch = near + 2.0
    width = max(float(rho.max()), radius_A + 1.0)
    angle = float(np.degrees(np.arctan((width - radius_A) / (switch - lower))))
    return Funnel(radius_A=radius_A, cone_angle_deg=round(angle, 3), switch_z_A=round(switch, 3),
                  lower_z_A=round(lower, 3), upper_z_A=round(near + unbound_length_A, 3), k_kjmol_A2=k_kjmol_A2)
