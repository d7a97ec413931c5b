"""Targets of a refinement: experimental files read with their columns and units checked,
observables evaluated per frame, targets a system cannot have refused up front."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from neuralmd.errors import InputError
from neuralmd.refine.targets import (MIN_RDF_ERROR, DensityTarget, Frames, RDFTarget, parse_target,
                                     read_rdf_file)
from tests.conftest import shared_file

SOPER = shared_file("water_experiment/soper2013_rdf.txt")
BENMORE = shared_file("water_experiment/soper_benmore2008_oo_rdf.txt")
WATER_CELL = np.diag([12.44, 12.44, 12.44])
WATER_NUMBERS = [8, 1, 1] * 64


def test_soper_columns_are_found_by_their_header_names():
    table = np.loadtxt(SOPER)
    for pair, col in (("O-O", 1), ("O-H", 3), ("H-H", 5), ("H-O", 3)):
        r, g, err = read_rdf_file(SOPER, pair)
        np.testing.assert_array_equal(r, table[:, 0])
        np.testing.assert_array_equal(g, table[:, col])
        np.testing.assert_array_equal(err, table[:, col + 1])


def test_an_rdf_in_nm_is_refused_as_angstrom_and_read_with_rdf_unit_nm():
    with pytest.raises(InputError, match="--rdf-unit nm"):
        read_rdf_file(BENMORE, "O-O")
    r, g, err = read_rdf_file(BENMORE, "O-O", unit="nm", default_error=0.07)
    assert r[np.argmax(g)] == pytest.approx(2.74, abs=0.02)  # Å, the file's note
    assert np.all(err == 0.07)  # the file has no error column: the stated default


@pytest.mark.parametrize("text, match", [
    ("# r g_OO err_OO\n1 0 0\n2.8 2.5 -0.1\n4 1 0.1\n", "negative uncertainty"),
    ("# r g_OH err_OH\n1 0 0\n2.8 2.5 0.1\n4 1 0.1\n", "no column for g_O-O"),
    ("1 0\n2.8 2.5 0.1\n", "same number of columns"),
    ("1 0\n2.8 two\n", "line 2"),
    ("1 0\n0.5 2.5\n", "must increase"),
])
def test_malformed_rdf_files_are_refused_naming_the_problem(tmp_path, text, match):
    path = tmp_path / "g.txt"
    path.write_text(text)
    with pytest.raises(InputError, match=match):
        read_rdf_file(path, "O-O")


def test_targets_a_system_cannot_evaluate_are_refused_up_front(tmp_path):
    oo = parse_target(f"rdf:O-O={SOPER}")
    oo.check(WATER_NUMBERS, WATER_CELL, "npt")  # cut below half the box by default
    assert oo.axis.max() <= 0.5 * 12.44 and oo.axis.min() > 0
    assert float(oo.error.min()) == MIN_RDF_ERROR  # the file's zero errors where g vanishes
    (tmp_path / "co.txt").write_text("# r g\n1 0\n2.8 2.5\n4 1\n")
    with pytest.raises(InputError, match="no C atoms"):
        parse_target(f"rdf:C-O={tmp_path / 'co.txt'}").check(WATER_NUMBERS, WATER_CELL, "npt")
    with pytest.raises(InputError, match="half the box"):
        parse_target(f"rdf:O-O={SOPER}", rdf_range=(0.0, 8.0)).check(WATER_NUMBERS, WATER_CELL, "npt")
    with pytest.raises(InputError, match="--ensemble npt"):
        parse_target("density=0.997").check(WATER_NUMBERS, WATER_CELL, "nvt")
    with pytest.raises(InputError, match="negative uncertainty"):
        parse_target("density=0.997,-0.01")
    with pytest.raises(InputError, match="VALUE,ERROR"):
        parse_target("observable:x.py:f=1")
    with pytest.raises(InputError, match="unknown kind"):
        parse_target("pressure=1")


def test_a_per_target_range_keeps_only_that_part_of_the_curve():
    oh = parse_target(f"rdf:O-H={SOPER}@1.3,6")
    oh.check(WATER_NUMBERS, WATER_CELL, "npt")
    assert oh.axis.min() >= 1.3 and oh.axis.max() <= 6.0


def test_rdf_and_density_values_per_frame_equal_direct_numpy():
    rng = np.random.default_rng(0)
    box = np.array([10.0, 11.0, 12.0])
    pos = rng.uniform(0, 1, (3, 20, 3)) * box
    numbers = torch.tensor([8] * 10 + [1] * 10)
    frames = Frames(torch.as_tensor(pos), torch.as_tensor(np.stack([np.diag(box)] * 3)), numbers,
                    torch.tensor([16.0] * 10 + [1.0] * 10, dtype=torch.float64), torch.ones(3, dtype=torch.bool))
    r = np.linspace(1.0, 4.9, 40)
    target = RDFTarget("O-H", r, np.ones_like(r), np.full_like(r, 0.1))
    values = target.frame_values(frames).numpy()
    sigma = 0.05
    for t in range(3):
        d = pos[t, :10, None] - pos[t, None, 10:]
        d -= box * np.round(d / box)
        dist = np.linalg.norm(d, axis=-1).ravel()
        counts = np.exp(-0.5 * ((r[:, None] - dist[None]) / sigma) ** 2).sum(1) / (np.sqrt(2 * np.pi) * sigma)
        np.testing.assert_allclose(values[t], box.prod() * counts / (100 * 4 * np.pi * r**2), rtol=1e-10)
    density = DensityTarget(1.0).frame_values(frames).numpy()
    np.testing.assert_allclose(density[:, 0], 170 / box.prod() * 1.66053906660, rtol=1e-6)


def test_an_observable_target_runs_the_users_torch_function_per_frame(tmp_path):
    (tmp_path / "shape.py").write_text(
        "import torch\n"
        "def gyration(positions, cell, numbers):\n"
        "    centred = positions - positions.mean(1, keepdim=True)\n"
        "    return centred.pow(2).sum(-1).mean(-1).sqrt()\n")
    target = parse_target(f"observable:{tmp_path / 'shape.py'}:gyration=2.5,0.1")
    assert target.name == "shape.gyration" and float(target.error[0]) == 0.1
    pos = np.random.default_rng(1).normal(size=(4, 9, 3))
    frames = Frames(torch.as_tensor(pos), torch.zeros(4, 3, 3, dtype=torch.float64), torch.ones(9, dtype=torch.long),
                    torch.ones(9, dtype=torch.float64), torch.zeros(3, dtype=torch.bool))
    expected = np.sqrt(((pos - pos.mean(1, keepdims=True)) ** 2).sum(-1).mean(-1))
    np.testing.assert_allclose(target.frame_values(frames)[:, 0].numpy(), expected, rtol=1e-12)
    with pytest.raises(InputError, match="no function 'missing'"):
        parse_target(f"observable:{tmp_path / 'shape.py'}:missing=1,0.1")
    with pytest.raises(InputError, match="not a Python file"):
        parse_target(f"observable:{tmp_path / 'nope.py'}:f=1,0.1")
