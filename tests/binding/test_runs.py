"""Binding runs end to end on a toy whose binding constant is known exactly (a guest particle
in a Gaussian well at the centre of a fixed ring host, inside a funnel): OPES along the axis
and the funnel's standard-state correction recover ΔG° within the block error; a free guest
recovers the funnel's own volume; a run continued from its checkpoint repeats the uninterrupted
one exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuralmd.binding.analysis import axis_pmf, binding_report
from neuralmd.binding.funnel import STANDARD_VOLUME_A3
from neuralmd.binding.runs import BindSettings, resume_binding, start_binding
from neuralmd.errors import InputError
from neuralmd.md.openmm_engine import OpenMMSettings
from neuralmd.sampling.colvar import read_colvar
from neuralmd.sampling.fes import kT_kjmol
from tests.binding.toy import exact_binding_dG, toy_complex

FUNNEL = {"radius_A": 2.0, "cone_angle_deg": 30.0, "switch_z_A": 4.0, "lower_z_A": -4.0, "upper_z_A": 16.0,
          "k_kjmol_A2": 20.0}
HOST, ANCHOR, GUEST = list(range(12)), list(range(6, 12)), [12]


def toy_settings(depth_kjmol: float, **changes) -> BindSettings:
    values = {"host": HOST, "guest": GUEST, "anchor": ANCHOR, "funnel": dict(FUNNEL), "cv": "axial",
              "barrier_kjmol": depth_kjmol + 10.0, "sigma": 0.5, "pace": 500, "bound_z_A": 4.0,
              "unbound_z_A": [9.0, 15.0], **changes}
    return BindSettings(**values)


def toy_engine(**changes) -> OpenMMSettings:
    values = {"temperature_K": 300.0, "timestep_fs": 2.0, "constraints": "None", "report_every": 100,
              "checkpoint_every": 100_000, "platform": "Reference", **changes}
    return OpenMMSettings(**values)


@pytest.mark.parametrize("depth, cv, walkers", [(30.0, "axial", 2), (30.0, "distance", 1), (0.0, "axial", 1)])
def test_opes_in_the_funnel_recovers_the_exact_binding_free_energy(tmp_path, depth, cv, walkers):
    """A 30 kJ/mol well (ΔG° ≈ -10 kJ/mol) biased along the axis by two walkers sharing the bias
    (one started bound, one on the plateau), or along the centroid distance, and a guest without
    a well (ΔG° = -kT ln(V_bound / V°): the funnel's own volume below bound_z); 2 ns in all.
    One trajectory per case, so every bound is statistical: ΔG° within 3 block errors (for the
    free guest, its volume within the same factor) and at least 10 recrossings (14-73 seen over
    seeds 3 and 4 with these settings)."""
    settings = toy_settings(depth, cv=cv, unbound_walkers=walkers // 2)
    run = start_binding(toy_complex(depth), settings, toy_engine(seed=3, walkers=walkers), tmp_path / "run")
    run.run(1_000_000 // walkers)
    report = binding_report(tmp_path / "run", skip_ns=0.2)
    exact = exact_binding_dG(depth, 1.0, settings.make_funnel(), settings.bound_z_A, 300.0)
    assert report["recrossings"] >= 10
    assert abs(report["dG_kjmol"] - exact) < max(3 * report["dG_err_kjmol"], 1.0), (report["dG_kjmol"], exact)
    assert report["dG_err_kjmol"] < 2.0 and report["escaped"]["frames"] <= 5
    w = np.array([np.nan if v is None else v for v in report["pmf"]["W_kjmol"]], dtype=float)
    z = np.array(report["pmf"]["z_A"])
    if depth:  # the well's depth, less the entropy of the cone around it, shows in the PMF at z = 0
        assert np.nanmin(w[np.abs(z) < 0.5]) < -depth / 2


def test_axis_pmf_keeps_a_plateau_weighted_1e_21_of_the_well():
    """A run stuck outside: frames on the plateau carry OPES weights exp(−120 kJ/mol / kT) ≈ 1e-21
    of the well's. The PMF must still show the plateau (at 0) and the well at −120 kJ/mol less
    kT ln of the frame counts, bin by bin (np.histogram with explicit edges rounded it to 0: NaN)."""
    kT = kT_kjmol(300.0)
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.uniform(-1.0, 1.0, 4000), rng.uniform(10.0, 20.0, 20000)])
    weights = np.where(z < 5.0, 1.0, math.exp(-120.0 / kT))
    centres, w = axis_pmf(z, weights, (-2.0, 22.0), (12.0, 19.0), 12, 300.0)
    counts = np.histogram(z, bins=12, range=(-2.0, 22.0))[0]
    plateau = (centres >= 12.0) & (centres < 19.0)
    assert np.isfinite(w[counts > 0]).all() and np.isnan(w[counts == 0]).all()
    assert abs(w[plateau].mean()) < 1e-9
    expected_well = -120.0 - kT * (np.log(counts[1]) - np.log(counts[plateau]).mean())  # bin 1: 0 ≤ z < 2 Å
    assert w[1] == pytest.approx(expected_well, abs=1e-6)


def test_unbound_walkers_start_on_the_plateau_and_the_others_at_the_pose(tmp_path):
    """--unbound-walkers 1 of 3: the last walker's first colvar row is on the unbound plateau,
    the others' in the bound state; every walker bound or all unbound is refused up front."""
    settings = toy_settings(30.0, unbound_walkers=1)
    start_binding(toy_complex(30.0), settings, toy_engine(walkers=3), tmp_path / "run").run(100)
    colvar = read_colvar(tmp_path / "run" / "colvar.csv")
    first = {r: colvar["z"][colvar["replica"] == r][0] for r in range(3)}
    lo, hi = settings.unbound_z_A
    assert first[0] < settings.bound_z_A and first[1] < settings.bound_z_A
    assert lo - 1.0 < first[2] < hi + 1.0
    for n, walkers in ((1, 1), (-1, 2)):
        with pytest.raises(InputError, match="unbound walkers"):
            start_binding(toy_complex(30.0), toy_settings(30.0, unbound_walkers=n), toy_engine(walkers=walkers),
                          tmp_path / f"refused{n}")
        assert not (tmp_path / f"refused{n}").exists()


def test_the_free_guest_volume_of_a_stiff_funnel_is_the_frustum():
    """The quadrature the toy tests compare against: with a stiff wall the volume below bound_z
    is the cone's frustum, π h (R₁² + R₁R₂ + R₂²) / 3."""
    stiff = toy_settings(0.0, funnel={**FUNNEL, "k_kjmol_A2": 1e5}).make_funnel()
    r1, r2, h = 2.0, 2.0 + math.tan(math.radians(30.0)) * 8.0, 8.0
    frustum = math.pi * h * (r1 * r1 + r1 * r2 + r2 * r2) / 3
    volume = STANDARD_VOLUME_A3 * math.exp(-exact_binding_dG(0.0, 1.0, stiff, 4.0, 300.0, n=3000) / kT_kjmol(300.0))
    assert volume == pytest.approx(frustum, rel=0.01)


KILLED_RUN = """
import sys
from tests.binding.test_runs import toy_engine, toy_settings
from tests.binding.toy import toy_complex
from neuralmd.binding.runs import start_binding
start_binding(toy_complex(30.0), toy_settings(30.0), toy_engine(checkpoint_every=20_000, walkers=2),
              sys.argv[1]).run(400_000)
"""


def test_run_killed_and_resumed_repeats_the_uninterrupted_one_exactly(tmp_path):
    """Two walkers sharing the bias, kill -9 after the first checkpoints, resume: colvar (z, rho,
    d, the bias felt, per walker) and the final state equal those of the uninterrupted run bit
    for bit."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    straight = start_binding(toy_complex(30.0), toy_settings(30.0), toy_engine(checkpoint_every=20_000, walkers=2),
                             tmp_path / "straight")
    straight.run(100_000)
    split = tmp_path / "split"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(split)], cwd=root,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if (split / "colvar.csv").exists() and len((split / "colvar.csv").read_text().splitlines()) > 900:
            break  # past step 45,000: two checkpoints written, the third not yet
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    resumed = resume_binding(split)
    assert 0 < resumed.step < 100_000
    resumed.run(100_000 - resumed.step)
    a, b = read_colvar(tmp_path / "straight" / "colvar.csv"), read_colvar(split / "colvar.csv")
    for key in ("step", "replica", "z", "rho", "d", "bias_kjmol"):
        np.testing.assert_array_equal(a[key], b[key])
    assert set(a["replica"]) == {0, 1} and not np.array_equal(a["z"][a["replica"] == 0], a["z"][a["replica"] == 1])
    np.testing.assert_array_equal(straight.current_state().batch.positions, resumed.current_state().batch.positions)


def test_start_refuses_a_pose_outside_the_funnel_or_not_bound_and_writes_nothing(tmp_path):
    with pytest.raises(InputError, match="does not contain the starting pose"):
        start_binding(toy_complex(30.0, start=(5.0, 0.0, 10.0)), toy_settings(30.0), toy_engine(), tmp_path / "a")
    with pytest.raises(InputError, match="not bound"):
        start_binding(toy_complex(30.0, start=(0.0, 0.0, 6.0)), toy_settings(30.0), toy_engine(), tmp_path / "b")
    with pytest.raises(InputError, match="unbound_z_A"):
        start_binding(toy_complex(30.0), toy_settings(30.0, unbound_z_A=[2.0, 15.0]), toy_engine(), tmp_path / "c")
    assert not any(tmp_path.iterdir())


def test_a_guest_stuck_outside_at_the_bias_floor_is_flagged():
    """The signature of an OPES barrier far above the well's depth (benchmarks/opes_barrier.py):
    the guest leaves once and stays out where the bias sits at -BARRIER. A guest that comes back,
    or stays out where the bias has risen well above the floor, is not flagged."""
    from neuralmd.binding.analysis import stuck_outside

    kT = kT_kjmol(300.0)
    t = np.linspace(0.0, 6.0, 6001)
    z = np.where(t < 1.3, 0.2, 15.0)
    floor = np.where(t < 1.3, 4.0, -148.0 + 8.0 * (t - 1.3) / 4.7)  # -148 -> -140 kJ/mol, as CB7-B2 at 150
    reason = stuck_outside(z, t, floor, 4.9, 150.0, kT)
    assert reason.startswith("stuck:") and "1.30 ns" in reason and "-BARRIER = -150" in reason
    back = np.where((t > 4.0) & (t < 4.5), 0.2, z)  # it came back for half a nanosecond
    assert stuck_outside(back, t, floor, 4.9, 150.0, kT) == ""
    risen = np.where(t < 1.3, 4.0, -100.0)  # outside, but the bias has filled to 50 kJ/mol above the floor
    assert stuck_outside(z, t, risen, 4.9, 150.0, kT) == ""
    assert stuck_outside(np.full_like(t, 0.2), t, floor, 4.9, 150.0, kT) == ""  # never left
