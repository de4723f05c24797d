"""Reliability diagrams and accuracy-rejection curves: stored data equals the metrics."""

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

from mcdrop.metrics import (
    accuracy_rejection_curve,
    aurc,
    expected_calibration_error,
    reliability_curve,
)
from mcdrop.plot import (
    AccuracyRejectionDisplay,
    ReliabilityDisplay,
    plot_reliability_comparison,
)


def test_reliability_stores_metric_output(pyplot):
    y, probs = _classification_data()
    display = ReliabilityDisplay.from_predictions(y, probs, n_bins=10, name="model")
    curve = reliability_curve(y, probs, n_bins=10)
    np.testing.assert_allclose(display.confidence, curve.confidence)
    np.testing.assert_allclose(display.accuracy, curve.accuracy)
    np.testing.assert_array_equal(display.count, curve.count)
    np.testing.assert_allclose(display.edges, curve.edges)
    assert display.ece == pytest.approx(expected_calibration_error(y, probs, n_bins=10))
    assert display.binary is False


def test_reliability_bars_and_gaps(pyplot):
    y, probs = _classification_data()
    display = ReliabilityDisplay.from_predictions(y, probs, n_bins=12, name="model")
    nonempty = display.count > 0
    assert len(display.bars_.patches) == nonempty.sum()
    heights = [patch.get_height() for patch in display.bars_.patches]
    np.testing.assert_allclose(heights, display.accuracy[nonempty])
    lefts = [patch.get_x() for patch in display.bars_.patches]
    np.testing.assert_allclose(lefts, display.edges[:-1][nonempty])
    gaps = display.gap_bars_.patches
    assert len(gaps) == nonempty.sum()
    np.testing.assert_allclose(
        [patch.get_height() for patch in gaps],
        np.abs(display.confidence - display.accuracy)[nonempty],
    )
    np.testing.assert_allclose(
        [patch.get_y() for patch in gaps],
        np.minimum(display.confidence, display.accuracy)[nonempty],
    )
    assert gaps[0].get_hatch() == "//"
    np.testing.assert_allclose(display.ref_line_.get_xydata(), [[0, 0], [1, 1]])


def test_reliability_labels_legend_histogram(pyplot):
    y, probs = _classification_data()
    display = ReliabilityDisplay.from_predictions(y, probs, name="MC dropout")
    ax = display.ax_
    assert ax.get_ylabel() == "Accuracy"
    assert ax.get_title() == "Reliability diagram"
    texts = _legend_texts(ax)
    assert f"MC dropout (ECE = {display.ece:.3f})" in texts
    assert "Perfectly calibrated" in texts and "Gap" in texts
    # histogram below, sharing the x axis and carrying the x label
    assert display.hist_ax_ is not None
    assert display.hist_ax_.get_xlabel() == "Confidence"
    assert display.figure_ is ax.figure is display.hist_ax_.figure
    np.testing.assert_allclose(display.hist_.get_data().values, display.count / display.count.sum())
    np.testing.assert_allclose(display.hist_.get_data().edges, display.edges)


def test_reliability_given_ax_draws_there_only(pyplot):
    y, probs = _classification_data()
    fig, ax = pyplot.subplots()
    display = ReliabilityDisplay.from_predictions(y, probs, ax=ax, color="tab:green")
    assert display.ax_ is ax
    assert display.figure_ is fig
    assert display.hist_ax_ is None and display.hist_ is None
    assert len(fig.axes) == 1
    assert ax.get_xlabel() == "Confidence"
    from matplotlib.colors import to_rgba

    assert display.bars_.patches[0].get_facecolor() == to_rgba("tab:green", 0.9)


def test_reliability_histogram_on_given_axes(pyplot):
    y, probs = _classification_data()
    fig, (ax, hist_ax) = pyplot.subplots(2, 1)
    display = ReliabilityDisplay.from_predictions(y, probs, ax=ax, hist_ax=hist_ax)
    assert display.hist_ax_ is hist_ax
    assert len(fig.axes) == 2
    # histogram=True with only ax: a histogram axes is carved out below it
    fig2, ax2 = pyplot.subplots()
    display2 = ReliabilityDisplay.from_predictions(y, probs, ax=ax2, histogram=True)
    assert display2.ax_ is ax2
    assert display2.hist_ax_ is not None and display2.hist_ax_ is not ax2
    assert len(fig2.axes) == 2


def test_reliability_line_kind_and_several_models(pyplot):
    y, probs = _classification_data()
    flat = np.full_like(probs, 1.0 / probs.shape[1])
    _, ax = pyplot.subplots()
    first = ReliabilityDisplay.from_predictions(y, probs, ax=ax, kind="line", name="sharp")
    second = ReliabilityDisplay.from_predictions(y, flat, ax=ax, kind="line", name="uniform")
    nonempty = first.count > 0
    np.testing.assert_allclose(first.line_.get_xdata(), first.confidence[nonempty])
    np.testing.assert_allclose(first.line_.get_ydata(), first.accuracy[nonempty])
    assert first.bars_ is None and first.gap_bars_ is None
    texts = _legend_texts(ax)
    assert texts.count("Perfectly calibrated") == 1
    assert f"sharp (ECE = {first.ece:.3f})" in texts
    assert f"uniform (ECE = {second.ece:.3f})" in texts
    assert second.ref_line_ is None
    assert first.line_.get_color() != second.line_.get_color()


def test_reliability_plot_again_and_name_override(pyplot):
    y, probs = _classification_data()
    display = ReliabilityDisplay.from_predictions(y, probs, name="a")
    _, ax = pyplot.subplots()
    assert display.plot(ax=ax, name="b") is display
    assert display.ax_ is ax
    assert f"b (ECE = {display.ece:.3f})" in _legend_texts(ax)
    assert display.name == "a"


def test_reliability_binary(pyplot):
    rng = np.random.default_rng(1)
    p = rng.uniform(size=300)
    y = (rng.uniform(size=300) < p).astype(int)
    display = ReliabilityDisplay.from_predictions(y, torch.from_numpy(p), n_bins=5)
    assert display.binary
    np.testing.assert_allclose(display.accuracy, reliability_curve(y, p, n_bins=5).accuracy)
    assert display.ax_.get_ylabel() == "Fraction of positives"
    assert display.hist_ax_.get_xlabel() == "Mean predicted probability"


def test_reliability_from_result_dense_outputs(pyplot):
    result = _classification_result(n=10, c=3, extra=(4, 5))
    display = ReliabilityDisplay.from_result(result, n_bins=5)
    probs = result.mean.movedim(1, -1).reshape(-1, 3).numpy()
    labels = result.targets.reshape(-1).numpy()
    curve = reliability_curve(labels, probs, n_bins=5)
    np.testing.assert_array_equal(display.count, curve.count)
    assert display.count.sum() == 10 * 4 * 5


def test_reliability_from_result_missing_targets(pyplot):
    result = _classification_result(targets=False)
    with pytest.raises(ValueError, match="`y_true`"):
        ReliabilityDisplay.from_result(result)
    # explicit labels work
    ReliabilityDisplay.from_result(result, np.zeros(60, dtype=int))


def test_reliability_rejects_bad_kind(pyplot):
    y, probs = _classification_data()
    with pytest.raises(ValueError, match="Expected `kind` to be one of"):
        ReliabilityDisplay.from_predictions(y, probs, kind="pie")


def test_reliability_comparison(pyplot):
    y, probs = _classification_data(n=60, c=3)
    result = _classification_result(n=60, c=3)
    displays = plot_reliability_comparison(
        {"deterministic": probs, "MC dropout": result}, y, n_bins=8
    )
    assert list(displays) == ["deterministic", "MC dropout"]
    first, second = displays.values()
    assert first.ax_ is second.ax_ and first.hist_ax_ is second.hist_ax_
    assert first.hist_ax_ is not None
    texts = _legend_texts(first.ax_)
    assert any(t.startswith("deterministic (ECE = ") for t in texts)
    assert any(t.startswith("MC dropout (ECE = ") for t in texts)
    # y_true given: the result is scored against it, not against result.targets
    expected = expected_calibration_error(y, result.mean.numpy(), n_bins=8)
    assert second.ece == pytest.approx(expected)
    assert len(first.figure_.axes) == 2


def test_reliability_comparison_errors(pyplot):
    with pytest.raises(ValueError, match="`predictions`"):
        plot_reliability_comparison({}, np.zeros(3))
    with pytest.raises(ValueError, match="`y_true`"):
        plot_reliability_comparison({"a": np.full((3, 2), 0.5)})


# --------------------------------------------------------------------------------------------
# accuracy-rejection
# --------------------------------------------------------------------------------------------


def test_accuracy_rejection_stores_metric_output(pyplot):
    y, probs = _classification_data()
    scores = 1.0 - probs.max(axis=1)
    display = AccuracyRejectionDisplay.from_predictions(y, probs, name="max prob")
    fraction, accuracy = accuracy_rejection_curve(y, probs, scores)
    np.testing.assert_allclose(display.rejection_fraction, fraction)
    np.testing.assert_allclose(display.accuracy, accuracy)
    assert display.aurc == pytest.approx(aurc(y, probs, scores))
    np.testing.assert_allclose(display.line_.get_xdata(), fraction)
    np.testing.assert_allclose(display.line_.get_ydata(), accuracy)
    assert display.base_accuracy == pytest.approx(np.mean(probs.argmax(1) == y))
    np.testing.assert_allclose(display.random_line_.get_ydata(), [display.base_accuracy] * 2)
    # the oracle rejects errors first: perfect accuracy once the errors are gone
    n_errors = np.sum(probs.argmax(1) != y)
    kept = display.oracle_rejection_fraction >= n_errors / y.size - 1e-12
    np.testing.assert_allclose(
        display.oracle_accuracy[kept & np.isfinite(display.oracle_accuracy)], 1.0
    )
    ax = display.ax_
    assert ax.get_xlabel() == "Fraction of samples rejected"
    assert ax.get_ylabel() == "Accuracy on retained samples"
    texts = _legend_texts(ax)
    assert f"max prob (AURC = {display.aurc:.3f})" in texts
    assert "Random rejection" in texts and "Oracle" in texts


def test_accuracy_rejection_custom_scores_kwargs_and_no_oracle(pyplot):
    y, probs = _classification_data()
    scores = torch.from_numpy(np.random.default_rng(0).uniform(size=y.size))
    display = AccuracyRejectionDisplay.from_predictions(
        y, probs, scores=scores, oracle=False, color="purple", linestyle="-."
    )
    _, accuracy = accuracy_rejection_curve(y, probs, scores.numpy())
    np.testing.assert_allclose(display.accuracy, accuracy)
    assert display.oracle_line_ is None and display.oracle_accuracy is None
    assert display.line_.get_color() == "purple"
    assert display.line_.get_linestyle() == "-."


def test_accuracy_rejection_from_result_compares_scores(pyplot):
    result = _classification_result()
    _, ax = pyplot.subplots()
    by_entropy = AccuracyRejectionDisplay.from_result(result, ax=ax)
    by_mi = AccuracyRejectionDisplay.from_result(result, score="mutual_information", ax=ax)
    assert by_entropy.ax_ is by_mi.ax_ is ax
    texts = _legend_texts(ax)
    assert any(t.startswith("Predictive entropy (AURC = ") for t in texts)
    assert any(t.startswith("Mutual information (AURC = ") for t in texts)
    assert texts.count("Random rejection") == 1 and texts.count("Oracle") == 1
    _, accuracy = accuracy_rejection_curve(
        result.targets.numpy(), result.mean.numpy(), result.mutual_information.numpy()
    )
    np.testing.assert_allclose(by_mi.accuracy, accuracy)
    with pytest.raises(ValueError, match="Expected `score` to be one of"):
        AccuracyRejectionDisplay.from_result(result, score="entropy")
    with pytest.raises(ValueError, match="`y_true`"):
        AccuracyRejectionDisplay.from_result(_classification_result(targets=False))
    with pytest.raises(TypeError, match="ClassificationResult"):
        AccuracyRejectionDisplay.from_result(_regression_result())


# --------------------------------------------------------------------------------------------
# per-bin counts and intervals (issue 13)
# --------------------------------------------------------------------------------------------


def test_reliability_draws_counts_and_wilson_intervals(pyplot):
    from scipy.stats import binomtest

    y, probs = _classification_data(n=120)
    display = ReliabilityDisplay.from_predictions(y, probs, n_bins=8)
    filled = display.count > 0
    for b in np.flatnonzero(filled):
        n = int(display.count[b])
        k = round(float(display.accuracy[b]) * n)
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert display.lower[b] == pytest.approx(ci.low, abs=1e-9)
        assert display.upper[b] == pytest.approx(ci.high, abs=1e-9)
    assert np.all(np.isnan(display.lower[~filled]))
    assert [t.get_text() for t in display.counts_] == [str(int(n)) for n in display.count[filled]]
    assert display.intervals_ is not None
    plain = ReliabilityDisplay.from_predictions(y, probs, n_bins=8, intervals=False, counts=False)
    assert plain.intervals_ is None and plain.counts_ == []
