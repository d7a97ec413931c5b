"""neuralmd.sampling.spec: CVs from text, and bad specifications as one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import molecule

from neuralmd.errors import InputError
from neuralmd.sampling.cvs import Stack
from neuralmd.sampling.spec import descriptor_atoms, parse_cv, split_spec

ETHANOL = molecule("CH3CH2OH")


def test_specifications_give_the_cvs_they_name():
    assert split_spec("torsion(0,1,2,3), distance(0,1)") == ["torsion(0,1,2,3)", "distance(0,1)"]
    cv = parse_cv("torsion(3,0,1,2),distance(0,1),angle(0,1,2)", ETHANOL.numbers)
    assert isinstance(cv, Stack) and cv.dim == 3
    x = torch.as_tensor(ETHANOL.positions).unsqueeze(0)
    values = cv(x)[0].numpy()
    ase_torsion = np.radians(ETHANOL.get_dihedral(3, 0, 1, 2))  # ASE: [0, 2π); ours: (-π, π]
    assert abs(np.angle(np.exp(1j * (values[0] - ase_torsion)))) < 1e-9
    assert values[1] == pytest.approx(ETHANOL.get_distance(0, 1), abs=1e-12)
    assert values[2] == pytest.approx(np.radians(ETHANOL.get_angle(0, 1, 2)), abs=1e-9)
    assert descriptor_atoms("heavy-atom-distances", ETHANOL.numbers) == [0, 1, 2]


@pytest.mark.parametrize("spec, fragment", [
    ("distance(3,3)", "distinct"),
    ("torsion(-1,0,1,2)", ">= 0"),
    ("torsion(0,1,2)", "expected 4 atom indices"),
    ("torsion(0,1,2,99)", "atom index 99"),
    ("torsoin(0,1,2,3)", "not a CV name"),
    ("", "empty"),
    ("phi", "need a PDB"),
])
def test_bad_specifications_name_the_item_and_what_was_expected(spec, fragment):
    with pytest.raises(InputError) as err:
        parse_cv(spec, ETHANOL.numbers)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_a_broken_exported_cv_is_one_clear_error(tmp_path):
    from neuralmd.sampling.learned import LearnedCV, load_exported, train_autoencoder
    from neuralmd.sampling.cvs import PairwiseDistances

    descriptors = PairwiseDistances([0, 1, 2])
    x = np.random.default_rng(0).normal(size=(64, 3)) + 2.0
    model, _ = train_autoencoder(x, n_cv=1, hidden=(4,), epochs=2, seed=0)
    folder = LearnedCV(descriptors, model, "autoencoder").export(tmp_path / "cv")
    assert load_exported(folder)[1]["atoms_0based"] == [0, 1, 2]
    (folder / "descriptors.json").write_text('{"atoms_0based": [0, 1')
    with pytest.raises(InputError, match=r"descriptors\.json: not valid JSON"):
        parse_cv(str(folder), ETHANOL.numbers)
    (folder / "descriptors.json").unlink()
    with pytest.raises(InputError, match=r"descriptors\.json: not found"):
        parse_cv(str(folder), ETHANOL.numbers)
    (folder / "cv.pt").write_bytes((folder / "cv.pt").read_bytes()[:100])
    with pytest.raises(InputError, match=r"cv\.pt: not a readable TorchScript CV"):
        parse_cv(str(folder), ETHANOL.numbers)
