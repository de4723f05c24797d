"""Regression displays: calibration, predictive bands, residuals against std."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plot_helpers import (
    _legend_texts,
    _regression_result,
)
from scipy.stats import norm

import mcdrop
from mcdrop.metrics import (
    interval_calibration_curve,
    miscalibration_area,
)
from mcdrop.plot import (
    PredictiveBandsDisplay,
    RegressionCalibrationDisplay,
    ResidualStdDisplay,
)


def test_regression_calibration(pyplot):
    result = _regression_result()
    display = RegressionCalibrationDisplay.from_result(result, name="MC dropout")
    y, mean, std = (t.numpy().ravel() for t in (result.targets, result.mean, result.std))
    expected, observed = interval_calibration_curve(y, mean, std)
    np.testing.assert_allclose(display.expected, expected)
    np.testing.assert_allclose(display.observed, observed)
    assert display.miscalibration_area == pytest.approx(miscalibration_area(y, mean, std))
    np.testing.assert_allclose(display.line_.get_xdata(), expected)
    np.testing.assert_allclose(display.line_.get_ydata(), observed)
    assert display.fill_ is not None
    texts = _legend_texts(display.ax_)
    assert f"MC dropout (miscalibration area = {display.miscalibration_area:.3f})" in texts
    assert "Perfectly calibrated" in texts
    assert display.ax_.get_xlabel() == "Expected coverage (nominal level)"
    assert display.ax_.get_ylabel() == "Observed coverage"


def test_regression_calibration_levels_epistemic_and_errors(pyplot):
    result = _regression_result()
    levels = np.array([0.2, 0.5, 0.8, 0.95])
    display = RegressionCalibrationDisplay.from_result(
        result, kind="epistemic", levels=levels, fill=False, color="k"
    )
    y, mean = result.targets.numpy().ravel(), result.mean.numpy().ravel()
    std = result.epistemic_variance.sqrt().numpy().ravel()
    _, observed = interval_calibration_curve(y, mean, std, levels=levels)
    np.testing.assert_allclose(display.observed, observed)
    assert display.fill_ is None and display.line_.get_color() == "k"
    with pytest.raises(ValueError, match="`y_true`"):
        RegressionCalibrationDisplay.from_result(_regression_result(targets=False))
    with pytest.raises(ValueError, match="Expected `kind` to be one of"):
        RegressionCalibrationDisplay.from_result(result, kind="aleatoric")


def test_predictive_bands_from_predictions(pyplot):
    rng = np.random.default_rng(0)
    x = rng.uniform(-3, 3, size=50)
    mean, std, epi = np.sin(x), np.full(50, 0.4), np.full(50, 0.1)
    y = mean + rng.normal(scale=0.4, size=50)
    display = PredictiveBandsDisplay.from_predictions(
        x, mean, std, epistemic_std=epi, y_true=y, x_train=x[:10], y_train=y[:10], level=0.9
    )
    order = np.argsort(x)
    z = norm.ppf(0.95)
    np.testing.assert_allclose(display.x, x[order])
    np.testing.assert_allclose(display.line_.get_xdata(), x[order])
    np.testing.assert_allclose(display.line_.get_ydata(), mean[order])
    np.testing.assert_allclose(display.total_upper, mean[order] + z * 0.4)
    np.testing.assert_allclose(display.epistemic_lower, mean[order] - z * 0.1)
    np.testing.assert_allclose(display.targets_.get_offsets(), np.c_[x[order], y[order]])
    np.testing.assert_allclose(display.train_points_.get_offsets(), np.c_[x[:10], y[:10]])
    texts = _legend_texts(display.ax_)
    assert {
        "Predictive mean",
        "90% interval (total)",
        "90% interval (epistemic)",
        "Training data",
        "Targets",
    } <= set(texts)
    # the epistemic band is drawn more opaque than the total one, in the mean's colour
    assert display.epistemic_band_.get_alpha() > display.total_band_.get_alpha()


def test_predictive_bands_from_result(pyplot):
    result = _regression_result()
    x = torch.linspace(-2, 2, 80)[:, None]
    _, ax = pyplot.subplots()
    display = PredictiveBandsDisplay.from_result(
        result, x, ax=ax, color="tab:orange", name="MC dropout"
    )
    lower, upper = result.interval(0.95)
    e_lower, _ = result.interval(0.95, kind="epistemic")
    np.testing.assert_allclose(display.total_lower, lower.numpy().ravel())
    np.testing.assert_allclose(display.total_upper, upper.numpy().ravel())
    np.testing.assert_allclose(display.epistemic_lower, e_lower.numpy().ravel())
    assert display.ax_ is ax and display.line_.get_color() == "tab:orange"
    assert display.targets_ is not None  # result.targets used
    texts = _legend_texts(ax)
    assert "MC dropout" in texts and "MC dropout: 95% interval (epistemic)" in texts


def test_predictive_bands_errors(pyplot):
    with pytest.raises(ValueError, match="Expected `x` of shape"):
        PredictiveBandsDisplay.from_predictions(np.zeros((5, 2)), np.zeros(10), np.ones(10))
    with pytest.raises(ValueError, match="Expected `std` to hold 5 values"):
        PredictiveBandsDisplay.from_predictions(np.zeros(5), np.zeros(5), np.ones(4))
    with pytest.raises(ValueError, match="Expected `level` to be a number in"):
        PredictiveBandsDisplay.from_predictions(np.zeros(5), np.zeros(5), np.ones(5), level=1.0)
    with pytest.raises(ValueError, match="`x_train` and `y_train`"):
        PredictiveBandsDisplay.from_predictions(
            np.zeros(5), np.zeros(5), np.ones(5), x_train=np.zeros(3)
        )


def test_residual_std(pyplot):
    rng = np.random.default_rng(0)
    std = rng.uniform(0.5, 2.0, size=400)
    y = rng.normal(0.0, std)
    display = ResidualStdDisplay.from_predictions(y, np.zeros(400), std, n_bins=8, name="m")
    np.testing.assert_allclose(display.abs_residual, np.abs(y))
    np.testing.assert_allclose(display.scatter_.get_offsets(), np.c_[std, np.abs(y)])
    groups = np.array_split(np.argsort(std), 8)
    np.testing.assert_allclose(display.binned_rmse, [np.sqrt(np.mean(y[g] ** 2)) for g in groups])
    np.testing.assert_allclose(display.binned_std, [np.sqrt(np.mean(std[g] ** 2)) for g in groups])
    np.testing.assert_allclose(display.binned_line_.get_ydata(), display.binned_rmse)
    texts = _legend_texts(display.ax_)
    assert "m: binned RMSE vs RMS std" in texts and "Calibrated: RMSE = std" in texts
    assert display.ax_.get_xlabel() == "Predicted standard deviation"


def test_residual_std_from_result_and_no_bins(pyplot):
    result = _regression_result()
    display = ResidualStdDisplay.from_result(result, n_bins=0)
    assert display.binned_line_ is None
    np.testing.assert_allclose(display.std, result.std.numpy().ravel())
    with pytest.raises(ValueError, match="Expected `n_bins` to be an integer >= 0"):
        ResidualStdDisplay.from_result(result, n_bins=-1)
    with pytest.raises(ValueError, match="`y_true`"):
        ResidualStdDisplay.from_result(_regression_result(targets=False))


# --------------------------------------------------------------------------------------------
# bands refuse impossible standard deviations (issue 11, group 6)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-0.1, np.nan, np.inf])
@pytest.mark.parametrize("argument", ["std", "epistemic_std"])
def test_predictive_bands_refuse_negative_or_nan_std(pyplot, argument, bad):
    x = np.linspace(0.0, 1.0, 10)
    std = np.full(10, 0.3)
    std[4] = bad
    options = {"std": np.full(10, 0.3), "epistemic_std": None, argument: std}
    before = pyplot.get_fignums()
    match = ">= 0" if bad == -0.1 else "finite"
    with pytest.raises(ValueError, match=f"`{argument}`.*{match}|{match}.*`{argument}`"):
        PredictiveBandsDisplay.from_predictions(
            x, np.sin(x), options["std"], epistemic_std=options["epistemic_std"]
        )
    assert pyplot.get_fignums() == before


def test_predictive_bands_lower_never_above_upper(pyplot):
    x = np.linspace(-1.0, 1.0, 30)
    std = np.abs(np.cos(5 * x))
    display = PredictiveBandsDisplay.from_predictions(x, x**2, std, epistemic_std=std / 3)
    assert np.all(display.total_lower <= display.total_upper)
    assert np.all(display.epistemic_lower <= display.epistemic_upper)
    lo, hi = norm.interval(0.95, loc=x**2, scale=np.where(std > 0, std, 1e-300))
    np.testing.assert_allclose(display.total_lower, lo, atol=1e-12)
    np.testing.assert_allclose(display.total_upper, hi, atol=1e-12)


def test_residual_std_refuses_negative_std(pyplot):
    with pytest.raises(ValueError, match="Expected `std` to hold standard deviations >= 0"):
        ResidualStdDisplay.from_predictions(np.zeros(5), np.zeros(5), [1, 1, -1, 1, 1])


def test_predictive_bands_draw_sampled_networks_with_shared_masks(pyplot):
    """With shared masks a sample is one network: its line is that network's outputs at every
    x, in the x order, drawn from the result's first samples."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(1, 32), torch.nn.Tanh(), torch.nn.Dropout(0.3), torch.nn.Linear(32, 1)
    ).eval()
    x = torch.linspace(-2, 2, 40)[torch.randperm(40)][:, None]  # not sorted
    kw = {"task": "regression", "n_samples": 8, "seed": 0, "keep_samples": True}
    shared = mcdrop.predict_with_uncertainty(net, x, masks="shared", **kw)
    display = PredictiveBandsDisplay.from_result(shared, x, n_functions=3)
    order = np.argsort(x.numpy().ravel())
    assert len(display.sample_lines_) == 3
    for t, line in enumerate(display.sample_lines_):
        np.testing.assert_allclose(line.get_xdata(), x.numpy().ravel()[order])
        np.testing.assert_allclose(line.get_ydata(), shared.samples[t, order, 0].numpy())
    assert "sampled networks" in _legend_texts(display.ax_)
    # the default: 5 with shared masks, none with independent ones
    assert len(PredictiveBandsDisplay.from_result(shared, x).sample_lines_) == 5
    independent = mcdrop.predict_with_uncertainty(net, x, **kw)
    assert PredictiveBandsDisplay.from_result(independent, x).sample_lines_ == []
    with pytest.raises(ValueError, match="masks='shared'"):
        PredictiveBandsDisplay.from_result(independent, x, n_functions=2)
