"""A Potential as an ASE calculator, so ASE's MD, optimisers and NEB just work."""

from __future__ import annotations

import os

import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.optimize import BFGS

from ..models.base import Potential
from ..models.neural import load_potential
from ..state import AtomsBatch


class NeuralCalculator(Calculator):
    """ASE calculator around any :class:`~neuralmd.models.base.Potential`.

    Properties: ``energy`` and ``free_energy`` (eV), ``forces`` (eV/Å), ``energies`` per atom
    (eV), and ``stress`` (eV/Å³, Voigt order) for cells periodic in all three directions.
    Like every ASE calculator it caches ``results`` and recomputes only when
    ``check_state`` sees positions, numbers, cell or pbc change.

    ``compile=True`` (a neural potential, a molecule of up to
    :data:`~neuralmd.models.compiled.STATIC_MAX_ATOMS` atoms): evaluate it on the molecule's
    static all-pairs graph with its network compiled by ``torch.compile`` (same energies and
    forces; the first call compiles, tens of seconds; again when the atoms change), for the many
    small calls of geometry optimisation, NEB and ASE's MD (benchmarks/forcefield_rmd17.py, timing).
    """

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(self, potential: Potential, compile: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.potential = potential.eval()
        self.compile = compile
        self._static: Potential | None = None  # the compiled potential of the current atoms

    def _evaluator(self, batch: AtomsBatch, system_changes) -> Potential:
        if not self.compile or batch.periodic:
            return self.potential
        if self._static is None or "numbers" in system_changes:
            from ..models.compiled import StaticGraphPotential

            self._static = StaticGraphPotential(self.potential, batch).eval()
        return self._static

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if "numbers" in system_changes:
            self.potential.check_elements(self.atoms.numbers, where="atoms")
        stress = "stress" in properties and bool(self.atoms.pbc.all())
        batch = AtomsBatch.from_atoms([self.atoms], dtype=torch.float64, device=self.potential.device)
        out = self._evaluator(batch, system_changes)(batch, forces=True, stress=stress)
        energy = float(out["energy"][0].detach())
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out["forces"].detach().double().cpu().numpy(),
            "energies": out["atom_energy"].detach().double().cpu().numpy(),
        }
        if stress:
            s = out["stress"][0].detach().double().cpu().numpy()
            self.results["stress"] = s[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


def load_calculator(path: str | os.PathLike, dtype: torch.dtype | None = None, device: str = "cpu",
                    compile: bool = False) -> NeuralCalculator:
    """ASE calculator from a neuralmd model file (``dtype=torch.float64`` for tight checks;
    ``compile=True`` for many calls on one molecule, see :class:`NeuralCalculator`)."""
    return NeuralCalculator(load_potential(path, dtype=dtype, device=device), compile=compile)


def relax(atoms: Atoms, fmax_eV_per_A: float = 0.05, steps: int = 200, logfile: str | None = None) -> tuple[bool, int]:
    """Minimise ``atoms`` in place with its calculator (ASE's BFGS) until the largest force is
    below ``fmax_eV_per_A`` (eV/Å) or ``steps`` steps; returns (converged, steps taken)."""
    with BFGS(atoms, logfile=logfile) as optimizer:
        converged = bool(optimizer.run(fmax=fmax_eV_per_A, steps=steps))
        return converged, int(optimizer.nsteps)
