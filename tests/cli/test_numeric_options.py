"""A property of the whole command line: a zero, negative, NaN or absurd value of any length, time,
count or temperature option is one line of InputError (exit 2) before any work, and the output
path stays exactly as it was (here: absent)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from ase.build import molecule
from ase.io import write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from neuralmd.cli import app
from neuralmd.errors import InputError

from ..conftest import shared_file

#: the values each kind of option must refuse
BAD = {
    "positive_int": [0, -1, -7],
    "positive_float": [0.0, -1.0, -1e-3, math.nan, -math.inf],
    "nonnegative_int": [-1, -100],
    "nonnegative_float": [-1.0, -1e-9, math.nan, -math.inf],
    "temperature": [0.0, -300.0, math.nan, 1e30],
    "timestep": [0.0, -0.5, math.nan, 1e30],
    "pressure": [math.nan, 1e30, -1e30, math.inf],
}

#: (command and the arguments it needs, option, kind); {tmp}, {pdb}, {xyz}, {model} are filled in
CASES = [
    *[(["md", "{model}", "--structure", "{xyz}"], option, kind) for option, kind in [
        ("--timestep-fs", "timestep"), ("--temperature", "temperature"), ("--friction-per-ps", "nonnegative_float"),
        ("--steps", "nonnegative_int"), ("--replicas", "positive_int"), ("--report-every", "positive_int"),
        ("--checkpoint-every", "positive_int"), ("--threads", "nonnegative_int"), ("--tau-ps", "positive_float"),
        ("--pressure-bar", "pressure"), ("--tau-p-ps", "positive_float"), ("--compressibility-per-bar", "positive_float")]],
    *[(["md", "--engine", "openmm", "--pdb", "{pdb}"], option, kind) for option, kind in [
        ("--timestep-fs", "positive_float"), ("--temperature", "temperature"), ("--steps", "nonnegative_int"),
        ("--friction-per-ps", "nonnegative_float"), ("--report-every", "positive_int")]],
    *[(["sample", "--pdb", "{pdb}", "--cv", "phi"], option, kind) for option, kind in [
        ("--barrier-kjmol", "positive_float"), ("--pace", "positive_int"), ("--height-kjmol", "positive_float"),
        ("--ns", "positive_float"), ("--steps", "nonnegative_int"), ("--temperature", "temperature"),
        ("--timestep-fs", "positive_float"), ("--friction-per-ps", "nonnegative_float"),
        ("--report-every", "positive_int"), ("--checkpoint-every", "positive_int"), ("--sigma", "positive_float"),
        ("--tmax", "nonnegative_float"), ("--replicas", "positive_int")]],
    *[(["train", "--train", "{xyz}"], option, kind) for option, kind in [
        ("--valid-fraction", "positive_float"), ("--features", "positive_int"), ("--interactions", "positive_int"),
        ("--cutoff", "positive_float"), ("--batch-size", "nonnegative_int"), ("--lr", "positive_float"),
        ("--max-steps", "positive_int"), ("--time-budget-min", "nonnegative_float"), ("--eval-every", "positive_int"),
        ("--checkpoint-every", "positive_int"), ("--patience", "positive_int"), ("--huber-delta", "positive_float"),
        ("--force-weight", "nonnegative_float"), ("--virial-weight", "nonnegative_float"), ("--train-weight", "positive_float"),
        ("--threads", "nonnegative_int")]],
    *[(["active", "--structure", "{xyz}"], option, kind) for option, kind in [
        ("--committee", "positive_int"), ("--rounds", "positive_int"), ("--initial-frames", "positive_int"),
        ("--md-steps", "positive_int"), ("--replicas", "positive_int"), ("--trust-low", "positive_float"),
        ("--max-select", "positive_int"), ("--explore-barrier-kjmol", "positive_float"),
        ("--train-steps", "positive_int"), ("--workers", "positive_int"), ("--temperatures", "temperature")]],
    *[(["neb", "{xyz}", "{xyz}", "--model", "{model}"], option, kind) for option, kind in [
        ("--images", "positive_int"), ("--fmax", "positive_float"), ("--steps", "positive_int"),
        ("--trust", "positive_float")]],
    *[(["fes", "{tmp}/no-run"], option, kind) for option, kind in [
        ("--bins", "positive_int"), ("--blocks", "nonnegative_int"), ("--skip-ns", "nonnegative_float")]],
    *[(["cv", "train", "{tmp}/no-run"], option, kind) for option, kind in [
        ("--lag-ps", "positive_float"), ("--n-cv", "positive_int"), ("--epochs", "positive_int"),
        ("--restarts", "positive_int"), ("--smoothness", "nonnegative_float"), ("--scale-floor", "nonnegative_float")]],
    *[(["screen", "{tmp}/mols.smi", "--model", "{model}"], option, kind) for option, kind in [
        ("--conformers", "positive_int"), ("--fmax", "positive_float"), ("--max-steps", "positive_int")]],
    *[(["cv", "discover", "--pdb", "{pdb}"], option, kind) for option, kind in [
        ("--temperature", "temperature"), ("--tmax", "positive_float"), ("--short-ns", "positive_float"),
        ("--explore-ns", "positive_float"), ("--max-explore-ns", "positive_float"), ("--lag-ps", "positive_float"),
        ("--restarts", "positive_int"), ("--epochs", "positive_int"), ("--min-crossings", "positive_int"),
        ("--time-limit-min", "nonnegative_float"), ("--n-cv", "positive_int")]],
    *[(["refine", "{model}", "--structure", "{xyz}"], option, kind) for option, kind in [
        ("--timestep-fs", "timestep"), ("--temperature", "temperature"), ("--pressure-bar", "pressure"),
        ("--replicas", "positive_int"), ("--sample-ps", "positive_float"), ("--equilibration-ps", "nonnegative_float"),
        ("--frame-every-fs", "positive_float"), ("--updates", "nonnegative_int"), ("--lr", "positive_float"),
        ("--ess-threshold", "positive_float"), ("--qm-weight", "nonnegative_float"), ("--qm-batch", "positive_int"),
        ("--check-ps", "nonnegative_float"), ("--rdf-error", "positive_float"), ("--threads", "nonnegative_int")]],
    *[(["bind", "--prmtop", "{prmtop}", "--inpcrd", "{inpcrd}", "--host-residue", "CUC", "--guest-residue", "B2"],
       option, kind) for option, kind in [
        ("--barrier-kjmol", "positive_float"), ("--sigma", "positive_float"), ("--pace", "positive_int"),
        ("--cv-train-ps", "positive_float"), ("--funnel-radius", "positive_float"), ("--funnel-k", "positive_float"),
        ("--funnel-angle", "nonnegative_float"), ("--ns", "positive_float"), ("--temperature", "temperature"),
        ("--pressure-bar", "positive_float"), ("--timestep-fs", "timestep"), ("--friction-per-ps", "nonnegative_float"),
        ("--report-every", "positive_int"), ("--checkpoint-every", "positive_int"), ("--walkers", "positive_int")]],
    (["build", "replicate", "{xyz}"], "--repeat", "positive_int"),
    (["build", "replicate", "{xyz}"], "--frame", "nonnegative_int"),
    (["build", "pack", "--molecule", "H2O:4"], "--density", "positive_float"),
    (["build", "pack", "--molecule", "H2O:4"], "--box", "positive_float"),
    (["build", "pack", "--molecule", "H2O:4", "--density", "1"], "--tolerance", "positive_float"),
    (["label", "{xyz}"], "--threads", "nonnegative_int"),
    (["demo"], "--train-minutes", "positive_float"),
]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("numeric")
    write(tmp / "ethanol.xyz", molecule("CH3CH2OH"))
    (tmp / "mols.smi").write_text("CCO ethanol\n")
    return {"tmp": str(tmp), "pdb": str(shared_file("alanine_dipeptide/ala2.pdb")), "xyz": str(tmp / "ethanol.xyz"),
            "model": str(tmp / "model.pt"), "prmtop": str(shared_file("cb7_b2/complex-vacuum.prmtop")),
            "inpcrd": str(shared_file("cb7_b2/complex-vacuum.inpcrd"))}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_bad_numbers_are_one_line_input_errors_and_write_nothing(inputs, data):
    command, option, kind = data.draw(st.sampled_from(CASES), label="case")
    value = data.draw(st.sampled_from(BAD[kind]), label="value")
    out = f"{inputs['tmp']}/out"
    args = [arg.format(**inputs) for arg in command] + [option, str(value)]
    if command[0] == "screen":
        args += ["-o", out + ".csv"]
    elif command[0] != "fes":
        args += ["-o", out + (".xyz" if command[0] == "label" else "")]
    result = CliRunner().invoke(app, args)
    if result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit):
        assert result.exit_code == 2, (args, result.output)  # rejected by the option parser itself
    else:
        assert isinstance(result.exception, InputError), (args, repr(result.exception), result.output)
        message = str(result.exception)
        assert "\n" not in message and message.strip(), (args, message)
    for suffix in ("", ".xyz", ".csv"):
        assert not Path(out + suffix).exists(), (args, suffix)
