"""Tests of mcdrop.plot: stored data equals the metric functions, artists hold it, headless."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.metrics import roc_curve

from mcdrop.metrics import (
    accuracy_rejection_curve,
    aurc,
    expected_calibration_error,
    interval_calibration_curve,
    miscalibration_area,
    ood_auroc,
    reliability_curve,
)
from mcdrop.plot import (
    AccuracyRejectionDisplay,
    ConvergenceDisplay,
    OODHistogramDisplay,
    OODRocDisplay,
    PredictiveBandsDisplay,
    RegressionCalibrationDisplay,
    ReliabilityDisplay,
    ResidualStdDisplay,
    plot_reliability_comparison,
)
from mcdrop.results import ClassificationResult, RegressionResult

# --------------------------------------------------------------------------------------------
# fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture
def pyplot():
    """Headless pyplot; closes every figure after the test."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


@pytest.fixture
def no_show(pyplot, monkeypatch):
    def _fail(*args, **kwargs):
        raise AssertionError("plt.show() must not be called")

    monkeypatch.setattr(pyplot, "show", _fail)
    return pyplot


def _classification_data(n=400, c=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, c))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(c, p=p) for p in probs**0.7 / (probs**0.7).sum(1, keepdims=True)])
    return y, probs


def _classification_result(n=60, c=3, t=8, extra=(), targets=True, keep_samples=True, seed=0):
    """A consistent ClassificationResult built from random samples (class_dim=1)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((t, n, c, *extra), generator=gen, dtype=torch.float64) * 2
    samples = logits.softmax(dim=2)
    mean = samples.mean(0)
    variance = samples.var(0, unbiased=False)

    def entropy(p, dim):
        return -(p * p.clamp_min(1e-12).log()).sum(dim)

    pred = samples.argmax(2)
    modal = torch.mode(pred, dim=0).values
    variation = 1.0 - (pred == modal).double().mean(0)
    labels = torch.randint(0, c, (n, *extra), generator=gen) if targets else None
    return ClassificationResult(
        mean=mean,
        variance=variance,
        predictive_entropy=entropy(mean, 1),
        expected_entropy=entropy(samples, 2).mean(0),
        variation_ratio=variation,
        n_samples=t,
        targets=labels,
        samples=samples if keep_samples else None,
    )


def _regression_result(n=80, t=10, targets=True, keep_samples=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    samples = torch.randn((t, n, 1), generator=gen, dtype=torch.float64) * 0.3
    samples = samples + torch.linspace(-2, 2, n, dtype=torch.float64)[None, :, None]
    mean = samples.mean(0)
    epistemic = samples.var(0, unbiased=False)
    aleatoric = torch.full_like(mean, 0.2)
    y = mean + torch.randn(mean.shape, generator=gen, dtype=torch.float64) * 0.5
    return RegressionResult(
        mean=mean,
        epistemic_variance=epistemic,
        aleatoric_variance=aleatoric,
        n_samples=t,
        targets=y if targets else None,
        samples=samples if keep_samples else None,
    )


def _legend_texts(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


# --------------------------------------------------------------------------------------------
# module
# --------------------------------------------------------------------------------------------


def test_import_does_not_import_matplotlib():
    code = (
        "import sys, mcdrop, mcdrop.plot\n"
        "loaded = [m for m in sys.modules if m == 'matplotlib' or m.startswith('matplotlib.')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_all_names_exist():
    import mcdrop.plot

    for name in mcdrop.plot.__all__:
        assert hasattr(mcdrop.plot, name)


def test_nothing_calls_show(no_show):
    y, probs = _classification_data()
    ReliabilityDisplay.from_predictions(y, probs)
    plot_reliability_comparison({"a": probs}, y)
    AccuracyRejectionDisplay.from_predictions(y, probs)
    OODHistogramDisplay.from_scores(np.arange(5.0), np.arange(5.0) + 2)
    OODRocDisplay.from_scores(np.arange(5.0), np.arange(5.0) + 2)
    reg = _regression_result()
    RegressionCalibrationDisplay.from_result(reg)
    PredictiveBandsDisplay.from_result(reg, np.arange(80.0))
    ResidualStdDisplay.from_result(reg)
    ConvergenceDisplay.from_result(reg)


def test_style_alias_conflict_raises(pyplot):
    y, probs = _classification_data()
    with pytest.raises(TypeError, match="`c` and `color`"):
        ReliabilityDisplay.from_predictions(y, probs, kind="line", c="red", color="blue")


# --------------------------------------------------------------------------------------------
# reliability diagram
# --------------------------------------------------------------------------------------------


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
# out-of-distribution
# --------------------------------------------------------------------------------------------


def _ood_scores():
    rng = np.random.default_rng(3)
    return rng.gamma(2.0, 0.3, size=300), rng.gamma(4.0, 0.4, size=200)


def test_ood_histogram(pyplot):
    s_in, s_out = _ood_scores()
    display = OODHistogramDisplay.from_scores(
        s_in, s_out, bins=20, name="MC dropout", score_name="Mutual information"
    )
    edges = np.histogram_bin_edges(np.concatenate([s_in, s_out]), bins=20)
    np.testing.assert_allclose(display.edges, edges)
    np.testing.assert_allclose(display.density_in, np.histogram(s_in, edges, density=True)[0])
    np.testing.assert_allclose(display.density_out, np.histogram(s_out, edges, density=True)[0])
    assert display.auroc == pytest.approx(ood_auroc(s_in, s_out))
    np.testing.assert_allclose(display.hist_in_.get_data().values, display.density_in)
    np.testing.assert_allclose(display.hist_out_.get_data().values, display.density_out)
    assert display.ax_.get_xlabel() == "Mutual information"
    assert display.ax_.get_ylabel() == "Density"
    texts = _legend_texts(display.ax_)
    assert "MC dropout: in-distribution" in texts
    assert f"MC dropout: out-of-distribution (AUROC = {display.auroc:.3f})" in texts


def test_ood_histogram_from_result(pyplot):
    fig, ax = pyplot.subplots()
    result_in, result_out = _classification_result(seed=0), _classification_result(seed=1)
    display = OODHistogramDisplay.from_result(
        result_in, result_out, score="predictive_entropy", ax=ax
    )
    assert display.ax_ is ax and display.figure_ is fig
    assert display.score_name == "Predictive entropy (nats)"
    assert display.auroc == pytest.approx(
        ood_auroc(result_in.predictive_entropy.numpy(), result_out.predictive_entropy.numpy())
    )
    reg = OODHistogramDisplay.from_result(_regression_result(seed=0), _regression_result(seed=1))
    assert reg.score_name == "Predictive standard deviation"
    with pytest.raises(TypeError, match="`bins`"):
        OODHistogramDisplay.from_scores([1.0], [2.0], bins=2.5)


def test_ood_roc(pyplot):
    s_in, s_out = _ood_scores()
    display = OODRocDisplay.from_scores(torch.from_numpy(s_in), s_out, name="entropy")
    labels = np.r_[np.zeros(s_in.size), np.ones(s_out.size)]
    fpr, tpr, _ = roc_curve(labels, np.r_[s_in, s_out])
    np.testing.assert_allclose(display.fpr, fpr)
    np.testing.assert_allclose(display.tpr, tpr)
    np.testing.assert_allclose(display.line_.get_xdata(), fpr)
    np.testing.assert_allclose(display.line_.get_ydata(), tpr)
    assert display.auroc == pytest.approx(ood_auroc(s_in, s_out))
    texts = _legend_texts(display.ax_)
    assert f"entropy (AUROC = {display.auroc:.3f})" in texts
    assert "Chance (AUROC = 0.5)" in texts
    assert "False positive rate" in display.ax_.get_xlabel()
    assert "True positive rate" in display.ax_.get_ylabel()


def test_ood_roc_several_scores_one_axes(pyplot):
    result_in, result_out = _classification_result(seed=0), _classification_result(seed=1)
    _, ax = pyplot.subplots()
    OODRocDisplay.from_result(result_in, result_out, ax=ax)
    second = OODRocDisplay.from_result(result_in, result_out, score="confidence", ax=ax)
    texts = _legend_texts(ax)
    assert texts.count("Chance (AUROC = 0.5)") == 1
    assert any(t.startswith("Mutual information (AUROC = ") for t in texts)
    assert any(t.startswith("1 − confidence (AUROC = ") for t in texts)
    expected = ood_auroc(1 - result_in.confidence.numpy(), 1 - result_out.confidence.numpy())
    assert second.auroc == pytest.approx(expected)


# --------------------------------------------------------------------------------------------
# regression
# --------------------------------------------------------------------------------------------


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
# Monte Carlo convergence
# --------------------------------------------------------------------------------------------


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
