"""neuralmd eval on several test sets, on energy-only frames and along a scan (--scan KEY):
the reported numbers against the model's own predictions computed here; bad files exit 2
naming file and frame and write no plot."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from neuralmd.data import read_frames, write_frames
from neuralmd.models import NeuralPotential
from neuralmd.models.neural import load_potential
from neuralmd.state import AtomsBatch

from .helpers import assert_input_error, run


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A tiny untrained network over H, C, O (saved in float32; evaluated here in float64)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    NeuralPotential([1, 6, 8], e0=[-13.6, -1029.0, -2041.0], features=8, interactions=1, cutoff=4.0,
                    num_basis=4).save(path)
    return path


def _written(frames: list[Atoms], path: Path) -> list[Atoms]:
    """``frames`` written to ``path`` and read back as eval reads them (positions rounded by the text)."""
    write_frames(frames, path)
    return read_frames(path, require_labels=False)


def _predicted_energies(model: Path, frames: list[Atoms]) -> np.ndarray:
    """The model's energies (eV) of ``frames``, as ``eval --float64`` computes them."""
    potential = load_potential(model, dtype=torch.float64)
    return potential(AtomsBatch.from_atoms(frames), forces=False)["energy"].detach().numpy()


def _jiggled(n: int, seed: int, forces: bool) -> list[Atoms]:
    """Ethanol with displaced atoms, random energies (eV) and, if ``forces``, random forces (eV/Å)."""
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info["energy"] = -4200.0 + rng.normal()
        if forces:
            atoms.arrays["forces"] = rng.normal(size=(len(atoms), 3))
        frames.append(atoms)
    return frames


def _morse(d: np.ndarray, depth: float, r0: float) -> np.ndarray:
    """Morse curve (eV) of bond length ``d`` (Å) on top of an ethanol-sized offset."""
    return -4200.0 + depth * (1 - np.exp(-1.8 * (d - r0))) ** 2


def _stretch(bonded: str, n: int = 10) -> list[Atoms]:
    """Ethanol with the H nearest the first ``bonded`` atom (O or C) moved along the bond to
    lengths 0.8-1.6 Å: info ``d`` (Å), ``config_type`` ``{bonded}H``, Morse energies, no forces."""
    base = molecule("CH3CH2OH")
    heavy = int(np.flatnonzero(base.symbols == bonded)[0])
    hydrogens = np.flatnonzero(base.symbols == "H")
    h = int(hydrogens[np.argmin(base.get_distances(heavy, hydrogens))])
    unit = base.positions[h] - base.positions[heavy]
    unit /= np.linalg.norm(unit)
    lengths = np.linspace(0.8, 1.6, n)
    frames = []
    for d, energy in zip(lengths, _morse(lengths, 4.5 if bonded == "O" else 4.0, 0.97 if bonded == "O" else 1.09)):
        atoms = base.copy()
        atoms.positions[h] = atoms.positions[heavy] + d * unit
        atoms.info.update(energy=float(energy), d=float(d), config_type=f"{bonded}H")
        frames.append(atoms)
    return frames


def _eval_json(*args: str) -> dict:
    result = run("eval", *args, "--json", "--float64", "--threads", "1")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_several_files_give_each_files_metrics_and_a_row_of_panels_each(tmp_path, model):
    write_frames(_jiggled(4, seed=0, forces=True), tmp_path / "md.xyz")
    write_frames(_jiggled(3, seed=1, forces=False), tmp_path / "slice.xyz")
    both = _eval_json(str(model), str(tmp_path / "md.xyz"), str(tmp_path / "slice.xyz"), "-o", str(tmp_path / "both"))
    alone = {stem: _eval_json(str(model), str(tmp_path / f"{stem}.xyz"), "-o", str(tmp_path / stem))
             for stem in ("md", "slice")}
    assert list(both) == ["md", "slice"]
    for stem, metrics in alone.items():
        assert both[stem] == pytest.approx(metrics, rel=1e-12), stem
    assert both["md"]["frames"] == 4 and "force_mae_mev_per_A" in both["md"]
    assert both["slice"]["frames"] == 3 and "force_mae_mev_per_A" not in both["slice"]
    assert [p.name for p in (tmp_path / "both").iterdir()] == ["parity.png"]
    rows2 = matplotlib.image.imread(tmp_path / "both" / "parity.png").shape[0]
    rows1 = matplotlib.image.imread(tmp_path / "md" / "parity_md.png").shape[0]
    assert rows2 > 1.7 * rows1  # one row of panels per file


def test_energy_only_file_gives_energy_errors_by_hand_and_no_force_keys(tmp_path, model):
    frames = _written(_jiggled(5, seed=2, forces=False), tmp_path / "slice.xyz")
    metrics = _eval_json(str(model), str(tmp_path / "slice.xyz"), "-o", str(tmp_path))

    error = _predicted_energies(model, frames) - np.array([a.info["energy"] for a in frames])
    per_atom = error / np.array([len(a) for a in frames])
    assert metrics["frames"] == 5
    assert metrics["energy_mae_mev"] == pytest.approx(1000 * np.abs(error).mean(), rel=1e-9)
    assert metrics["energy_rmse_mev"] == pytest.approx(1000 * np.sqrt((error**2).mean()), rel=1e-9)
    assert metrics["energy_mae_mev_per_atom"] == pytest.approx(1000 * np.abs(per_atom).mean(), rel=1e-9)
    assert not [key for key in metrics if "force" in key]
    assert (tmp_path / "parity_slice.png").stat().st_size > 10_000


def test_scan_profiles_and_barriers_by_hand_one_per_config_type(tmp_path, model):
    frames = _written(_stretch("O") + _stretch("C"), tmp_path / "stretch.xyz")
    oh, ch = frames[:10], frames[10:]
    metrics = _eval_json(str(model), str(tmp_path / "stretch.xyz"), "--scan", "d", "-o", str(tmp_path))
    assert list(metrics["scan"]) == ["OH", "CH"]  # in file order

    for name, frames in (("OH", oh), ("CH", ch)):
        scan = metrics["scan"][name]
        predicted = _predicted_energies(model, frames)
        reference = np.array([a.info["energy"] for a in frames])
        error_mev = 1000 * ((predicted - predicted[0]) - (reference - reference[0]))  # aligned at the first frame
        lengths = np.array([a.info["d"] for a in frames])
        assert scan["frames"] == 10
        assert scan["energy_profile_mae_mev"] == pytest.approx(np.abs(error_mev).mean(), rel=1e-9)
        assert scan["energy_profile_rmse_mev"] == pytest.approx(np.sqrt((error_mev**2).mean()), rel=1e-9)
        assert scan["energy_profile_max_error_mev"] == pytest.approx(np.abs(error_mev).max(), rel=1e-9)
        assert scan["barrier_ref_mev"] == pytest.approx(1000 * np.ptp(_morse(lengths, *(
            (4.5, 0.97) if name == "OH" else (4.0, 1.09)))), abs=1e-4)
        assert scan["barrier_pred_mev"] == pytest.approx(1000 * np.ptp(predicted), rel=1e-9)
    assert (tmp_path / "scan_stretch_d.png").stat().st_size > 10_000

    table = run("eval", str(model), str(tmp_path / "stretch.xyz"), "--scan", "d", "--float64", "-o", str(tmp_path))
    assert table.returncode == 0, table.stderr
    rows = {line.split("│")[1].strip(): line for line in table.stdout.splitlines() if line.count("│") == 7}
    assert set(rows) == {"OH", "CH"}
    assert f"{metrics['scan']['OH']['barrier_ref_mev']:.1f}" in rows["OH"]
    assert "no forces in this file" in table.stdout and "force component" not in table.stdout


def test_scan_key_missing_on_a_frame_exits_2_naming_file_and_frame(tmp_path, model):
    frames = _stretch("O", n=5)
    del frames[3].info["d"]
    write_frames(frames, tmp_path / "scan.xyz")
    result = run("eval", str(model), str(tmp_path / "scan.xyz"), "--scan", "d", "-o", str(tmp_path / "out"))
    assert_input_error(result, "scan.xyz: frame 3", "'d' missing")
    assert not list(tmp_path.rglob("*.png"))


def test_frame_without_energy_exits_2_naming_file_and_frame_and_plots_nothing(tmp_path, model):
    write_frames(_jiggled(2, seed=3, forces=True), tmp_path / "good.xyz")
    frames = _jiggled(4, seed=4, forces=False)
    del frames[2].info["energy"]
    write_frames(frames, tmp_path / "bad.xyz")
    result = run("eval", str(model), str(tmp_path / "good.xyz"), str(tmp_path / "bad.xyz"), "-o", str(tmp_path / "out"))
    assert_input_error(result, "bad.xyz: frame 2", "'energy'", "missing")
    assert not list(tmp_path.rglob("*.png"))
