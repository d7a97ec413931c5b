"""Free energies from samples drawn exactly (inverse CDF, seeded) from known distributions:
bias weights, 1D/2D FES, basin ΔF with block errors, regions parsed from text, kT in kJ/mol."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import constants
from scipy.stats import norm

from neuralmd.errors import InputError
from neuralmd.sampling.convergence import basin_report, diagnose
from neuralmd.sampling.fes import (
    convergence,
    delta_f,
    fes,
    kT_kjmol,
    parse_region,
    to_kT,
    weights_from_bias,
)

T = 300.0
KB_EV = constants.k / constants.e  # eV/K, CODATA via scipy
KT_EV = KB_EV * T
KT_KJMOL = constants.R * T / 1000.0


def test_kT_in_kjmol_is_RT():
    for temperature in (1.0, 300.0, 1234.5):
        assert kT_kjmol(temperature) == pytest.approx(constants.R * temperature / 1000.0, rel=1e-6)
    assert kT_kjmol(300.0) == pytest.approx(2.4943, abs=1e-4)
    assert to_kT(kT_kjmol(350.0) * 2.5, 350.0) == pytest.approx(2.5, rel=1e-12)
    for bad in (0.0, -10.0):
        with pytest.raises(InputError, match="temperature"):
            kT_kjmol(bad)


def test_bias_weights_are_exp_beta_v_with_the_largest_one():
    v = np.array([0.0, 0.01, -0.02, 0.05, 0.03])  # eV
    w = weights_from_bias(v, T)
    assert w.max() == 1.0 and w.argmax() == 3
    np.testing.assert_allclose(w / w[0], np.exp(v / KT_EV), rtol=1e-5)
    np.testing.assert_allclose(weights_from_bias(v + 7.0, T), w, rtol=1e-12)  # a constant bias is no bias
    # biases of many kT, where exp(βV) alone would overflow, stay finite
    big = weights_from_bias(np.array([100.0, 99.9]), T)
    assert np.isfinite(big).all() and big[1] == pytest.approx(np.exp(-0.1 / KT_EV), rel=1e-5)
    hot = weights_from_bias(v, 600.0)  # higher temperature: flatter weights, exp(βV/2)
    np.testing.assert_allclose(hot / hot[0], np.sqrt(w / w[0]), rtol=1e-5)


# Double well in units of kT: u(x) = A (x² - 1)² + TILT x (x in Å); the left well is lower.
A, TILT = 2.5, 0.5


def _u(x):
    return A * (x**2 - 1) ** 2 + TILT * x


def _inverse_cdf_sample(log_p, n: int, seed: int, lo: float = -2.6, hi: float = 2.6):
    """``n`` exact samples of the density ∝ exp(log_p(x)) on [lo, hi], and its CDF on a fine grid."""
    x = np.linspace(lo, hi, 400_001)
    p = np.exp(log_p(x) - log_p(x).max())
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(x))])
    cdf /= cdf[-1]
    rng = np.random.default_rng(seed)
    return np.interp(rng.random(n), cdf, x), (x, cdf)


def _check_against(f, p_bin, n_eff: float, min_count: float = 50.0):
    """F (kJ/mol, min 0) against bin probabilities: within 4 standard errors wherever the bin
    expects ``min_count`` samples; the error of F_k - F_min is kT √((1-p)/(n p)) for both bins."""
    f_ref = -KT_KJMOL * np.log(p_bin)
    f_ref -= f_ref.min()
    sigma = KT_KJMOL * np.sqrt((1 - p_bin) / (n_eff * p_bin))
    sigma_min = sigma.flat[np.argmin(f_ref)]
    ok = n_eff * p_bin > min_count
    assert ok.sum() > 10
    assert np.all(np.abs(f - f_ref)[ok] < 4 * (sigma + sigma_min)[ok]), np.max(np.abs(f - f_ref)[ok] / sigma[ok])
    return f_ref


def test_fes_of_exact_double_well_samples_recovers_the_potential():
    n = 200_000
    x, (grid, cdf) = _inverse_cdf_sample(lambda s: -_u(s), n, seed=1)
    centres, f = fes(x, np.ones(n), bins=40, ranges=[(-2.0, 2.0)], temperature_K=T)
    edges = np.linspace(-2.0, 2.0, 41)
    np.testing.assert_allclose(centres[0], 0.5 * (edges[1:] + edges[:-1]))
    assert f.shape == (40,) and np.nanmin(f) == 0.0
    p_bin = np.diff(np.interp(edges, grid, cdf))
    _check_against(f, p_bin, n)
    # the lower (left) well is the minimum, and the barrier at x = 0 is about A kT above the right well
    assert centres[0][np.argmin(f)] < 0
    right_well = f[np.argmin(np.abs(centres[0] - 1.0))]
    barrier = f[np.argmin(np.abs(centres[0] - 0.05))] - right_well
    assert barrier == pytest.approx((_u(0.05) - _u(1.05)) * KT_KJMOL, abs=0.25 * KT_KJMOL)


def test_fes_is_nan_where_no_sample_fell():
    n = 20_000
    x, (grid, cdf) = _inverse_cdf_sample(lambda s: -_u(s), n, seed=2, lo=-3.0, hi=3.0)
    centres, f = fes(x, np.ones_like(x), bins=12, ranges=[(-3.0, 3.0)], temperature_K=T)
    expected = n * np.diff(np.interp(np.linspace(-3.0, 3.0, 13), grid, cdf))
    assert (expected < 1e-6).sum() >= 2 and (expected > 20).sum() >= 4  # both kinds of bin are there
    assert np.isnan(f[expected < 1e-6]).all()  # u > 40 kT there
    assert np.isfinite(f[expected > 20]).all()
    assert np.nanmin(f) == 0.0


def test_fes_reweights_biased_samples_back_to_the_unbiased_surface():
    """Samples of exp(-(u + v)) with a bias v = -0.7 A (x²-1)² (it fills the wells) weighted by
    exp(βV) give the FES of u alone."""
    n = 200_000
    v = lambda s: -0.7 * A * (s**2 - 1) ** 2  # noqa: E731  (in kT)
    x, _ = _inverse_cdf_sample(lambda s: -_u(s) - v(s), n, seed=3)
    w = weights_from_bias(v(x) * KT_EV, T)
    n_eff = w.sum() ** 2 / (w**2).sum()
    _, f = fes(x, w, bins=40, ranges=[(-2.0, 2.0)], temperature_K=T)
    _, (grid, cdf) = _inverse_cdf_sample(lambda s: -_u(s), 1, seed=0)
    _check_against(f, np.diff(np.interp(np.linspace(-2.0, 2.0, 41), grid, cdf)), n_eff)
    _, f_plain = fes(x, np.ones(n), bins=40, ranges=[(-2.0, 2.0)], temperature_K=T)
    assert np.nanmax(np.abs(f_plain - f)) > 3 * KT_KJMOL  # without the weights the surface is wrong


def test_fes_in_two_dimensions_of_independent_gaussians():
    n = 200_000
    rng = np.random.default_rng(4)
    sx, sy = 0.5, 1.0
    xy = np.column_stack([rng.normal(0.0, sx, n), rng.normal(0.5, sy, n)])
    centres, f = fes(xy, np.ones(n), bins=[15, 20], ranges=[(-1.5, 1.5), (-2.5, 3.5)], temperature_K=T)
    assert f.shape == (15, 20) and len(centres) == 2
    ex, ey = np.linspace(-1.5, 1.5, 16), np.linspace(-2.5, 3.5, 21)
    np.testing.assert_allclose(centres[1], 0.5 * (ey[1:] + ey[:-1]))
    p_bin = np.outer(np.diff(norm.cdf(ex, 0.0, sx)), np.diff(norm.cdf(ey, 0.5, sy)))
    p_bin /= p_bin.sum()  # the histogram is normalised over the range only
    _check_against(f, p_bin, n * np.diff(norm.cdf([-1.5, 1.5], 0, sx))[0] * np.diff(norm.cdf([-2.5, 3.5], 0.5, sy))[0])


def test_delta_f_by_hand_with_half_open_regions():
    values = np.array([-1.0] * 700 + [1.0] * 300)
    w = np.ones(len(values))
    assert delta_f(values, w, [(-2, 0)], [(0, 2)], T) == pytest.approx(-KT_KJMOL * np.log(3 / 7), rel=1e-6)
    assert delta_f(values, 5 * w, [(-2, 0)], [(0, 2)], T) == pytest.approx(-KT_KJMOL * np.log(3 / 7), rel=1e-6)
    # a region includes its lower bound and excludes its upper one
    edge = np.array([0.0, 0.0, 0.0, 1.0])
    assert np.isnan(delta_f(edge, np.ones(4), [(-1, 0)], [(0, 1)], T))  # 0 is in B, 1 in neither: A empty
    assert delta_f(edge, np.ones(4), [(0, 0.5)], [(0.5, 1.5)], T) == pytest.approx(-KT_KJMOL * np.log(1 / 3))
    assert np.isnan(delta_f(values, w, [(-2, 0)], [(5, 6)], T))  # nothing in B
    # two CVs: the region is the product of intervals
    xy = np.array([[-1, -1], [-1, 1], [1, 1], [1, 1], [1, -1]], dtype=float)
    assert delta_f(xy, np.ones(5), [(-2, 0), (-2, 2)], [(0, 2), (0, 2)], T) == pytest.approx(0.0, abs=1e-12)
    assert delta_f(xy, np.ones(5), [(-2, 0), (0, 2)], [(0, 2), (0, 2)], T) == pytest.approx(-KT_KJMOL * np.log(2))


def _two_states(n: int, p_b: float, rng) -> np.ndarray:
    """``n`` samples of 0.5 N(-2, 0.4) mixtures: state B (x > 0) with probability ``p_b``."""
    in_b = rng.random(n) < p_b
    return np.where(in_b, rng.normal(2.0, 0.4, n), rng.normal(-2.0, 0.4, n))


A_REGION, B_REGION = [(-np.inf, 0.0)], [(0.0, np.inf)]


def test_delta_f_of_two_states_with_known_populations():
    n, p_a, p_b = 20_000, 0.7, 0.3
    x = _two_states(n, p_b, np.random.default_rng(5))
    ref = -KT_KJMOL * np.log(p_b / p_a)
    sd = KT_KJMOL / np.sqrt(n * p_a * p_b)  # binomial error of ln(n_B / n_A)
    d = diagnose(x, np.ones(n), A_REGION, B_REGION, T, blocks=20)
    df, err = d.deltaF_kjmol, d.deltaF_err_kjmol
    assert abs(df - ref) < 4 * sd
    assert 0.5 * sd < err < 1.6 * sd  # 19-dof estimate of the same error
    assert df == delta_f(x, np.ones(n), A_REGION, B_REGION, T)

    # equal populations sampled, reweighted to 0.7 : 0.3 through a bias V = kT ln(p / 0.5)
    x = _two_states(n, 0.5, np.random.default_rng(6))
    bias = np.where(x > 0, KT_EV * np.log(p_b / 0.5), KT_EV * np.log(p_a / 0.5))
    df_w = delta_f(x, weights_from_bias(bias, T), A_REGION, B_REGION, T)
    assert abs(df_w - ref) < 4 * KT_KJMOL / np.sqrt(n * 0.25)


def test_block_error_is_the_spread_of_repeated_estimates():
    """Over 300 independent data sets the block errors (length from the data) agree in RMS with
    the actual scatter of the estimates, and with the binomial prediction."""
    rng = np.random.default_rng(7)
    n, p_b = 4000, 0.2
    estimates, errors = [], []
    for _ in range(300):
        d = diagnose(_two_states(n, p_b, rng), np.ones(n), A_REGION, B_REGION, T)
        estimates.append(d.deltaF_kjmol)
        errors.append(d.deltaF_err_kjmol)
    scatter = np.std(estimates, ddof=1)
    predicted = KT_KJMOL / np.sqrt(n * p_b * (1 - p_b))
    # relative standard errors: ~0.04 for the scatter, ~0.02 for the RMS of 300 block errors
    assert scatter == pytest.approx(predicted, rel=0.2)
    assert np.sqrt(np.mean(np.square(errors))) == pytest.approx(predicted, rel=0.1)
    assert np.mean(estimates) == pytest.approx(-KT_KJMOL * np.log(p_b / (1 - p_b)), abs=4 * scatter / np.sqrt(300))


def test_basin_report_and_convergence_curve():
    rng = np.random.default_rng(8)
    n = 2000
    x = _two_states(n, 0.3, rng)
    time_ns = np.arange(1, n + 1) * 0.001
    report = basin_report(x, np.ones(n), time_ns, A_REGION, B_REGION, T, blocks=4, points=10)
    assert set(report) == {"deltaF_kjmol", "deltaF_err_kjmol", "converged", "reason", "diagnostics", "curve"}
    d = diagnose(x, np.ones(n), A_REGION, B_REGION, T, blocks=4)
    assert report["deltaF_kjmol"] == d.deltaF_kjmol and report["deltaF_err_kjmol"] == d.deltaF_err_kjmol
    assert report["converged"] and report["diagnostics"]["block_frames"] == 500
    curve = np.array(report["curve"])
    assert curve.shape == (10, 2)
    np.testing.assert_allclose(curve[:, 0], np.arange(1, 11) * 0.2)  # every 200 samples, 0.2 ns
    for t_ns, value in curve:
        first = x[: int(round(t_ns / 0.001))]
        assert value == pytest.approx(-KT_KJMOL * np.log((first > 0).sum() / (first < 0).sum()), rel=1e-6)
    assert curve[-1, 1] == pytest.approx(d.deltaF_kjmol)
    ends, values = convergence(x, np.ones(n), A_REGION, B_REGION, T, points=10)
    np.testing.assert_array_equal(ends, np.arange(1, 11) * 200)
    np.testing.assert_allclose(values, curve[:, 1])


def test_convergence_curve_times_never_go_back_with_few_samples():
    x = np.array([-1.0, 1.0, -1.0, 1.0, -1.0])
    report = basin_report(x, np.ones(5), np.arange(1, 6) * 0.1, A_REGION, B_REGION, T, blocks=2, points=20)
    times = [t for t, _ in report["curve"]]
    assert np.all(np.diff(times) >= 0)
    assert not report["converged"]  # five frames of border jitter are no transitions


def test_parse_region():
    names = ["phi", "psi", "t3-0-1-2"]
    free = (-np.inf, np.inf)
    assert parse_region("phi>0", names) == [(0.0, np.inf), free, free]
    assert parse_region("-2<phi<0", names) == [(-2.0, 0.0), free, free]
    assert parse_region("phi<0 & psi>1", names) == [(-np.inf, 0.0), (1.0, np.inf), free]
    assert parse_region("-1.5e-1<psi", names) == [free, (-0.15, np.inf), free]
    assert parse_region("psi>-.5&psi<+2.", names) == [free, (-0.5, 2.0), free]
    assert parse_region("t3-0-1-2<-1", names) == [free, free, (-np.inf, -1.0)]
    for bad in ("phi", "omega>0", "phi>>0", "0>phi", "phi>0|psi<1", "phi>x", ""):
        with pytest.raises(InputError, match="basin"):
            parse_region(bad, names)
    # a parsed region selects what it says
    values = np.array([[-1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [-1.0, 0.0, 0.0]])
    region = parse_region("phi<0&psi>1", names)
    assert delta_f(values, np.ones(3), region, parse_region("phi>0", names), T) == pytest.approx(0.0, abs=1e-12)
