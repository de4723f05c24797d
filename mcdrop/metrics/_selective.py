"""Selective prediction: rejection and risk-coverage curves, their areas and operating points."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mcdrop._validation import (
    ArrayLike,
    as_real,
    check_classification,
    check_float,
    check_scores,
    match_shape,
)
from mcdrop.metrics._base import (
    _prob_matrix,
)


def _expected_cumsum(values: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Sum of ``values`` over the ``m`` lowest ``scores``, ``m = 1, ..., N``, ties averaged.

    Where the ``m``-th place falls inside a group of ``g`` tied scores, of which the first ``r``
    are taken, the group contributes ``r / g`` of its sum: the expectation over the ``g!``
    equally likely orders of the group. The result depends on the multiset of
    ``(score, value)`` pairs only, bit for bit: the values are summed in the order of a
    lexicographic sort on ``(score, value)``, whatever the input order.
    """
    n = scores.shape[0]
    order = np.lexsort((values, scores))
    sorted_scores, sorted_values = scores[order], values[order]
    starts = np.flatnonzero(np.r_[True, sorted_scores[1:] != sorted_scores[:-1]])
    sizes = np.diff(np.r_[starts, n])
    group_sums = np.add.reduceat(sorted_values, starts)
    before = np.r_[0.0, np.cumsum(group_sums)[:-1]]
    taken = np.arange(1, n + 1, dtype=np.float64) - np.repeat(starts, sizes)
    return np.repeat(before, sizes) + taken * np.repeat(group_sums / sizes, sizes)


def accuracy_rejection_curve(
    y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy on the retained examples as the most uncertain ones are rejected.

    Examples are rejected one at a time in decreasing order of ``scores`` (higher = more
    uncertain = rejected first).

    Ties are averaged: where ``k`` rejections end inside a group of ``g`` tied scores, the
    accuracy is the expectation over the ``g!`` equally likely orders of that group, i.e.
    the group's rejected part counts ``r / g`` of each of its members. At a score threshold
    (a whole group rejected) this is the accuracy of that threshold; in between it is the
    accuracy of rejecting a uniformly random part of the group. The curve, and every area
    and operating point of this module, therefore depend on the pairs ``(score, example)``
    only, not on the order of the input. Without ties this is the plain one-at-a-time curve.

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities.
    scores : array-like or Tensor of shape (N,)
        Uncertainty scores.

    Returns
    -------
    rejection_fraction : ndarray of shape (N,)
        ``0, 1/N, ..., (N-1)/N``.
    accuracy : ndarray of shape (N,)
        Accuracy on the ``N - k`` retained examples after rejecting ``k``.

    References
    ----------
    Nadeem, Zucker & Hanczar (2009), "Accuracy-rejection curves (ARCs) for comparing
    classification methods with a reject option", MLSB.
    """
    labels, probs = check_classification(y_true, y_prob)
    score_values = check_scores("scores", scores, labels.shape[0])
    correct = (_prob_matrix(probs).argmax(axis=1) == labels).astype(np.float64)
    return _accuracy_after_rejection(correct, score_values)


def _accuracy_after_rejection(
    correct: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n = correct.shape[0]
    # Retained after rejecting k: the N - k least uncertain, expected number correct.
    retained_correct = _expected_cumsum(correct, scores)[::-1]
    retained = np.arange(n, 0, -1, dtype=np.float64)
    return np.arange(n, dtype=np.float64) / n, retained_correct / retained


def aurc(y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike) -> float:
    r"""Area under the risk-coverage curve (Geifman & El-Yaniv 2017). Lower is better.

    Keeping the ``m`` least uncertain examples (coverage ``m / N``), the selective risk is
    their error rate; the AURC is its mean over ``m = 1, ..., N``:

    .. math::

        \mathrm{AURC} = \frac{1}{N} \sum_{m=1}^{N} \frac{1}{m}
        \sum_{j \le m} \mathbb{1}[\text{example } \pi_j \text{ misclassified}]

    with ``\pi`` the examples in increasing order of ``scores``; equivalently the mean of
    ``1 - accuracy`` of :func:`accuracy_rejection_curve`.

    Ties in ``scores`` are averaged (see :func:`accuracy_rejection_curve`): the AURC is the
    expectation of the AURC over the random orders of each tied group, so it does not depend
    on the order of the input.

    Parameters
    ----------
    y_true, y_prob, scores
        As in :func:`accuracy_rejection_curve`.

    Returns
    -------
    float
        In ``[0, 1]``.

    References
    ----------
    Geifman & El-Yaniv (2017), "Selective classification for deep neural networks", NeurIPS;
    Geifman, Uziel & El-Yaniv (2019), "Bias-reduced uncertainty estimation for deep neural
    classifiers", ICLR (AURC).
    """
    _, acc = accuracy_rejection_curve(y_true, y_prob, scores)
    return float(np.mean(1.0 - acc))


def _accepted_errors(y_true: Any, y_prob: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """0/1 errors, and the expected number of errors among the ``m`` least uncertain,
    ``m = 1, ..., N`` (ties averaged as in :func:`accuracy_rejection_curve`)."""
    labels, probs = check_classification(y_true, y_prob)
    score_values = check_scores("scores", scores, labels.shape[0])
    errors = (_prob_matrix(probs).argmax(axis=1) != labels).astype(np.float64)
    return errors, _expected_cumsum(errors, score_values)


def risk_coverage_curve(
    y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Selective risk and generalised risk at every coverage.

    The ``m`` least uncertain examples (lowest ``scores``) are accepted, ``m = 1, ..., N``.
    With ``e_j`` the 0/1 error of the ``j``-th accepted example,

    .. math::

        \mathrm{risk}(m / N) = \frac{1}{m} \sum_{j \le m} e_j, \qquad
        \mathrm{generalised\ risk}(m / N) = \frac{1}{N} \sum_{j \le m} e_j
        = \frac{m}{N} \, \mathrm{risk}(m / N).

    The selective risk is the error rate among the accepted examples; the generalised risk
    (Traub et al. 2024) is the probability that an example is both accepted *and*
    misclassified.

    Ties in ``scores`` are averaged: where ``m`` ends inside a group of ``g`` tied scores with
    ``k`` errors, of which ``r`` are accepted, the group contributes ``r k / g`` errors, the
    expectation over the ``g!`` orders of the group (accepting a random part of it). At the
    coverages of the distinct score thresholds, where whole groups are accepted, the values
    are those of the thresholds (the only points that Traub et al.'s reference code and
    :func:`sklearn.metrics.roc_curve` keep); in between, the generalised risk runs on the
    straight line between them. Every output is independent of the order of the input, and
    the areas (:func:`aurc`, :func:`augrc`) are the means of this curve.

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities.
    scores : array-like or Tensor of shape (N,)
        Uncertainty scores, higher = more uncertain = accepted last.

    Returns
    -------
    coverage : ndarray of shape (N,)
        ``1/N, 2/N, ..., 1``.
    risk : ndarray of shape (N,)
        Selective risk at each coverage.
    generalized_risk : ndarray of shape (N,)
        Generalised risk at each coverage.

    References
    ----------
    Geifman & El-Yaniv (2017), "Selective classification for deep neural networks", NeurIPS.
    Traub, Bungert, Lüth, Baumgartner, Maier-Hein, Jaeger & Jäger (2024), "Overcoming common
    flaws in the evaluation of selective classification systems", NeurIPS.
    """
    errors, accepted_errors = _accepted_errors(y_true, y_prob, scores)
    n = errors.shape[0]
    accepted = np.arange(1, n + 1, dtype=np.float64)
    return accepted / n, accepted_errors / accepted, accepted_errors / n


def augrc(y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike) -> float:
    r"""Area under the generalised risk-coverage curve (Traub et al. 2024). Lower is better.

    .. math::

        \mathrm{AUGRC} = \frac{1}{N} \sum_{m=1}^{N} \frac{1}{N} \sum_{j \le m} e_j
        = \frac{1}{N} \sum_{m=1}^{N} \frac{m}{N}\,\mathrm{risk}(m / N),

    the mean of the generalised risk of :func:`risk_coverage_curve`, with ``e_j`` the errors
    of the examples in increasing order of ``scores``. It is the probability that a random
    example is misclassified *and* accepted, averaged over the acceptance thresholds; unlike
    the :func:`aurc` it does not weight the selective risk at tiny coverages (a few examples)
    as much as at full coverage. Always ``AUGRC <= AURC`` (same quadrature, weights
    ``m / N <= 1``).

    Parameters
    ----------
    y_true, y_prob, scores
        As in :func:`risk_coverage_curve`.

    Returns
    -------
    float
        In ``[0, 1]``; ``error_rate² / 2`` (about) for a perfect ranking, ``error_rate / 2``
        (about) for a random one.

    Notes
    -----
    The quadrature is the one of :func:`aurc` (a right Riemann sum over the ``N`` coverages).
    torch-uncertainty's ``AUGRC`` integrates the same curve with the trapezoidal rule from
    coverage ``1/N`` and divides by ``1 - 1/N``; the two agree to ``O(1/N)``.

    Ties in ``scores`` are averaged (see :func:`risk_coverage_curve`): the AUGRC is the
    expectation over the random orders of each tied group. Traub et al.'s reference code
    (fd-shifts, ``RiskCoverageStats.augrc``) keeps one point per distinct score and
    integrates linearly from coverage 0, which treats each tied group as one block; with
    ``E`` errors in all, that area plus ``E / (2 N²)`` is this AUGRC, ties or not.
    torch-uncertainty sorts with an unstable ``argsort``, so its value under ties depends on
    the order its sort happens to give.

    References
    ----------
    Traub et al. (2024), "Overcoming common flaws in the evaluation of selective classification
    systems", NeurIPS.
    """
    _, _, generalized = risk_coverage_curve(y_true, y_prob, scores)
    return float(np.mean(generalized))


def _accepted_count(coverage: float, n: int) -> int:
    """``ceil(coverage * n)``, with a ``1e-9`` tolerance so ``0.1 * 10`` accepts 1, not 2."""
    return max(1, math.ceil(coverage * n - 1e-9))


def risk_at_coverage(
    y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike, *, coverage: float
) -> float:
    r"""Selective risk (error rate) of the ``ceil(coverage · N)`` least uncertain examples.

    Where those examples end inside a group of tied ``scores``, the risk is the expectation
    over the orders of that group (accepting a random part of it), as in
    :func:`risk_coverage_curve`.

    Parameters
    ----------
    y_true, y_prob, scores
        As in :func:`risk_coverage_curve`.
    coverage : float
        Fraction of examples accepted, in ``(0, 1]``. The number accepted is
        ``m = ceil(coverage · N)`` (at least one; ``coverage · N`` within ``1e-9`` of an integer
        counts as that integer).

    Returns
    -------
    float
        In ``[0, 1]``; at ``coverage=1`` the error rate of all predictions.

    References
    ----------
    Geifman & El-Yaniv (2017), "Selective classification for deep neural networks", NeurIPS.
    """
    coverage = check_float("coverage", coverage, low=0.0, high=1.0, low_inclusive=False)
    errors, accepted_errors = _accepted_errors(y_true, y_prob, scores)
    m = _accepted_count(coverage, errors.shape[0])
    return float(accepted_errors[m - 1] / m)


def coverage_at_risk(
    y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike, *, risk: float
) -> float:
    r"""Largest coverage whose selective risk is at most ``risk``.

    ``max {m / N : risk(m / N) <= risk}`` over the curve of :func:`risk_coverage_curve`. The
    selective risk need not decrease with the coverage; the largest admissible coverage is
    reported, as in torch-uncertainty's ``CovAtxRisk``. It is read from the tie-averaged curve
    of :func:`risk_coverage_curve`: a coverage inside a group of tied scores is reached by
    accepting a random part of the group, and its risk is the expected one. A risk within
    ``1e-12`` of ``risk`` counts as equal (rounding of the averaged values).

    Parameters
    ----------
    y_true, y_prob, scores
        As in :func:`risk_coverage_curve`.
    risk : float
        Target error rate among accepted examples, in ``[0, 1]``.

    Returns
    -------
    float
        In ``[0, 1]``. ``0.0`` when no non-empty set of least-uncertain examples reaches the
        target (torch-uncertainty returns NaN there): only rejecting everything does.

    References
    ----------
    Geifman & El-Yaniv (2017), "Selective classification for deep neural networks", NeurIPS.
    """
    risk = check_float("risk", risk, low=0.0, high=1.0)
    coverage, selective_risk, _ = risk_coverage_curve(y_true, y_prob, scores)
    admissible = np.flatnonzero(selective_risk <= risk + 1e-12)
    return float(coverage[admissible[-1]]) if admissible.size else 0.0


def prediction_rejection_ratio(y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike) -> float:
    r"""Prediction-rejection ratio: how much of the oracle's gain over random rejection a score
    achieves. Higher is better.

    With ``A(s) = (1/N) sum_m acc(m)`` the area under the curve of accuracy on the ``m``
    least uncertain examples (``= 1 - AURC``),

    .. math::

        \mathrm{PRR} = \frac{A(\text{scores}) - A(\text{random})}
        {A(\text{oracle}) - A(\text{random})},

    where the oracle rejects the misclassified examples first and ``A(random)``, the
    expectation over uniformly random rankings, equals the accuracy (every retained subset of
    a random ranking has the overall accuracy in expectation). Equivalently
    ``(error_rate - AURC) / (error_rate - AURC_oracle)``.

    Parameters
    ----------
    y_true, y_prob, scores
        As in :func:`risk_coverage_curve`.

    Returns
    -------
    float
        At most 1 (the oracle's ranking); 0 in expectation for a random ranking; negative when
        the score ranks errors *last*.

    Raises
    ------
    ValueError
        When every prediction is right or every one wrong: the oracle equals random rejection
        and the ratio is undefined.

    Notes
    -----
    This is the normalisation of lm-polygraph (``(method - random) / (oracle - random)`` of the
    prediction-rejection area, Vashurin et al. 2025), with the random baseline taken in exact
    expectation rather than averaged over 1000 shuffles. Malinin & Gales (2019) normalise
    areas between rejection curves measured in errors over *all* examples, which gives
    different values.

    Ties in ``scores`` are averaged as in :func:`aurc`; lm-polygraph sorts with a stable
    ``argsort`` and so breaks them by input order.

    References
    ----------
    Malinin (2019), "Uncertainty estimation in deep learning with application to spoken
    language assessment", PhD thesis, Cambridge. Fadeeva et al. (2023), "LM-Polygraph:
    Uncertainty estimation for language models", EMNLP demo.
    """
    errors, accepted_errors = _accepted_errors(y_true, y_prob, scores)
    n = errors.shape[0]
    n_errors = int(errors.sum())
    if n_errors in (0, n):
        kind = "correct" if n_errors == 0 else "misclassified"
        raise ValueError(
            f"Expected `y_true` and `y_prob` to give both correct and misclassified "
            f"predictions, but all {n} are {kind}; the prediction-rejection ratio is undefined."
        )
    accepted = np.arange(1, n + 1, dtype=np.float64)
    area = float(np.mean(accepted_errors / accepted))
    oracle = float(np.mean(np.cumsum(np.sort(errors)) / accepted))
    random = n_errors / n
    return (random - area) / (random - oracle)


def _errors_and_uncertainty(errors: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    error_array = as_real("errors", errors)
    score_values = match_shape("scores", as_real("scores", scores), "errors", error_array)
    error_values = error_array.ravel()
    low = float(error_values.min())
    if low < 0.0:
        raise ValueError(
            f"Expected `errors` to hold per-example losses >= 0 (e.g. absolute or squared "
            f"errors, not signed residuals), but got a value of {low}."
        )
    return error_values, score_values.ravel()


def sparsification_curve(
    errors: ArrayLike, scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""Mean error of the retained examples as the most uncertain ones are removed.

    Examples are removed one at a time in decreasing order of ``scores``; the oracle removes
    them in decreasing order of their own error. The gap between the two curves is the
    sparsification error (Ilg et al. 2018).

    Ties in ``scores`` are averaged as in :func:`accuracy_rejection_curve`: where ``k``
    removals end inside a group of tied scores, the mean error is the expectation over the
    orders of that group. (Ties in the oracle's ordering need no rule: tied errors are equal.)
    The outputs do not depend on the order of the input.

    Parameters
    ----------
    errors : array-like or Tensor of shape (N, *S)
        Per-example losses, ``>= 0`` (absolute error, squared error, end-point error, ...);
        flattened, each element one example.
    scores : array-like or Tensor of shape (N, *S)
        Uncertainty of each element, higher = removed first.

    Returns
    -------
    fraction_removed : ndarray of shape (M,)
        ``0, 1/M, ..., (M-1)/M`` with ``M`` the number of elements.
    error : ndarray of shape (M,)
        Mean error of the retained elements, removing by ``scores``.
    oracle_error : ndarray of shape (M,)
        The same, removing the largest errors first.

    References
    ----------
    Ilg, Çiçek, Galesso, Klein, Makansi, Hutter & Brox (2018), "Uncertainty estimates and
    multi-hypotheses networks for optical flow", ECCV.
    """
    error_values, score_values = _errors_and_uncertainty(errors, scores)
    n = error_values.shape[0]
    retained = np.arange(n, 0, -1, dtype=np.float64)
    by_score = _expected_cumsum(error_values, score_values)[::-1] / retained
    by_error = np.cumsum(np.sort(error_values))[::-1] / retained
    fraction = np.arange(n, dtype=np.float64) / n
    return fraction, by_score, by_error


def ause(errors: ArrayLike, scores: ArrayLike) -> float:
    r"""Area under the sparsification error curve (Ilg et al. 2018). Lower is better.

    .. math::

        \mathrm{AUSE} = \frac{1}{M} \sum_{k=0}^{M-1}
        \bigl[\bar e_{\text{scores}}(k) - \bar e_{\text{oracle}}(k)\bigr],

    with ``ē(k)`` the mean error after removing ``k`` of the ``M`` elements
    (:func:`sparsification_curve`), so a right Riemann sum over the fraction removed. It is in
    the units of ``errors``: 0 when the uncertainty ranks the errors exactly as the oracle.

    Parameters
    ----------
    errors, scores
        As in :func:`sparsification_curve`.

    Returns
    -------
    float
        ``>= 0``.

    Notes
    -----
    torch-uncertainty's ``AUSE`` divides both curves by the mean error (a relative AUSE) and
    integrates with the trapezoidal rule over ``0, ..., (M-1)/M``: with ``d_k`` the gap above
    (``d_0 = 0``) it equals ``(sum_k d_k - d_{M-1} / 2) / (M · mean error)``. Ties in
    ``scores`` are averaged here (see :func:`sparsification_curve`); torch-uncertainty sorts
    with an unstable ``argsort``, so its value under ties depends on the order its sort gives.

    References
    ----------
    Ilg et al. (2018), "Uncertainty estimates and multi-hypotheses networks for optical flow",
    ECCV.
    """
    _, error, oracle = sparsification_curve(errors, scores)
    return float(np.mean(error - oracle))
