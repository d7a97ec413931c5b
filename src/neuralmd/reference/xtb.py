"""GFN2-xTB / GFN1-xTB labels through tblite."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree
from tblite.interface import Calculator

from .base import Labeler, check_electrons


class XTBLabeler(Labeler):
    """Semi-empirical tight binding through tblite.

    Args:
        method: ``"GFN2-xTB"`` (default) or ``"GFN1-xTB"``.
        charge: total charge in e (a frame's ``info["charge"]`` overrides it).
        uhf: number of unpaired electrons (a frame's ``info["spin"]`` overrides it).
        accuracy: tblite's numerical accuracy (smaller is tighter).
        max_iterations: SCF iteration limit; a frame that does not converge fails.
        electronic_temperature_K: Fermi smearing temperature in K.
    """

    def __init__(self, method: str = "GFN2-xTB", charge: float = 0.0, uhf: int = 0,
                 accuracy: float = 1.0, max_iterations: int = 250,
                 electronic_temperature_K: float = 300.0) -> None:
        self.method = method
        self.name = method
        self.charge = charge
        self.uhf = uhf
        self.accuracy = accuracy
        self.max_iterations = max_iterations
        self.electronic_temperature_K = electronic_temperature_K

    def settings(self) -> dict[str, Any]:
        return {"method": self.method, "charge": self.charge, "uhf": self.uhf, "accuracy": self.accuracy,
                "max_iterations": self.max_iterations, "electronic_temperature_K": self.electronic_temperature_K}

    def check_frame(self, atoms: Atoms, where: str) -> None:
        check_electrons(atoms.numbers, int(atoms.info.get("charge", self.charge)), int(atoms.info.get("spin", self.uhf)),
                        where, valence_only=True)

    def compute(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        periodic = atoms.pbc.any()
        calc = Calculator(
            self.method,
            atoms.numbers,
            atoms.positions / Bohr,
            charge=float(atoms.info.get("charge", self.charge)),
            uhf=int(atoms.info.get("spin", self.uhf)),
            lattice=atoms.cell.array / Bohr if periodic else None,
            periodic=np.asarray(atoms.pbc) if periodic else None,
        )
        calc.set("verbosity", 0)
        calc.set("accuracy", self.accuracy)
        calc.set("max-iter", self.max_iterations)
        calc.set("temperature", self.electronic_temperature_K * 3.166808578545117e-06)  # K -> Hartree
        result = calc.singlepoint()
        return float(result.get("energy")) * Hartree, -np.asarray(result.get("gradient")) * Hartree / Bohr
