"""GFN2-xTB labels through tblite: same numbers as a direct call, forces = -dE/dx, failures kept."""

from __future__ import annotations

import numpy as np
from ase.build import molecule
from ase.units import Bohr, Hartree
from tblite.interface import Calculator

from neuralmd.reference import XTBLabeler


def test_matches_direct_tblite_call_and_finite_differences():
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=2)
    labelled = XTBLabeler().label_one(atoms)

    direct = Calculator("GFN2-xTB", atoms.numbers, atoms.positions / Bohr)
    direct.set("verbosity", 0)
    res = direct.singlepoint()
    assert abs(labelled.info["energy"] - res.get("energy") * Hartree) < 1e-8
    np.testing.assert_allclose(labelled.arrays["forces"], -res.get("gradient") * Hartree / Bohr, atol=1e-7)

    labeler, h = XTBLabeler(accuracy=0.01), 1e-4
    forces = labeler.label_one(atoms).arrays["forces"]
    for i, k in [(0, 0), (2, 1), (8, 2)]:
        e = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[i, k] += sign * h
            e.append(labeler.compute(moved)[0])
        assert abs(-(e[0] - e[1]) / (2 * h) - forces[i, k]) < 1e-4 * max(1.0, abs(forces[i, k]))


def test_failed_frames_are_recorded_and_the_rest_completes():
    good = molecule("H2O")
    clash = molecule("H2O")
    clash.positions[1] = clash.positions[0]
    result = XTBLabeler().label([good, clash, good])
    assert result.indices == [0, 2]
    assert len(result.frames) == 2
    assert [f.index for f in result.failures] == [1]
    assert "close" in result.failures[0].reason.lower()
    unconverged = XTBLabeler(max_iterations=2).label([good])
    assert "not converged" in unconverged.failures[0].reason


def test_charge_and_spin_from_frame_info():
    oh = molecule("OH")
    oh.info["charge"] = -1
    anion = XTBLabeler().label_one(oh).info["energy"]
    radical = oh.copy()
    radical.info = {"charge": 0, "spin": 1}
    assert abs(XTBLabeler().label_one(radical).info["energy"] - anion) > 0.1
