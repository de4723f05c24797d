"""ConvergenceDisplay: running metrics and standard errors against T."""

from __future__ import annotations

import numpy as np
import pytest
from plot_helpers import (
    _classification_result,
    _legend_texts,
    _regression_result,
)

from mcdrop.metrics import (
    expected_calibration_error,
)
from mcdrop.plot import (
    ConvergenceDisplay,
)


def test_convergence_standard_error(pyplot):
    result = _classification_result(t=32)
    display = ConvergenceDisplay.from_result(result, sample_counts=[2, 4, 8, 16, 32])
    samples = result.samples.numpy()
    expected = [np.mean(samples[:t].std(axis=0, ddof=1) / np.sqrt(t)) for t in (2, 4, 8, 16, 32)]
    np.testing.assert_allclose(display.values, expected, rtol=1e-6)
    np.testing.assert_array_equal(display.sample_counts, [2, 4, 8, 16, 32])
    np.testing.assert_allclose(
        display.reference, expected[-1] * np.sqrt(32 / display.sample_counts)
    )
    np.testing.assert_allclose(display.line_.get_ydata(), display.values)
    ax = display.ax_
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "Number of Monte Carlo samples T"
    assert ax.get_ylabel() == "Mean Monte Carlo standard error"
    assert "∝ 1/√T" in _legend_texts(ax)
    # the last standard error matches the result's own
    assert display.values[-1] == pytest.approx(result.standard_error.mean().item(), rel=1e-6)


def test_convergence_default_counts_and_metrics(pyplot):
    result = _classification_result(t=30)
    display = ConvergenceDisplay.from_result(result)
    assert display.sample_counts[0] == 2 and display.sample_counts[-1] == 30
    assert np.all(np.diff(display.sample_counts) > 0)
    nll = ConvergenceDisplay.from_result(result, metric="nll", sample_counts=[1, 30])
    probs, y = result.mean.numpy(), result.targets.numpy()
    assert nll.values[-1] == pytest.approx(-np.mean(np.log(probs[np.arange(60), y])))
    assert nll.reference is None and nll.ax_.get_yscale() == "linear"
    accuracy = ConvergenceDisplay.from_result(result, metric="accuracy", sample_counts=[30])
    assert accuracy.values[0] == pytest.approx(np.mean(probs.argmax(1) == y))
    ece = ConvergenceDisplay.from_result(result, metric="ece", sample_counts=[30])
    assert ece.values[0] == pytest.approx(expected_calibration_error(y, probs))


def test_convergence_regression_and_callable(pyplot):
    result = _regression_result(t=12)
    display = ConvergenceDisplay.from_result(result, metric="rmse", sample_counts=[12])
    y, mean = result.targets.numpy().ravel(), result.mean.numpy().ravel()
    assert display.values[0] == pytest.approx(np.sqrt(np.mean((y - mean) ** 2)))

    def mae(y_true, running_mean):
        return float(np.mean(np.abs(y_true - running_mean)))

    _, ax = pyplot.subplots()
    custom = ConvergenceDisplay.from_samples(
        result.samples, result.targets, metric=mae, task="regression", ax=ax, name="MAE"
    )
    assert custom.metric == "mae" and custom.ax_ is ax
    assert custom.values[-1] == pytest.approx(np.mean(np.abs(y - mean)))
    assert "MAE" in _legend_texts(ax)


def test_convergence_dense_class_dim(pyplot):
    result = _classification_result(n=5, c=3, t=6, extra=(4,))
    moved = result.samples.movedim(2, -1)  # (T, N, S, C): class_dim=2 of one sample
    a = ConvergenceDisplay.from_samples(result.samples, result.targets, metric="nll")
    b = ConvergenceDisplay.from_samples(moved, result.targets, metric="nll", class_dim=-1)
    np.testing.assert_allclose(a.values, b.values)
    with pytest.raises(ValueError, match="Expected `class_dim`"):
        ConvergenceDisplay.from_samples(result.samples, result.targets, class_dim=0)


def test_convergence_errors(pyplot):
    with pytest.raises(ValueError, match="keep_samples=True"):
        ConvergenceDisplay.from_result(_classification_result(keep_samples=False))
    with pytest.raises(ValueError, match="`y_true`"):
        ConvergenceDisplay.from_result(_classification_result(targets=False), metric="nll")
    with pytest.raises(ValueError, match="Expected `metric` to be one of"):
        ConvergenceDisplay.from_result(_regression_result(), metric="nll")
    samples = np.random.default_rng(0).dirichlet(np.ones(3), size=(4, 5))
    with pytest.raises(ValueError, match="Expected `sample_counts` in \\[2, 4\\]"):
        ConvergenceDisplay.from_samples(samples, sample_counts=[1, 4])
    with pytest.raises(ValueError, match="at least 2 Monte Carlo samples"):
        ConvergenceDisplay.from_samples(samples[:1])
    with pytest.raises(ValueError, match="Expected `samples` of shape"):
        ConvergenceDisplay.from_samples(np.zeros((4, 5)))


def test_convergence_standard_error_is_stable_for_a_large_mean(pyplot):
    # E[x²] - E[x]² loses every digit here: 1e16 has a spacing of 2, the variance is 1e-6.
    rng = np.random.default_rng(0)
    samples = 1e8 + rng.normal(0.0, 1e-3, size=(64, 30, 1))
    display = ConvergenceDisplay.from_samples(samples, task="regression", sample_counts=[2, 8, 64])
    expected = [np.mean(samples[:t].std(axis=0, ddof=1) / np.sqrt(t)) for t in (2, 8, 64)]
    np.testing.assert_allclose(display.values, expected, rtol=1e-5)
    assert display.values[-1] == pytest.approx(1e-3 / 8, rel=0.2)
