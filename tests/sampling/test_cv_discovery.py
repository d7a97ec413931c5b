"""Does the data behind a learned CV contain the process? The modes of a CV's distribution and
the crossings between them; `cv train` refusing data that never cross (exit 2, nothing
written) and keeping a CV of data that do; `cv discover` exploring until a transition is seen."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from neuralmd.cli import app
from neuralmd.errors import InputError
from neuralmd.sampling.cv_training import MIN_CV_CROSSINGS, cv_modes, slowest_crossed

from .toy import write_toy


def test_modes_and_crossings_of_a_cv_distribution():
    rng = np.random.default_rng(0)
    states = np.repeat(np.arange(31) % 2, 200)  # one trajectory hopping between two states 30 times
    s = states * 3.0 + 0.3 * rng.normal(size=states.size)
    hops = cv_modes(s, np.zeros(states.size, int))
    assert hops["crossings"] == 30 and hops["visits"] == [16, 15]
    assert np.allclose(hops["modes"], [0.0, 3.0], atol=0.3) and 0.5 < hops["boundary"] < 2.5
    assert hops["fraction"] == (s > hops["boundary"]).mean()
    # the same frames as two trajectories that never leave their state
    apart = cv_modes(s, states)
    assert apart["crossings"] == 0 and apart["visits"] == [1, 1] and apart["boundary"] is not None
    # a rare state, 2 % of the frames, visited 6 times: still a mode, and its crossings counted
    rare = np.zeros(6000, int)
    for start in range(500, 6000, 1000):
        rare[start:start + 20] = 1
    rare_modes = cv_modes(rare * 3.0 + 0.3 * rng.normal(size=rare.size), np.zeros(rare.size, int))
    assert rare_modes["crossings"] == 12 and rare_modes["visits"] == [7, 6]
    # one broad state: a single mode, nothing to cross
    single = cv_modes(rng.normal(size=5000), np.zeros(5000, int))
    assert single["boundary"] is None and single["crossings"] == 0


def test_the_slowest_output_crossed_back_and_forth_is_kept():
    """Outputs in order of TICA eigenvalue: a slower process crossed twice (a cis peptide bond
    visited once in a hot exploration) gives way to the next one crossed often enough."""
    assert slowest_crossed([{"crossings": 2}, {"crossings": 36}, {"crossings": 80}]) == 1
    assert slowest_crossed([{"crossings": 12}, {"crossings": 36}]) == 0
    assert slowest_crossed([{"crossings": 2}, {"crossings": 5}], least=10) == 1  # none enough: the most crossed
    assert slowest_crossed([{"crossings": 2}, {"crossings": 5}], least=3) == 1


def _toy_run(folder, barrier_kjmol: float, distance_A: float, steps: int = 50_000, seed: int = 0):
    pdb, xml = write_toy(folder, barrier_kjmol, distance_A)
    result = CliRunner().invoke(app, ["md", "--engine", "openmm", "--pdb", str(pdb), "--forcefield", str(xml),
                                      "--steps", str(steps), "--report-every", "50", "--seed", str(seed),
                                      "-o", str(folder / "run")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return folder / "run"


def test_cv_train_refuses_trajectories_that_never_cross_and_keeps_those_that_do(tmp_path):
    """Two runs of the toy behind a 40 kJ/mol barrier, one in each state: Deep-TICA separates
    them, but no trajectory crosses, so `cv train` stops (exit 2, nothing written) unless
    --force; behind a 6 kJ/mol barrier the run crosses often and the CV is kept."""
    a = _toy_run(tmp_path / "a", 40.0, 1.5)
    b = _toy_run(tmp_path / "b", 40.0, 2.5)
    args = ["cv", "train", str(a), str(b), "--lag-ps", "1", "--epochs", "20", "-o"]
    result = CliRunner().invoke(app, [*args, str(tmp_path / "cv")])
    assert result.exit_code != 0 and isinstance(result.exception, InputError)
    message = str(result.exception)
    assert "cross between them 0 times" in message and "did not sample the process" in message
    assert str(a) in message and "\n" not in message
    assert not (tmp_path / "cv").exists()
    forced = CliRunner().invoke(app, [*args, str(tmp_path / "forced"), "--force"], catch_exceptions=False)
    assert forced.exit_code == 0 and "warning (--force)" in " ".join(forced.output.split())
    meta = json.loads((tmp_path / "forced" / "descriptors.json").read_text())
    assert meta["modes"]["crossings"] == 0 and len(meta["modes"]["modes"]) == 2

    hopping = _toy_run(tmp_path / "c", 6.0, 1.5, steps=200_000)
    result = CliRunner().invoke(app, ["cv", "train", str(hopping), "--lag-ps", "1", "--epochs", "20",
                                      "-o", str(tmp_path / "cv")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "cv" / "descriptors.json").read_text())
    assert meta["modes"]["crossings"] >= MIN_CV_CROSSINGS
    assert meta["tica_eigenvalues"][0] > 0.2 and meta["implied_timescales_ps"][0] > 1.0


def _discover(*args):
    return CliRunner().invoke(app, ["cv", "discover", *args], catch_exceptions=False)


KEYS = ("explore_ns", "eigenvalue", "crossings", "passed")


@pytest.fixture(scope="module")
def toy_discovery(tmp_path_factory):
    """The toy behind a 30 kJ/mol (12 kT) barrier, discovered uninterrupted: (options, folder,
    history)."""
    tmp = tmp_path_factory.mktemp("discover")
    pdb, xml = write_toy(tmp / "toy", barrier_kjmol=30.0)
    common = ["--pdb", str(pdb), "--forcefield", str(xml), "--short-ns", "0.05", "--explore-ns", "0.05",
              "--tmax", "1500", "--lag-ps", "1", "--epochs", "20", "--restarts", "1"]
    whole = _discover(*common, "--max-explore-ns", "1", "-o", str(tmp / "whole"))
    assert whole.exit_code == 0, whole.output
    return common, tmp / "whole", json.loads((tmp / "whole" / "discover.json").read_text())


def test_cv_discover_explores_until_the_cv_crosses_then_stops(toy_discovery):
    """The first exploration steps hold no (or too few) crossings of the learned CV's modes, so
    the loop extends them until one passes, then stops and writes the CV and its OPES settings;
    OPES with those settings crosses the toy's barrier."""
    from neuralmd.config import load_config
    from neuralmd.sampling.bias_factory import BiasSettings
    from neuralmd.sampling.colvar import read_colvar
    from neuralmd.sampling.samples import load_samples

    common, folder, history = toy_discovery
    rows = history["iterations"]
    assert history["found"] and len(rows) > 1 and all(not r["passed"] for r in rows[:-1]) and rows[-1]["passed"]
    assert rows[-1]["crossings"] >= MIN_CV_CROSSINGS and rows[-1]["eigenvalue"] >= 0.2
    assert np.allclose([r["explore_ns"] for r in rows], 0.05 * np.arange(1, len(rows) + 1))
    bias = load_config(BiasSettings, folder / "opes.toml")
    assert bias.bias == "opes" and bias.cv == str((folder / "cv").resolve()) and len(bias.sigma) == 1
    assert (folder / "cv" / "cv.pt").is_file()
    again = _discover("--resume", str(folder))  # a finished loop: nothing to do, same answer
    assert again.exit_code == 0 and json.loads((folder / "discover.json").read_text()) == history

    opes = folder.parent / "opes"
    result = CliRunner().invoke(app, ["sample", *common[:4], "--config", str(folder / "opes.toml"), "--ns", "0.2",
                                      "--report-every", "100", "-o", str(opes)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert np.ptp(read_colvar(opes / "colvar.csv")["bias_kjmol"]) > 10.0  # the bias grew
    distance = load_samples(opes, "distance(0,1)").values[:, 0]
    assert (distance < 1.8).any() and (distance > 2.2).any()  # and drove the system over the barrier


def test_cv_discover_stopped_at_its_limit_resumes_to_the_same_iterations(toy_discovery, tmp_path):
    """Stopped one exploration step short (exit 1, no CV, the way on printed) and resumed with a
    higher limit, the loop reaches the same iterations: explorations continue from their
    checkpoints, trainings repeat from their seeds. Settings other than the limits are refused
    on resume."""
    common, _, history = toy_discovery
    rows = history["iterations"]
    limit = f"{0.05 * (len(rows) - 1):g}"
    stopped = _discover(*common, "--max-explore-ns", limit, "-o", str(tmp_path / "split"))
    assert stopped.exit_code == 1 and "no CV found" in stopped.output and "--resume" in stopped.output
    assert not (tmp_path / "split" / "cv").exists()
    refused = CliRunner().invoke(app, ["cv", "discover", "--resume", str(tmp_path / "split"), "--lag-ps", "2"])
    assert isinstance(refused.exception, InputError) and "--lag-ps" in str(refused.exception)
    resumed = _discover("--resume", str(tmp_path / "split"), "--max-explore-ns", "1")
    assert resumed.exit_code == 0, resumed.output
    again = json.loads((tmp_path / "split" / "discover.json").read_text())["iterations"]
    assert [[r[k] for k in KEYS] for r in again] == [[r[k] for k in KEYS] for r in rows]


def test_cv_discover_killed_and_resumed_reaches_the_same_iterations(toy_discovery, tmp_path):
    """kill -9 while the loop explores or trains, then --resume: the same iterations as the
    uninterrupted loop."""
    import signal
    import subprocess
    import sys
    import time

    common, _, history = toy_discovery
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "neuralmd.cli", "cv", "discover", *common, "--max-explore-ns", "1",
                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "discover.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # after the first iteration is stored: the loop is exploring or training
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the loop ended before it could be killed"
    assert not json.loads((out / "discover.json").read_text())["found"]
    resumed = _discover("--resume", str(out))
    assert resumed.exit_code == 0, resumed.output
    again = json.loads((out / "discover.json").read_text())["iterations"]
    assert [[r[k] for k in KEYS] for r in again] == [[r[k] for k in KEYS] for r in history["iterations"]]
