"""The verdict on a free-energy difference: transitions counted per trajectory, Kish effective
sample sizes, block errors whose block length comes from the data (checked against the actual
scatter of correlated runs), and `neuralmd fes` calling a barely sampled double well
unconverged and a well sampled one converged, on the exact value."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import constants
from typer.testing import CliRunner

from neuralmd.cli import app
from neuralmd.sampling.convergence import (
    MIN_TRANSITIONS,
    block_error,
    count_transitions,
    diagnose,
    kish_ess,
)

from .toy import BASIN_A, BASIN_B, exact_delta_f_kjmol, write_toy

T = 300.0
KT_KJMOL = constants.R * T / 1000.0
A, B = [(-np.inf, 0.0)], [(0.0, np.inf)]


def test_transitions_are_committed_basin_changes_per_trajectory():
    assert count_transitions(np.array([0, 0, 1, 1, 0, 0])) == (2, (2, 1))
    # a one-frame excursion is not a visit; frames in neither basin neither start nor end one
    assert count_transitions(np.array([0, 0, 1, 0, 0, -1, -1, 0, 0])) == (0, (1, 0))
    assert count_transitions(np.array([0, 0, -1, -1, 1, 1, -1, 1, 1])) == (1, (1, 1))
    assert count_transitions(np.array([0, 1, 0, 1, 0, 1])) == (0, (0, 0))  # jitter at the border
    # two walkers: no transition between the last frame of one and the first of the other
    labels = np.array([0, 1, 0, 1, 0, 1, 0, 1])  # interleaved: walker 0 always in A, walker 1 in B
    assert count_transitions(labels, segments=np.array([0, 1] * 4)) == (0, (1, 1))
    assert count_transitions(labels) == (0, (0, 0))
    assert count_transitions(np.array([0, 0, 1, 1]), min_dwell=3) == (0, (0, 0))


def test_kish_effective_sample_size():
    assert kish_ess(np.ones(40)) == pytest.approx(40.0)
    assert kish_ess(np.array([1.0, 0.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert kish_ess(np.array([3.0, 1.0])) == pytest.approx(16 / 10)
    assert kish_ess(np.array([])) == 0.0


def _telegraph(n: int, p_ab: float, p_ba: float, rng, start: int | None = None, noise: float = 0.3) -> np.ndarray:
    """A two-state Markov chain (x near -1 in A, +1 in B) of ``n`` frames, switching A->B with
    probability ``p_ab`` per frame and B->A with ``p_ba``; starts at equilibrium or in ``start``."""
    state = (rng.random() < p_ab / (p_ab + p_ba)) if start is None else bool(start)
    out, left = [], n
    while left > 0:
        dwell = min(rng.geometric(p_ba if state else p_ab), left)
        out.append(np.full(dwell, 1.0 if state else -1.0))
        left -= dwell
        state = not state
    return np.concatenate(out) + noise * rng.normal(size=n)


def test_block_error_with_length_from_the_data_is_the_scatter_of_correlated_runs():
    """Correlated runs (dwell times ~33 and ~100 frames): over 60 runs the automatic error's RMS
    agrees with the actual scatter of ΔF; the frame-by-frame error (blocks of 1) is far too small."""
    rng = np.random.default_rng(3)
    n, p_ab, p_ba = 20_000, 0.01, 0.03
    runs = [_telegraph(n, p_ab, p_ba, rng) for _ in range(60)]
    diagnostics = [diagnose(x, np.ones(n), A, B, T) for x in runs]
    estimates = np.array([d.deltaF_kjmol for d in diagnostics])
    errors = np.array([d.deltaF_err_kjmol for d in diagnostics])
    scatter = estimates.std(ddof=1)
    assert np.sqrt(np.mean(errors**2)) == pytest.approx(scatter, rel=0.25)
    assert np.mean([block_error(x < 0, x > 0, 1, T) for x in runs[:5]]) < 0.4 * scatter
    assert abs(estimates.mean() + KT_KJMOL * np.log(p_ab / p_ba)) < 4 * scatter / np.sqrt(60)
    assert all(d.block_frames >= 128 for d in diagnostics)  # several correlation times per block
    assert sum(d.converged for d in diagnostics) >= 55


def test_a_rare_basin_visited_once_is_unconverged_for_that_reason():
    rng = np.random.default_rng(4)
    x = -1.0 + 0.3 * rng.normal(size=10_000)
    x[6000:6100] += 2.0  # one visit to B
    d = diagnose(x, np.ones(10_000), A, B, T)
    assert not d.converged and d.transitions == 2 and "transitions" in d.reason_keys
    assert "cv discover" in d.as_dict()["advice"][0]


def test_walkers_started_alike_are_unconverged_until_they_forget_the_start():
    """64 walkers all started in A and run for about one dwell time: many transitions in all,
    but the time series of the walkers together has not relaxed, which the block error
    (blocks over time, every walker in each) and the drift see; 40 dwell times later it has."""
    rng = np.random.default_rng(5)
    for frames, converged in ((200, False), (8000, True)):
        x = np.stack([_telegraph(frames, 0.005, 0.015, rng, start=0) for _ in range(64)], axis=1)  # (time, walker)
        segments = np.tile(np.arange(64), frames)
        d = diagnose(x.reshape(-1), np.ones(x.size), A, B, T, segments=segments)
        assert d.transitions > MIN_TRANSITIONS
        assert d.converged == converged, d.reasons
    exact = -KT_KJMOL * np.log(0.005 / 0.015)
    assert abs(d.deltaF_kjmol - exact) < 4 * d.deltaF_err_kjmol


def _md(folder, steps: int, seed: int) -> None:
    pdb, xml = write_toy(folder)
    result = CliRunner().invoke(app, ["md", "--engine", "openmm", "--pdb", str(pdb), "--forcefield", str(xml),
                                      "--steps", str(steps), "--report-every", "100", "--seed", str(seed),
                                      "-o", str(folder / "run")], catch_exceptions=False)
    assert result.exit_code == 0, result.output


def _fes(run) -> tuple[dict, str]:
    result = CliRunner().invoke(app, ["fes", str(run), "--cv", "distance(0,1)", "--basin-a", BASIN_A,
                                      "--basin-b", BASIN_B], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads((run / "fes.json").read_text()), " ".join(result.output.split())


def test_fes_calls_a_barely_sampled_double_well_unconverged_and_a_well_sampled_one_exact(tmp_path):
    """The same toy (exact ΔF by quadrature, about 2.8 kT): 0.2 ns cross its 4 kT barrier a
    handful of times and `fes` says so; 2 ns cross it tens of times and `fes` reports the exact
    value within its error."""
    exact = exact_delta_f_kjmol(T)
    _md(tmp_path / "short", 100_000, seed=1)
    report, output = _fes(tmp_path / "short" / "run")
    assert report["converged"] is False and report["reason"].startswith("transitions")
    assert report["diagnostics"]["transitions"] < MIN_TRANSITIONS
    assert "UNCONVERGED" in output and "run longer" in output
    _md(tmp_path / "long", 1_000_000, seed=3)
    report, output = _fes(tmp_path / "long" / "run")
    assert report["converged"] is True and report["reason"] == "" and "converged" in output
    assert report["diagnostics"]["transitions"] >= MIN_TRANSITIONS
    assert abs(report["deltaF_kjmol"] - exact) < 3 * report["deltaF_err_kjmol"], (report["deltaF_kjmol"], exact)
    assert 0.2 < report["deltaF_err_kjmol"] < 2.0
