"""DFT and Hartree-Fock labels through PySCF."""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from ase.units import Bohr, Hartree

from ..errors import LabelingError
from .base import Labeler, check_electrons


class PySCFLabeler(Labeler):
    """Molecular DFT/HF with PySCF (restricted for closed shells, unrestricted otherwise).

    Args:
        functional: an exchange-correlation functional PySCF knows (``"PBE"``, ``"B3LYP"``,
            ``"wB97X-D"`` ...) or ``"HF"``.
        basis: basis set name, e.g. ``"def2-SVP"``.
        density_fit: use density fitting (RI-J) for speed.
        charge: total charge in e; spin: 2S, the number of unpaired electrons (a frame's
            ``info["charge"]`` / ``info["spin"]`` override them).
        threads: OpenMP threads for PySCF (None: leave PySCF's default).
        max_cycle: SCF iteration limit; conv_tol: SCF energy tolerance in Hartree.
        grid_level: DFT integration grid level (0-9).
    """

    def __init__(self, functional: str = "PBE", basis: str = "def2-SVP", density_fit: bool = True,
                 charge: int = 0, spin: int = 0, threads: int | None = None, max_cycle: int = 100,
                 conv_tol: float = 1e-9, grid_level: int = 3) -> None:
        self.functional = functional
        self.basis = basis
        self.density_fit = density_fit
        self.charge = charge
        self.spin = spin
        self.threads = threads
        self.max_cycle = max_cycle
        self.conv_tol = conv_tol
        self.grid_level = grid_level
        self.name = f"{functional}/{basis}"

    def settings(self) -> dict[str, Any]:
        return {"method": "pyscf", "functional": self.functional, "basis": self.basis,
                "density_fit": self.density_fit, "charge": self.charge, "spin": self.spin,
                "max_cycle": self.max_cycle, "conv_tol": self.conv_tol, "grid_level": self.grid_level}

    def check_frame(self, atoms: Atoms, where: str) -> None:
        check_electrons(atoms.numbers, int(atoms.info.get("charge", self.charge)),
                        int(atoms.info.get("spin", self.spin)), where)

    def make_scf(self, atoms: Atoms):
        """The PySCF mean-field object for one frame (not yet run)."""
        from pyscf import dft, gto, lib, scf

        if self.threads is not None:
            lib.num_threads(self.threads)
        if atoms.pbc.any():
            raise LabelingError("PySCFLabeler handles molecules only (pbc=False)")
        charge = int(atoms.info.get("charge", self.charge))
        spin = int(atoms.info.get("spin", self.spin))
        mol = gto.M(atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
                    basis=self.basis, charge=charge, spin=spin, unit="Angstrom", verbose=0)
        if self.functional.upper() == "HF":
            mf = scf.RHF(mol) if spin == 0 else scf.UHF(mol)
        else:
            mf = dft.RKS(mol) if spin == 0 else dft.UKS(mol)
            mf.xc = self.functional
            mf.grids.level = self.grid_level
        if self.density_fit:
            mf = mf.density_fit()
        mf.max_cycle = self.max_cycle
        mf.conv_tol = self.conv_tol
        return mf

    def compute(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        mf = self.make_scf(atoms)
        energy = mf.kernel()
        if not mf.converged:
            raise LabelingError(f"SCF not converged in {self.max_cycle} cycles")
        gradient = mf.nuc_grad_method().kernel()
        return float(energy) * Hartree, -np.asarray(gradient) * Hartree / Bohr
