"""Curves and intervals of mcdrop.metrics that the displays draw, checked independently."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.stats import norm
from sklearn.metrics import roc_curve

from mcdrop import metrics


def test_central_interval_matches_scipy():
    rng = np.random.default_rng(0)
    mean, std = rng.normal(size=50), rng.uniform(0.1, 2.0, 50)
    lower, upper = metrics.central_interval(mean, std, level=0.8)
    lo, hi = norm.interval(0.8, loc=mean, scale=std)
    np.testing.assert_allclose(lower, lo)
    np.testing.assert_allclose(upper, hi)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.float64, st.integers(1, 20), elements=st.floats(-1e6, 1e6)),
    st.floats(0.01, 0.99),
)
def test_central_interval_lower_le_upper_or_refused(std, level):
    mean = np.zeros_like(std)
    if np.any(std < 0):
        with pytest.raises(ValueError, match="`std`"):
            metrics.central_interval(mean, std, level=level)
    else:
        lower, upper = metrics.central_interval(mean, std, level=level)
        assert np.all(lower <= upper)


def test_central_interval_refuses_nan_and_bad_level():
    with pytest.raises(ValueError, match="Expected `std` to hold finite values"):
        metrics.central_interval([0.0, 1.0], [1.0, np.nan])
    with pytest.raises(ValueError, match="Expected `level`"):
        metrics.central_interval([0.0], [1.0], level=1.0)


def test_binned_residuals_matches_a_naive_loop():
    rng = np.random.default_rng(1)
    std = rng.uniform(0.1, 3.0, 103)
    y, mean = rng.normal(0.0, std), np.zeros(103)
    rms_std, rmse = metrics.binned_residuals(y, mean, std, n_bins=10)
    order = sorted(range(103), key=lambda i: (std[i], i))
    sizes = [11, 11, 11, 10, 10, 10, 10, 10, 10, 10]  # np.array_split of 103 into 10
    start = 0
    for b, size in enumerate(sizes):
        idx = order[start : start + size]
        start += size
        assert rms_std[b] == pytest.approx(np.sqrt(np.mean([std[i] ** 2 for i in idx])))
        assert rmse[b] == pytest.approx(np.sqrt(np.mean([y[i] ** 2 for i in idx])))
    assert metrics.binned_residuals(y[:3], mean[:3], std[:3], n_bins=10)[0].shape == (3,)


def test_oracle_rejection_curve_rejects_errors_first():
    y = np.array([0, 1, 1, 0, 1])
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.1, 0.9]])
    fraction, accuracy = metrics.oracle_rejection_curve(y, probs)
    np.testing.assert_allclose(fraction, [0.0, 0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(accuracy, [3 / 5, 3 / 4, 1.0, 1.0, 1.0])


def test_ood_roc_curve_matches_sklearn_and_auroc():
    rng = np.random.default_rng(2)
    s_in, s_out = rng.normal(size=80), rng.normal(1.0, size=60)
    fpr, tpr = metrics.ood_roc_curve(s_in, s_out)
    ref_fpr, ref_tpr, _ = roc_curve(np.r_[np.zeros(80), np.ones(60)], np.r_[s_in, s_out])
    np.testing.assert_allclose(fpr, ref_fpr)
    np.testing.assert_allclose(tpr, ref_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.ood_auroc(s_in, s_out))


def test_reliability_intervals_empty_bins_and_type():
    curve = metrics.reliability_curve([0, 1, 1], [[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]], n_bins=4)
    lower, upper = metrics.reliability_intervals(curve, level=0.9)
    filled = curve.count > 0
    assert np.all(np.isnan(lower[~filled])) and np.all(lower[filled] <= upper[filled])
    with pytest.raises(TypeError, match="Expected `curve` to be a ReliabilityCurve"):
        metrics.reliability_intervals((1, 2))


def test_convergence_curve_matches_running_means():
    rng = np.random.default_rng(3)
    samples = rng.dirichlet(np.ones(4), size=(20, 30))
    y = rng.integers(0, 4, 30)
    counts, values = metrics.convergence_curve(
        samples, y, metric="accuracy", sample_counts=[1, 5, 20]
    )
    expected = [np.mean(samples[:t].mean(0).argmax(1) == y) for t in (1, 5, 20)]
    np.testing.assert_array_equal(counts, [1, 5, 20])
    np.testing.assert_allclose(values, expected)
