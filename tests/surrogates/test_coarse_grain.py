"""CG data and mappings (neuralmd.surrogates.coarse_grain)."""

from __future__ import annotations

import numpy as np
import pytest

from neuralmd.errors import InputError
from neuralmd.surrogates.coarse_grain import Mapping


def test_mapping_centres_and_summed_forces(tmp_path):
    mapping_file = tmp_path / "map.toml"
    mapping_file.write_text('[[bead]]\nname = "A"\natoms = [0, 1]\n\n[[bead]]\nname = "B"\natoms = [2]\nelement = "N"\n')
    mapping = Mapping.from_toml(mapping_file)
    coords = np.arange(2 * 3 * 3, dtype=float).reshape(2, 3, 3)
    forces = np.ones((2, 3, 3))
    x, f = mapping.apply(coords, forces)
    assert np.allclose(x[:, 0], coords[:, :2].mean(1)) and np.allclose(x[:, 1], coords[:, 2])
    assert np.allclose(f[:, 0], 2.0) and np.allclose(f[:, 1], 1.0)
    with pytest.raises(InputError, match=r"bead 'B' references atom\(s\) \[7\]"):
        Mapping([[0, 1], [7]], ["C", "C"], ["A", "B"]).check(5, "allatom.npy")
    with pytest.raises(InputError, match="share"):
        Mapping([[0, 1], [1]], ["C", "C"], ["A", "B"])
