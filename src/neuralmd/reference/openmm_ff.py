"""Labels from a classical force field: an OpenMM ``System`` evaluated on the Reference platform.

The system is kept as its serialised XML so that a model file that uses it as a Δ-learning
baseline carries it along (self-contained, no force-field files needed later). Energies in eV,
forces in eV/Å (OpenMM works in kJ/mol and nm).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from ase import Atoms

from ..errors import InputError
from ..units import KJMOL
from .base import Labeler


def system_xml_from_pdb(pdb: str | os.PathLike, forcefield: Sequence[str] = ("amber99sbildn.xml",)) -> str:
    """Serialised OpenMM System of a PDB topology with the given force-field files, in vacuum
    (no cutoff) and without constraints, so that every force term is in the energy."""
    import openmm
    from openmm import app

    try:
        topology = app.PDBFile(str(pdb)).topology
        system = app.ForceField(*forcefield).createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None)
    except Exception as exc:  # OpenMM reports missing templates, bad files ... as plain exceptions
        raise InputError(f"{pdb}: cannot build an OpenMM system with {list(forcefield)} ({exc})") from None
    return openmm.XmlSerializer.serialize(system)


class OpenMMLabeler(Labeler):
    """A classical force field through OpenMM.

    Args:
        system_xml: an OpenMM ``System`` serialised with ``XmlSerializer`` (non-periodic).
    """

    name = "openmm"

    def __init__(self, system_xml: str) -> None:
        import openmm

        try:
            system = openmm.XmlSerializer.deserialize(system_xml)
        except Exception as exc:
            raise InputError(f"OpenMM system: not a serialised System ({exc})") from None
        if system.usesPeriodicBoundaryConditions():
            raise InputError("OpenMM system: periodic systems are not supported as a labeler/baseline here")
        self.system_xml = system_xml
        self.n_atoms = system.getNumParticles()
        self._context = openmm.Context(system, openmm.VerletIntegrator(0.001),
                                       openmm.Platform.getPlatformByName("Reference"))

    @classmethod
    def from_file(cls, path: str | os.PathLike, forcefield: Sequence[str] = ("amber99sbildn.xml",)) -> "OpenMMLabeler":
        """From a serialised System (.xml) or a PDB topology plus force-field files (.pdb)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path}: OpenMM system or PDB file not found")
        if path.suffix.lower() == ".pdb":
            return cls(system_xml_from_pdb(path, forcefield))
        return cls(path.read_text())

    def settings(self) -> dict[str, Any]:
        return {"method": self.name, "system_xml": self.system_xml}

    def compute(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        from openmm import unit

        if len(atoms) != self.n_atoms:
            raise InputError(f"OpenMM system has {self.n_atoms} particles, the frame {len(atoms)} atoms")
        self._context.setPositions(atoms.positions * 0.1)  # Å -> nm
        state = self._context.getState(getEnergy=True, getForces=True)
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) * KJMOL
        forces = state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer)
        return float(energy), np.asarray(forces) * KJMOL / 10.0  # kJ/mol/nm -> eV/Å
