"""Smooth ECE against its integral computed exactly and against relplot / torch-uncertainty;
ENCE, UCE and QCE against netcal and loops written from the papers' formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from peer_libraries import torch_uncertainty
from scipy import integrate
from scipy.special import softmax
from scipy.stats import norm

from mcdrop import metrics as M


def _binary(n: int, seed: int, power: float = 1.5):
    rng = np.random.default_rng(seed)
    f = rng.uniform(size=n)
    y = (rng.uniform(size=n) < f**power).astype(np.int64)
    return f, y


def _exact_smooth_ece(f, y, sigma):
    """∫_0^1 |(1/N) Σ_i K(t, f_i) (f_i - y_i)| dt with every reflection of the Gaussian kernel
    evaluated exactly (no binning) on 20001 points, integrated by Simpson's rule."""
    r = f - y
    shifts = 2.0 * np.arange(-3, 4)
    images = np.concatenate([f[:, None] + shifts, -f[:, None] + shifts], axis=1)  # (N, 14)
    t = np.linspace(0.0, 1.0, 20_001)
    gap = np.empty_like(t)
    for start in range(0, t.size, 500):
        chunk = t[start : start + 500]
        z = (chunk[:, None, None] - images[None]) / sigma
        kernel = np.exp(-0.5 * z * z).sum(axis=2) / (sigma * math.sqrt(2 * math.pi))
        gap[start : start + 500] = np.abs(kernel @ r) / len(f)
    return integrate.simpson(gap, x=t)


@pytest.mark.parametrize(
    ("n", "seed", "sigma"), [(1, 0, 0.5), (25, 1, 0.08), (25, 1, 0.02), (300, 2, 0.05)]
)
def test_smooth_ece_at_a_bandwidth_is_the_integral(n, seed, sigma):
    f, y = _binary(n, seed)
    got = M.smooth_calibration_error(y, f, bandwidth=sigma)
    assert got == pytest.approx(_exact_smooth_ece(f, y, sigma), rel=1e-5, abs=1e-12)


@pytest.mark.parametrize("sigma", [0.3, 0.03])
def test_smooth_ece_at_the_ends_of_the_unit_interval(sigma):
    """Predictions of exactly 0 and 1 (and within one grid cell of them) are reflected too."""
    f = np.array([0.0, 0.0, 1e-5, 3e-4, 0.02, 0.5, 0.97, 1 - 3e-4, 1 - 1e-5, 1.0, 1.0])
    y = np.array([0, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0])
    got = M.smooth_calibration_error(y, f, bandwidth=sigma)
    assert got == pytest.approx(_exact_smooth_ece(f, y, sigma), rel=1e-5)


def test_smooth_ece_top_label_equals_binary_on_confidences():
    rng = np.random.default_rng(3)
    probs = softmax(rng.normal(scale=2.0, size=(400, 4)), axis=1)
    labels = rng.integers(0, 4, 400)
    conf, hit = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(int)
    assert M.smooth_calibration_error(labels, probs) == pytest.approx(
        M.smooth_calibration_error(hit, conf), abs=1e-15
    )


@pytest.mark.parametrize(("n", "seed", "power"), [(200, 0, 1.0), (1000, 1, 1.5), (3000, 2, 3.0)])
def test_smooth_ece_bandwidth_is_the_fixed_point(n, seed, power):
    f, y = _binary(n, seed, power)
    value = M.smooth_calibration_error(y, f)
    if value >= 1e-3:
        assert M.smooth_calibration_error(y, f, bandwidth=value) == pytest.approx(value, abs=1e-8)


@pytest.mark.parametrize(("n", "seed", "power"), [(200, 0, 1.0), (1000, 1, 1.5), (3000, 2, 3.0)])
def test_smooth_ece_agrees_with_relplot_to_its_discretisation(n, seed, power):
    """relplot (the authors' code) evaluates the integral on 200 points with an additive 1e-4 on
    the density, and finds the bandwidth by 10 bisection steps: agreement to ~1e-3."""
    relplot = pytest.importorskip("relplot")
    f, y = _binary(n, seed, power)
    for sigma in (0.2, 0.05):
        fixed = M.smooth_calibration_error(y, f, bandwidth=sigma)
        assert fixed == pytest.approx(relplot.smECE_sigma(f, y.astype(float), sigma), abs=1e-3)
    peer = relplot.smECE(f, y.astype(float))
    assert M.smooth_calibration_error(y, f) == pytest.approx(peer, abs=2e-3)


def test_smooth_ece_agrees_with_torch_uncertainty_reflected_kernel():
    tu = torch_uncertainty("metrics.classification.calibration.smooth_calibration_error")
    rng = np.random.default_rng(5)
    probs = softmax(rng.normal(scale=2.5, size=(1500, 5)), axis=1)
    labels = np.array([rng.choice(5, p=p) for p in softmax(np.log(probs) / 2.0, axis=1)])
    for bandwidth in (0.1, 0.03):
        metric = tu.SmoothCalibrationError(kernel_type="reflected", bandwidth=bandwidth)
        metric.update(torch.from_numpy(probs).float(), torch.from_numpy(labels))
        got = M.smooth_calibration_error(labels, probs, bandwidth=bandwidth)
        assert got == pytest.approx(float(metric.compute()), abs=1e-3)


def test_smooth_ece_is_small_for_calibrated_and_large_for_overconfident_predictions():
    rng = np.random.default_rng(7)
    f = rng.uniform(size=20000)
    calibrated = (rng.uniform(size=f.size) < f).astype(int)
    assert M.smooth_calibration_error(calibrated, f) < 0.02
    overconfident = (rng.uniform(size=f.size) < 0.5 + (f - 0.5) * 0.5).astype(int)
    value = M.smooth_calibration_error(overconfident, f)
    # E|f - (0.5 + (f - 0.5) / 2)| = E|f - 0.5| / 2 = 1/8 for f ~ U(0, 1), smoothing lowers it
    assert 0.09 < value <= 0.126


@settings(max_examples=15, deadline=None)
@given(
    st.integers(1, 60).flatmap(
        lambda n: st.tuples(
            hnp.arrays(np.float64, n, elements=st.floats(0, 1)),
            hnp.arrays(np.int64, n, elements=st.integers(0, 1)),
        )
    ),
    st.one_of(st.none(), st.floats(0.01, 1.0)),
)
def test_smooth_ece_is_in_0_1(data, bandwidth):
    f, y = data
    value = M.smooth_calibration_error(y, f, bandwidth=bandwidth)
    assert 0.0 <= value <= 1.0 + 1e-12
    # it never exceeds the mean absolute residual (the smoothing is an average)
    assert value <= np.mean(np.abs(f - y)) + 1e-9


@pytest.mark.parametrize("bandwidth", [0.0, -0.1, 1.5, math.nan])
def test_smooth_ece_refuses_bad_bandwidth(bandwidth):
    f, y = _binary(10, 0)
    with pytest.raises(ValueError, match="`bandwidth`"):
        M.smooth_calibration_error(y, f, bandwidth=bandwidth)
    with pytest.raises(TypeError, match="`bandwidth`"):
        M.smooth_calibration_error(y, f, bandwidth="auto")


def test_smooth_ece_refuses_bad_arrays():
    f, y = _binary(10, 0)
    with pytest.raises(ValueError, match="`y_prob`"):
        M.smooth_calibration_error(y[:0], f[:0])
    with pytest.raises(ValueError, match="`y_prob`"):
        M.smooth_calibration_error(y, np.where(np.arange(10) == 3, np.nan, f))
    with pytest.raises(ValueError, match="`y_true`"):
        M.smooth_calibration_error(y + 1, f)


# ------------------------------------------------------------------------------------------
# ENCE, UCE, QCE
# ------------------------------------------------------------------------------------------


def _regression(n: int, seed: int, scale: float = 1.3, dims=()):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=(n, *dims))
    std = rng.uniform(0.2, 2.0, size=(n, *dims))
    y = mean + scale * std * rng.standard_t(df=5, size=(n, *dims))
    return y, mean, std


def _uniform_groups(values, n_bins):
    """numpy.histogram's bins on [min, max] (last bin closed), by explicit comparisons."""
    low, high = values.min(), values.max()
    width = (high - low) / n_bins
    groups = [[] for _ in range(n_bins)]
    for i, v in enumerate(values):
        b = n_bins - 1 if v >= high else int((v - low) // width)
        while b > 0 and v < low + b * width:  # guard the floating-point floor
            b -= 1
        groups[b].append(i)
    return [g for g in groups if g]


def _equal_count_groups(values, n_bins):
    order = sorted(range(len(values)), key=lambda i: (values[i], i))
    sizes = [len(values) // n_bins + (b < len(values) % n_bins) for b in range(n_bins)]
    groups, start = [], 0
    for size in sizes:
        groups.append(order[start : start + size])
        start += size
    return [g for g in groups if g]


def _naive_ence(y, mean, std, groups):
    ratios = []
    for g in groups:
        rmv = math.sqrt(sum(std[i] ** 2 for i in g) / len(g))
        rmse = math.sqrt(sum((y[i] - mean[i]) ** 2 for i in g) / len(g))
        ratios.append(abs(rmv - rmse) / rmv)
    return sum(ratios) / len(ratios)


@pytest.mark.parametrize(
    ("n", "seed", "n_bins"), [(1, 0, 10), (7, 1, 3), (500, 2, 10), (999, 3, 20)]
)
def test_ence_matches_the_formula_on_both_binnings(n, seed, n_bins):
    y, mean, std = _regression(n, seed)
    for strategy, groups in (
        ("quantile", _equal_count_groups(std, n_bins)),
        ("uniform", _uniform_groups(std, n_bins) if n > 1 else [[0]]),
    ):
        got = M.ence(y, mean, std, n_bins=n_bins, strategy=strategy)
        assert got == pytest.approx(_naive_ence(y, mean, std, groups), rel=1e-12), strategy


@pytest.mark.parametrize(("n", "seed", "n_bins"), [(50, 0, 5), (500, 1, 10), (2000, 2, 15)])
def test_ence_uce_qce_equal_netcal(n, seed, n_bins):
    netcal = pytest.importorskip("netcal.metrics")
    y, mean, std = _regression(n, seed)
    levels = np.linspace(0.05, 0.95, 19)
    peer_ence = netcal.ENCE(bins=n_bins).measure((mean, std), y)
    peer_uce = netcal.UCE(bins=n_bins).measure((mean, std), y)
    peer_qce = netcal.QCE(bins=n_bins, marginal=False).measure((mean, std), y, q=levels)
    assert M.ence(y, mean, std, n_bins=n_bins, strategy="uniform") == pytest.approx(
        float(peer_ence), rel=1e-9
    )
    assert M.uce(y, mean, std**2, n_bins=n_bins) == pytest.approx(float(peer_uce), rel=1e-9)
    got = M.qce(y, mean, std, levels=levels, n_bins=n_bins)
    assert got == pytest.approx(float(np.mean(peer_qce)), rel=1e-9)


@pytest.mark.parametrize(("n", "seed"), [(3, 0), (400, 1)])
def test_uce_and_qce_match_the_formulas(n, seed):
    y, mean, std = _regression(n, seed)
    var = std**2
    groups = _uniform_groups(var, 10)
    naive_uce = sum(
        len(g) / n * abs(np.mean([(y[i] - mean[i]) ** 2 for i in g]) - np.mean([var[i] for i in g]))
        for g in groups
    )
    assert M.uce(y, mean, var) == pytest.approx(naive_uce, rel=1e-12)
    levels = [0.2, 0.5, 0.9]
    groups = _uniform_groups(std, 4)
    naive_qce = 0.0
    for tau in levels:
        z = norm.ppf((1 + tau) / 2)
        for g in groups:
            freq = np.mean([abs(y[i] - mean[i]) <= z * std[i] for i in g])
            naive_qce += len(g) / n * abs(freq - tau) / len(levels)
    assert M.qce(y, mean, std, levels=levels, n_bins=4) == pytest.approx(naive_qce, rel=1e-12)


def test_qce_with_one_bin_is_the_miscalibration_area():
    y, mean, std = _regression(300, 4)
    assert M.qce(y, mean, std, n_bins=1) == pytest.approx(M.miscalibration_area(y, mean, std))


def test_regression_calibration_pools_every_element():
    y, mean, std = _regression(200, 5, dims=(3,))
    flat = (y.ravel(), mean.ravel(), std.ravel())
    assert M.ence(y, mean, std) == pytest.approx(M.ence(*flat))
    assert M.uce(y, mean, std**2) == pytest.approx(M.uce(flat[0], flat[1], flat[2] ** 2))
    assert M.qce(y, mean, std) == pytest.approx(M.qce(*flat))
    # torch tensors and float32 give the same numbers (computed in float64)
    tensors = [torch.from_numpy(a).float() for a in (y, mean, std)]
    as32 = [a.astype(np.float32).astype(np.float64) for a in (y, mean, std)]
    assert M.ence(*tensors) == pytest.approx(M.ence(*as32), rel=1e-12)


def test_regression_calibration_is_near_zero_when_calibrated():
    rng = np.random.default_rng(6)
    mean = rng.normal(size=100_000)
    std = rng.uniform(0.5, 2.0, size=mean.size)
    y = mean + std * rng.normal(size=mean.size)
    assert M.ence(y, mean, std) < 0.02
    assert M.qce(y, mean, std) < 0.01
    assert M.uce(y, mean, std**2) < 0.03
    assert M.ence(y, mean, std / 2) == pytest.approx(1.0, abs=0.03)  # errors twice the std


def test_regression_calibration_refuses_bad_input():
    y, mean, std = _regression(20, 0)
    with pytest.raises(ValueError, match="`std`"):
        M.ence(y, mean, np.where(np.arange(20) == 4, 0.0, std))
    with pytest.raises(ValueError, match="`variance`"):
        M.uce(y, mean, -(std**2))
    with pytest.raises(ValueError, match="`mean`"):
        M.qce(y, mean[:10], std)
    with pytest.raises(ValueError, match="`y`"):
        M.ence(y[:0], mean[:0], std[:0])
    with pytest.raises(ValueError, match="`y`"):
        M.ence(np.where(np.arange(20) == 1, np.nan, y), mean, std)
    with pytest.raises(ValueError, match="`levels`"):
        M.qce(y, mean, std, levels=[0.5, 1.0])
    with pytest.raises(ValueError, match="`strategy`"):
        M.ence(y, mean, std, strategy="equal")
    with pytest.raises(ValueError, match="`n_bins`"):
        M.uce(y, mean, std**2, n_bins=0)
