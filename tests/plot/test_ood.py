"""OOD histograms and ROC curves: stored data equals the metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from plot_helpers import (
    _classification_result,
    _legend_texts,
    _regression_result,
)
from sklearn.metrics import roc_curve

from mcdrop.metrics import (
    ood_auroc,
)
from mcdrop.plot import (
    OODHistogramDisplay,
    OODRocDisplay,
)


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
# one measure on both sides; log scale for a spike (issues 11 and 13)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("display", [OODRocDisplay, OODHistogramDisplay])
def test_ood_refuses_classification_with_regression(pyplot, display):
    before = pyplot.get_fignums()
    with pytest.raises(TypeError, match="Expected `result_out` to be a ClassificationResult"):
        display.from_result(_classification_result(), _regression_result())
    with pytest.raises(TypeError, match="Expected `result_out` to be a RegressionResult"):
        display.from_result(_regression_result(), _classification_result())
    with pytest.raises(ValueError, match="Expected `score` to be one of"):
        display.from_result(_regression_result(), _regression_result(), score="mutual_information")
    assert pyplot.get_fignums() == before


def test_ood_histogram_log_scale_when_one_bin_dominates(pyplot):
    rng = np.random.default_rng(0)
    spiky = np.r_[np.zeros(900), rng.gamma(2.0, 0.3, 100)]
    display = OODHistogramDisplay.from_scores(spiky, rng.gamma(4.0, 0.4, 200), bins=30)
    assert display.spike_fraction > 0.5
    assert display.ax_.get_yscale() == "log"
    spread = OODHistogramDisplay.from_scores(*_ood_scores(), bins=30)
    assert spread.ax_.get_yscale() == "linear"
    forced = OODHistogramDisplay.from_scores(*_ood_scores(), bins=30, yscale="log")
    assert forced.ax_.get_yscale() == "log"
    with pytest.raises(ValueError, match="Expected `yscale`"):
        OODHistogramDisplay.from_scores(*_ood_scores(), yscale="symlog")
