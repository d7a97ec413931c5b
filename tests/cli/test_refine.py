"""``neuralmd refine`` as a user runs it: a small water box refined against the Soper RDFs with
DFT frames fused in, every output there and readable, resumed with more updates into the same
history; bad input refused in one line, exit 2, nothing written."""

from __future__ import annotations

import json

import pytest
import torch

from neuralmd.data import read_frames, write_frames
from neuralmd.models.neural import load_network
from tests.cli.helpers import assert_input_error, run
from tests.conftest import shared_file, untrained_model

SOPER = shared_file("water_experiment/soper2013_rdf.txt")
BENMORE = shared_file("water_experiment/soper_benmore2008_oo_rdf.txt")
QM = shared_file("deepmd_water/data_3")


@pytest.fixture(scope="module")
def water_inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("refine-inputs")
    untrained_model().float().save(folder / "model.pt")
    write_frames(read_frames(shared_file("deepmd_water/data_0"), require_labels=False)[:1], folder / "box.xyz")
    return folder


def refine_args(inputs, out, *extra):
    return ["refine", str(inputs / "model.pt"), "--structure", str(inputs / "box.xyz"), "--ensemble", "nvt",
            "--temperature", "300", "--target", f"rdf:O-O={SOPER}", "--target", f"rdf:H-H={SOPER}@2.0,6.0",
            "--sample-ps", "0.02", "--equilibration-ps", "0", "--frame-every-fs", "2", "--check-ps", "0.02",
            "--lr", "1e-3", "--threads", "2", "-o", str(out), *extra]


def test_refine_writes_a_model_results_plots_and_a_check_run_and_resumes_with_more_updates(water_inputs, tmp_path):
    out = tmp_path / "refined"
    args = refine_args(water_inputs, out, "--qm-data", str(QM), "--qm-batch", "1", "--updates", "2")
    args[1], args[3] = "model.pt", "box.xyz"  # relative to where it runs; the resume below runs elsewhere
    result = run(*args, cwd=water_inputs)
    assert result.returncode == 0, result.stderr
    assert "rdf:O-O: χ² per point" in result.stdout + result.stderr and "QM force MAE" in result.stdout + result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["updates"] == 2 and results["samplings"] >= 1
    assert set(results["targets"]) == {"rdf:O-O", "rdf:H-H"}
    hh = results["targets"]["rdf:H-H"]
    assert min(hh["axis"]) >= 2.0 and hh["after"]["rms"] > 0
    qm = results["qm_errors"]
    assert qm["before"]["force_mae_mev_per_A"] > 0 and qm["after"]["force_mae_mev_per_A"] > 0
    refined, source = load_network(out / "model.pt"), load_network(water_inputs / "model.pt")
    assert any((a != b).any() for a, b in zip(refined.state_dict().values(), source.state_dict().values()))
    assert {"targets.png", "history.png", "history.json", "refine.toml"} <= {p.name for p in out.iterdir()}
    analysed = run("analyze", str(out / "check-md"), "--rdf", "O-O", "-o", str(tmp_path / "analysis"))
    assert analysed.returncode == 0, analysed.stderr
    first = json.loads((out / "history.json").read_text())
    resumed = run("refine", "--resume", str(out), "--updates", "3")
    assert resumed.returncode == 0, resumed.stderr
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 3
    checked = torch.load(out / "check-md" / "model.pt", map_location="cpu", weights_only=False)
    assert checked["extra"]["refine_update"] == 3  # the check run is of the refined model, not the earlier one
    assert [{k: v for k, v in h.items() if k != "wall_s"} for h in history[:2]] == [
        {k: v for k, v in h.items() if k != "wall_s"} for h in first]
    assert_input_error(run("refine", "--resume", str(out), "--lr", "1"), "--lr", "not used with --resume")
    assert_input_error(run(*refine_args(water_inputs, out)), "already holds a refinement", "--resume")


@pytest.mark.parametrize("change, fragments", [
    (["--target", f"rdf:O-O={BENMORE}"], ["soper_benmore2008_oo_rdf.txt", "--rdf-unit nm"]),
    (["--target", "density=0.997"], ["density", "--ensemble npt"]),
    (["--target", "density=0.997,-0.001", "--ensemble", "npt"], ["negative uncertainty"]),
    (["--target", f"rdf:C-O={SOPER}"], ["no column for g_C-O"]),
    (["--target", f"rdf:O-O={SOPER}", "--rdf-range", "0,9"], ["beyond", "half the box", "--rdf-range"]),
    (["--target", "rdf:O-O=missing.txt"], ["missing.txt", "not found"]),
    (["--target", "pressure=1"], ["unknown kind"]),
    (["--target", f"rdf:O-O={SOPER}", "--ess-threshold", "1.5"], ["ess_threshold"]),
    (["--target", f"rdf:O-O={SOPER}", "--sample-ps", "0"], ["sample_ps"]),
])
def test_bad_refine_input_is_one_line_exit_2_and_writes_nothing(water_inputs, tmp_path, change, fragments):
    out = tmp_path / "never"
    args = ["refine", str(water_inputs / "model.pt"), "--structure", str(water_inputs / "box.xyz"),
            "--ensemble", "nvt", "-o", str(out), *change]
    if "--ensemble" in change:
        args.remove("--ensemble"), args.remove("nvt")
    assert_input_error(run(*args), *fragments)
    assert not out.exists()


def test_a_target_file_without_the_pairs_columns_is_refused(water_inputs, tmp_path):
    table = tmp_path / "g.txt"
    table.write_text("# r g_OO err_OO g_OH err_OH\n1 0 0 0 0\n2.8 2.5 0.1 1 0.1\n")
    out = tmp_path / "never"
    result = run("refine", str(water_inputs / "model.pt"), "--structure", str(water_inputs / "box.xyz"), "--ensemble",
                 "nvt", "--target", f"rdf:H-H={table}", "-o", str(out))
    assert_input_error(result, "g.txt", "no column for g_H-H")
    assert not out.exists()
