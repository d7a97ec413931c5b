"""Labels from any ASE calculator."""

from __future__ import annotations

import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT

from neuralmd.reference import ASECalculatorLabeler


def test_emt_labels_match_the_calculator():
    atoms = bulk("Cu", cubic=True).repeat(2)
    atoms.rattle(0.05, seed=0)
    labelled = ASECalculatorLabeler(EMT()).label([atoms]).frames[0]
    ref = atoms.copy()
    ref.calc = EMT()
    assert labelled.info["energy"] == ref.get_potential_energy()
    np.testing.assert_array_equal(labelled.arrays["forces"], ref.get_forces())
    assert labelled.info["label_method"] == "EMT"
    assert labelled.calc is None
