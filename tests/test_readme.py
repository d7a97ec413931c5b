"""README.md's multi-step recipes run as written, shortened: the commands of a bash block are
parsed out of the README, their lengths cut by the substitutions below, run through the command
line in order, and their outputs checked. A recipe edited in the README is the recipe tested
(the benchmarks `benchmarks/ala2_sampling.py` and `benchmarks/surrogates.py` run the same
commands at full length)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from neuralmd.cli import app
from neuralmd.errors import InputError
from neuralmd.data.io import read_frames
from neuralmd.units import AMU_PER_A3_IN_G_PER_CM3

from .conftest import shared_file

README = Path(__file__).resolve().parents[1] / "README.md"

#: (pattern, replacement) making each recipe short: nanoseconds become picoseconds, and the
#: discovery loop accepts its first CV (its checks are tested in tests/sampling/test_cv_discovery.py)
SHORTER = [
    (r"(bind --prmtop .*)--ns 20\b", r"\1--ns 0.002"),
    (r"--ns 10\b", "--ns 0.02"),
    (r"--ns 20\b", "--ns 0.03"),
    (r"--ns 0\.01\b", "--ns 0.0002"),
    (r"(cg train .*?)(-o \S+)", r"\1--epochs 1 \2"),
    (r"(cg md \S+) --ns 1 --replicas 64", r"\1 --ns 0.002 --replicas 8"),
    (r"(cg refine \S+)", r"\1 --iterations 1 --ns 0.001 --replicas 8"),
    (r"--steps 200000\b", "--steps 24 --report-every 2"),
    (r"(refine runs/water/model\.pt .*?)(-o \S+)", r"\1--sample-ps 0.01 --equilibration-ps 0 --frame-every-fs 1 "
                                                  r"--updates 1 --check-ps 0.01 \2"),
    (r"--updates 40\b", "--updates 2"),
    (r"(bind --prmtop .*?)(-o \S+)", r"\1--cv-train-ps 2 --report-every 100 --checkpoint-every 500 \2"),
    (r"--ns 40\b", "--ns 0.004"),
    (r"--binding --skip-ns 1\b", "--binding --skip-ns 0"),
    (r"--skip-ps 1\b", "--skip-ps 0"),
    (r"--skip-ps 10\b", "--skip-ps 0.002"),
    (r"--time-budget-min 15\b", "--time-budget-min 15 --max-steps 2 --eval-every 2"),
    (r"--rounds 10\b", "--rounds 1 --initial-frames 4 --md-steps 40 --max-select 2 --train-steps 10"),
    (r"(cv discover --pdb \S+)", r"\1 --short-ns 0.02 --explore-ns 0.04 --max-explore-ns 0.04 --min-crossings 1 "
                                 r"--min-eigenvalue -1 --epochs 5 --restarts 1"),
]


#: the commands a multi-step recipe is made of (other lines of a block are single commands)
RECIPE_COMMANDS = ("neuralmd cg ", "neuralmd cv ", "neuralmd sample ", "neuralmd fes ", "neuralmd active ")


def recipe_commands(marker: str, kinds: tuple[str, ...] = RECIPE_COMMANDS) -> list[str]:
    """The neuralmd commands starting with one of ``kinds`` in README bash blocks containing
    ``marker``, continuation lines joined, spacing normalised, comments dropped, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    commands = []
    for block in blocks:
        if marker not in block:
            continue
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(line.split("#", 1)[0].split())
            if line.startswith(kinds) and " ... " not in line:  # "active ... --scheduler": variants of the above
                commands.append(line)
    return commands


def run_recipe(commands: list[str], variables: dict[str, str], workdir: Path) -> None:
    for command in commands:
        for pattern, replacement in SHORTER:
            command = re.sub(pattern, replacement, command)
        for name, value in variables.items():
            command = command.replace(name, value)
        args = shlex.split(command)[1:]
        args = [str(workdir / a) if a.startswith("runs/") else a for a in args]
        result = CliRunner().invoke(app, args, catch_exceptions=False)
        assert result.exit_code == 0, (command, result.output)


@pytest.fixture()
def recipe_vars(tmp_path, trained_model, ethanol_xyz):
    from neuralmd.data.io import read_frames, write_frames

    write_frames(read_frames(ethanol_xyz)[:1], tmp_path / "start.xyz")
    return {"$PDB": str(shared_file("alanine_dipeptide/ala2.pdb")), "runs/ethanol/model.pt": str(trained_model),
            "start.xyz": str(tmp_path / "start.xyz")}


def test_readme_known_cv_recipe(tmp_path, recipe_vars):
    commands = recipe_commands("--cv phi,psi --bias opes")
    assert len(commands) >= 4 and any(c.startswith("neuralmd fes") for c in commands)
    run_recipe(commands, recipe_vars, tmp_path)
    opes = tmp_path / "runs" / "ala2-opes"
    report = json.loads((opes / "fes.json").read_text())
    assert report["cvs"] == ["phi"] and report["converged"] is False and report["reason"]  # picoseconds: no verdict
    assert json.loads((opes / "results.json").read_text())["steps"] == 15_000  # resumed to 0.03 ns at 2 fs
    assert (tmp_path / "runs" / "ethanol-opes" / "colvar.csv").is_file()


def test_readme_blind_cv_recipe(tmp_path, recipe_vars):
    commands = recipe_commands("cv discover")
    assert [c.split()[1] for c in commands] == ["cv", "sample", "fes"]
    run_recipe(commands, recipe_vars, tmp_path)
    history = json.loads((tmp_path / "runs" / "ala2-discover" / "discover.json").read_text())
    assert history["found"] and (tmp_path / "runs" / "ala2-discover" / "cv" / "cv.pt").is_file()
    report = json.loads((tmp_path / "runs" / "ala2-blind" / "fes.json").read_text())
    assert "converged" in report and report["frames"] >= 2


def test_readme_coarse_grained_recipe(tmp_path):
    commands = recipe_commands("neuralmd cg train")
    assert [c.split()[2] for c in commands] == ["train", "md", "refine"]
    run_recipe(commands, {}, tmp_path)
    for name in ("ala2-cg/model.pt", "ala2-cg/prior.pt", "ala2-cg-md/cg_fes.png", "ala2-cg-refined/model.pt"):
        assert (tmp_path / "runs" / name).is_file(), name
    analysis = json.loads((tmp_path / "runs" / "ala2-cg-md" / "cg_analysis.json").read_text())
    assert analysis["converged"] is False and analysis["reason"]  # 2 ps of 8 replicas: no verdict
    assert 0 <= analysis["fes_mae_kT"] < 10


def test_readme_active_learning_recipe(tmp_path, ethanol_xyz):
    """The recipe's DFT labels (PBE/def2-SVP through PySCF on a Dask cluster of 2 workers), one
    short round, then --resume of the finished loop."""
    from neuralmd.data.io import read_frames, write_frames

    write_frames(read_frames(ethanol_xyz)[:1], tmp_path / "ethanol.xyz")
    commands = recipe_commands("neuralmd active --structure")
    assert [c.split()[2] for c in commands] == ["--structure", "--resume"]
    run_recipe(commands, {"ethanol.xyz": str(tmp_path / "ethanol.xyz")}, tmp_path)
    run = tmp_path / "runs" / "ethanol-al"
    state = json.loads((run / "state.json").read_text())
    assert state["completed_rounds"] == 1 and [row["round"] for row in state["history"]] == [0, 1]
    assert all((run / "final" / f"member_{m}" / "model.pt").is_file() for m in range(4))


def test_readme_condensed_phase_recipe(tmp_path, float64_model):
    """train on three DeePMD water folders (2 steps), build replicate (64 -> 512 waters), build
    pack (a water-ethanol mixture) -> md --ensemble npt -> analyze, as written, shortened, with an
    untrained float64 model over H, C, O standing in for runs/water/model.pt in MD."""
    float64_model.save(tmp_path / "water.pt")
    commands = recipe_commands("neuralmd build  pack", ("neuralmd train --train ../shared/data/deepmd_water",
                                                  "neuralmd build ", "neuralmd md runs/water/", "neuralmd analyze "))
    assert [c.split()[1:3] for c in commands] == [["train", "--train"], ["build", "replicate"], ["build", "pack"],
                                                  ["md", "runs/water/model.pt"], ["analyze", "runs/water-npt"]]
    run_recipe(commands, {"runs/water/model.pt": str(tmp_path / "water.pt"), "box.xyz": str(tmp_path / "box.xyz"),
                          "mix.xyz": str(tmp_path / "mix.xyz"),
                          "../shared/data/deepmd_water": str(shared_file("deepmd_water"))}, tmp_path)
    config = tomllib.loads((tmp_path / "runs" / "water" / "config.toml").read_text())
    assert [Path(t).name for t in config["train"]] == ["data_0", "data_1", "data_2"] and config["batch_size"] == 2
    assert (config["architecture"], config["repulsion"]) == ("painn", "none")  # benchmarks/water.py's network
    log = np.genfromtxt(tmp_path / "runs" / "water-npt" / "log.csv", delimiter=",", names=True)
    assert len(log) == 13 and np.all(np.isfinite(log["pressure_bar"]))
    assert log["density_g_cm3"][0] == pytest.approx(0.9934, abs=1e-4)  # 512 waters at the data's density
    report = json.loads((tmp_path / "runs" / "water-npt" / "analysis.json").read_text())
    assert set(report["rdf"]) == {"O-O", "O-H", "H-H"} and "corrected" in report["diffusion_1e-9_m2_s"]["O"]
    mix = read_frames(tmp_path / "mix.xyz", require_labels=False)[0]
    assert len(mix) == 500 * 3 + 12 * 9
    assert mix.get_masses().sum() / mix.cell.volume * AMU_PER_A3_IN_G_PER_CM3 == pytest.approx(0.99, rel=1e-9)


def test_readme_refine_recipe(tmp_path, float64_model):
    """build a 64-water box -> refine against the Soper RDFs and the density with the DFT water
    data fused in -> resume with more updates -> analyze the check run, as written, shortened,
    with an untrained float64 model over H, C, O standing in for runs/water/model.pt."""
    float64_model.save(tmp_path / "water.pt")
    commands = recipe_commands("neuralmd refine", ("neuralmd build ", "neuralmd refine ", "neuralmd analyze "))
    assert [c.split()[1] for c in commands] == ["build", "refine", "refine", "analyze"]
    run_recipe(commands, {"runs/water/model.pt": str(tmp_path / "water.pt"), "box64.xyz": str(tmp_path / "box64.xyz"),
                          "../shared/data/": str(shared_file("deepmd_water").parent) + "/"}, tmp_path)
    run = tmp_path / "runs" / "water-exp"
    history = json.loads((run / "history.json").read_text())
    assert [h["update"] for h in history] == [1, 2]
    assert {"chi2 rdf:O-O", "chi2 rdf:O-H", "chi2 rdf:H-H", "chi2 density", "qm_loss_ratio"} <= set(history[0])
    results = json.loads((run / "results.json").read_text())
    assert min(results["targets"]["rdf:O-H"]["axis"]) >= 1.3 and "after" in results["targets"]["density"]
    report = json.loads((run / "check-md" / "analysis.json").read_text())
    assert set(report["rdf"]) == {"O-O", "O-H", "H-H"} and report["density_g_cm3"]["mean"] > 0


def test_readme_binding_recipe(tmp_path):
    """bind CB7-B2 in OBC2 with the learned CV and two walkers -> resume -> fes --binding, as
    written, shortened (4 ps: the guest has not left the host yet, which fes says in one line)."""
    commands = recipe_commands("neuralmd bind", ("neuralmd bind ", "neuralmd fes "))
    assert [c.split()[1] for c in commands] == ["bind", "bind", "fes"]
    data = str(shared_file("cb7_b2/complex-vacuum.prmtop").parent.parent) + "/"
    run_recipe(commands[:2], {"../shared/data/": data}, tmp_path)
    run = tmp_path / "runs" / "cb7-b2"
    assert (run / "cv" / "cv.pt").exists() and tomllib.loads((run / "md.toml").read_text())["walkers"] == 2
    rows = (run / "colvar.csv").read_text().splitlines()
    assert rows[0].endswith("z,rho,d,lda,bias_kjmol") and int(rows[-1].split(",")[0]) == 2000
    fes = commands[2]
    for pattern, replacement in SHORTER:
        fes = re.sub(pattern, replacement, fes)
    result = CliRunner().invoke(app, shlex.split(fes.replace("runs/", f"{tmp_path}/runs/"))[1:])
    assert isinstance(result.exception, InputError) and "no frame in the unbound state" in str(result.exception)
