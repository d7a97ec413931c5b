"""LabelStore on an SQLite file: labels and failures written one by one, read back in write
order by status and round, frame keys, and a store that outlives its Python object."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.build import molecule

from neuralmd.data.store import LabelStore, frame_key
from neuralmd.errors import InputError


def _labelled(seed: int) -> Atoms:
    """A rattled water with a made-up energy (eV) and forces (eV/Å) from ``seed``."""
    rng = np.random.default_rng(seed)
    atoms = molecule("H2O")
    atoms.positions += rng.normal(scale=0.05, size=(3, 3))
    atoms.info["energy"] = -2000.0 + rng.normal()
    atoms.arrays["forces"] = rng.normal(size=(3, 3))
    atoms.info["config_type"] = "not kept"
    return atoms


def _fill(store: LabelStore) -> list[Atoms]:
    """Rounds 1, 1, 2, 3 labelled and one failure in round 2; returns the five frames as written."""
    frames = [_labelled(s) for s in range(5)]
    labeler = {"method": "GFN2-xTB", "accuracy": 1.0}
    store.add(frames[0], frame_key(frames[0]), 1, labeler, index=1)
    store.add(frames[1], frame_key(frames[1]), 1, labeler, index=0)
    store.add(frames[2], frame_key(frames[2]), 2, labeler, reason="SCF not converged", index=0)
    store.add(frames[3], frame_key(frames[3]), 2, labeler, index=1)
    store.add(frames[4], frame_key(frames[4]), 3, labeler)
    return frames


def test_labels_and_failures_are_read_back_by_status_in_write_order(tmp_path):
    store = LabelStore(tmp_path / "labels.db", project="p")
    frames = _fill(store)
    assert store.count() == 5 and store.count("ok") == 4 and store.count("failed") == 1
    assert store.keys() == {frame_key(a) for a in frames}

    ok = store.frames()
    assert [a.info["key"] for a in ok] == [frame_key(frames[k]) for k in (0, 1, 3, 4)]
    for got, k in zip(ok, (0, 1, 3, 4)):
        want = frames[k]
        assert got.get_chemical_symbols() == want.get_chemical_symbols()
        np.testing.assert_allclose(got.positions, want.positions, rtol=0, atol=1e-12)
        assert got.info["energy"] == pytest.approx(want.info["energy"], abs=1e-12)
        np.testing.assert_allclose(got.arrays["forces"], want.arrays["forces"], rtol=0, atol=1e-12)
        assert got.info["status"] == "ok" and "reason" not in got.info
        assert got.calc is None  # labels moved into info/arrays, as read_frames gives them
        assert "config_type" not in got.info  # only energy/stress and the store's own fields are kept
        assert json.loads(got.info["labeler"]) == {"method": "GFN2-xTB", "accuracy": 1.0}
    assert [a.info["round"] for a in ok] == [1, 1, 2, 3]
    assert [a.info["index"] for a in ok] == [1, 0, 1, 0]

    (failed,) = store.frames("failed")
    assert failed.info["key"] == frame_key(frames[2])
    assert failed.info["reason"] == "SCF not converged" and failed.info["round"] == 2
    assert "energy" not in failed.info and "forces" not in failed.arrays  # a failure carries no label
    np.testing.assert_allclose(failed.positions, frames[2].positions, rtol=0, atol=1e-12)


def test_max_round_keeps_labels_of_that_round_and_earlier(tmp_path):
    store = LabelStore(tmp_path / "labels.db", project="p")
    frames = _fill(store)
    by_round = {r: [a.info["key"] for a in store.frames(max_round=r)] for r in (0, 1, 2, 3)}
    assert by_round[0] == []
    assert by_round[1] == [frame_key(frames[0]), frame_key(frames[1])]
    assert by_round[2] == by_round[1] + [frame_key(frames[3])]
    assert by_round[3] == by_round[2] + [frame_key(frames[4])]
    assert store.frames("failed", max_round=1) == []
    assert len(store.frames("failed", max_round=2)) == 1


def test_a_long_failure_reason_is_cut_to_500_characters(tmp_path):
    store = LabelStore(tmp_path / "labels.db", project="p")
    atoms = _labelled(0)
    store.add(atoms, frame_key(atoms), 1, {}, reason="x" * 2000)
    assert store.frames("failed")[0].info["reason"] == "x" * 500


def test_reopened_store_keeps_its_labels_and_still_refuses_another_project(tmp_path):
    path = tmp_path / "labels.db"
    frames = _fill(LabelStore(path, project="p"))
    again = LabelStore(path, project="p")
    assert again.count() == 5 and again.keys() == {frame_key(a) for a in frames}
    assert [a.info["energy"] for a in again.frames()] == pytest.approx([frames[k].info["energy"] for k in (0, 1, 3, 4)])
    extra = _labelled(99)
    again.add(extra, frame_key(extra), 4, {})
    with pytest.raises(InputError, match="'p'"):  # the message names the project that owns the store
        LabelStore(path, project="q")
    third = LabelStore(path, project="p")  # the refusal changed nothing
    assert third.count("ok") == 5 and third.frames()[-1].info["key"] == frame_key(extra)


def test_frame_key_depends_on_elements_and_positions_only():
    a = _labelled(0)
    key = frame_key(a)
    assert len(key) == 20 and int(key, 16) >= 0  # 20 hex digits
    b = a.copy()
    b.info["energy"] = 123.0
    b.cell = [10, 10, 10]
    b.pbc = True
    assert frame_key(b) == key  # labels, cell and pbc do not enter
    c = a.copy()
    c.positions += 1e-8  # far below the 1e-6 Å rounding
    assert frame_key(c) == key
    d = a.copy()
    d.positions[1, 0] += 1e-4
    assert frame_key(d) != key
    e = a.copy()
    e.numbers = [8, 1, 9]  # one H replaced by F at the same place
    assert frame_key(e) != key
    f = a[[0, 2, 1]]  # the same geometry with two atoms swapped is another frame ordering
    assert frame_key(f) != key
    keys = {frame_key(_labelled(s)) for s in range(200)}
    assert len(keys) == 200


def test_frame_key_does_not_tell_minus_zero_from_zero():
    """A coordinate in (-5e-7, 0) rounds to -0.0, whose bytes differ from 0.0's: equal rounded
    geometries must still share a key."""
    a = Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.74]])
    b = Atoms("H2", positions=[[-1e-9, 0.0, 0.0], [0.0, 0.0, 0.74]])
    np.testing.assert_array_equal(np.round(a.positions, 6), np.round(b.positions, 6))
    assert frame_key(a) == frame_key(b)
