"""Tests of mcdrop.metrics against independent references (scikit-learn, SciPy, loops, hand)."""

from __future__ import annotations

import itertools
import math
from functools import partial

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import integrate
from scipy.special import logsumexp, softmax
from scipy.stats import norm
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    brier_score_loss,
    log_loss,
    roc_auc_score,
    roc_curve,
)

from mcdrop import ClassificationResult, RegressionResult
from mcdrop import metrics as M

# ------------------------------------------------------------------------------------------
# Data and independent reference implementations
# ------------------------------------------------------------------------------------------


def _random_classification(
    n: int = 500, c: int = 4, seed: int = 0, scale: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(scale=scale, size=(n, c)), axis=1)
    # Labels drawn from a tempered version of the prediction: imperfect calibration.
    labels = np.array([rng.choice(c, p=p) for p in softmax(np.log(probs) / 1.7, axis=1)])
    return labels, probs


def _naive_bins(values: np.ndarray, edges: np.ndarray) -> list[list[int]]:
    """Bin membership by explicit comparisons: (lo, hi], first bin [lo, hi]."""
    members: list[list[int]] = [[] for _ in range(len(edges) - 1)]
    for i, v in enumerate(values):
        for b in range(len(edges) - 1):
            lo, hi = edges[b], edges[b + 1]
            if (lo < v <= hi) or (b == 0 and lo <= v <= hi):
                members[b].append(i)
                break
        else:
            # Outside [edges[0], edges[-1]]: only possible below the first or above the last
            members[0 if v < edges[0] else -1].append(i)
    return members


def _naive_ece(labels, probs, n_bins, strategy="uniform", norm_name="l1"):
    conf = [max(row) for row in probs]
    hit = [int(np.argmax(row) == y) for row, y in zip(probs, labels, strict=True)]
    if strategy == "uniform":
        edges = [b / n_bins for b in range(n_bins + 1)]
    else:
        edges = list(np.percentile(conf, np.linspace(0, 100, n_bins + 1)))
    gaps, weights = [], []
    for members in _naive_bins(np.array(conf), np.array(edges)):
        if members:
            acc = sum(hit[i] for i in members) / len(members)
            mean_conf = sum(conf[i] for i in members) / len(members)
            gaps.append(abs(acc - mean_conf))
            weights.append(len(members) / len(conf))
    if norm_name == "l1":
        return sum(w * g for w, g in zip(weights, gaps, strict=True))
    if norm_name == "l2":
        return math.sqrt(sum(w * g * g for w, g in zip(weights, gaps, strict=True)))
    return max(gaps)


# ------------------------------------------------------------------------------------------
# Reliability curve and binned calibration errors
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("n_bins", [1, 5, 10, 15])
def test_reliability_curve_matches_sklearn_binary(strategy, n_bins):
    rng = np.random.default_rng(n_bins)
    p = rng.beta(0.7, 0.7, size=400)
    p[:3] = [0.0, 1.0, 0.5]
    y = (rng.random(400) < p**1.5).astype(int)
    curve = M.reliability_curve(y, p, n_bins=n_bins, strategy=strategy)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=n_bins, strategy=strategy)
    filled = curve.count > 0
    np.testing.assert_allclose(curve.accuracy[filled], prob_true, rtol=1e-12)
    np.testing.assert_allclose(curve.confidence[filled], prob_pred, rtol=1e-12)
    assert curve.count.sum() == 400
    assert curve.edges.shape == (n_bins + 1,)
    assert curve.confidence.shape == curve.accuracy.shape == curve.count.shape == (n_bins,)
    assert np.all(np.isnan(curve.confidence[~filled]))
    assert np.all(np.isnan(curve.accuracy[~filled]))
    assert curve.count.dtype.kind == "i"


def test_reliability_curve_is_frozen_dataclass():
    curve = M.reliability_curve([0, 1], [[0.6, 0.4], [0.3, 0.7]], n_bins=2)
    with pytest.raises(AttributeError):
        curve.count = np.zeros(2)  # type: ignore[misc]
    np.testing.assert_allclose(curve.edges, [0.0, 0.5, 1.0])


def test_bin_edges_confidence_one_and_zero():
    # Binary positive-class curve: p = 0.0 -> first bin, p = 1.0 -> last bin, p on an inner
    # edge -> the bin it closes (right-closed).
    p = np.array([0.0, 1.0, 0.5, 0.25, 0.2500001])
    y = np.array([0, 1, 1, 0, 1])
    curve = M.reliability_curve(y, p, n_bins=4)
    np.testing.assert_array_equal(curve.count, [2, 2, 0, 1])
    assert curve.confidence[0] == pytest.approx(0.125)
    assert curve.confidence[1] == pytest.approx((0.5 + 0.2500001) / 2)
    assert curve.confidence[3] == 1.0
    assert np.isnan(curve.confidence[2]) and np.isnan(curve.accuracy[2])
    np.testing.assert_allclose(curve.accuracy[[0, 1, 3]], [0.0, 1.0, 1.0])
    # Top-label confidence exactly 1.0 lands in the last bin.
    probs = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    curve = M.reliability_curve([0, 0, 0], probs, n_bins=10)
    assert curve.count[-1] == 2
    assert curve.accuracy[-1] == pytest.approx(0.5)
    assert curve.count[4] == 1  # 0.5 closes bin (0.4, 0.5]


def test_uniform_edges_on_both_sides():
    p = np.array([0.0, 1e-12, 0.999999, 1.0])
    curve = M.reliability_curve([0, 0, 1, 1], p, n_bins=15)
    assert curve.count[0] == 2 and curve.count[-1] == 2


@pytest.mark.parametrize("norm_name", ["l1", "l2", "max"])
@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_ece_matches_naive_loop(norm_name, strategy):
    labels, probs = _random_classification(n=300, c=5, seed=3)
    for n_bins in (1, 3, 10, 15):
        got = M.expected_calibration_error(
            labels, probs, n_bins=n_bins, strategy=strategy, norm=norm_name
        )
        assert got == pytest.approx(_naive_ece(labels, probs, n_bins, strategy, norm_name))


def test_ece_hand_computed_four_points():
    # Confidences 0.9 (correct), 0.8 (wrong), 0.6 (correct), 0.3 -> top label 0.7 (correct).
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1])
    # Two bins (0, .5], (.5, 1]: all in bin 2, acc 3/4, conf (0.9+0.8+0.6+0.7)/4 = 0.75.
    assert M.expected_calibration_error(labels, probs, n_bins=2) == pytest.approx(0.0)
    # Five bins: (0.4,0.6]: {0.6 ok}, (0.6,0.8]: {0.8 wrong, 0.7 ok}, (0.8,1]: {0.9 ok}
    # gaps: |1-0.6|=0.4, |0.5-0.75|=0.25, |1-0.9|=0.1 -> (0.4 + 2*0.25 + 0.1)/4 = 0.25
    assert M.expected_calibration_error(labels, probs, n_bins=5) == pytest.approx(0.25)
    assert M.maximum_calibration_error(labels, probs, n_bins=5) == pytest.approx(0.4)
    l2 = math.sqrt((0.4**2 + 2 * 0.25**2 + 0.1**2) / 4)
    assert M.expected_calibration_error(labels, probs, n_bins=5, norm="l2") == pytest.approx(l2)


def test_ece_gaps_changing_sign_across_bins():
    # Low-confidence bin underconfident, high-confidence bin overconfident: per-bin gaps of
    # +0.15 and -0.15 cancel globally, so one bin sees no miscalibration while two bins do.
    conf_low, conf_high = 0.6, 0.9
    n = 20
    probs = np.array([[conf_low, 1 - conf_low]] * n + [[conf_high, 1 - conf_high]] * n)
    labels = np.zeros(2 * n, dtype=int)
    labels[: int(0.25 * n)] = 1  # low bin accuracy 0.75 (gap +0.15)
    labels[n : n + int(0.25 * n)] = 1  # high bin accuracy 0.75 (gap -0.15)
    global_gap = abs(np.mean(labels == 0) - probs.max(axis=1).mean())
    assert global_gap == pytest.approx(0.0)
    assert M.expected_calibration_error(labels, probs, n_bins=1) == pytest.approx(0.0)
    # Two equal-width bins put 0.6 and 0.9 together: the gaps cancel again.
    assert M.expected_calibration_error(labels, probs, n_bins=2) == pytest.approx(0.0)
    assert M.expected_calibration_error(labels, probs, n_bins=4) == pytest.approx(0.15)
    assert M.expected_calibration_error(labels, probs, n_bins=10) == pytest.approx(0.15)
    assert M.expected_calibration_error(
        labels, probs, n_bins=2, strategy="quantile"
    ) == pytest.approx(0.15)
    curve = M.reliability_curve(labels, probs, n_bins=10)
    gaps = curve.accuracy - curve.confidence
    assert np.nanmin(gaps) < 0 < np.nanmax(gaps)


def test_quantile_strategy_equal_count_bins():
    rng = np.random.default_rng(0)
    p = rng.permutation(np.linspace(0.01, 0.99, 100))
    y = (rng.random(100) < p).astype(int)
    curve = M.reliability_curve(y, p, n_bins=4, strategy="quantile")
    np.testing.assert_array_equal(curve.count, [25, 25, 25, 25])
    assert curve.edges[0] == pytest.approx(0.01) and curve.edges[-1] == pytest.approx(0.99)
    # Top-label version too.
    probs = np.stack([1 - p, p], axis=1)
    top = M.reliability_curve(y, probs, n_bins=5, strategy="quantile")
    assert top.count.sum() == 100
    assert set(top.count.tolist()) <= {19, 20, 21}


def test_quantile_strategy_with_ties_keeps_n_bins():
    p = np.array([0.7] * 10 + [0.9] * 2)
    y = np.ones(12, dtype=int)
    curve = M.reliability_curve(y, p, n_bins=4, strategy="quantile")
    assert curve.count.shape == (4,) and curve.count.sum() == 12
    assert curve.count[0] == 10  # values equal to repeated edges go to the first bin
    assert np.isnan(curve.confidence[curve.count == 0]).all()
    assert M.expected_calibration_error(y, p, n_bins=4, strategy="quantile") == pytest.approx(
        (10 * 0.3 + 2 * 0.1) / 12
    )


def test_binary_1d_ece_is_positive_class():
    rng = np.random.default_rng(1)
    p = rng.random(200)
    y = (rng.random(200) < p).astype(int)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10)
    counts = np.bincount(np.searchsorted(np.linspace(0, 1, 11)[1:-1], p), minlength=10)
    counts = counts[counts > 0]
    expected = np.sum(counts / 200 * np.abs(prob_true - prob_pred))
    assert M.expected_calibration_error(y, p, n_bins=10) == pytest.approx(expected)


def test_mce_is_max_norm():
    labels, probs = _random_classification(seed=5)
    assert M.maximum_calibration_error(labels, probs, n_bins=7) == pytest.approx(
        M.expected_calibration_error(labels, probs, n_bins=7, norm="max")
    )
    assert M.maximum_calibration_error(labels, probs) >= M.expected_calibration_error(labels, probs)


def test_classwise_ece_matches_loop():
    labels, probs = _random_classification(n=250, c=3, seed=7)
    n_bins = 6
    total = 0.0
    for c in range(3):
        pc = probs[:, c]
        for members in _naive_bins(pc, np.linspace(0, 1, n_bins + 1)):
            if members:
                freq = np.mean(labels[members] == c)
                total += len(members) / 250 * abs(freq - np.mean(pc[members]))
    assert M.classwise_calibration_error(labels, probs, n_bins=n_bins) == pytest.approx(total / 3)
    # Binary 1-d input expands to two columns.
    p = probs[:, 0] / probs[:, :2].sum(axis=1)
    y = (labels == 0).astype(int)
    assert M.classwise_calibration_error(y, p, n_bins=5) == pytest.approx(
        M.classwise_calibration_error(y, np.stack([1 - p, p], axis=1), n_bins=5)
    )


def test_adaptive_calibration_error_matches_loop_and_hand():
    labels, probs = _random_classification(n=103, c=3, seed=11)
    r = 4
    gaps = []
    for c in range(3):
        order = sorted(range(103), key=lambda i, c=c: probs[i, c])
        sizes = [103 // r + (1 if k < 103 % r else 0) for k in range(r)]
        start = 0
        for size in sizes:
            chunk = order[start : start + size]
            start += size
            gaps.append(abs(np.mean(labels[chunk] == c) - np.mean(probs[chunk, c])))
    assert M.adaptive_calibration_error(labels, probs, n_bins=r) == pytest.approx(np.mean(gaps))
    # Hand case: two examples, two ranges per class.
    probs2 = np.array([[0.8, 0.2], [0.4, 0.6]])
    labels2 = np.array([0, 0])
    # class 0: ranges {0.4 -> y=0 is class 0: acc 1}, {0.8 -> acc 1}: gaps 0.6, 0.2
    # class 1: ranges {0.2 -> acc 0}, {0.6 -> acc 0}: gaps 0.2, 0.6
    assert M.adaptive_calibration_error(labels2, probs2, n_bins=2) == pytest.approx(0.4)
    # More ranges than examples: empty ranges are skipped.
    assert M.adaptive_calibration_error(labels2, probs2, n_bins=5) == pytest.approx(0.4)


# ------------------------------------------------------------------------------------------
# Accuracy and proper scores
# ------------------------------------------------------------------------------------------


def test_accuracy_brier_nll_match_sklearn():
    labels, probs = _random_classification(n=400, c=6, seed=2)
    assert M.accuracy(labels, probs) == pytest.approx(accuracy_score(labels, probs.argmax(1)))
    assert M.negative_log_likelihood(labels, probs) == pytest.approx(
        log_loss(labels, probs, labels=np.arange(6)), rel=1e-10
    )
    onehot = np.eye(6)[labels]
    assert M.brier_score(labels, probs) == pytest.approx(np.mean(np.sum((probs - onehot) ** 2, 1)))
    # Binary 1-d: twice sklearn's brier_score_loss; log loss as in sklearn.
    p = probs[:, 0]
    y = (labels == 0).astype(int)
    assert M.brier_score(y, p) == pytest.approx(2 * brier_score_loss(y, p))
    assert M.negative_log_likelihood(y, p) == pytest.approx(log_loss(y, p), rel=1e-10)
    assert M.accuracy(y, p) == pytest.approx(accuracy_score(y, (p > 0.5).astype(int)))


def test_nll_clipping():
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    labels = np.array([1, 0])
    eps = np.finfo(np.float64).eps
    expected = (-math.log(eps) + math.log(2)) / 2
    assert M.negative_log_likelihood(labels, probs) == pytest.approx(expected)
    assert M.negative_log_likelihood(labels, probs) == pytest.approx(log_loss(labels, probs))
    assert M.negative_log_likelihood(labels, probs, eps=1e-3) == pytest.approx(
        (-math.log(1e-3) + math.log(2)) / 2
    )
    assert M.negative_log_likelihood(labels, probs, eps=0.0) == math.inf


def test_brier_extremes_and_hand_case():
    assert M.brier_score([0], [[1.0, 0.0]]) == 0.0
    assert M.brier_score([0], [[0.0, 1.0]]) == 2.0
    assert M.brier_score([0, 2], [[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]) == pytest.approx(
        (0.25 + 0.0625 * 2 + 2 / 3) / 2
    )


@settings(max_examples=60, deadline=None)
@given(
    logits=hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 40), st.integers(2, 5)),
        elements=st.floats(-8, 8),
    ),
    seed=st.integers(0, 2**16),
    n_bins=st.integers(1, 20),
    strategy=st.sampled_from(["uniform", "quantile"]),
)
def test_properties_of_scores(logits, seed, n_bins, strategy):
    probs = softmax(logits, axis=1)
    labels = np.random.default_rng(seed).integers(0, probs.shape[1], probs.shape[0])
    ece = M.expected_calibration_error(labels, probs, n_bins=n_bins, strategy=strategy)
    mce = M.maximum_calibration_error(labels, probs, n_bins=n_bins, strategy=strategy)
    ece2 = M.expected_calibration_error(labels, probs, n_bins=n_bins, strategy=strategy, norm="l2")
    assert -1e-12 <= ece <= 1 + 1e-12
    assert ece <= ece2 + 1e-12 <= mce + 2e-12
    assert 0 <= M.brier_score(labels, probs) <= 2 + 1e-12
    assert 0 <= M.classwise_calibration_error(labels, probs, n_bins=n_bins) <= 1
    assert 0 <= M.adaptive_calibration_error(labels, probs, n_bins=n_bins) <= 1
    assert M.negative_log_likelihood(labels, probs) >= 0
    curve = M.reliability_curve(labels, probs, n_bins=n_bins, strategy=strategy)
    assert curve.count.sum() == probs.shape[0]


# ------------------------------------------------------------------------------------------
# Ranking metrics
# ------------------------------------------------------------------------------------------


def test_misclassification_auroc_aupr_match_sklearn():
    labels, probs = _random_classification(n=300, c=4, seed=4)
    rng = np.random.default_rng(0)
    entropy = -np.sum(probs * np.log(probs), axis=1)
    errors = probs.argmax(1) != labels
    for scores in (entropy, rng.random(300), 1 - probs.max(1)):
        assert M.misclassification_auroc(labels, probs, scores) == pytest.approx(
            roc_auc_score(errors, scores)
        )
        assert M.misclassification_aupr(labels, probs, scores) == pytest.approx(
            average_precision_score(errors, scores)
        )
    # Perfect ranking.
    assert M.misclassification_auroc(labels, probs, errors.astype(float)) == 1.0


def test_misclassification_auroc_undefined_without_both_outcomes():
    probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ValueError, match="y_true"):
        M.misclassification_auroc([0, 1], probs, [0.1, 0.2])
    with pytest.raises(ValueError, match="misclassified"):
        M.misclassification_aupr([1, 0], probs, [0.1, 0.2])


def test_ood_metrics_match_sklearn():
    rng = np.random.default_rng(1)
    s_in = rng.normal(0, 1, 300)
    s_out = rng.normal(1.5, 1, 200)
    s_out[:20] = np.round(s_out[:20], 1)  # some ties
    s_in[:20] = np.round(s_in[:20], 1)
    y = np.r_[np.zeros(300), np.ones(200)]
    s = np.r_[s_in, s_out]
    assert M.ood_auroc(s_in, s_out) == pytest.approx(roc_auc_score(y, s))
    assert M.ood_aupr(s_in, s_out) == pytest.approx(average_precision_score(y, s))
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    assert M.fpr_at_95_tpr(s_in, s_out) == pytest.approx(fpr[np.argmax(tpr >= 0.95)])


@pytest.mark.parametrize("n_out", [1, 19, 20, 21, 40, 100, 101])
def test_fpr_at_95_tpr_matches_roc_curve_for_many_sizes(n_out):
    rng = np.random.default_rng(n_out)
    s_in = rng.integers(0, 10, 50).astype(float)  # heavy ties
    s_out = rng.integers(3, 13, n_out).astype(float)
    y = np.r_[np.zeros(50), np.ones(n_out)]
    fpr, tpr, _ = roc_curve(y, np.r_[s_in, s_out], drop_intermediate=False)
    assert M.fpr_at_95_tpr(s_in, s_out) == pytest.approx(fpr[np.argmax(tpr >= 0.95 - 1e-12)])


def test_fpr_at_95_tpr_hand_case():
    s_out = np.arange(1, 21, dtype=float)  # 20 OOD scores: threshold 2 keeps 19/20 = 95 %
    s_in = np.array([0.0, 1.5, 2.0, 3.0])
    assert M.fpr_at_95_tpr(s_in, s_out) == pytest.approx(0.5)
    assert M.ood_auroc([0.0, 0.1], [0.5, 0.9]) == 1.0
    assert M.ood_auroc([0.5, 0.9], [0.0, 0.1]) == 0.0


# ------------------------------------------------------------------------------------------
# Selective prediction
# ------------------------------------------------------------------------------------------


def test_accuracy_rejection_curve_hand_case_and_ties():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.7, 0.3]])
    labels = np.array([0, 1, 1, 1])  # correct, wrong, correct, wrong
    scores = np.array([0.1, 0.5, 0.3, 0.5])  # tie between the two wrong ones
    frac, acc = M.accuracy_rejection_curve(labels, probs, scores)
    np.testing.assert_allclose(frac, [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(acc, [0.5, 2 / 3, 1.0, 1.0])
    # Ties are averaged: rejecting k of three tied examples (one wrong) keeps, in expectation
    # over the 3! orders, an accuracy of 2/3 whatever k.
    probs_t = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1]])
    _, acc_t = M.accuracy_rejection_curve([0, 1, 0], probs_t, [1.0, 1.0, 1.0])
    np.testing.assert_allclose(acc_t, [2 / 3, 2 / 3, 2 / 3])
    # AURC = mean of the selective risks at coverage 1/N..N/N.
    assert M.aurc(labels, probs, scores) == pytest.approx(np.mean(1 - acc))


def test_aurc_matches_risk_coverage_loop():
    labels, probs = _random_classification(n=200, c=3, seed=9)
    rng = np.random.default_rng(3)
    scores = rng.random(200)
    errors = probs.argmax(1) != labels
    order = np.argsort(scores)  # no ties: most confident first
    risks = [np.mean(errors[order[:m]]) for m in range(1, 201)]
    assert M.aurc(labels, probs, scores) == pytest.approx(np.mean(risks))
    # A perfect ranking (errors most uncertain) is optimal and beats a random one.
    optimal = M.aurc(labels, probs, errors.astype(float) + 1e-3 * rng.random(200))
    e, n = errors.sum(), 200
    expected_opt = np.mean([max(0, m - (n - e)) / m for m in range(1, n + 1)])
    assert optimal == pytest.approx(expected_opt)
    assert optimal < M.aurc(labels, probs, scores)
    frac, acc = M.accuracy_rejection_curve(labels, probs, scores)
    assert frac[0] == 0 and frac[-1] == pytest.approx(199 / 200)
    assert acc[0] == pytest.approx(1 - errors.mean())


# ------------------------------------------------------------------------------------------
# Bootstrap
# ------------------------------------------------------------------------------------------


def test_bootstrap_mean_covers_truth_and_matches_theory():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, 400)
    res = M.bootstrap(np.mean, x, n_resamples=2000, seed=1)
    assert res.estimate == pytest.approx(x.mean())
    assert res.low < 3.0 < res.high
    assert res.low < res.estimate < res.high
    assert res.standard_error == pytest.approx(x.std(ddof=1) / 20, rel=0.1)
    assert res.high - res.low == pytest.approx(2 * 1.96 * x.std() / 20, rel=0.1)
    again = M.bootstrap(np.mean, x, n_resamples=2000, seed=1)
    assert again == res


def test_bootstrap_coverage_over_repetitions():
    rng = np.random.default_rng(5)
    hits = 0
    for r in range(60):
        x = rng.exponential(1.0, 80)
        res = M.bootstrap(np.mean, x, n_resamples=300, seed=r)
        hits += res.low <= 1.0 <= res.high
    assert hits >= 48  # nominal 95 %: 57 expected


def test_bootstrap_paired_metric_and_tensors():
    labels, probs = _random_classification(n=200, c=3, seed=1)
    res = M.bootstrap(
        partial(M.expected_calibration_error, n_bins=10),
        torch.from_numpy(labels),
        torch.from_numpy(probs),
        n_resamples=50,
        seed=0,
    )
    assert res.estimate == pytest.approx(M.expected_calibration_error(labels, probs, n_bins=10))
    assert 0 <= res.low <= res.high <= 1
    assert res.standard_error > 0


# ------------------------------------------------------------------------------------------
# Regression
# ------------------------------------------------------------------------------------------


def _regression_data(n=300, seed=0):
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=n)
    std = rng.uniform(0.5, 2.0, n)
    y = mean + std * rng.normal(size=n)
    return y, mean, std


def test_rmse_and_gaussian_nll():
    y, mean, std = _regression_data()
    assert M.rmse(y, mean) == pytest.approx(math.sqrt(np.mean((y - mean) ** 2)))
    assert M.gaussian_nll(y, mean, std**2) == pytest.approx(-np.mean(norm.logpdf(y, mean, std)))
    per_point = M.gaussian_nll(y, mean, std**2, reduction="none")
    np.testing.assert_allclose(per_point, -norm.logpdf(y, mean, std))
    # (N,) vs (N, 1) tolerated, no broadcasting to (N, N).
    assert M.rmse(y[:, None], mean) == pytest.approx(M.rmse(y, mean))
    assert M.gaussian_nll(y, mean[:, None], (std**2)[:, None]) == pytest.approx(
        M.gaussian_nll(y, mean, std**2)
    )


@pytest.mark.parametrize("shape", ["TN", "TN1"])
def test_mc_log_likelihood_matches_formula_and_mixture(shape):
    rng = np.random.default_rng(2)
    t, n, tau = 30, 50, 4.0
    y = rng.normal(size=n)
    samples = y[None] + rng.normal(scale=0.7, size=(t, n))
    expected_points = (
        logsumexp(-0.5 * tau * (y[None] - samples) ** 2, axis=0)
        - np.log(t)
        - 0.5 * np.log(2 * np.pi)
        + 0.5 * np.log(tau)
    )
    # Independent: log of the mean of Gaussian densities of precision tau.
    mixture = np.log(np.mean(norm.pdf(y[None], samples, 1 / np.sqrt(tau)), axis=0))
    np.testing.assert_allclose(expected_points, mixture, rtol=1e-10)
    s = samples[..., None] if shape == "TN1" else samples
    assert M.mc_log_likelihood(y, s, tau) == pytest.approx(np.mean(expected_points), rel=1e-12)
    np.testing.assert_allclose(
        M.mc_log_likelihood(y, s, tau, reduction="none"), expected_points, rtol=1e-12
    )
    # A single sample: the plain Gaussian log-density.
    assert M.mc_log_likelihood(y, samples[:1], tau) == pytest.approx(
        np.mean(norm.logpdf(y, samples[0], 1 / np.sqrt(tau)))
    )


def test_picp_and_width():
    y = np.array([0.0, 1.0, 2.0, 3.0])
    lower = np.array([-1.0, 1.0, 2.5, 0.0])
    upper = np.array([1.0, 2.0, 3.0, 3.0])
    assert M.picp(y, lower, upper) == pytest.approx(0.75)  # bounds inclusive
    assert M.mean_interval_width(lower, upper) == pytest.approx((2 + 1 + 0.5 + 3) / 4)


def test_interval_calibration_curve_matches_loop():
    y, mean, std = _regression_data(n=500, seed=1)
    levels = np.array([0.1, 0.5, 0.9, 0.95])
    expected, observed = M.interval_calibration_curve(y, mean, std, levels=levels)
    np.testing.assert_allclose(expected, levels)
    for p, obs in zip(levels, observed, strict=True):
        lo, hi = norm.interval(p, loc=mean, scale=std)
        assert obs == pytest.approx(np.mean((lo <= y) & (y <= hi)))
    exp_default, obs_default = M.interval_calibration_curve(y, mean, std)
    assert exp_default.shape == obs_default.shape == (99,)
    assert np.all(np.diff(obs_default) >= 0)


def test_miscalibration_area():
    rng = np.random.default_rng(0)
    n = 20000
    mean = np.zeros(n)
    y = rng.normal(size=n)
    assert M.miscalibration_area(y, mean, np.ones(n)) < 0.01
    # Overconfident by a factor 2: observed coverage of level p is 2 Phi(z_p / 2) - 1.
    levels = np.linspace(0.01, 0.99, 99)
    theory = np.mean(np.abs(2 * norm.cdf(norm.ppf(0.5 + levels / 2) / 2) - 1 - levels))
    assert M.miscalibration_area(y, mean, 0.5 * np.ones(n)) == pytest.approx(theory, abs=0.01)
    # Hand case: one point with |z| = 1 is inside for levels >= 0.6827.
    lv = [0.5, 0.9]
    assert M.miscalibration_area([1.0], [0.0], [1.0], levels=lv) == pytest.approx((0.5 + 0.1) / 2)


def test_crps_gaussian_matches_numerical_integral():
    for y, mu, sigma in [(0.3, 0.0, 1.0), (-2.0, 1.0, 0.5), (5.0, 5.0, 3.0)]:
        got = M.crps_gaussian([y], [mu], [sigma])

        def integrand(x, y=y, mu=mu, sigma=sigma):
            return (norm.cdf(x, mu, sigma) - (x >= y)) ** 2

        left, _ = integrate.quad(integrand, -np.inf, y)
        right, _ = integrate.quad(integrand, y, np.inf)
        assert got == pytest.approx(left + right, rel=1e-6)
    # CRPS at the mean of N(0, 1): (sqrt(2) - 1) / sqrt(pi).
    assert M.crps_gaussian([0.0], [0.0], [1.0]) == pytest.approx(
        (math.sqrt(2) - 1) / math.sqrt(math.pi)
    )


def test_crps_samples_brute_force_quad_and_limit():
    rng = np.random.default_rng(3)
    t, n = 7, 5
    samples = rng.normal(size=(t, n))
    y = rng.normal(size=n)
    brute = np.mean(np.abs(samples - y), axis=0) - 0.5 * np.mean(
        np.abs(samples[:, None] - samples[None]), axis=(0, 1)
    )
    np.testing.assert_allclose(M.crps_samples(y, samples, reduction="none"), brute, rtol=1e-12)
    # Against the integral of (F_emp(x) - 1[x >= y])^2 for one point.
    xs, yy = np.sort(samples[:, 0]), y[0]
    knots = np.sort(np.r_[xs, yy])

    def integrand(x):
        return (np.searchsorted(xs, x, side="right") / t - (x >= yy)) ** 2

    integral = sum(integrate.quad(integrand, a, b)[0] for a, b in itertools.pairwise(knots))
    assert brute[0] == pytest.approx(integral, rel=1e-8)
    # Many samples of N(mu, sigma) approach the closed form.
    mu, sigma = rng.normal(size=20), rng.uniform(0.5, 2, 20)
    big = mu + sigma * rng.normal(size=(20000, 20))
    yv = mu + sigma * rng.normal(size=20)
    np.testing.assert_allclose(
        M.crps_samples(yv, big[..., None], reduction="none"),
        M.crps_gaussian(yv, mu, sigma, reduction="none"),
        rtol=0.03,
        atol=0.005,
    )


def test_sharpness():
    assert M.sharpness([1.0, 2.0, 2.0]) == pytest.approx(math.sqrt(3.0))
    assert M.sharpness(np.zeros(3)) == 0.0


def test_regression_accepts_tensors():
    y, mean, std = _regression_data(n=50)
    ty, tm, ts = (torch.from_numpy(a).float() for a in (y, mean, std))
    assert M.rmse(ty, tm) == pytest.approx(M.rmse(y, mean), rel=1e-6)
    assert M.gaussian_nll(ty, tm, ts**2) == pytest.approx(M.gaussian_nll(y, mean, std**2), rel=1e-5)
    assert M.crps_gaussian(ty, tm, ts) == pytest.approx(M.crps_gaussian(y, mean, std), rel=1e-5)
    assert M.picp(ty, tm - ts, tm + ts) == M.picp(y, mean - std, mean + std)
    samples = torch.randn(10, 50, dtype=torch.float64)
    assert M.mc_log_likelihood(torch.from_numpy(y), samples, 2.0) == pytest.approx(
        M.mc_log_likelihood(y, samples.numpy(), 2.0)
    )
    assert M.crps_samples(ty.double(), samples) == pytest.approx(M.crps_samples(y, samples.numpy()))
    assert isinstance(M.miscalibration_area(ty, tm, ts), float)


def test_classification_accepts_tensors():
    labels, probs = _random_classification(n=100, c=3, seed=8)
    tl, tp = torch.from_numpy(labels), torch.from_numpy(probs).float()
    assert M.expected_calibration_error(tl, tp) == pytest.approx(
        M.expected_calibration_error(labels, probs), abs=1e-6
    )
    assert M.accuracy(tl, tp) == M.accuracy(labels, probs)
    assert M.brier_score(tl, tp) == pytest.approx(M.brier_score(labels, probs), rel=1e-6)
    assert M.negative_log_likelihood(tl, tp) == pytest.approx(
        M.negative_log_likelihood(labels, probs), rel=1e-6
    )
    scores = torch.rand(100, dtype=torch.float64)
    assert M.misclassification_auroc(tl, tp, scores) == pytest.approx(
        M.misclassification_auroc(labels, probs, scores.numpy())
    )
    assert M.ood_auroc(scores[:50], scores[50:]) == pytest.approx(
        M.ood_auroc(scores.numpy()[:50], scores.numpy()[50:])
    )
    assert M.aurc(tl, tp, scores) == pytest.approx(M.aurc(labels, probs, scores.numpy()))
    curve = M.reliability_curve(tl, tp.to(torch.bfloat16))  # bfloat16 rows sum to 1 loosely
    assert isinstance(curve.count, np.ndarray) and curve.count.sum() == 100
    assert isinstance(M.expected_calibration_error(tl, tp), float)


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------

_P = np.array([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
_Y = np.array([0, 1, 1])
_S = np.array([0.1, 0.2, 0.3])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: M.expected_calibration_error(_Y, _P, n_bins=0), "n_bins.*got 0"),
        (lambda: M.reliability_curve(_Y, _P, n_bins=-3), "n_bins"),
        (lambda: M.adaptive_calibration_error(_Y, _P, n_bins=0), "n_bins"),
        (lambda: M.classwise_calibration_error(_Y, _P, n_bins=0), "n_bins"),
        (lambda: M.expected_calibration_error(_Y, _P, strategy="equal"), "strategy.*'equal'"),
        (lambda: M.expected_calibration_error(_Y, _P, norm="l3"), "norm.*'l3'"),
        (lambda: M.expected_calibration_error([0, 2, 1], _P), "y_true.*got 2"),
        (lambda: M.brier_score([0, -1, 1], _P), "y_true.*got -1"),
        (lambda: M.accuracy([0.0, 1.5, 1.0], _P), "y_true.*1.5"),
        (lambda: M.accuracy([0, 1], _P), "y_true.*3 labels"),
        (lambda: M.accuracy([[0, 1, 1]], _P), r"y_true.*shape \(N,\)"),
        (lambda: M.negative_log_likelihood(_Y, _P * 1.1), "y_prob.*1.1|y_prob.*sum to 1"),
        (
            lambda: M.negative_log_likelihood(_Y, [[0.5, 0.4], [0.4, 0.6], [0.5, 0.5]]),
            "rows of `y_prob`.*row 0",
        ),
        (lambda: M.accuracy(_Y, [[1.2, -0.2], [0.4, 0.6], [0.5, 0.5]]), r"y_prob.*\[0, 1\].*-0.2"),
        (lambda: M.accuracy(_Y, [[np.nan, 0.5], [0.4, 0.6], [0.5, 0.5]]), "y_prob.*non-finite"),
        (lambda: M.accuracy(_Y, np.zeros((3, 2, 2))), "y_prob.*shape"),
        (lambda: M.accuracy([], np.zeros((0, 2))), "y_prob.*non-empty"),
        (lambda: M.reliability_curve([0, 1], [0.2, 1.3]), "y_prob.*1.3"),
        (lambda: M.reliability_curve([0, 3], [0.2, 0.3]), "y_true.*got 3"),
        (lambda: M.misclassification_auroc(_Y, _P, [0.1, 0.2]), "scores.*3 entries"),
        (lambda: M.misclassification_auroc(_Y, _P, [0.1, np.inf, 0.2]), "scores.*non-finite"),
        (lambda: M.accuracy_rejection_curve(_Y, _P, [[0.1, 0.2, 0.3]]), "scores.*1-dimensional"),
        (lambda: M.ood_auroc([], [0.1]), "scores_in.*non-empty"),
        (lambda: M.ood_aupr([0.1], [np.nan]), "scores_out.*non-finite"),
        (lambda: M.fpr_at_95_tpr([0.1], []), "scores_out.*non-empty"),
        (lambda: M.rmse([1.0, 2.0], [1.0, 2.0, 3.0]), r"mean.*shape of `y` \(2,\)"),
        (lambda: M.rmse([], []), "y.*non-empty"),
        (lambda: M.gaussian_nll([1.0], [1.0], [0.0]), "var.*> 0.*0.0"),
        (lambda: M.gaussian_nll([1.0], [np.nan], [1.0]), "mean.*non-finite"),
        (lambda: M.gaussian_nll([1.0], [1.0], [1.0], reduction="sum"), "reduction.*'sum'"),
        (lambda: M.crps_gaussian([1.0], [1.0], [-1.0]), "std.*> 0"),
        (lambda: M.crps_samples([1.0, 2.0], np.zeros((4, 3))), "samples.*shape"),
        (lambda: M.crps_samples([1.0, 2.0], np.zeros(2)), "samples.*shape"),
        (lambda: M.mc_log_likelihood([1.0], [[1.0]], 0.0), "tau"),
        (lambda: M.mc_log_likelihood([1.0], [[np.inf]], 1.0), "samples.*non-finite"),
        (lambda: M.picp([1.0], [2.0], [0.0]), "lower.*upper"),
        (lambda: M.picp([1.0, 2.0], [0.0], [3.0]), "lower.*shape"),
        (lambda: M.mean_interval_width([0.0, 1.0], [1.0]), "upper.*shape"),
        (
            lambda: M.interval_calibration_curve([1.0], [1.0], [1.0], levels=[0.5, 1.0]),
            "levels.*1.0",
        ),
        (lambda: M.interval_calibration_curve([1.0], [1.0], [1.0], levels=[]), "levels.*non-empty"),
        (lambda: M.miscalibration_area([1.0], [1.0], [0.0]), "std.*> 0"),
        (lambda: M.sharpness([-1.0]), "std.*>= 0"),
        (lambda: M.bootstrap(np.mean, [1.0, 2.0], n_resamples=1), "n_resamples.*2"),
        (lambda: M.bootstrap(np.mean, [1.0, 2.0], confidence_level=1.0), "confidence_level"),
        (lambda: M.bootstrap(np.mean, [1.0, 2.0], [1.0]), r"arrays\[1\].*2 rows"),
        (lambda: M.bootstrap(np.mean), "arrays"),
        (lambda: M.negative_log_likelihood(_Y, _P, eps=1.0), "eps"),
        (lambda: M.format_table({}), "rows"),
        (lambda: M.evaluate(_P), "y_true"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: M.expected_calibration_error(_Y, _P, n_bins=2.5), "n_bins"),
        (lambda: M.expected_calibration_error(_Y, _P, n_bins=True), "n_bins"),
        (lambda: M.bootstrap("mean", [1.0]), "metric"),
        (lambda: M.accuracy(["a", "b", "c"], _P), "y_true.*dtype"),
        (lambda: M.format_table([1, 2]), "rows"),
    ],
)
def test_bad_types_raise_type_error(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_labels_accept_whole_floats_and_bools():
    assert M.accuracy(np.array([0.0, 1.0, 1.0]), _P) == M.accuracy(_Y, _P)
    assert M.accuracy(np.array([False, True, True]), _P) == M.accuracy(_Y, _P)


def test_float32_rows_within_tolerance_are_accepted():
    rng = np.random.default_rng(0)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(100, 1000))).float() * 3, dim=1)
    labels = rng.integers(0, 1000, 100)
    assert 0 <= M.expected_calibration_error(labels, probs) <= 1


# ------------------------------------------------------------------------------------------
# evaluate and format_table
# ------------------------------------------------------------------------------------------


def _classification_result(probs: torch.Tensor, targets, class_dim=1) -> ClassificationResult:
    entropy = -(probs * probs.clamp_min(1e-300).log()).sum(class_dim)
    return ClassificationResult(
        mean=probs,
        variance=torch.zeros_like(probs),
        predictive_entropy=entropy,
        expected_entropy=entropy,
        variation_ratio=torch.zeros_like(entropy),
        n_samples=1,
        class_dim=class_dim,
        targets=targets,
    )


def test_evaluate_classification_result_and_array_agree():
    labels, probs = _random_classification(n=120, c=3, seed=6)
    expected = M.evaluate(probs, labels, n_bins=10)
    assert set(expected) >= {"accuracy", "nll", "brier", "ece", "mce", "aurc"}
    assert expected["ece"] == pytest.approx(M.expected_calibration_error(labels, probs, n_bins=10))
    assert expected["nll"] == pytest.approx(log_loss(labels, probs, labels=[0, 1, 2]))
    result = _classification_result(torch.from_numpy(probs), torch.from_numpy(labels))
    got = M.evaluate(result, n_bins=10)
    assert got.keys() == expected.keys()
    for key in got:
        assert got[key] == pytest.approx(expected[key]), key
    # Explicit y_true overrides stored targets.
    assert M.evaluate(result, labels, n_bins=10)["accuracy"] == expected["accuracy"]


def test_evaluate_dense_prediction_moves_class_dim_and_flattens():
    rng = np.random.default_rng(0)
    n, c, h, w = 4, 3, 5, 6
    flat_probs = softmax(rng.normal(size=(n * h * w, c)), axis=1)
    flat_labels = rng.integers(0, c, n * h * w)
    dense = torch.from_numpy(flat_probs.reshape(n, h, w, c)).permute(0, 3, 1, 2)  # (N, C, H, W)
    targets = torch.from_numpy(flat_labels.reshape(n, h, w))
    got = M.evaluate(_classification_result(dense, targets, class_dim=1))
    want = M.evaluate(flat_probs, flat_labels)
    for key in want:
        assert got[key] == pytest.approx(want[key]), key
    # Class dimension last.
    last = _classification_result(dense.permute(0, 2, 3, 1), targets, class_dim=3)
    assert M.evaluate(last)["brier"] == pytest.approx(want["brier"])


def test_evaluate_regression_result():
    rng = np.random.default_rng(0)
    t, n, tau = 20, 80, 2.0
    samples = torch.from_numpy(rng.normal(size=(t, n, 1)))
    mean = samples.mean(0)
    epistemic = samples.var(0, unbiased=False)
    y = torch.from_numpy(rng.normal(size=(n, 1)))
    result = RegressionResult(
        mean=mean,
        epistemic_variance=epistemic,
        aleatoric_variance=torch.full_like(mean, 1 / tau),
        n_samples=t,
        tau=tau,
        targets=y,
        samples=samples,
    )
    got = M.evaluate(result)
    std = result.std.numpy()
    lo, hi = result.interval(0.95)
    assert got["rmse"] == pytest.approx(M.rmse(y, mean))
    assert got["gaussian_nll"] == pytest.approx(-np.mean(norm.logpdf(y, mean, std)))
    assert got["picp_95"] == pytest.approx(M.picp(y, lo, hi))
    assert got["mean_width_95"] == pytest.approx(M.mean_interval_width(lo, hi))
    assert got["crps"] == pytest.approx(M.crps_gaussian(y, mean, std))
    assert got["miscalibration_area"] == pytest.approx(M.miscalibration_area(y, mean, std))
    assert got["mc_log_likelihood"] == pytest.approx(M.mc_log_likelihood(y, samples, tau))
    # Without samples or tau: no MC log-likelihood; without spread: NaN distributional metrics.
    bare = RegressionResult(
        mean=mean,
        epistemic_variance=torch.zeros_like(mean),
        aleatoric_variance=torch.zeros_like(mean),
        n_samples=1,
        targets=y,
    )
    metrics = M.evaluate(bare)
    assert "mc_log_likelihood" not in metrics
    assert math.isnan(metrics["gaussian_nll"]) and metrics["rmse"] == got["rmse"]
    with pytest.raises(ValueError, match="y_true"):
        M.evaluate(
            RegressionResult(
                mean=mean, epistemic_variance=epistemic, aleatoric_variance=epistemic, n_samples=t
            )
        )


def test_format_table():
    table = M.format_table(
        {
            "deterministic": {"accuracy": 0.91234, "ece": 0.051},
            "MC dropout": {"accuracy": 0.9156, "ece": 0.0212, "nll": float("nan")},
        },
        precision=3,
    )
    lines = table.splitlines()
    assert lines[0].split() == ["model", "accuracy", "ece", "nll"]
    assert set(lines[1]) <= {"-", " "}
    assert lines[2].split() == ["deterministic", "0.912", "0.051", "-"]
    assert lines[3].startswith("MC dropout")
    assert lines[3].split()[2:] == ["0.916", "0.021", "nan"]
    assert len({len(line) for line in lines[:2]}) == 1  # fixed width header and rule
    assert not table.endswith("\n")


def test_evaluate_ignore_index_drops_unlabelled_pixels():
    import torch

    import mcdrop

    rng = np.random.default_rng(3)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(6, 2, 3, 4, 5))), dim=2)  # (T,N,C,H,W)
    result = mcdrop.summarize_samples(probs, outputs="probs")
    labels = rng.integers(0, 3, size=(2, 4, 5))
    labels[0, :2] = 255
    got = mcdrop.metrics.evaluate(result, labels, ignore_index=255)
    # reference: flatten by hand and keep the labelled pixels only
    flat = result.mean.movedim(1, -1).reshape(-1, 3).numpy()
    keep = labels.reshape(-1) != 255
    ref = mcdrop.metrics.evaluate(flat[keep], labels.reshape(-1)[keep])
    assert got == pytest.approx(ref, nan_ok=True)
    with pytest.raises(ValueError, match="y_true"):
        mcdrop.metrics.evaluate(result, labels)  # 255 is out of range without ignore_index
    with pytest.raises(TypeError, match="`ignore_index`"):
        mcdrop.metrics.evaluate(result, labels, ignore_index=2.5)


# --------------------------------------------------------------------------------------------
# Numerics at the edges of float64 (issue 11, group 5)
# --------------------------------------------------------------------------------------------


def _decimal_rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Reference: exact differences and squares in 60-digit decimal arithmetic (no overflow)."""
    import decimal

    context = decimal.Context(prec=60, Emax=10**6, Emin=-(10**6))
    total = sum(
        (context.power(context.subtract(decimal.Decimal(x), decimal.Decimal(y)), 2))
        for x, y in zip(a.tolist(), b.tolist(), strict=True)
    )
    root = context.sqrt(context.divide(total, len(a)))
    return math.inf if root > decimal.Decimal(np.finfo(np.float64).max) else float(root)


_wide = st.floats(min_value=-1.79e308, max_value=1.79e308, allow_nan=False, allow_infinity=False)


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(np.float64, st.integers(1, 6), elements=_wide), st.data())
def test_rmse_never_overflows_below_the_float64_limit(a, data):
    b = data.draw(hnp.arrays(np.float64, a.shape, elements=_wide))
    expected = _decimal_rmse(a, b)
    got = M.rmse(a, b)
    if math.isinf(expected):
        assert math.isinf(got)
    else:
        assert got == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_rmse_of_huge_opposite_values():
    assert M.rmse([1e200], [-1e200]) == pytest.approx(2e200, rel=1e-15)
    # the halved differences times 2 would pass the float64 limit before the root scales them
    a, b = np.array([-1.79e308, 0.0]), np.array([7.69313486e305, 7.69313486e305])
    assert M.rmse(a, b) == pytest.approx(_decimal_rmse(a, b), rel=1e-12)
    assert M.rmse([1.5e308], [-1.5e308]) == math.inf  # 3e308 is above the largest float64
    assert M.rmse([1e300, 1.0], [1e300, 0.0]) == pytest.approx(math.sqrt(0.5))  # no underflow


@settings(max_examples=200, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from([np.float64, np.float32, np.int64, np.uint64, np.bool_]),
        st.integers(1, 5),
    ),
    st.integers(1, 5),
)
def test_labels_are_valid_classes_or_refused(labels, n_classes):
    probs = np.full((labels.shape[0], n_classes), 1.0 / n_classes)
    valid = all(
        math.isfinite(float(x)) and float(x).is_integer() and 0 <= x < n_classes
        for x in labels.tolist()
    )
    if valid:
        assert M.accuracy(labels, probs) == pytest.approx(np.mean(labels.astype(int) == 0))
    else:
        with pytest.raises(ValueError, match="y_true") as info:
            M.accuracy(labels, probs)
        if np.iinfo(np.int64).min not in labels.tolist():  # else that is the real label
            assert "-9223372036854775808" not in str(info.value)


def test_label_of_1e20_is_reported_as_itself():
    with pytest.raises(ValueError, match=r"labels in \[0, 1\], but got 1e\+20"):
        M.accuracy([1e20, 0.0], [[0.5, 0.5], [0.5, 0.5]])
    with pytest.raises(ValueError, match="but got 18446744073709551615"):
        M.accuracy(np.array([2**64 - 1, 0], dtype=np.uint64), [[0.5, 0.5], [0.5, 0.5]])
