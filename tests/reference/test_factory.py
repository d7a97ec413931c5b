"""neuralmd.reference.factory: one labeler factory for label, active learning and Δ-learning."""

from __future__ import annotations

import pytest
from ase.build import molecule

from neuralmd.errors import InputError
from neuralmd.reference.dft import PySCFLabeler
from neuralmd.reference.factory import make_labeler
from neuralmd.reference.xtb import XTBLabeler


def test_each_method_name_makes_its_labeler_with_the_options():
    gfn2, gfn1 = make_labeler("xtb", charge=1, spin=1), make_labeler("gfn1")
    assert isinstance(gfn2, XTBLabeler) and gfn2.settings()["method"] == "GFN2-xTB"
    assert gfn2.settings()["charge"] == 1 and gfn2.settings()["uhf"] == 1
    assert gfn1.settings()["method"] == "GFN1-xTB"
    dft, hf = make_labeler("dft", functional="B3LYP", basis="sto-3g"), make_labeler("hf", basis="sto-3g")
    assert isinstance(dft, PySCFLabeler) and isinstance(hf, PySCFLabeler)
    assert dft.settings()["functional"] == "B3LYP" and hf.settings()["functional"] == "HF"
    # the two xTB parametrisations really differ on the same frame
    water = molecule("H2O")
    assert abs(make_labeler("xtb").compute(water)[0] - gfn1.compute(water)[0]) > 0.1  # eV
    with pytest.raises(InputError, match="method: 'mp2'"):
        make_labeler("mp2")
