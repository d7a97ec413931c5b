"""``neuralmd bind`` as a user runs it on CB7–B2 (a short run, resumed, its files readable),
``neuralmd fes --binding`` on a finished toy run, and bad input refused in one line, exit 2,
nothing written."""

from __future__ import annotations

import json
import math
import re

import pytest
import tomllib

from neuralmd.binding.runs import start_binding
from tests.binding.test_runs import toy_engine, toy_settings
from tests.binding.toy import toy_complex
from tests.cli.helpers import assert_input_error, run
from tests.conftest import shared_file

CB7 = shared_file("cb7_b2/complex-vacuum.prmtop").parent
COMPLEX = ["--prmtop", str(CB7 / "complex-vacuum.prmtop"), "--inpcrd", str(CB7 / "complex-vacuum.inpcrd")]
SHORT = ["--report-every", "100", "--checkpoint-every", "1000", "--platform", "CPU"]


def test_bind_runs_cb7_b2_in_obc2_and_resumes(tmp_path):
    out = tmp_path / "cb7"
    result = run("bind", *COMPLEX, "--host-residue", "CUC", "--guest-residue", "B2", "--ns", "0.004", *SHORT,
                 "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert "no ΔG° yet" in result.stdout + result.stderr  # 4 ps: the guest has not left the host
    assert {"bind.toml", "input.toml", "md.toml", "system.xml", "topology.pdb", "colvar.csv", "traj_000.h5md",
            "checkpoint.pt"} <= {p.name for p in out.iterdir()}
    settings = tomllib.loads((out / "bind.toml").read_text())
    assert len(settings["host"]) == 126 and len(settings["guest"]) == 30
    assert settings["funnel"]["lower_z_A"] < 0 < settings["bound_z_A"] < settings["unbound_z_A"][0]
    resumed = run("bind", "--resume", str(out), "--ns", "0.006")
    assert resumed.returncode == 0, resumed.stderr
    rows = (out / "colvar.csv").read_text().splitlines()
    assert rows[0] == "step,time_ps,replica,z,rho,d,bias_kjmol" and int(rows[-1].split(",")[0]) == 3000
    assert all(abs(float(r.split(",")[3])) < 4.0 for r in rows[1:])  # bound throughout
    assert_input_error(run("bind", "--resume", str(out), "--ns", "0.002"), "already at")
    assert_input_error(run("bind", "--resume", str(out), "--seed", "3"), "--seed", "not used with --resume")
    assert_input_error(run("md", "--resume", str(out)), "a binding run", "neuralmd bind --resume")
    from neuralmd.models import NeuralPotential

    NeuralPotential([1, 6, 7, 8], features=8, interactions=1, cutoff=4.0, num_basis=6).save(tmp_path / "guest.pt")
    NeuralPotential([1, 6], features=8, interactions=1, cutoff=4.0, num_basis=6).save(tmp_path / "hc.pt")
    assert_input_error(run("bind", "--resume", str(out), "--ns", "0.006", "--ml-correction", str(tmp_path / "hc.pt")),
                       "--ml-correction", "element")  # refused before any step is run
    corrected = run("bind", "--resume", str(out), "--ns", "0.006", "--ml-correction", str(tmp_path / "guest.pt"),
                    "--correction-ps", "0.1")
    assert corrected.returncode == 0, corrected.stderr
    correction = json.loads((out / "ml-correction" / "correction.json").read_text())
    assert set(correction["states"]) == {"bound", "unbound"} and len(list((out / "ml-correction" / "windows").iterdir())) == 10
    for values in correction["states"].values():  # an untrained guest model: no overlap is a possible, stated outcome
        assert (values["dA_kjmol"] is not None and math.isfinite(values["dA_kjmol"])) or "do not overlap" in values["reason"]
    assert "ML/MM correction ΔΔG" in corrected.stdout + corrected.stderr and "overlap" in corrected.stdout + corrected.stderr


def test_fes_binding_reports_dG_with_its_definitions_and_plots(tmp_path):
    start_binding(toy_complex(30.0), toy_settings(30.0), toy_engine(seed=1), tmp_path / "toy").run(250_000)
    result = run("fes", str(tmp_path / "toy"), "--binding", "--skip-ns", "0.1")
    assert result.returncode == 0, result.stderr
    assert re.search(r"ΔG°bind = -?\d+\.\d\d ± \d+\.\d\d kJ/mol", result.stdout + result.stderr)
    report = json.loads((tmp_path / "toy" / "binding.json").read_text())
    assert report["definition"]["bound"].startswith("z < 4.0") and report["recrossings"] > 0
    assert (tmp_path / "toy" / "binding.png").stat().st_size > 10_000
    assert_input_error(run("fes", str(tmp_path / "toy"), "--binding", "--bins", "30"), "--bins", "--binding")


def test_bind_with_an_ml_guest_runs_resumes_and_refuses_a_model_missing_an_element(tmp_path):
    from neuralmd.models import NeuralPotential

    def model(elements, path):
        NeuralPotential(elements, features=8, interactions=1, cutoff=4.0, num_basis=6).save(path)
        return str(path)

    good, bad = model([1, 6, 7, 8], tmp_path / "guest.pt"), model([1, 6], tmp_path / "hc.pt")
    args = [*COMPLEX, "--host-residue", "CUC", "--guest-residue", "B2", "--report-every", "50", "--checkpoint-every",
            "100", "--platform", "CPU"]
    refused = run("bind", *args, "--ml-guest", bad, "--ns", "0.0004", "-o", str(tmp_path / "bad"))
    assert_input_error(refused, "--ml-guest", "element")
    assert not (tmp_path / "bad").exists()
    out = tmp_path / "mlmm"
    assert run("bind", *args, "--ml-guest", good, "--ns", "0.0004", "-o", str(out)).returncode == 0
    assert (out / "guest_model.pt").exists() and tomllib.loads((out / "bind.toml").read_text())["ml_guest"]
    resumed = run("bind", "--resume", str(out), "--ns", "0.0006")
    assert resumed.returncode == 0, resumed.stderr
    assert int((out / "colvar.csv").read_text().splitlines()[-1].split(",")[0]) == 300


def test_bind_from_a_pdb_and_force_field_xml(tmp_path):
    """The --pdb + --forcefield input: the toy cage and guest in vacuum, host and guest by residue,
    a short run; a PDB whose residues the XML lacks is one line, exit 2."""
    from tests.binding.toy import write_toy_pdb_and_xml

    pdb, xml = write_toy_pdb_and_xml(tmp_path)
    out = tmp_path / "toy"
    args = ["--pdb", pdb, "--forcefield", xml, "--solvent", "vacuum", "--host-residue", "HST", "--guest-residue", "GST",
            "--funnel-radius", "2", "--report-every", "100", "--platform", "Reference"]
    result = run("bind", *args, "--ns", "0.01", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert int((out / "colvar.csv").read_text().splitlines()[-1].split(",")[0]) == 5000
    assert tomllib.loads((out / "input.toml").read_text())["pdb"] == pdb
    bad = run("bind", "--pdb", pdb, "--forcefield", "amber14-all.xml", "--solvent", "vacuum", "--host-residue", "HST",
              "--guest-residue", "GST", "--ns", "0.001", "-o", str(tmp_path / "bad"))
    assert_input_error(bad, "cannot build the system")
    assert not (tmp_path / "bad").exists()


def _without_radii(tmp_path):
    text = (CB7 / "complex-vacuum.prmtop").read_text()
    start = text.index("%FLAG RADII")
    stripped = text[:start] + text[text.index("%FLAG", start + 5):]
    path = tmp_path / "noradii.prmtop"
    path.write_text(stripped)
    return path


@pytest.mark.parametrize("args, fragments", [
    (["--host-residue", "CB8", "--guest-residue", "B2"], ("host residue 'CB8' not found", "CUC")),
    (["--host-atoms", "0-130", "--guest-residue", "B2"], ("overlap",)),
    (["--host-residue", "CUC", "--guest-residue", "B2", "--funnel-lower", "1.0"], ("does not contain the starting pose",)),
    (["--host-residue", "CUC", "--guest-residue", "B2", "--solvent", "explicit"], ("no periodic box",)),
    (["--host-residue", "CUC", "--host-atoms", "0-125", "--guest-residue", "B2"], ("--host-residue", "one")),
    (["--host-residue", "CUC", "--guest-atoms", "126-400"], ("index 156",)),
])
def test_bind_refuses_bad_input_and_writes_nothing(tmp_path, args, fragments):
    out = tmp_path / "run"
    assert_input_error(run("bind", *COMPLEX, *args, "--ns", "0.001", "-o", str(out)), *fragments)
    assert not out.exists()


def test_bind_refuses_implicit_solvent_without_gb_radii(tmp_path):
    out = tmp_path / "run"
    result = run("bind", "--prmtop", str(_without_radii(tmp_path)), "--inpcrd", str(CB7 / "complex-vacuum.inpcrd"),
                 "--host-residue", "CUC", "--guest-residue", "B2", "--ns", "0.001", "-o", str(out))
    assert_input_error(result, "no GB radii", "mbondi2")
    assert not out.exists()
