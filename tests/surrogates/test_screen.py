"""Conformer screening with real RDKit and a real trained potential: relaxed conformers are
minima of the potential, ranking is consistent and reproducible, bad lines and unknown
elements are per-molecule failures, a file with nothing to screen is an InputError."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem

from neuralmd.data import read_frames
from neuralmd.errors import InputError
from neuralmd.md.ase_calculator import NeuralCalculator, load_calculator
from neuralmd.surrogates.screen import embed_conformers, read_smiles, screen
from neuralmd.units import EV_IN_KJMOL

SMILES = """# screening test set
CCO ethanol
OCCO glycol

C1CC broken ring
CCCC butane
CCCl chloroethane
"""
N_CONFORMERS, FMAX, MAX_STEPS = 4, 0.05, 100


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module", autouse=True)
def one_thread(trained_model):
    """Relaxing molecules of ~10 atoms is fastest on one torch thread (and two threads slow
    down badly when the cores are shared); the shared model is built first, as conftest sets."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def screened(trained_model, tmp_path_factory):
    """(summary, output folder) of one screen of :data:`SMILES` with the trained ethanol model."""
    folder = tmp_path_factory.mktemp("screen")
    (folder / "molecules.smi").write_text(SMILES)
    summary = screen(folder / "molecules.smi", trained_model, folder / "ranked.csv", conformers=N_CONFORMERS,
                     fmax_eV_per_A=FMAX, max_steps=MAX_STEPS, seed=0)
    return summary, folder


def test_read_smiles_skips_comments_and_names_entries(tmp_path):
    path = tmp_path / "in.smi"
    path.write_text("# header\n\nCCO\tethanol\n  OCCO   ethylene glycol \nC(\nCCCC\n")
    molecules, failures = read_smiles(path)
    assert [(m.line, m.smiles, m.name) for m in molecules] == [
        (3, "CCO", "ethanol"), (4, "OCCO", "ethylene glycol"), (6, "CCCC", "line6")]
    (bad,) = failures
    assert (bad.line, bad.smiles) == (5, "C(")
    assert str(path) in bad.reason and "line 5" in bad.reason and "SMILES Parse Error" in bad.reason


def test_bad_line_and_unknown_element_are_per_molecule_failures(screened):
    summary, folder = screened
    failures = {f["line"]: f for f in summary["failures"]}
    assert sorted(failures) == [5, 7]
    assert failures[5]["smiles"] == "C1CC" and "line 5" in failures[5]["reason"]
    assert "unclosed ring" in failures[5]["reason"]
    assert "Cl" in failures[7]["reason"] and "not known to the model" in failures[7]["reason"]
    assert summary["molecules"] == 5 and summary["screened"] == 3
    rows = read_csv(folder / "ranked.csv")
    assert {r["name"] for r in rows} == {"ethanol", "glycol", "butane"}
    assert json.loads((folder / "ranked.json").read_text())["failures"] == summary["failures"]
    assert (folder / "ranked.png").stat().st_size > 10_000


def test_relaxed_conformers_are_minima_below_their_start(screened, trained_model):
    summary, folder = screened
    calc = load_calculator(trained_model)
    frames = read_frames(folder / "ranked.xyz")
    rows = read_csv(folder / "ranked.csv")
    assert len(frames) == len(rows) == summary["conformers"]
    converged = 0
    for frame, row in zip(frames, rows):
        assert (frame.info["name"], frame.info["conformer"]) == (row["name"], int(row["conformer"]))
        frame.calc = calc
        energy, forces = frame.get_potential_energy(), frame.get_forces()
        assert energy == pytest.approx(float(row["energy_eV"]), abs=1e-5)
        if row["converged"] == "1":
            converged += 1
            assert np.linalg.norm(forces, axis=1).max() < FMAX
        start = embed_conformers(Chem.MolFromSmiles(row["smiles"]), N_CONFORMERS, seed=0)[int(row["conformer"])]
        start.calc = calc
        e_start = start.get_potential_energy()
        assert e_start == pytest.approx(float(row["initial_energy_eV"]), abs=1e-4)  # batched pass = calculator
        assert energy <= e_start + 1e-6
        assert np.abs(frame.positions - start.positions).max() > 1e-3  # the optimiser moved the atoms
    assert converged >= len(rows) - 1, rows


def test_ranking_is_consistent(screened):
    _, folder = screened
    rows = read_csv(folder / "ranked.csv")
    for name in {r["name"] for r in rows}:
        mine = [r for r in rows if r["name"] == name]
        energies = [float(r["energy_eV"]) for r in mine]
        assert [int(r["rank"]) for r in mine] == list(range(1, len(mine) + 1))
        assert energies == sorted(energies)
        assert float(mine[0]["rel_energy_kjmol"]) == 0.0
        for r, e in zip(mine, energies):
            assert float(r["rel_energy_kjmol"]) == pytest.approx((e - energies[0]) * EV_IN_KJMOL, abs=1e-3)
        assert len({r["conformer"] for r in mine}) == len(mine)
    assert max(int(r["rank"]) for r in rows) >= 2  # some molecule kept more than one conformer


def test_same_seed_gives_identical_csv(trained_model, tmp_path):
    (tmp_path / "in.smi").write_text("CCO ethanol\nOCCO glycol\n")
    for run in ("a", "b"):
        screen(tmp_path / "in.smi", trained_model, tmp_path / run / "ranked.csv", conformers=3, max_steps=MAX_STEPS,
               seed=7)
    assert (tmp_path / "a" / "ranked.csv").read_bytes() == (tmp_path / "b" / "ranked.csv").read_bytes()


def test_accepts_any_potential_object(float64_model, tmp_path):
    (tmp_path / "in.smi").write_text("OCCO\n")
    summary = screen(tmp_path / "in.smi", float64_model, tmp_path / "out.csv", conformers=3, max_steps=5)
    assert summary["model"] == "NeuralPotential"
    calc = NeuralCalculator(float64_model)
    starts = embed_conformers(Chem.MolFromSmiles("OCCO"), 3, seed=0)
    for row in read_csv(tmp_path / "out.csv"):
        start = starts[int(row["conformer"])]
        start.calc = calc
        assert float(row["initial_energy_eV"]) == pytest.approx(start.get_potential_energy(), abs=1e-6)
        assert int(row["n_steps"]) <= 5


def test_only_bad_smiles_is_input_error_and_writes_nothing(trained_model, tmp_path):
    path = tmp_path / "bad.smi"
    path.write_text("# nothing good\nC1CC\nxyz\n")
    with pytest.raises(InputError, match=r"bad\.smi.*none of the 2 SMILES.*lines 2, 3"):
        screen(path, trained_model, tmp_path / "out" / "ranked.csv")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, message", [("# only a comment\n\n", "no SMILES found"),
                                           ("CCCl\n", "no molecule could be screened.*Cl")])
def test_nothing_to_screen_is_input_error(trained_model, tmp_path, text, message):
    path = tmp_path / "in.smi"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        screen(path, trained_model, tmp_path / "ranked.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.smi"]


def test_output_must_be_csv(trained_model, tmp_path):
    (tmp_path / "in.smi").write_text("CCO\n")
    with pytest.raises(InputError, match="expected a .csv path"):
        screen(tmp_path / "in.smi", trained_model, tmp_path / "ranked.xyz")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "neuralmd.cli", "screen", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_screens_and_exits_2_on_a_fully_bad_file(trained_model, tmp_path):
    (tmp_path / "good.smi").write_text("CCO ethanol\nC1CC broken\n")
    result = run_cli(str(tmp_path / "good.smi"), "--model", str(trained_model), "--conformers", "2",
                     "--max-steps", "50", "--threads", "1", "-o", str(tmp_path / "good" / "ranked.csv"))
    assert result.returncode == 0, result.stderr
    assert "1 of 2 molecules failed" in result.stderr
    assert {p.name for p in (tmp_path / "good").iterdir()} == {"ranked.csv", "ranked.xyz", "ranked.json",
                                                               "ranked.png"}
    assert [r["name"] for r in read_csv(tmp_path / "good" / "ranked.csv")] == ["ethanol"]

    (tmp_path / "bad.smi").write_text("C1CC\n")
    result = run_cli(str(tmp_path / "bad.smi"), "--model", str(trained_model), "-o", str(tmp_path / "bad" / "r.csv"))
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.smi" in lines[0], result.stderr
    assert not (tmp_path / "bad").exists()
