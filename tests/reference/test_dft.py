"""PySCF labels: same numbers as a direct PySCF call, forces = -dE/dx, SCF failures kept."""

from __future__ import annotations

import numpy as np
from ase.build import molecule
from ase.units import Bohr, Hartree

from neuralmd.reference import PySCFLabeler


def _water():
    atoms = molecule("H2O")
    atoms.rattle(0.03, seed=1)
    return atoms


def test_pbe_matches_direct_pyscf_call():
    from pyscf import dft, gto

    atoms = _water()
    labelled = PySCFLabeler("PBE", "6-31g", density_fit=True, threads=2).label_one(atoms)
    mol = gto.M(atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
                basis="6-31g", unit="Angstrom", verbose=0)
    mf = dft.RKS(mol).density_fit()
    mf.xc = "PBE"
    mf.conv_tol = 1e-9
    energy = mf.kernel()
    grad = mf.nuc_grad_method().kernel()
    assert abs(labelled.info["energy"] - energy * Hartree) < 1e-6
    np.testing.assert_allclose(labelled.arrays["forces"], -grad * Hartree / Bohr, atol=1e-5)


def test_hf_forces_match_finite_differences():
    atoms = _water()
    labeler = PySCFLabeler("HF", "sto-3g", density_fit=False, conv_tol=1e-11)
    forces = labeler.label_one(atoms).arrays["forces"]
    h = 1e-4
    for i, k in [(0, 2), (1, 1), (2, 0)]:
        e = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, k] += sign * h
            e.append(labeler.compute(moved)[0])
        assert abs(-(e[0] - e[1]) / (2 * h) - forces[i, k]) < 1e-5


def test_unconverged_scf_is_recorded_not_dropped():
    result = PySCFLabeler("PBE", "sto-3g", max_cycle=1).label([_water(), _water()])
    assert result.frames == []
    assert [f.index for f in result.failures] == [0, 1]
    assert "SCF not converged" in result.failures[0].reason


def test_open_shell_uses_unrestricted_scf():
    oh = molecule("OH")
    oh.info["spin"] = 1
    labelled = PySCFLabeler("HF", "sto-3g", density_fit=False).label_one(oh)
    assert np.isfinite(labelled.info["energy"])
    # net force on an isolated molecule vanishes
    assert np.abs(labelled.arrays["forces"].sum(0)).max() < 1e-4
