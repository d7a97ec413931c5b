"""Readers and writers: formats, unit conversion, validation with clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import molecule
from ase.units import kcal, mol

from neuralmd.data import read_frames, write_frames
from neuralmd.errors import InputError
from tests.conftest import shared_file

KCAL = kcal / mol


def test_rmd17_extxyz_reads_energies_and_forces(ethanol_xyz):
    frames = read_frames(ethanol_xyz)
    assert len(frames) == 1000
    first = frames[0]
    assert first.get_chemical_formula() == "C2H6O"
    assert first.info["energy"] == pytest.approx(-4209.4657843064815)
    assert first.arrays["forces"].shape == (9, 3)
    assert first.calc is None


def test_energy_and_force_units_are_converted_once(tmp_path):
    atoms = molecule("H2O")
    atoms.info["energy"] = -100.0
    atoms.arrays["forces"] = np.full((3, 3), 2.0)
    write_frames([atoms], tmp_path / "kcal.xyz")
    frames = read_frames(tmp_path / "kcal.xyz", energy_unit="kcal/mol", force_unit="kcal/mol/A")
    assert frames[0].info["energy"] == pytest.approx(-100.0 * KCAL)
    np.testing.assert_allclose(frames[0].arrays["forces"], 2.0 * KCAL)
    hartree = read_frames(tmp_path / "kcal.xyz", energy_unit="Hartree", force_unit="Hartree/Bohr")
    assert hartree[0].arrays["forces"][0, 0] == pytest.approx(2.0 * 27.211386 / 0.52917721, rel=1e-6)


def test_md17_npz_needs_units_and_converts(tmp_path, ethanol_xyz):
    frames = read_frames(ethanol_xyz)[:5]
    np.savez(tmp_path / "md17.npz", z=frames[0].numbers,
             R=np.stack([a.positions for a in frames]),
             E=np.array([[a.info["energy"] / KCAL] for a in frames]),
             F=np.stack([a.arrays["forces"] / KCAL for a in frames]))
    with pytest.raises(InputError, match="md17.npz: npz files do not record units"):
        read_frames(tmp_path / "md17.npz")
    back = read_frames(tmp_path / "md17.npz", energy_unit="kcal/mol", force_unit="kcal/mol/A")
    assert len(back) == 5
    assert back[3].info["energy"] == pytest.approx(frames[3].info["energy"], rel=1e-12)
    np.testing.assert_allclose(back[3].arrays["forces"], frames[3].arrays["forces"], rtol=1e-10)


def test_deepmd_water_is_periodic():
    folder = shared_file("deepmd_water")
    frames = read_frames(folder)
    assert len(frames) == 400
    water = frames[0]
    assert water.get_chemical_formula() == "H128O64"
    assert water.pbc.all()
    assert water.cell.lengths() == pytest.approx([12.4447] * 3, abs=1e-3)
    assert water.arrays["forces"].shape == (192, 3)


def test_extxyz_and_db_roundtrip(tmp_path, ethanol_xyz):
    frames = read_frames(ethanol_xyz)[:4]
    frames[1].info["config_type"] = "hot"
    for name in ("copy.xyz", "copy.db"):
        write_frames(frames, tmp_path / name)
        back = read_frames(tmp_path / name)
        assert len(back) == 4
        assert back[1].info["config_type"] == "hot"
        for a, b in zip(frames, back):
            assert b.info["energy"] == pytest.approx(a.info["energy"], rel=1e-14)
            np.testing.assert_allclose(b.arrays["forces"], a.arrays["forces"], rtol=1e-8)
            np.testing.assert_allclose(b.positions, a.positions, atol=1e-8)


def _write_text(path, text):
    path.write_text(text)
    return path


GOOD = """3
Properties=species:S:1:pos:R:3:forces:R:3 energy=-1.5 pbc="F F F"
O 0 0 0 0 0 0
H 0 0.76 0.58 0 0.1 0.2
H 0 -0.76 0.58 0 -0.1 -0.2
"""


def test_truncated_extxyz_names_file_and_frame(tmp_path):
    path = _write_text(tmp_path / "cut.xyz", GOOD + GOOD + "3\nProperties=species:S:1:pos:R:3 energy=-1\nO 0 0 0\n")
    with pytest.raises(InputError, match="cut.xyz: frame 2: cannot parse extxyz"):
        read_frames(path)


def test_frame_without_energy(tmp_path):
    path = _write_text(tmp_path / "noe.xyz", GOOD + GOOD.replace("energy=-1.5 ", ""))
    with pytest.raises(InputError, match="noe.xyz: frame 1: field 'energy': missing"):
        read_frames(path)
    assert len(read_frames(path, require_labels=False)) == 2


def test_nan_forces(tmp_path):
    path = _write_text(tmp_path / "nan.xyz", GOOD.replace("0 0.1 0.2", "0 nan 0.2"))
    with pytest.raises(InputError, match="nan.xyz: frame 0: field 'forces': non-finite value on atom 1"):
        read_frames(path)


def test_mismatched_forces_in_npz(tmp_path):
    np.savez(tmp_path / "bad.npz", z=[8, 1, 1], R=np.zeros((2, 3, 3)), E=np.zeros(2), F=np.zeros((3, 3, 3)))
    with pytest.raises(InputError, match="bad.npz: field 'forces': 3 frames but 2"):
        read_frames(tmp_path / "bad.npz", energy_unit="eV", force_unit="eV/A")


def test_unknown_units(tmp_path):
    path = _write_text(tmp_path / "ok.xyz", GOOD)
    with pytest.raises(InputError, match="energy_unit: unknown energy unit 'kcal'"):
        read_frames(path, energy_unit="kcal")
    with pytest.raises(InputError, match="force_unit: cannot parse 'eV'"):
        read_frames(path, force_unit="eV")


def test_failed_write_leaves_no_partial_file(tmp_path):
    def frames_then_crash():
        yield molecule("H2O")
        raise RuntimeError("labeler crashed")

    target = tmp_path / "out.xyz"
    target.write_text("previous content\n")
    with pytest.raises(RuntimeError, match="labeler crashed"):
        write_frames(frames_then_crash(), target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.xyz"]
    assert target.read_text() == "previous content\n"


def test_forces_for_the_wrong_number_of_atoms(tmp_path):
    water = molecule("H2O").positions
    np.savez(tmp_path / "short.npz", z=[8, 1, 1], R=np.stack([water, water]), E=np.zeros(2), F=np.zeros((2, 2, 3)))
    with pytest.raises(InputError, match=r"short.npz: frame 0: field 'forces': shape \(2, 3\), expected \(3, 3\)"):
        read_frames(tmp_path / "short.npz", energy_unit="eV", force_unit="eV/A")


def test_a_deepmd_type_map_naming_no_element_is_an_input_error(tmp_path):
    import shutil

    folder = tmp_path / "water"
    shutil.copytree(shared_file("deepmd_water/data_0"), folder)
    (folder / "type_map.raw").write_text("O\nHy\n")
    with pytest.raises(InputError, match=r"type_map\.raw: 'Hy' is not a chemical element symbol"):
        read_frames(folder)


def test_a_periodic_frame_without_a_cell_or_with_mixed_pbc_is_an_input_error(tmp_path):
    header = 'Properties=species:S:1:pos:R:3:forces:R:3 energy=-1.0 pbc="{pbc}"'
    body = "O 0 0 0 0 0 0\nH 0.96 0 0 0 0 0\nH -0.24 0.93 0 0 0 0\n"
    for name, pbc, field in (("nocell", "T T T", "cell"), ("slab", "T T F", "pbc")):
        path = tmp_path / f"{name}.xyz"
        path.write_text(f"3\n{header.format(pbc=pbc)}\n{body}")
        if name == "slab":  # a slab needs a lattice line to be read as periodic at all
            path.write_text(f"3\nLattice=\"5 0 0 0 5 0 0 0 5\" {header.format(pbc=pbc)}\n{body}")
        with pytest.raises(InputError, match=rf"{name}.xyz.*frame 0.*{field}"):
            read_frames(path)


def test_deepmd_virial_becomes_the_ase_stress_and_type_maps_may_differ_between_systems(tmp_path):
    """DeePMD's virial is -dE/dε (eV): the frame's stress is -virial/V (eV/Å³). Two systems whose
    type maps list the elements in different orders give the same elements."""
    source = shared_file("deepmd_water/data_0")
    types = np.loadtxt(source / "type.raw", dtype=int)
    coord = np.load(source / "set.000" / "coord.npy")[:2]
    box = np.load(source / "set.000" / "box.npy")[:2]
    virial = np.arange(18, dtype=float).reshape(2, 9) * 0.1
    for name, type_map, type_raw in (("a", "O H", types), ("b", "H O", 1 - types)):
        folder = tmp_path / "sets" / name
        (folder / "set.000").mkdir(parents=True)
        (folder / "type_map.raw").write_text(type_map.replace(" ", "\n"))
        np.savetxt(folder / "type.raw", type_raw, fmt="%d")
        for key, value in (("coord", coord), ("box", box), ("virial", virial),
                           ("energy", np.array([-1.0, -2.0])), ("force", np.zeros_like(coord))):
            np.save(folder / "set.000" / f"{key}.npy", value)
    frames = read_frames(tmp_path / "sets")
    assert len(frames) == 4
    assert all((f.numbers == frames[0].numbers).all() for f in frames)
    volume = abs(np.linalg.det(box[1].reshape(3, 3)))
    np.testing.assert_allclose(frames[1].info["stress"], -virial[1].reshape(3, 3) / volume)
