"""Selective prediction and sparsification metrics against naive loops, the papers' formulas and
torch-uncertainty / lm-polygraph conventions reproduced on the same arrays."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peer_libraries import torch_uncertainty
from scipy.special import softmax

from mcdrop import metrics as M


def _data(n: int, c: int, seed: int, dtype=np.float64):
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(scale=2.0, size=(n, c)), axis=1).astype(dtype)
    probs /= probs.sum(axis=1, keepdims=True, dtype=np.float64).astype(dtype)
    labels = np.array([rng.choice(c, p=p / p.sum()) for p in probs.astype(np.float64) ** 0.6])
    scores = 1.0 - probs.max(axis=1).astype(np.float64) + rng.normal(scale=0.05, size=n)
    return labels, probs, scores


def _acceptance_errors(labels, probs, scores):
    """0/1 errors from least to most uncertain, by explicit sorting (no ties in the data)."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    return [int(np.argmax(probs[i]) != labels[i]) for i in order]


CASES = [(1, 2, 0), (7, 3, 1), (60, 2, 2), (250, 5, 3), (400, 10, 4)]


@pytest.mark.parametrize(("n", "c", "seed"), CASES)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_risk_coverage_curve_augrc_and_aurc_match_loops(n, c, seed, dtype):
    labels, probs, scores = _data(n, c, seed, dtype)
    coverage, risk, generalized = M.risk_coverage_curve(labels, probs, scores)
    ordered = _acceptance_errors(labels, probs, scores)
    for m in range(1, n + 1):
        errors = ordered[:m]
        assert coverage[m - 1] == pytest.approx(m / n, abs=1e-15)
        assert risk[m - 1] == pytest.approx(sum(errors) / m, abs=1e-12)
        assert generalized[m - 1] == pytest.approx(sum(errors) / n, abs=1e-12)
    naive_augrc = sum(sum(ordered[:m]) / n for m in range(1, n + 1)) / n
    assert M.augrc(labels, probs, scores) == pytest.approx(naive_augrc, abs=1e-12)
    assert M.aurc(labels, probs, scores) == pytest.approx(np.mean(risk), abs=1e-12)


@pytest.mark.parametrize(("n", "c", "seed"), CASES[1:])
def test_augrc_equals_torch_uncertainty_after_its_quadrature(n, c, seed):
    """torch-uncertainty integrates coverage * risk from 1/N to 1 with the trapezoidal rule and
    divides by 1 - 1/N; that is mcdrop's right Riemann mean re-weighted at both ends."""
    tu = torch_uncertainty("metrics.classification.risk_coverage")
    labels, probs, _ = _data(n, c, seed)
    scores = -probs.max(axis=1)  # torch-uncertainty ranks by confidence; no ties in this data
    metric = tu.AUGRC()
    metric.update(torch.from_numpy(probs), torch.from_numpy(labels))
    peer = float(metric.compute())
    _, _, g = M.risk_coverage_curve(labels, probs, scores)
    trapezoid = (np.sum(g) - (g[0] + g[-1]) / 2) / n
    assert peer == pytest.approx(trapezoid / (1 - 1 / n), abs=1e-6)
    assert M.augrc(labels, probs, scores) == pytest.approx(np.mean(g), abs=1e-15)
    # and the two quadratures differ by O(1/N) only
    assert abs(peer - M.augrc(labels, probs, scores)) <= 2.0 / n


@pytest.mark.parametrize(("n", "c", "seed"), CASES)
@pytest.mark.parametrize("coverage", [0.05, 0.1, 0.3, 0.5, 0.7, 0.8, 0.95, 1.0])
def test_risk_at_coverage_matches_loop_and_torch_uncertainty(n, c, seed, coverage):
    labels, probs, _ = _data(n, c, seed)
    scores = -probs.max(axis=1)
    m = max(1, math.ceil(Fraction(str(coverage)) * n))  # exact decimal coverage
    errors = _acceptance_errors(labels, probs, scores)[:m]
    got = M.risk_at_coverage(labels, probs, scores, coverage=coverage)
    assert got == pytest.approx(sum(errors) / m, abs=1e-15)
    tu = torch_uncertainty("metrics.classification.risk_coverage")
    metric = tu.RiskAtxCov(cov_threshold=coverage)
    metric.update(torch.from_numpy(probs), torch.from_numpy(labels))
    assert got == pytest.approx(float(metric.compute()), abs=1e-6)


@pytest.mark.parametrize(("n", "c", "seed"), CASES)
@pytest.mark.parametrize("risk", [0.0, 0.05, 0.2, 0.4, 1.0])
def test_coverage_at_risk_matches_loop_and_torch_uncertainty(n, c, seed, risk):
    labels, probs, _ = _data(n, c, seed)
    scores = -probs.max(axis=1)
    expected = 0.0
    ordered = _acceptance_errors(labels, probs, scores)
    for m in range(n, 0, -1):
        errors = ordered[:m]
        if sum(errors) / m <= risk:
            expected = m / n
            break
    got = M.coverage_at_risk(labels, probs, scores, risk=risk)
    assert got == pytest.approx(expected, abs=1e-15)
    tu = torch_uncertainty("metrics.classification.risk_coverage")
    metric = tu.CovAtxRisk(risk_threshold=float(risk))
    metric.update(torch.from_numpy(probs), torch.from_numpy(labels))
    peer = float(metric.compute())
    if expected == 0.0:  # torch-uncertainty says NaN where only rejecting everything works
        assert math.isnan(peer)
    else:
        assert got == pytest.approx(peer, abs=1e-6)


def _lm_polygraph_area(uncertainty, quality):
    """lm-polygraph's prediction-rejection area (src/lm_polygraph/ue_metrics/pred_rej_area.py):
    mean over m of the mean quality of the m least uncertain, written as a loop."""
    order = sorted(range(len(uncertainty)), key=lambda i: uncertainty[i])
    n = len(order)
    return sum(sum(quality[i] for i in order[:m]) / m for m in range(1, n + 1)) / n


@pytest.mark.parametrize(("n", "c", "seed"), CASES[1:])
def test_prr_matches_the_lm_polygraph_normalisation(n, c, seed):
    labels, probs, scores = _data(n, c, seed)
    correct = (probs.argmax(axis=1) == labels).astype(float)
    method = _lm_polygraph_area(scores, correct)
    oracle = _lm_polygraph_area(-correct, correct)  # lm-polygraph: metric(-target, target)
    random = correct.mean()  # the expectation of its 1000 shuffles
    expected = (method - random) / (oracle - random)
    assert M.prediction_rejection_ratio(labels, probs, scores) == pytest.approx(expected, abs=1e-12)
    error_rate, area = 1 - correct.mean(), M.aurc(labels, probs, scores)
    oracle_area = M.aurc(labels, probs, 1.0 - correct)
    assert expected == pytest.approx((error_rate - area) / (error_rate - oracle_area), abs=1e-12)


@pytest.mark.parametrize("n", [3, 5, 6])
def test_prr_is_zero_on_average_over_every_ranking(n):
    """Random rejection has PRR 0 in expectation: exactly, averaged over all n! rankings."""
    rng = np.random.default_rng(n)
    labels = np.concatenate([[0, 1], rng.integers(0, 2, n - 2)])
    probs = np.tile([0.8, 0.2], (n, 1))  # predicts 0 everywhere: errors where the label is 1
    values = [
        M.prediction_rejection_ratio(labels, probs, np.array(perm, dtype=float))
        for perm in itertools.permutations(range(n))
    ]
    assert np.mean(values) == pytest.approx(0.0, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(2, 40).flatmap(
        lambda n: st.tuples(
            st.lists(st.booleans(), min_size=n, max_size=n).filter(lambda e: 0 < sum(e) < n),
            st.lists(st.floats(-5, 5), min_size=n, max_size=n),
        )
    )
)
def test_selective_invariants(data):
    errors, raw = data
    errors = np.array(errors)
    labels = np.zeros(errors.size, dtype=int)
    probs = np.where(errors[:, None], [0.3, 0.7], [0.7, 0.3])
    scores = np.array(raw)
    augrc, aurc = M.augrc(labels, probs, scores), M.aurc(labels, probs, scores)
    assert 0.0 <= augrc <= aurc + 1e-15 <= 1.0 + 1e-15
    # A perfect ranking (errors most uncertain) gives PRR 1, the reverse ranking is worst.
    perfect = errors + 0.01 * np.abs(scores) / 6
    assert M.prediction_rejection_ratio(labels, probs, perfect) == pytest.approx(1.0)
    assert M.prediction_rejection_ratio(labels, probs, scores) <= 1.0 + 1e-12
    assert M.augrc(labels, probs, perfect) <= augrc + 1e-15
    # Risk at full coverage is the error rate; coverage at that risk is 1.
    rate = errors.mean()
    assert M.risk_at_coverage(labels, probs, scores, coverage=1.0) == pytest.approx(rate)
    assert M.coverage_at_risk(labels, probs, scores, risk=rate) == 1.0


def test_all_tied_scores_give_the_average_everywhere():
    labels = np.array([0, 0, 0, 0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.9, 0.1], [0.2, 0.8]])  # errors at 1 and 3
    scores = np.zeros(4)  # one tied group: every coverage accepts a random part of it
    _, accuracy = M.accuracy_rejection_curve(labels, probs, scores)
    coverage, risk, generalized = M.risk_coverage_curve(labels, probs, scores)
    np.testing.assert_allclose(accuracy, 0.5)
    np.testing.assert_allclose(risk, 0.5)
    np.testing.assert_allclose(generalized, coverage / 2)


# ------------------------------------------------------------------------------------------
# ties: averaged over the orders of each tied group, so the input order does not matter
# ------------------------------------------------------------------------------------------

COVERAGES = (0.1, 0.3, 0.5, 0.6, 0.75, 1.0)
RISKS = (0.0, 0.15, 0.3, 0.45, 0.7, 1.0)


def _classification_metrics(labels, probs, scores):
    """Every selective metric of one input, as a flat dict of arrays and floats."""
    coverage, risk, generalized = M.risk_coverage_curve(labels, probs, scores)
    out = {
        "coverage": coverage,
        "risk": risk,
        "generalized": generalized,
        "accuracy": M.accuracy_rejection_curve(labels, probs, scores)[1],
        "aurc": M.aurc(labels, probs, scores),
        "augrc": M.augrc(labels, probs, scores),
    }
    for c in COVERAGES:
        out[f"risk@{c}"] = M.risk_at_coverage(labels, probs, scores, coverage=c)
    for r in RISKS:
        out[f"coverage@{r}"] = M.coverage_at_risk(labels, probs, scores, risk=r)
    wrong = probs.argmax(axis=1) != labels
    if 0 < wrong.sum() < wrong.size:
        out["prr"] = M.prediction_rejection_ratio(labels, probs, scores)
    return out


def _regression_metrics(errors, scores):
    fraction, curve, oracle = M.sparsification_curve(errors, scores)
    return {
        "fraction": fraction,
        "curve": curve,
        "oracle": oracle,
        "ause": M.ause(errors, scores),
    }


def _tied_problem(wrong, scores):
    """Binary predictions wrong where ``wrong`` is set, with the given scores."""
    wrong = np.asarray(wrong, dtype=bool)
    labels = np.zeros(wrong.size, dtype=int)
    probs = np.where(wrong[:, None], [0.3, 0.7], [0.7, 0.3])
    return labels, probs, np.asarray(scores, dtype=np.float64)


@settings(max_examples=80, deadline=None)
@given(
    st.integers(1, 30).flatmap(
        lambda n: st.tuples(
            st.lists(st.booleans(), min_size=n, max_size=n),
            st.lists(st.integers(0, 3), min_size=n, max_size=n),
            st.lists(st.floats(0, 4, allow_subnormal=False), min_size=n, max_size=n),
            st.randoms(use_true_random=False),
        )
    )
)
def test_permuting_the_inputs_changes_no_selective_metric(data):
    wrong, raw_scores, raw_errors, rnd = data
    labels, probs, scores = _tied_problem(wrong, raw_scores)  # integer scores: many ties
    errors = np.round(np.asarray(raw_errors), 1)  # tied errors too
    perm = np.array(rnd.sample(range(scores.size), scores.size))
    before = _classification_metrics(labels, probs, scores)
    after = _classification_metrics(labels[perm], probs[perm], scores[perm])
    assert before.keys() == after.keys()
    for key, value in before.items():  # bit for bit: the sums run in a canonical order
        np.testing.assert_array_equal(after[key], value, err_msg=key)
    before = _regression_metrics(errors, scores)
    after = _regression_metrics(errors[perm], scores[perm])
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value, err_msg=key)


def _orders_breaking_ties(scores):
    """Every order of the examples by increasing score, tied groups in every order: the
    distinct permutations that sort ``scores`` (each equally likely under random ties)."""
    n = len(scores)
    return [
        perm
        for perm in itertools.permutations(range(n))
        if all(scores[perm[i]] <= scores[perm[i + 1]] for i in range(n - 1))
    ]


def _naive_classification(wrong, scores):
    """The metrics written per order (accept in that order, one at a time) and averaged over
    every order that breaks the ties; operating points read off the averaged curve."""
    n = len(wrong)
    orders = _orders_breaking_ties(scores)
    risk = np.zeros(n)
    for order in orders:
        accepted = [wrong[i] for i in order]
        risk += [sum(accepted[:m]) / m for m in range(1, n + 1)]
    risk /= len(orders)
    m = np.arange(1, n + 1)
    out = {
        "coverage": m / n,
        "risk": risk,
        "generalized": risk * m / n,
        "accuracy": 1.0 - risk[::-1],
        "aurc": risk.mean(),
        "augrc": np.mean(risk * m / n),
    }
    for c in COVERAGES:
        out[f"risk@{c}"] = risk[max(1, math.ceil(Fraction(str(c)) * n)) - 1]
    for r in RISKS:
        fits = [k / n for k in range(1, n + 1) if risk[k - 1] <= r + 1e-12]
        out[f"coverage@{r}"] = max(fits, default=0.0)
    e = sum(wrong)
    if 0 < e < n:
        rate = e / n
        oracle = np.mean([max(0, k - (n - e)) / k for k in range(1, n + 1)])
        out["prr"] = (rate - risk.mean()) / (rate - oracle)
    return out


def _naive_sparsification_over_orders(errors, scores):
    n = len(errors)
    orders = _orders_breaking_ties(scores)
    curve = np.zeros(n)
    for order in orders:
        removal = list(order)[::-1]  # most uncertain removed first
        curve += [np.mean([errors[i] for i in removal[k:]]) for k in range(n)]
    curve /= len(orders)
    by_error = sorted(errors, reverse=True)
    oracle = np.array([np.mean(by_error[k:]) for k in range(n)])
    return {
        "fraction": np.arange(n) / n,
        "curve": curve,
        "oracle": oracle,
        "ause": np.mean(curve - oracle),
    }


@pytest.mark.parametrize("seed", range(12))
def test_ties_equal_the_average_over_every_tie_breaking_order(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 7))
    wrong = rng.random(n) < 0.4
    scores = rng.integers(0, 3, n).astype(float)  # at most 3 distinct values: ties
    errors = np.round(rng.gamma(1.0, size=n), 1)
    got = _classification_metrics(*_tied_problem(wrong, scores))
    want = _naive_classification(list(wrong), list(scores))
    assert got.keys() == want.keys()
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-10, err_msg=key)
    got = _regression_metrics(errors, scores)
    want = _naive_sparsification_over_orders(list(errors), list(scores))
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-10, err_msg=key)


def _fd_shifts_augrc(wrong, scores):
    """Traub et al.'s reference (fd-shifts ``generalized_risk_stats`` + linear ``evaluate_auc``)
    written as a loop: one point per distinct score, coverage from 1 down to 0, trapezoids."""
    n = len(wrong)
    confidence = -np.asarray(scores)  # fd-shifts ranks by confidence, accepting high first
    order = np.argsort(confidence, kind="stable")
    residuals, confidence = np.asarray(wrong, dtype=float)[order], confidence[order]
    error_sum, coverages, risks = residuals.sum(), [1.0], [residuals.sum() / n]
    for i in range(n - 1):
        error_sum -= residuals[i]
        if confidence[i] != confidence[i + 1]:
            coverages.append((n - 1 - i) / n)
            risks.append(error_sum / n)
    coverages.append(0.0)
    risks.append(0.0)
    return sum(
        (coverages[j] - coverages[j + 1]) * (risks[j] + risks[j + 1]) / 2
        for j in range(len(coverages) - 1)
    )


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("levels", [2, 5, 10_000])
def test_augrc_is_the_reference_codes_block_area_plus_half_an_error_per_example(seed, levels):
    """fd-shifts integrates the threshold points linearly (a tied group is one block); the
    expectation over tie orders adds E / (2 N²) to that, with or without ties."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 300))
    wrong = rng.random(n) < 0.3
    scores = rng.integers(0, levels, n).astype(float)
    labels, probs, scores = _tied_problem(wrong, scores)
    expected = _fd_shifts_augrc(wrong, scores) + wrong.sum() / (2 * n**2)
    assert M.augrc(labels, probs, scores) == pytest.approx(expected, abs=1e-12)


# ------------------------------------------------------------------------------------------
# sparsification and AUSE
# ------------------------------------------------------------------------------------------


def _naive_sparsification(errors, scores):
    n = len(errors)
    by_score = sorted(range(n), key=lambda i: -scores[i])
    by_error = sorted(range(n), key=lambda i: -errors[i])
    curve = [np.mean([errors[i] for i in by_score[k:]]) for k in range(n)]
    oracle = [np.mean([errors[i] for i in by_error[k:]]) for k in range(n)]
    return np.array(curve), np.array(oracle)


@pytest.mark.parametrize("n", [1, 2, 9, 150])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sparsification_and_ause_match_loops(n, dtype):
    rng = np.random.default_rng(n)
    errors = np.abs(rng.normal(size=n)).astype(dtype)
    scores = (errors + rng.normal(scale=0.5, size=n)).astype(dtype)
    fraction, curve, oracle = M.sparsification_curve(errors, scores)
    want_curve, want_oracle = _naive_sparsification(
        errors.astype(np.float64), scores.astype(np.float64)
    )
    np.testing.assert_allclose(fraction, np.arange(n) / n)
    np.testing.assert_allclose(curve, want_curve, rtol=1e-12)
    np.testing.assert_allclose(oracle, want_oracle, rtol=1e-12)
    assert M.ause(errors, scores) == pytest.approx(np.mean(want_curve - want_oracle), abs=1e-12)
    assert M.ause(errors, errors) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n", [20, 333])
def test_ause_equals_torch_uncertainty_after_its_normalisation(n):
    tu = torch_uncertainty("metrics.sparsification")
    rng = np.random.default_rng(n)
    errors = rng.gamma(2.0, size=n)
    scores = errors * rng.uniform(0.5, 1.5, size=n)
    metric = tu.AUSE()
    metric.update(torch.from_numpy(scores), torch.from_numpy(errors))
    peer = float(metric.compute())
    _, curve, oracle = M.sparsification_curve(errors, scores)
    gap = curve - oracle
    converted = (gap.sum() - gap[-1] / 2) / (n * errors.mean())
    assert peer == pytest.approx(converted, rel=1e-6)
    assert M.ause(errors, scores) == pytest.approx(gap.mean(), abs=1e-15)


def test_ause_flattens_dense_outputs():
    rng = np.random.default_rng(0)
    errors = np.abs(rng.normal(size=(4, 5, 6)))
    scores = errors + rng.normal(size=(4, 5, 6))
    assert M.ause(errors, scores) == pytest.approx(M.ause(errors.ravel(), scores.ravel()))


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coverage", [0.0, -0.1, 1.5, math.nan])
def test_risk_at_coverage_refuses_a_coverage_outside_0_1(coverage):
    labels, probs, scores = _data(10, 3, 0)
    with pytest.raises(ValueError, match="`coverage`"):
        M.risk_at_coverage(labels, probs, scores, coverage=coverage)


@pytest.mark.parametrize("risk", [-0.01, 1.01, math.inf])
def test_coverage_at_risk_refuses_a_risk_outside_0_1(risk):
    labels, probs, scores = _data(10, 3, 0)
    with pytest.raises(ValueError, match="`risk`"):
        M.coverage_at_risk(labels, probs, scores, risk=risk)


def test_coverage_argument_is_keyword_only_and_typed():
    labels, probs, scores = _data(10, 3, 0)
    with pytest.raises(TypeError):
        M.risk_at_coverage(labels, probs, scores, 0.5)  # type: ignore[misc]
    with pytest.raises(TypeError, match="`coverage`"):
        M.risk_at_coverage(labels, probs, scores, coverage="half")


@pytest.mark.parametrize(
    "function",
    [M.augrc, M.prediction_rejection_ratio, M.risk_coverage_curve],
)
def test_selective_metrics_refuse_bad_arrays(function):
    labels, probs, scores = _data(10, 3, 0)
    with pytest.raises(ValueError, match="`y_prob`"):
        function(labels[:0], probs[:0], scores[:0])
    bad = scores.copy()
    bad[2] = np.nan
    with pytest.raises(ValueError, match="`scores`"):
        function(labels, probs, bad)
    with pytest.raises(ValueError, match="`y_true`"):
        function(np.full(10, 3), probs, scores)
    with pytest.raises(ValueError, match="`scores`"):
        function(labels, probs, scores[:5])


def test_prr_refuses_all_correct_or_all_wrong():
    probs = np.tile([0.9, 0.1], (5, 1))
    with pytest.raises(ValueError, match="all 5 are correct"):
        M.prediction_rejection_ratio(np.zeros(5, int), probs, np.arange(5.0))
    with pytest.raises(ValueError, match="all 5 are misclassified"):
        M.prediction_rejection_ratio(np.ones(5, int), probs, np.arange(5.0))


def test_sparsification_refuses_signed_errors_nan_and_mismatch():
    with pytest.raises(ValueError, match="`errors`.*>= 0"):
        M.ause(np.array([0.5, -0.2]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="`errors`"):
        M.ause(np.array([0.5, np.nan]), np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="`scores`"):
        M.ause(np.array([0.5, 0.2]), np.array([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="`errors`"):
        M.sparsification_curve(np.array([]), np.array([]))
