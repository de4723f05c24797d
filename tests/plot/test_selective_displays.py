"""Risk-coverage and sparsification displays: stored data equals the metrics, drawn as stored."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plot_helpers import (
    _classification_data,
    _classification_result,
    _legend_texts,
    _regression_result,
)

from mcdrop.metrics import augrc, aurc, ause, risk_coverage_curve, sparsification_curve
from mcdrop.plot import RiskCoverageDisplay, SparsificationDisplay


def test_risk_coverage_stores_and_draws_the_metric_output(pyplot):
    y, probs = _classification_data()
    scores = 1.0 - probs.max(axis=1)
    display = RiskCoverageDisplay.from_predictions(y, probs, name="max prob")
    coverage, risk, generalized = risk_coverage_curve(y, probs, scores)
    np.testing.assert_allclose(display.coverage, coverage)
    np.testing.assert_allclose(display.risk, risk)
    np.testing.assert_allclose(display.generalized_risk, generalized)
    assert display.aurc == pytest.approx(aurc(y, probs, scores))
    assert display.augrc == pytest.approx(augrc(y, probs, scores))
    np.testing.assert_allclose(display.line_.get_xdata(), coverage)
    np.testing.assert_allclose(display.line_.get_ydata(), risk)
    error_rate = np.mean(probs.argmax(1) != y)
    assert display.error_rate == pytest.approx(error_rate)
    np.testing.assert_allclose(display.random_line_.get_ydata(), [error_rate] * 2)
    # the oracle accepts every correct prediction first: zero risk up to the accuracy
    accuracy = 1.0 - error_rate
    np.testing.assert_allclose(display.oracle_risk[coverage <= accuracy + 1e-12], 0.0)
    texts = _legend_texts(display.ax_)
    assert f"max prob (AURC = {display.aurc:.3f}, AUGRC = {display.augrc:.3f})" in texts
    assert "Random rejection" in texts and "Oracle" in texts
    assert display.ax_.get_xlabel() == "Coverage"


def test_risk_coverage_generalized_kind_and_redraw(pyplot):
    y, probs = _classification_data()
    display = RiskCoverageDisplay.from_predictions(y, probs, kind="generalized", color="green")
    np.testing.assert_allclose(display.line_.get_ydata(), display.generalized_risk)
    np.testing.assert_allclose(display.random_line_.get_ydata(), [0.0, display.error_rate])
    assert display.line_.get_color() == "green"
    assert display.ax_.get_ylabel() == "Generalised risk"
    _, ax = pyplot.subplots()
    again = display.plot(ax=ax, oracle=False, random_line=False, name="other")
    assert again.ax_ is ax and again.oracle_line_ is None and again.random_line_ is None
    np.testing.assert_allclose(again.line_.get_ydata(), display.risk)
    with pytest.raises(ValueError, match="`kind`"):
        display.plot(kind="risky")


def test_risk_coverage_from_result_compares_scores_on_one_axes(pyplot):
    result = _classification_result()
    _, ax = pyplot.subplots()
    by_entropy = RiskCoverageDisplay.from_result(result, ax=ax)
    by_mi = RiskCoverageDisplay.from_result(result, score="mutual_information", ax=ax)
    texts = _legend_texts(ax)
    assert any(t.startswith("Predictive entropy (AURC = ") for t in texts)
    assert any(t.startswith("Mutual information (AURC = ") for t in texts)
    assert texts.count("Oracle") == 1
    labels, probs = result.targets.numpy(), result.mean.numpy()
    assert by_mi.augrc == pytest.approx(augrc(labels, probs, result.mutual_information.numpy()))
    assert by_entropy.aurc == pytest.approx(aurc(labels, probs, result.predictive_entropy.numpy()))
    with pytest.raises(ValueError, match="`y_true`"):
        RiskCoverageDisplay.from_result(_classification_result(targets=False))
    with pytest.raises(TypeError, match="ClassificationResult"):
        RiskCoverageDisplay.from_result(_regression_result())


def test_risk_coverage_custom_scores_and_binary_probabilities(pyplot):
    y, probs = _classification_data(c=2)
    scores = torch.from_numpy(np.random.default_rng(1).uniform(size=y.size))
    display = RiskCoverageDisplay.from_predictions(y, probs[:, 1], scores=scores, oracle=False)
    _, risk, _ = risk_coverage_curve(y, probs[:, 1], scores.numpy())
    np.testing.assert_allclose(display.risk, risk)
    assert display.oracle_line_ is None


def test_sparsification_stores_and_draws_the_metric_output(pyplot):
    rng = np.random.default_rng(2)
    std = rng.uniform(0.5, 2.0, 300)
    errors = np.abs(std * rng.normal(size=300))
    display = SparsificationDisplay.from_errors(errors, std, name="std")
    fraction, error, oracle = sparsification_curve(errors, std)
    np.testing.assert_allclose(display.fraction_removed, fraction)
    np.testing.assert_allclose(display.error, error)
    np.testing.assert_allclose(display.oracle_error, oracle)
    assert display.ause == pytest.approx(ause(errors, std))
    np.testing.assert_allclose(display.line_.get_ydata(), error)
    np.testing.assert_allclose(display.oracle_line_.get_ydata(), oracle)
    assert display.fill_ is not None
    assert f"std (AUSE = {display.ause:.3g})" in _legend_texts(display.ax_)


def test_sparsification_from_predictions_and_result(pyplot):
    result = _regression_result()
    y, mean = result.targets.numpy().ravel(), result.mean.numpy().ravel()
    std = result.std.numpy().ravel()
    display = SparsificationDisplay.from_result(result, error="squared", fill=False)
    assert display.ause == pytest.approx(ause((y - mean) ** 2, std))
    assert display.fill_ is None
    assert display.ax_.get_ylabel() == "MSE of retained"
    assert "Total std" in _legend_texts(display.ax_)[0]
    epistemic = SparsificationDisplay.from_result(result, kind="epistemic")
    expected = ause(np.abs(y - mean), np.sqrt(result.epistemic_variance.numpy().ravel()))
    assert epistemic.ause == pytest.approx(expected)
    with pytest.raises(ValueError, match="`error`"):
        SparsificationDisplay.from_predictions(y, mean, std, error="huber")
    with pytest.raises(ValueError, match="`mean`"):
        SparsificationDisplay.from_predictions(y, mean[:5], std)
