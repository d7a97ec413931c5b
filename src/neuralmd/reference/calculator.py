"""Labels from any ASE calculator (EMT, a classical force field, another ML model ...)."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from .base import Labeler


class ASECalculatorLabeler(Labeler):
    """Wrap an ASE calculator; energies and forces are taken in ASE units (eV, eV/Å)."""

    def __init__(self, calculator: Calculator, name: str | None = None) -> None:
        self.calculator = calculator
        self.name = name or type(calculator).__name__

    def settings(self) -> dict[str, Any]:
        return {"method": self.name, "parameters": dict(getattr(self.calculator, "parameters", {}))}

    def compute(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        work = atoms.copy()
        work.calc = self.calculator
        return float(work.get_potential_energy()), np.array(work.get_forces())
