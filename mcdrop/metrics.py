"""Metrics for predictive uncertainty: calibration, proper scores, ranking and selective prediction.

Every function accepts NumPy arrays, array-likes or :class:`torch.Tensor` objects (on any device),
computes in ``float64`` NumPy and returns Python ``float`` scalars (or NumPy arrays for curves).

Shapes
------
* Classification: ``y_true`` of shape ``(N,)`` with integer labels in ``[0, C)``; ``y_prob`` of
  shape ``(N, C)`` whose rows are probability vectors. Where stated, ``y_prob`` of shape ``(N,)``
  is accepted for binary problems and read as the probability of class ``1`` (as in
  scikit-learn); ``y_true`` must then hold labels in ``{0, 1}``.
* Regression: ``y`` of shape ``(N, *S)``; ``mean``, ``std``, ``var``, ``lower``, ``upper`` of
  the same shape (a trailing dimension of size one on either side is tolerated, so ``(N,)`` and
  ``(N, 1)`` match); Monte Carlo ``samples`` of shape ``(T, N, *S)``. Every element of a
  multi-dimensional output is scored as a separate scalar prediction and averages run over all
  elements.

Input checks
------------
Malformed inputs raise ``ValueError`` (or ``TypeError`` for a wrong type) naming the argument
and the offending value: labels out of range or not whole numbers (floats holding whole numbers
and booleans are accepted as labels), probabilities outside ``[0, 1]`` or rows that do not sum to
one (tolerance ``max(1e-6, C * eps)`` with ``eps`` the machine epsilon of the input's dtype),
mismatched shapes, empty inputs, NaN or infinite values, ``n_bins < 1``.

Binning convention
------------------
The calibration metrics built on bins (:func:`reliability_curve`,
:func:`expected_calibration_error`, :func:`maximum_calibration_error`,
:func:`classwise_calibration_error`) share one code path. With edges
``e_0 < e_1 < ... < e_B`` bin ``b`` is the right-closed interval ``(e_b, e_{b+1}]``, except the
first bin which is closed on both sides, ``[e_0, e_1]``. A confidence of exactly ``0.0`` therefore
falls in the first bin and a confidence of exactly ``1.0`` in the last one. This is the convention
of :func:`sklearn.calibration.calibration_curve` (``np.searchsorted(edges[1:-1], p)``).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import torch
from numpy.typing import ArrayLike as _NPArrayLike
from scipy.special import logsumexp, xlogy

from mcdrop._validation import (
    as_real,
    check_choice,
    check_classification,
    check_float,
    check_int,
    check_nonempty,
    check_positive,
    check_scores,
    check_std,
    describe_shape,
    match_shape,
    to_array,
)
from mcdrop.results import ClassificationResult, RegressionResult

__all__ = [
    "BootstrapResult",
    "ReliabilityCurve",
    "accuracy",
    "accuracy_rejection_curve",
    "adaptive_calibration_error",
    "aurc",
    "binned_residuals",
    "bootstrap",
    "brier_score",
    "central_interval",
    "classwise_calibration_error",
    "convergence_curve",
    "crps_gaussian",
    "crps_samples",
    "evaluate",
    "expected_calibration_error",
    "format_table",
    "fpr_at_95_tpr",
    "gaussian_nll",
    "interval_calibration_curve",
    "maximum_calibration_error",
    "mc_log_likelihood",
    "mean_interval_width",
    "miscalibration_area",
    "misclassification_aupr",
    "misclassification_auroc",
    "negative_log_likelihood",
    "ood_aupr",
    "ood_auroc",
    "ood_roc_curve",
    "oracle_rejection_curve",
    "picp",
    "reliability_curve",
    "reliability_intervals",
    "rmse",
    "sharpness",
]

ArrayLike: TypeAlias = "_NPArrayLike | torch.Tensor"

_STRATEGIES = ("uniform", "quantile")
_NORMS = ("l1", "l2", "max")
_REDUCTIONS = ("mean", "none")
_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------------
# Conversion and validation helpers
# --------------------------------------------------------------------------------------------


def _prob_matrix(probs: np.ndarray) -> np.ndarray:
    """``(N, C)`` probabilities; a binary ``(N,)`` vector ``p`` becomes ``[1 - p, p]``."""
    if probs.ndim == 1:
        return np.stack([1.0 - probs, probs], axis=1)
    return probs


def _reduce(name: str, values: np.ndarray, reduction: str) -> float | np.ndarray:
    reduction = check_choice(name, reduction, _REDUCTIONS)
    if reduction == "mean":
        return float(np.mean(values))
    return values


def _check_n_bins(n_bins: Any) -> int:
    return check_int("n_bins", n_bins, minimum=1)


# --------------------------------------------------------------------------------------------
# Binning (one code path for the reliability curve and the binned calibration errors)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReliabilityCurve:
    """The data behind a reliability diagram.

    Attributes
    ----------
    confidence : ndarray of shape (n_bins,)
        Mean predicted probability in each bin; NaN for an empty bin.
    accuracy : ndarray of shape (n_bins,)
        Observed frequency in each bin (fraction correct for the top label, fraction of positives
        for the binary positive-class curve); NaN for an empty bin.
    count : ndarray of shape (n_bins,), int
        Number of predictions in each bin.
    edges : ndarray of shape (n_bins + 1,)
        Bin edges; bin ``b`` is ``(edges[b], edges[b + 1]]`` and the first bin also contains
        ``edges[0]``.
    """

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    edges: np.ndarray


def _bin_edges(values: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if strategy == "uniform":
        return np.linspace(0.0, 1.0, n_bins + 1)
    # Quantiles of the predictions (linear interpolation, as np.percentile in scikit-learn).
    # Repeated quantiles are kept, so there are always n_bins bins; a zero-width bin is empty.
    return np.percentile(values, np.linspace(0.0, 1.0, n_bins + 1) * 100.0)


def _binned(values: np.ndarray, hits: np.ndarray, edges: np.ndarray) -> ReliabilityCurve:
    """Per-bin mean ``values``, mean ``hits`` and counts for right-closed bins on ``edges``."""
    n_bins = edges.shape[0] - 1
    ids = np.searchsorted(edges[1:-1], values, side="left")
    count = np.bincount(ids, minlength=n_bins)
    sum_values = np.bincount(ids, weights=values, minlength=n_bins)
    sum_hits = np.bincount(ids, weights=hits.astype(np.float64), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(count > 0, sum_values / count, np.nan)
        frequency = np.where(count > 0, sum_hits / count, np.nan)
    return ReliabilityCurve(
        confidence=confidence, accuracy=frequency, count=count.astype(np.int64), edges=edges
    )


def _calibration_target(y_true: Any, y_prob: Any) -> tuple[np.ndarray, np.ndarray]:
    """The predicted probability and the 0/1 outcome that the binned metrics compare.

    ``(N, C)``: top-label confidence and whether the top label is correct. ``(N,)``: the
    positive-class probability and whether the label is 1.
    """
    labels, probs = check_classification(y_true, y_prob)
    if probs.ndim == 1:
        return probs, (labels == 1)
    return probs.max(axis=1), (probs.argmax(axis=1) == labels)


def _curve(values: np.ndarray, hits: np.ndarray, n_bins: Any, strategy: Any) -> ReliabilityCurve:
    n_bins = _check_n_bins(n_bins)
    strategy = check_choice("strategy", strategy, _STRATEGIES)
    return _binned(values, hits, _bin_edges(values, n_bins, strategy))


def _gap_norm(curve: ReliabilityCurve, norm_name: str) -> float:
    filled = curve.count > 0
    weights = curve.count[filled] / curve.count.sum()
    gaps = np.abs(curve.accuracy[filled] - curve.confidence[filled])
    if norm_name == "l1":
        return float(np.sum(weights * gaps))
    if norm_name == "l2":
        return float(np.sqrt(np.sum(weights * gaps**2)))
    return float(np.max(gaps))


def reliability_curve(
    y_true: ArrayLike, y_prob: ArrayLike, *, n_bins: int = 15, strategy: str = "uniform"
) -> ReliabilityCurve:
    """Per-bin confidence and accuracy: the data behind a reliability diagram.

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels in ``[0, C)`` (``{0, 1}`` when ``y_prob`` is 1-d).
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities. With shape ``(N, C)`` the curve is the top-label one: the
        confidence is ``max_c y_prob[:, c]`` and a hit is ``argmax == y_true``. With shape
        ``(N,)`` (binary, probability of class 1) it is the positive-class curve: the confidence
        is ``y_prob`` and a hit is ``y_true == 1``; the non-empty bins then equal
        ``sklearn.calibration.calibration_curve(y_true, y_prob)`` (with ``prob_pred`` as
        ``confidence`` and ``prob_true`` as ``accuracy``).
    n_bins : int, default=15
        Number of bins, >= 1.
    strategy : {"uniform", "quantile"}, default="uniform"
        ``"uniform"``: ``n_bins`` equal-width bins on ``[0, 1]``. ``"quantile"``: edges at the
        ``0, 1/B, ..., 1`` quantiles of the confidences (linear interpolation, computed as
        ``np.percentile(confidence, np.linspace(0, 1, B + 1) * 100)`` exactly as scikit-learn
        does), so that bins hold about the same number of predictions. Repeated quantiles (ties in the confidences) are kept as repeated edges, so there are always
        ``n_bins`` bins; a value equal to a repeated edge falls in the first bin ending at that
        edge and the zero-width bins after it stay empty.

    Returns
    -------
    ReliabilityCurve
        ``confidence``, ``accuracy`` and ``count`` of shape ``(n_bins,)`` and ``edges`` of shape
        ``(n_bins + 1,)``. Empty bins have NaN confidence and accuracy and a count of 0.

    Notes
    -----
    Bin ``b`` is ``(edges[b], edges[b + 1]]``; the first bin is ``[edges[0], edges[1]]``, so a
    confidence of exactly 0 lands in the first bin and exactly 1 in the last one.
    """
    values, hits = _calibration_target(y_true, y_prob)
    return _curve(values, hits, n_bins, strategy)


def expected_calibration_error(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    *,
    n_bins: int = 15,
    strategy: str = "uniform",
    norm: str = "l1",
) -> float:
    r"""Expected calibration error of the top-label confidence (Guo et al. 2017).

    .. math::

        \mathrm{ECE}_{\ell_1} = \sum_{b=1}^{B} \frac{n_b}{N}
        \bigl|\mathrm{acc}(b) - \mathrm{conf}(b)\bigr|,\qquad
        \mathrm{ECE}_{\ell_2} = \Bigl(\sum_b \frac{n_b}{N}
        (\mathrm{acc}(b) - \mathrm{conf}(b))^2\Bigr)^{1/2},\qquad
        \mathrm{ECE}_{\max} = \max_{b:\,n_b>0} |\mathrm{acc}(b) - \mathrm{conf}(b)|

    where ``acc(b)`` and ``conf(b)`` are the accuracy and mean confidence of the ``n_b``
    predictions in bin ``b``. The bins are those of :func:`reliability_curve` (same code path).

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities; a 1-d ``y_prob`` (binary, probability of class 1) gives the
        calibration error of the positive-class probability instead of the top label.
    n_bins : int, default=15
        Number of bins, >= 1.
    strategy : {"uniform", "quantile"}, default="uniform"
        Binning scheme, see :func:`reliability_curve`.
    norm : {"l1", "l2", "max"}, default="l1"
        How per-bin gaps are combined; ``"max"`` is the maximum calibration error.

    Returns
    -------
    float
        In ``[0, 1]``.

    References
    ----------
    Naeini, Cooper & Hauskrecht (2015), "Obtaining well calibrated probabilities using Bayesian
    binning", AAAI. Guo, Pleiss, Sun & Weinberger (2017), "On calibration of modern neural
    networks", ICML.
    """
    norm_name = check_choice("norm", norm, _NORMS)
    values, hits = _calibration_target(y_true, y_prob)
    return _gap_norm(_curve(values, hits, n_bins, strategy), norm_name)


def maximum_calibration_error(
    y_true: ArrayLike, y_prob: ArrayLike, *, n_bins: int = 15, strategy: str = "uniform"
) -> float:
    r"""Maximum calibration error (Naeini et al. 2015): the largest gap over non-empty bins.

    ``MCE = max_{b: n_b > 0} |acc(b) - conf(b)|``, i.e.
    ``expected_calibration_error(..., norm="max")``; always ``>= ECE``.

    Parameters
    ----------
    y_true, y_prob, n_bins, strategy
        As in :func:`expected_calibration_error`.

    Returns
    -------
    float
        In ``[0, 1]``.

    References
    ----------
    Naeini, Cooper & Hauskrecht (2015), "Obtaining well calibrated probabilities using Bayesian
    binning", AAAI.
    """
    return expected_calibration_error(y_true, y_prob, n_bins=n_bins, strategy=strategy, norm="max")


def classwise_calibration_error(
    y_true: ArrayLike, y_prob: ArrayLike, *, n_bins: int = 15, strategy: str = "uniform"
) -> float:
    r"""Classwise expected calibration error (Kull et al. 2019).

    .. math::

        \text{classwise-ECE} = \frac{1}{C} \sum_{c=1}^{C} \sum_{b=1}^{B}
        \frac{n_{b,c}}{N} \bigl| \bar{y}_c(b) - \bar{p}_c(b) \bigr|

    where, for class ``c``, the predictions ``y_prob[:, c]`` are binned (as in
    :func:`reliability_curve`), ``\bar p_c(b)`` is their mean in bin ``b`` and
    ``\bar y_c(b)`` the fraction of those examples whose label is ``c``.

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities (1-d: binary, probability of class 1, expanded to two columns).
    n_bins : int, default=15
        Number of bins per class, >= 1.
    strategy : {"uniform", "quantile"}, default="uniform"
        Binning scheme; quantile edges are computed per class.

    Returns
    -------
    float
        In ``[0, 1]``.

    References
    ----------
    Kull, Perello-Nieto, Kängsepp, Silva Filho, Song & Flach (2019), "Beyond temperature
    scaling: Obtaining well-calibrated multiclass probabilities with Dirichlet calibration",
    NeurIPS.
    """
    labels, probs = check_classification(y_true, y_prob)
    probs = _prob_matrix(probs)
    n_bins = _check_n_bins(n_bins)
    strategy = check_choice("strategy", strategy, _STRATEGIES)
    total = 0.0
    for c in range(probs.shape[1]):
        values = probs[:, c]
        curve = _binned(values, labels == c, _bin_edges(values, n_bins, strategy))
        total += _gap_norm(curve, "l1")
    return float(total / probs.shape[1])


def adaptive_calibration_error(y_true: ArrayLike, y_prob: ArrayLike, *, n_bins: int = 15) -> float:
    r"""Adaptive calibration error (Nixon et al. 2019).

    .. math::

        \mathrm{ACE} = \frac{1}{C R} \sum_{c=1}^{C} \sum_{r=1}^{R}
        \bigl| \mathrm{acc}(r, c) - \mathrm{conf}(r, c) \bigr|

    For each class ``c`` the ``N`` predictions ``y_prob[:, c]`` are sorted (stable sort, ties
    keep input order) and cut into ``R = n_bins`` consecutive ranges of equal size (sizes differ
    by at most one, ``np.array_split``); ``conf(r, c)`` is the mean of ``y_prob[:, c]`` in range
    ``r`` and ``acc(r, c)`` the fraction of its examples with label ``c``. Every class counts,
    whatever its probabilities; the average is unweighted. When ``N < n_bins`` the empty ranges
    are left out of the average.

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities (1-d: binary, probability of class 1, expanded to two columns).
    n_bins : int, default=15
        Number of ranges ``R`` per class, >= 1.

    Returns
    -------
    float
        In ``[0, 1]``.

    References
    ----------
    Nixon, Dusenberry, Zhang, Jerfel & Tran (2019), "Measuring calibration in deep learning",
    CVPR Workshops.
    """
    labels, probs = check_classification(y_true, y_prob)
    probs = _prob_matrix(probs)
    n_bins = _check_n_bins(n_bins)
    n = probs.shape[0]
    # Ranges of np.array_split: the first n % R have one more element; empty ones dropped.
    sizes = np.full(n_bins, n // n_bins, dtype=np.int64)
    sizes[: n % n_bins] += 1
    sizes = sizes[sizes > 0]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    per_class: list[np.ndarray] = []
    for c in range(probs.shape[1]):
        column = np.ascontiguousarray(probs[:, c])
        order = np.argsort(column, kind="stable")
        conf = np.add.reduceat(column[order], starts) / sizes
        freq = np.add.reduceat((labels[order] == c).astype(np.float64), starts) / sizes
        per_class.append(np.abs(freq - conf))
    return float(np.mean(np.concatenate(per_class)))


# --------------------------------------------------------------------------------------------
# Proper scores and accuracy
# --------------------------------------------------------------------------------------------


def accuracy(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Fraction of examples whose most probable class is the label.

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities (1-d: binary, probability of class 1). Ties go to the lowest
        class index (``argmax``); in the binary 1-d case ``p = 0.5`` predicts class 0.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    labels, probs = check_classification(y_true, y_prob)
    return float(np.mean(_prob_matrix(probs).argmax(axis=1) == labels))


def brier_score(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    r"""Multiclass Brier score (Brier 1950): sum over classes, mean over examples.

    ``BS = (1/N) sum_i sum_c (y_prob[i, c] - 1[y_i = c])^2``, in ``[0, 2]``.

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities. A 1-d (binary) ``p`` is expanded to ``[1 - p, p]``, so the
        result is twice :func:`sklearn.metrics.brier_score_loss`.

    Returns
    -------
    float
        In ``[0, 2]``; 0 for a perfect, confident prediction.
    """
    labels, probs = check_classification(y_true, y_prob)
    probs = _prob_matrix(probs)
    onehot = np.zeros_like(probs)
    onehot[np.arange(probs.shape[0]), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def negative_log_likelihood(
    y_true: ArrayLike, y_prob: ArrayLike, *, eps: float | None = None
) -> float:
    r"""Mean negative log-likelihood (cross-entropy, log loss) in nats.

    ``NLL = -(1/N) sum_i log max(y_prob[i, y_i], eps)``.

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities (1-d: binary, probability of class 1).
    eps : float or None, default=None
        Lower clip of the probability of the true class, so that a zero probability gives a
        large finite loss rather than ``inf``. ``None`` means the ``float64`` machine epsilon
        (``2.2e-16``, a loss of at most ``36.04`` per example), the clip that
        :func:`sklearn.metrics.log_loss` applies to ``float64`` inputs; pass ``0.0`` to get
        ``inf`` for a zero probability.

    Returns
    -------
    float
        ``>= 0``.
    """
    labels, probs = check_classification(y_true, y_prob)
    clip = (
        float(np.finfo(np.float64).eps)
        if eps is None
        else check_float("eps", eps, low=0.0, high=1.0, high_inclusive=False)
    )
    probs = _prob_matrix(probs)
    p_true = probs[np.arange(probs.shape[0]), labels]
    with np.errstate(divide="ignore"):
        return float(-np.mean(np.log(np.maximum(p_true, clip))))


def _entropy(probs: np.ndarray) -> np.ndarray:
    return -np.sum(xlogy(probs, probs), axis=1)


# --------------------------------------------------------------------------------------------
# Ranking: misclassification and out-of-distribution detection
# --------------------------------------------------------------------------------------------


def _errors_and_scores(y_true: Any, y_prob: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = check_classification(y_true, y_prob)
    errors = _prob_matrix(probs).argmax(axis=1) != labels
    score_values = check_scores("scores", scores, labels.shape[0])
    n_errors = int(errors.sum())
    if n_errors == 0 or n_errors == errors.shape[0]:
        kind = "correct" if n_errors == 0 else "misclassified"
        raise ValueError(
            f"Expected `y_true` and `y_prob` to give both correct and misclassified "
            f"predictions, but all {errors.shape[0]} are {kind}; the metric is undefined."
        )
    return errors, score_values


def misclassification_auroc(y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve for detecting misclassifications with an uncertainty score.

    Errors (``argmax y_prob != y_true``) are the positive class and a higher score means more
    uncertain: 1.0 when every error scores above every correct prediction, 0.5 for an
    uninformative score. Ties count one half (:func:`sklearn.metrics.roc_auc_score`).

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities, used only for the predicted class.
    scores : array-like or Tensor of shape (N,)
        Uncertainty scores (e.g. predictive entropy, mutual information, ``1 - confidence``).

    Returns
    -------
    float
        In ``[0, 1]``.

    Raises
    ------
    ValueError
        When all predictions are correct or all are wrong (the AUROC is undefined).
    """
    from sklearn.metrics import roc_auc_score

    errors, score_values = _errors_and_scores(y_true, y_prob, scores)
    return float(roc_auc_score(errors, score_values))


def misclassification_aupr(y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike) -> float:
    """Area under the precision-recall curve for detecting misclassifications (errors positive).

    Computed as the average precision (:func:`sklearn.metrics.average_precision_score`) with
    errors as the positive class and higher ``scores`` meaning more uncertain. A random score
    gives about the error rate.

    Parameters
    ----------
    y_true, y_prob, scores
        As in :func:`misclassification_auroc`.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    from sklearn.metrics import average_precision_score

    errors, score_values = _errors_and_scores(y_true, y_prob, scores)
    return float(average_precision_score(errors, score_values))


def _ood_inputs(scores_in: Any, scores_out: Any) -> tuple[np.ndarray, np.ndarray]:
    inside = check_scores("scores_in", scores_in)
    outside = check_scores("scores_out", scores_out)
    is_out = np.concatenate([np.zeros(inside.shape[0], bool), np.ones(outside.shape[0], bool)])
    return is_out, np.concatenate([inside, outside])


def ood_auroc(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """AUROC for separating out-of-distribution from in-distribution inputs.

    Out-of-distribution is the positive class and a higher score means more uncertain, so 1.0
    means every OOD input scores above every in-distribution input; ties count one half.

    Parameters
    ----------
    scores_in : array-like or Tensor of shape (N_in,)
        Uncertainty scores on in-distribution inputs.
    scores_out : array-like or Tensor of shape (N_out,)
        Uncertainty scores on out-of-distribution inputs.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    from sklearn.metrics import roc_auc_score

    is_out, scores = _ood_inputs(scores_in, scores_out)
    return float(roc_auc_score(is_out, scores))


def ood_aupr(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """Average precision for detecting out-of-distribution inputs (OOD positive, higher = OOD).

    Parameters
    ----------
    scores_in, scores_out
        As in :func:`ood_auroc`.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    from sklearn.metrics import average_precision_score

    is_out, scores = _ood_inputs(scores_in, scores_out)
    return float(average_precision_score(is_out, scores))


def fpr_at_95_tpr(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """False-positive rate on in-distribution inputs when 95 % of OOD inputs are detected.

    The threshold ``t`` is the largest one that flags (``score >= t``) at least 95 % of the
    out-of-distribution inputs: the ``k``-th largest OOD score with
    ``k = ceil(0.95 * N_out)``; the result is the fraction of in-distribution scores ``>= t``.
    This equals the FPR at the first point of :func:`sklearn.metrics.roc_curve` whose TPR
    reaches 0.95. Lower is better.

    Parameters
    ----------
    scores_in, scores_out
        As in :func:`ood_auroc`.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    inside = check_scores("scores_in", scores_in)
    outside = check_scores("scores_out", scores_out)
    n_out = outside.shape[0]
    k = (95 * n_out + 99) // 100  # ceil(0.95 * n_out) in exact integer arithmetic
    threshold = np.sort(outside)[::-1][k - 1]
    return float(np.mean(inside >= threshold))


# --------------------------------------------------------------------------------------------
# Selective prediction
# --------------------------------------------------------------------------------------------


def _rejection_order(scores: np.ndarray) -> np.ndarray:
    """Indices from most to least uncertain; ties keep input order (stable sort)."""
    return np.argsort(-scores, kind="stable")


def accuracy_rejection_curve(
    y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy on the retained examples as the most uncertain ones are rejected.

    Examples are rejected one at a time in decreasing order of ``scores`` (higher = more
    uncertain = rejected first). Ties are broken deterministically by position: among equal
    scores the example that comes first in the input is rejected first.

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
    ordered = correct[_rejection_order(scores)]
    # Retained after rejecting k: ordered[k:]; suffix sums give their number correct.
    retained_correct = np.cumsum(ordered[::-1])[::-1]
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
    ``1 - accuracy`` of :func:`accuracy_rejection_curve` (same tie-breaking).

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


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BootstrapResult:
    """A bootstrap confidence interval.

    Attributes
    ----------
    estimate : float
        The metric on the full data.
    low, high : float
        Percentile confidence interval bounds.
    standard_error : float
        Standard deviation (``ddof=1``) of the bootstrap replicates.
    """

    estimate: float
    low: float
    high: float
    standard_error: float


def bootstrap(
    metric: Callable[..., float],
    *arrays: ArrayLike,
    n_resamples: int = 1000,
    confidence_level: float = 0.95,
    seed: int | np.random.Generator | None = None,
) -> BootstrapResult:
    """Percentile bootstrap confidence interval for any scalar metric.

    Each replicate draws ``N`` row indices with replacement (NumPy ``Generator.integers``) and
    evaluates ``metric`` on the same rows of every array (paired resampling), e.g.
    ``bootstrap(expected_calibration_error, y_true, y_prob)``. Options of the metric are bound
    beforehand with :func:`functools.partial` or a lambda. The interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the replicates (Efron & Tibshirani
    1993). A metric that raises on some resample (e.g. an AUROC on a resample with one class)
    propagates the error.

    Parameters
    ----------
    metric : callable
        ``metric(*arrays) -> float``; called with NumPy arrays.
    *arrays : array-like or Tensor
        One or more arrays with the same length ``N`` along the first axis.
    n_resamples : int, default=1000
        Number of bootstrap replicates, >= 2.
    confidence_level : float, default=0.95
        In ``(0, 1)``.
    seed : int, numpy.random.Generator or None, default=None
        Seed for :func:`numpy.random.default_rng`.

    Returns
    -------
    BootstrapResult
        ``estimate`` (metric on the full data), ``low``, ``high`` and ``standard_error``.
    """
    if not callable(metric):
        raise TypeError(f"Expected `metric` to be callable, but got {type(metric).__name__}.")
    if not arrays:
        raise ValueError("Expected at least one array in `arrays`, but got none.")
    n_resamples = check_int("n_resamples", n_resamples, minimum=2)
    level = check_float(
        "confidence_level",
        confidence_level,
        low=0.0,
        high=1.0,
        low_inclusive=False,
        high_inclusive=False,
    )
    data = [to_array(f"arrays[{i}]", a) for i, a in enumerate(arrays)]
    for i, array in enumerate(data):
        if array.ndim == 0:
            raise ValueError(
                f"Expected `arrays[{i}]` to have at least one dimension, but got a scalar."
            )
        check_nonempty(f"arrays[{i}]", array)
    n = data[0].shape[0]
    for i, array in enumerate(data[1:], start=1):
        if array.shape[0] != n:
            raise ValueError(
                f"Expected `arrays[{i}]` to have {n} rows like `arrays[0]`, but got "
                f"{array.shape[0]}."
            )
    if seed is not None and not isinstance(seed, (numbers.Integral, np.random.Generator)):
        raise TypeError(
            f"Expected `seed` to be an int, a numpy Generator or None, but got {seed!r}."
        )
    rng = np.random.default_rng(seed)
    estimate = float(metric(*data))
    replicates = np.empty(n_resamples, dtype=np.float64)
    for r in range(n_resamples):
        rows = rng.integers(0, n, size=n)
        replicates[r] = float(metric(*(array[rows] for array in data)))
    alpha = 1.0 - level
    low, high = np.quantile(replicates, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapResult(
        estimate=estimate,
        low=float(low),
        high=float(high),
        standard_error=float(np.std(replicates, ddof=1)),
    )


# --------------------------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------------------------


def _regression_pair(y: Any, other_name: str, other: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = as_real("y", y)
    other_arr = match_shape(other_name, as_real(other_name, other), "y", y_arr)
    return y_arr, other_arr


def rmse(y: ArrayLike, mean: ArrayLike) -> float:
    """Root mean squared error, ``sqrt(mean((y - mean)^2))`` over all elements.

    Parameters
    ----------
    y : array-like or Tensor of shape (N, *S)
        Targets.
    mean : array-like or Tensor of shape (N, *S)
        Point predictions.

    Returns
    -------
    float
    """
    y_arr, mean_arr = _regression_pair(y, "mean", mean)
    return _rms_difference(y_arr, mean_arr)


def _rms_difference(a: np.ndarray, b: np.ndarray) -> float:
    """``sqrt(mean((a - b)^2))`` without overflow or underflow in the squares.

    The differences (halved when ``a - b`` itself overflows) are divided by their largest
    magnitude ``m`` before squaring and the root is multiplied back by ``m``: the result is
    ``inf`` only when the true value is above the largest ``float64``.
    """
    with np.errstate(over="ignore"):
        diff, factor = a - b, 1.0
        if not np.all(np.isfinite(diff)):
            diff, factor = a / 2.0 - b / 2.0, 2.0
        m = float(np.max(np.abs(diff)))
        if m == 0.0:
            return 0.0
        # factor x root first: it is at most 2, while factor x m alone can pass the float64 limit
        return float(m * (factor * np.sqrt(np.mean((diff / m) ** 2))))


def gaussian_nll(
    y: ArrayLike, mean: ArrayLike, var: ArrayLike, *, reduction: str = "mean"
) -> float | np.ndarray:
    r"""Negative log-likelihood of ``y`` under ``N(mean, var)``, in nats.

    ``0.5 * log(2 pi var) + (y - mean)^2 / (2 var)`` per element (the constant included, so it
    equals ``-scipy.stats.norm.logpdf(y, mean, sqrt(var))``).

    Parameters
    ----------
    y : array-like or Tensor of shape (N, *S)
        Targets.
    mean : array-like or Tensor of shape (N, *S)
        Predictive means.
    var : array-like or Tensor of shape (N, *S)
        Predictive variances, > 0.
    reduction : {"mean", "none"}, default="mean"
        Average over all elements, or return the per-element values.

    Returns
    -------
    float or ndarray of shape (N, *S)
    """

    y_arr, mean_arr = _regression_pair(y, "mean", mean)
    var_arr = match_shape("var", as_real("var", var), "y", y_arr)
    check_positive("var", var_arr)
    values = 0.5 * (_LOG_2PI + np.log(var_arr)) + (y_arr - mean_arr) ** 2 / (2.0 * var_arr)
    return _reduce("reduction", values, reduction)


def _samples_and_target(y: Any, samples: Any) -> tuple[np.ndarray, np.ndarray]:
    y_arr = as_real("y", y)
    samples_arr = as_real("samples", samples)
    if samples_arr.ndim < 2:
        raise ValueError(
            f"Expected `samples` to have shape (T, N, *S), but got shape "
            f"{describe_shape(samples_arr)}."
        )
    inner = samples_arr.shape[1:]
    if inner != y_arr.shape:
        if inner == (*y_arr.shape, 1) or (*inner, 1) == y_arr.shape:
            samples_arr = samples_arr.reshape((samples_arr.shape[0], *y_arr.shape))
        else:
            raise ValueError(
                f"Expected `samples` to have shape (T, {', '.join(map(str, y_arr.shape))}) to "
                f"match `y`, but got shape {describe_shape(samples_arr)}."
            )
    return y_arr, samples_arr


def mc_log_likelihood(
    y: ArrayLike, samples: ArrayLike, tau: float, *, reduction: str = "mean"
) -> float | np.ndarray:
    r"""Test log-likelihood of MC dropout (Gal & Ghahramani 2016, eq. 8).

    The predictive density is the mixture of Gaussians of precision ``tau`` centred on the
    ``T`` sampled predictions; per point

    .. math::

        \log p(y \mid x) \approx
        \operatorname{logsumexp}_t\bigl(-\tfrac{\tau}{2}(y - \hat y_t)^2\bigr) - \log T
        - \tfrac12 \log 2\pi + \tfrac12 \log \tau .

    Parameters
    ----------
    y : array-like or Tensor of shape (N,) or (N, 1) (more generally (N, *S))
        Targets.
    samples : array-like or Tensor of shape (T, N) or (T, N, 1) (more generally (T, N, *S))
        Sampled predictions (one stochastic forward pass per ``t``). Every element of a
        multi-dimensional output is scored as its own scalar point.
    tau : float
        Model precision, > 0.
    reduction : {"mean", "none"}, default="mean"
        Average over points (the figure reported in the paper; higher is better), or return
        the per-point values.

    Returns
    -------
    float or ndarray of shape (N, *S)
        Log-likelihood in nats (not negated).

    References
    ----------
    Gal & Ghahramani (2016), "Dropout as a Bayesian approximation: Representing model
    uncertainty in deep learning", ICML.
    """
    tau_value = check_float("tau", tau, low=0.0, low_inclusive=False)
    y_arr, samples_arr = _samples_and_target(y, samples)
    n_samples = samples_arr.shape[0]
    values = (
        logsumexp(-0.5 * tau_value * (y_arr[None] - samples_arr) ** 2, axis=0)
        - math.log(n_samples)
        - 0.5 * _LOG_2PI
        + 0.5 * math.log(tau_value)
    )
    return _reduce("reduction", values, reduction)


def _check_interval(
    lower: Any, upper: Any, ref: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    low = as_real("lower", lower)
    high = match_shape("upper", as_real("upper", upper), "lower", low)
    if ref is not None:
        low = match_shape("lower", low, "y", ref)
        high = high.reshape(low.shape)
    if np.any(low > high):
        i = int(np.argmax((low > high).ravel()))
        raise ValueError(
            f"Expected `lower` <= `upper` everywhere, but got lower {low.ravel()[i]} > upper "
            f"{high.ravel()[i]} at flat index {i}."
        )
    return low, high


def picp(y: ArrayLike, lower: ArrayLike, upper: ArrayLike) -> float:
    """Prediction interval coverage probability: fraction of ``lower <= y <= upper``.

    Parameters
    ----------
    y : array-like or Tensor of shape (N, *S)
        Targets.
    lower, upper : array-like or Tensor of shape (N, *S)
        Interval bounds, ``lower <= upper``.

    Returns
    -------
    float
        In ``[0, 1]``; should be close to the nominal level of the intervals.
    """
    y_arr = as_real("y", y)
    low, high = _check_interval(lower, upper, y_arr)
    return float(np.mean((low <= y_arr) & (y_arr <= high)))


def mean_interval_width(lower: ArrayLike, upper: ArrayLike) -> float:
    """Mean width ``mean(upper - lower)`` of prediction intervals (``lower <= upper``).

    Parameters
    ----------
    lower, upper : array-like or Tensor of shape (N, *S)
        Interval bounds.

    Returns
    -------
    float
    """
    low, high = _check_interval(lower, upper)
    return float(np.mean(high - low))


def _check_levels(levels: Any) -> np.ndarray:
    if levels is None:
        return np.linspace(0.01, 0.99, 99)
    values = as_real("levels", levels, ndim=1)
    if np.any((values <= 0.0) | (values >= 1.0)):
        bad = values[(values <= 0.0) | (values >= 1.0)][0]
        raise ValueError(f"Expected `levels` to lie in (0, 1), but got {bad}.")
    return values


def _gaussian_inputs(y: Any, mean: Any, std: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y_arr, mean_arr = _regression_pair(y, "mean", mean)
    std_arr = match_shape("std", as_real("std", std), "y", y_arr)
    check_positive("std", std_arr)
    return y_arr, mean_arr, std_arr


def interval_calibration_curve(
    y: ArrayLike, mean: ArrayLike, std: ArrayLike, *, levels: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Expected versus observed coverage of Gaussian central prediction intervals.

    For each level ``p`` the interval is ``mean +/- z_p * std`` with
    ``z_p = Phi^{-1}((1 + p) / 2)`` and the observed coverage is the fraction of elements of
    ``y`` inside it (bounds included). A calibrated model gives ``observed ~= expected``; a
    curve below the diagonal means overconfidence.

    Parameters
    ----------
    y : array-like or Tensor of shape (N, *S)
        Targets.
    mean, std : array-like or Tensor of shape (N, *S)
        Predictive mean and standard deviation (``std > 0``).
    levels : array-like of shape (L,) or None, default=None
        Nominal coverages in ``(0, 1)``; ``None`` means ``np.linspace(0.01, 0.99, 99)``.

    Returns
    -------
    expected : ndarray of shape (L,)
        The levels.
    observed : ndarray of shape (L,)
        Observed coverage at each level.

    References
    ----------
    Kuleshov, Fenner & Ermon (2018), "Accurate uncertainties for deep learning using calibrated
    regression", ICML. Tran, Chung, Char, Neiswanger & Schneider (2020), "Methods for
    comparing uncertainty quantifications for material property predictions", MLST.
    """
    from scipy.stats import norm

    y_arr, mean_arr, std_arr = _gaussian_inputs(y, mean, std)
    expected = _check_levels(levels)
    # Sorted standardised distances |y - mean| / std; a point is inside at level p when its
    # distance is <= z_p, so the coverage is a search in the sorted distances (O(M log M)).
    distances = np.sort((np.abs(y_arr - mean_arr) / std_arr).ravel())
    z = norm.ppf(0.5 + expected / 2.0)
    observed = np.searchsorted(distances, z, side="right") / distances.shape[0]
    return expected.copy(), observed


def miscalibration_area(
    y: ArrayLike, mean: ArrayLike, std: ArrayLike, *, levels: ArrayLike | None = None
) -> float:
    """Average absolute gap between observed and expected coverage of central intervals.

    ``mean_p |observed(p) - p|`` over the levels of :func:`interval_calibration_curve`. On the
    default evenly spaced grid this approximates the area ``int_0^1 |observed(p) - p| dp``
    between the calibration curve and the diagonal (0 for perfect calibration, at most 0.5).

    Parameters
    ----------
    y, mean, std, levels
        As in :func:`interval_calibration_curve`.

    Returns
    -------
    float
        In ``[0, 1)``.

    References
    ----------
    Kuleshov, Fenner & Ermon (2018), ICML; Tran et al. (2020), MLST (miscalibration area).
    """
    expected, observed = interval_calibration_curve(y, mean, std, levels=levels)
    return float(np.mean(np.abs(observed - expected)))


def crps_gaussian(
    y: ArrayLike, mean: ArrayLike, std: ArrayLike, *, reduction: str = "mean"
) -> float | np.ndarray:
    r"""Continuous ranked probability score of a Gaussian forecast, closed form.

    .. math::

        \mathrm{CRPS}(\mathcal N(\mu, \sigma^2), y) = \sigma \Bigl[ z\,(2\Phi(z) - 1)
        + 2\varphi(z) - \tfrac{1}{\sqrt\pi} \Bigr], \qquad z = \frac{y - \mu}{\sigma}.

    Lower is better; in the units of ``y``.

    Parameters
    ----------
    y : array-like or Tensor of shape (N, *S)
        Targets.
    mean, std : array-like or Tensor of shape (N, *S)
        Predictive mean and standard deviation (``std > 0``).
    reduction : {"mean", "none"}, default="mean"
        Average over all elements or return them.

    Returns
    -------
    float or ndarray of shape (N, *S)

    References
    ----------
    Gneiting & Raftery (2007), "Strictly proper scoring rules, prediction, and estimation",
    JASA (eq. 21).
    """
    from scipy.stats import norm

    y_arr, mean_arr, std_arr = _gaussian_inputs(y, mean, std)
    z = (y_arr - mean_arr) / std_arr
    values = std_arr * (
        z * (2.0 * norm.cdf(z) - 1.0) + 2.0 * norm.pdf(z) - 1.0 / math.sqrt(math.pi)
    )
    return _reduce("reduction", values, reduction)


def crps_samples(
    y: ArrayLike, samples: ArrayLike, *, reduction: str = "mean"
) -> float | np.ndarray:
    r"""CRPS of the empirical distribution of Monte Carlo samples (energy form).

    .. math::

        \mathrm{CRPS} = \frac1T \sum_t |x_t - y| - \frac{1}{2T^2} \sum_{t, s} |x_t - x_s|,

    the exact CRPS of the empirical distribution of ``x_1..x_T`` (Gneiting & Raftery 2007,
    eq. 22). The double sum is computed in ``O(T log T)`` after sorting:
    ``sum_{t,s} |x_t - x_s| = 2 sum_i (2i - T - 1) x_(i)`` with ``x_(1) <= ... <= x_(T)``.

    Parameters
    ----------
    y : array-like or Tensor of shape (N, *S)
        Targets.
    samples : array-like or Tensor of shape (T, N, *S)
        Sampled predictions (a trailing singleton dimension on either side is tolerated).
    reduction : {"mean", "none"}, default="mean"
        Average over all elements or return them.

    Returns
    -------
    float or ndarray of shape (N, *S)
    """
    y_arr, samples_arr = _samples_and_target(y, samples)
    n_samples = samples_arr.shape[0]
    first = np.mean(np.abs(samples_arr - y_arr[None]), axis=0)
    ordered = np.sort(samples_arr, axis=0)
    weights = (2.0 * np.arange(1, n_samples + 1) - n_samples - 1).reshape(
        (n_samples,) + (1,) * y_arr.ndim
    )
    spread = 2.0 * np.sum(weights * ordered, axis=0) / n_samples**2
    values = first - 0.5 * spread
    return _reduce("reduction", values, reduction)


def sharpness(std: ArrayLike) -> float:
    """Root mean predictive variance, ``sqrt(mean(std^2))``; smaller is sharper.

    Parameters
    ----------
    std : array-like or Tensor of shape (N, *S)
        Predictive standard deviations, ``>= 0``.

    Returns
    -------
    float

    References
    ----------
    Tran et al. (2020), MLST; Kuleshov et al. (2018), ICML.
    """
    std_arr = as_real("std", std)
    low = float(std_arr.min())
    if low < 0.0:
        raise ValueError(f"Expected `std` to be >= 0 everywhere, but got a value of {low}.")
    return float(np.sqrt(np.mean(std_arr**2)))


# --------------------------------------------------------------------------------------------
# Headline metrics and tables
# --------------------------------------------------------------------------------------------


def _safe(function: Callable[[], float]) -> float:
    try:
        return float(function())
    except ValueError:
        return math.nan


def _evaluate_classification(probs: np.ndarray, labels: Any, n_bins: int) -> dict[str, float]:
    y_true, y_prob = check_classification(labels, probs, allow_1d=False)
    entropy = _entropy(y_prob)
    return {
        "accuracy": accuracy(y_true, y_prob),
        "nll": negative_log_likelihood(y_true, y_prob),
        "brier": brier_score(y_true, y_prob),
        "ece": expected_calibration_error(y_true, y_prob, n_bins=n_bins),
        "mce": maximum_calibration_error(y_true, y_prob, n_bins=n_bins),
        "ace": adaptive_calibration_error(y_true, y_prob, n_bins=n_bins),
        "classwise_ece": classwise_calibration_error(y_true, y_prob, n_bins=n_bins),
        "aurc": aurc(y_true, y_prob, entropy),
        "misclassification_auroc": _safe(lambda: misclassification_auroc(y_true, y_prob, entropy)),
    }


def _evaluate_regression(result: RegressionResult, y: Any) -> dict[str, float]:
    from scipy.stats import norm

    mean = to_array("result.mean", result.mean).astype(np.float64)
    variance = to_array("result.variance", result.variance).astype(np.float64)
    y_arr, mean = _regression_pair(y, "result.mean", mean)
    variance = variance.reshape(mean.shape)
    std = np.sqrt(variance)
    out: dict[str, float] = {"rmse": rmse(y_arr, mean)}
    if np.all(variance > 0.0):
        z = float(norm.ppf(0.975))
        out["gaussian_nll"] = float(gaussian_nll(y_arr, mean, variance))
        out["picp_95"] = picp(y_arr, mean - z * std, mean + z * std)
        out["mean_width_95"] = mean_interval_width(mean - z * std, mean + z * std)
        out["crps"] = float(crps_gaussian(y_arr, mean, std))
        out["miscalibration_area"] = miscalibration_area(y_arr, mean, std)
    else:  # a deterministic prediction: no distributional metric
        for key in ("gaussian_nll", "picp_95", "mean_width_95", "crps", "miscalibration_area"):
            out[key] = math.nan
    out["sharpness"] = sharpness(std)
    if result.samples is not None and result.tau is not None:
        out["mc_log_likelihood"] = float(mc_log_likelihood(y_arr, result.samples, result.tau))
    return out


def evaluate(
    result: ClassificationResult | RegressionResult | ArrayLike,
    y_true: ArrayLike | None = None,
    *,
    n_bins: int = 15,
    ignore_index: int | None = None,
) -> dict[str, float]:
    """Headline metrics of one model's predictions, by name.

    Parameters
    ----------
    result : ClassificationResult, RegressionResult, or array-like of shape (N, C)
        Output of :func:`mcdrop.predict_with_uncertainty`, or a plain probability array
        (classification). For a :class:`~mcdrop.ClassificationResult` of shape ``(N, C, *S)``
        the class dimension ``class_dim`` is moved last and the ``*S`` positions (pixels,
        tokens) are flattened, so each position counts as one prediction.
    y_true : array-like or Tensor or None, default=None
        Targets, shape ``(N,)`` / ``(N, *S)``; ``None`` uses ``result.targets``.
    n_bins : int, default=15
        Bins of the binned calibration errors.
    ignore_index : int or None, default=None
        Classification only: predictions whose label equals this value are left out (the
        ``ignore_index`` of ``torch.nn.CrossEntropyLoss``, e.g. 255 for unlabelled pixels).

    Returns
    -------
    dict of str to float
        Classification: ``accuracy``, ``nll``, ``brier``, ``ece``, ``mce`` (uniform bins, top
        label), ``ace``, ``classwise_ece``, ``aurc`` and ``misclassification_auroc`` (both with
        the predictive entropy as the uncertainty score; the AUROC is NaN when every prediction
        is right or every one wrong). Regression: ``rmse``, ``gaussian_nll`` (total predictive
        variance), ``picp_95`` and ``mean_width_95`` (Gaussian central 95 % intervals),
        ``crps`` (Gaussian closed form), ``miscalibration_area``, ``sharpness``, and
        ``mc_log_likelihood`` when ``result.samples`` and ``result.tau`` are set. Metrics that
        need a predictive spread are NaN when some predictive variance is zero.

    Raises
    ------
    ValueError
        When no targets are given and the result holds none, or for invalid inputs.
    """
    n_bins = _check_n_bins(n_bins)
    if ignore_index is not None:
        ignore_index = check_int("ignore_index", ignore_index)
    targets: Any = y_true
    if isinstance(result, RegressionResult):
        if ignore_index is not None:
            raise ValueError(
                "Expected `ignore_index` only for classification results, but got a RegressionResult."
            )
        if targets is None:
            targets = result.targets
        if targets is None:
            raise ValueError(
                "Expected `y_true` (or `result.targets`) to hold targets, but got None."
            )
        return _evaluate_regression(result, targets)
    if isinstance(result, ClassificationResult):
        if targets is None:
            targets = result.targets
        mean = result.mean.movedim(result.class_dim, -1)
        probs = to_array("result.mean", mean.reshape(-1, mean.shape[-1]))
        if targets is not None:
            targets = to_array("y_true", targets).reshape(-1)
    else:
        probs = to_array("result", result)
    if targets is None:
        raise ValueError("Expected `y_true` (or `result.targets`) to hold labels, but got None.")
    if ignore_index is not None:
        targets = to_array("y_true", targets).reshape(-1)
        keep = targets != ignore_index
        if probs.shape[0] != keep.shape[0]:
            raise ValueError(
                f"Expected `y_true` with {probs.shape[0]} labels, but got {keep.shape[0]}."
            )
        probs, targets = probs[keep], targets[keep]
    return _evaluate_classification(probs, targets, n_bins)


def format_table(rows: Mapping[str, Mapping[str, float]], *, precision: int = 4) -> str:
    """Lay out the metrics of several models as a fixed-width text table.

    Parameters
    ----------
    rows : mapping of str to mapping of str to float
        Model name to its metrics (e.g. the output of :func:`evaluate`), such as
        ``{"deterministic": {...}, "MC dropout": {...}, "temperature-scaled": {...}}``. One line
        per model, one column per metric name (in order of first appearance); a missing metric
        shows as ``-``.
    precision : int, default=4
        Digits after the decimal point.

    Returns
    -------
    str
        The table, lines separated by ``"\\n"``, without a trailing newline.
    """
    precision = check_int("precision", precision, minimum=0)
    if not isinstance(rows, Mapping):
        raise TypeError(
            f"Expected `rows` to be a mapping of model name to metrics, but got "
            f"{type(rows).__name__}."
        )
    if not rows:
        raise ValueError("Expected `rows` to hold at least one model, but got an empty mapping.")
    columns: list[str] = []
    for metrics in rows.values():
        for key in metrics:
            if key not in columns:
                columns.append(str(key))

    def cell(metrics: Mapping[str, float], key: str) -> str:
        if key not in metrics:
            return "-"
        value = metrics[key]
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return str(int(value))
        return f"{float(value):.{precision}f}"

    header = ["model", *columns]
    body = [[str(name), *(cell(metrics, key) for key in columns)] for name, metrics in rows.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(line: list[str]) -> str:
        first = line[0].ljust(widths[0])
        rest = [text.rjust(width) for text, width in zip(line[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule, *(render(line) for line in body)])


# --------------------------------------------------------------------------------------------
# Curves and intervals drawn by mcdrop.plot (computed here, only drawn there)
# --------------------------------------------------------------------------------------------


def reliability_intervals(
    curve: ReliabilityCurve, *, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score intervals of the accuracy of each bin of a reliability curve.

    A bin of ``n`` predictions with ``k = accuracy * n`` hits has the interval
    ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = k / n`` and
    ``z = Phi^{-1}((1 + level) / 2)``. Bins holding few predictions get wide intervals, which
    tells a real gap from noise.

    Parameters
    ----------
    curve : ReliabilityCurve
        Output of :func:`reliability_curve`.
    level : float, default=0.95
        Coverage of each interval, in (0, 1).

    Returns
    -------
    lower, upper : ndarray of shape (n_bins,)
        Interval bounds in ``[0, 1]``; NaN for empty bins.

    References
    ----------
    Wilson (1927), "Probable inference, the law of succession, and statistical inference",
    JASA. Same as ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.
    """
    from scipy.special import ndtri

    if not isinstance(curve, ReliabilityCurve):
        raise TypeError(
            f"Expected `curve` to be a ReliabilityCurve, but got {type(curve).__name__}."
        )
    level = check_float(
        "level", level, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
    )
    z = float(ndtri(0.5 + level / 2.0))
    n = np.asarray(curve.count, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.asarray(curve.accuracy, dtype=np.float64)
        centre = (p + z**2 / (2 * n)) / (1 + z**2 / n)
        half = z / (1 + z**2 / n) * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2))
    empty = n == 0
    lower = np.where(empty, np.nan, np.clip(centre - half, 0.0, 1.0))
    upper = np.where(empty, np.nan, np.clip(centre + half, 0.0, 1.0))
    return lower, upper


def oracle_rejection_curve(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy-rejection curve of the oracle that rejects the misclassified examples first.

    The upper bound of :func:`accuracy_rejection_curve` for the same predictions.

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities.

    Returns
    -------
    rejection_fraction, accuracy : ndarray of shape (N,)
        As in :func:`accuracy_rejection_curve`.
    """
    labels, probs = check_classification(y_true, y_prob)
    correct = (_prob_matrix(probs).argmax(axis=1) == labels).astype(np.float64)
    return _accuracy_after_rejection(correct, 1.0 - correct)


def ood_roc_curve(scores_in: ArrayLike, scores_out: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """ROC curve of detecting out-of-distribution inputs by an uncertainty score.

    Out-of-distribution is the positive class and a higher score means more uncertain, as in
    :func:`ood_auroc` (whose value is the area under this curve).

    Parameters
    ----------
    scores_in, scores_out : array-like or Tensor of shape (N_in,), (N_out,)
        Uncertainty scores on in- and out-of-distribution inputs.

    Returns
    -------
    fpr, tpr : ndarray of shape (K,)
        False and true positive rates (:func:`sklearn.metrics.roc_curve`).
    """
    from sklearn.metrics import roc_curve

    is_out, scores = _ood_inputs(scores_in, scores_out)
    fpr, tpr, _ = roc_curve(is_out, scores)
    return fpr, tpr


def central_interval(
    mean: ArrayLike, std: ArrayLike, *, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Central Gaussian interval ``mean ± z std`` with ``z = Phi^{-1}((1 + level) / 2)``.

    Parameters
    ----------
    mean, std : array-like or Tensor of shape (N, *S)
        Predictive mean and standard deviation (finite, ``std >= 0``; a NaN or negative
        ``std`` is refused, never drawn as an inverted band).
    level : float, default=0.95
        Coverage of the interval, in (0, 1).

    Returns
    -------
    lower, upper : ndarray of shape (N, *S)
    """
    from scipy.special import ndtri

    level = check_float(
        "level", level, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
    )
    mean_arr = as_real("mean", mean)
    std_arr = match_shape("std", check_std("std", std), "mean", mean_arr)
    z = float(ndtri(0.5 + level / 2.0))
    return mean_arr - z * std_arr, mean_arr + z * std_arr


def binned_residuals(
    y: ArrayLike, mean: ArrayLike, std: ArrayLike, *, n_bins: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Root-mean-square ``std`` and RMSE of equal-count bins of increasing predicted ``std``.

    For calibrated Gaussian predictions the two agree in every bin (Levi et al. 2019).

    Parameters
    ----------
    y, mean, std : array-like or Tensor of shape (N, *S)
        Targets, predictive means and standard deviations (``std >= 0``); flattened.
    n_bins : int, default=10
        Number of bins (at most ``N``; fewer when there are fewer elements).

    Returns
    -------
    rms_std, rmse : ndarray of shape (min(n_bins, N),)

    References
    ----------
    Levi, Gispan, Giladi & Fetaya (2019), "Evaluating and calibrating uncertainty prediction in
    regression tasks", arXiv:1905.11659.
    """
    n_bins = _check_n_bins(n_bins)
    y_arr, mean_arr = _regression_pair(y, "mean", mean)
    std_arr = match_shape("std", check_std("std", std), "y", y_arr).ravel()
    residual = (y_arr - mean_arr).ravel()
    groups = np.array_split(np.argsort(std_arr, kind="stable"), min(n_bins, std_arr.size))
    rms_std = np.array([np.sqrt(np.mean(std_arr[g] ** 2)) for g in groups])
    rmse_values = np.array([np.sqrt(np.mean(residual[g] ** 2)) for g in groups])
    return rms_std, rmse_values


_CONVERGENCE_METRICS = {
    "classification": ("standard_error", "nll", "accuracy", "ece"),
    "regression": ("standard_error", "rmse"),
}


def _convergence_draws(samples: Any, task: str, class_dim: Any) -> np.ndarray:
    """``(T, M)`` (regression) or ``(T, M, C)`` (classification) float64 Monte Carlo draws."""
    draws = as_real("samples", samples)
    if draws.ndim < (3 if task == "classification" else 2):
        shape = "(T, N, C, *S)" if task == "classification" else "(T, N, *S)"
        raise ValueError(
            f"Expected `samples` of shape {shape}, but got shape {describe_shape(draws)}."
        )
    if task == "regression":
        return draws.reshape(draws.shape[0], -1)
    class_dim = check_int("class_dim", class_dim)
    sample_ndim = draws.ndim - 1  # one sample is (N, C, *S)
    position = class_dim + sample_ndim if class_dim < 0 else class_dim
    if not 1 <= position < sample_ndim:
        raise ValueError(
            f"Expected `class_dim` to be a dimension of one sample after N, in "
            f"[1, {sample_ndim - 1}], but got {class_dim}."
        )
    moved = np.moveaxis(draws, position + 1, -1)
    return moved.reshape(moved.shape[0], -1, moved.shape[-1])


def _convergence_counts(sample_counts: Any, n_total: int, minimum: int) -> np.ndarray:
    if sample_counts is None:
        counts = np.geomspace(minimum, n_total, num=min(20, n_total - minimum + 1))
        return np.unique(np.round(counts).astype(np.int64))
    counts = np.asarray(sample_counts).reshape(-1)
    if counts.size == 0 or not np.issubdtype(counts.dtype, np.integer):
        raise TypeError(
            f"Expected `sample_counts` to be a non-empty sequence of integers, but got "
            f"{counts.tolist()!r}."
        )
    if counts.min() < minimum or counts.max() > n_total:
        raise ValueError(
            f"Expected `sample_counts` in [{minimum}, {n_total}], but got values from "
            f"{counts.min()} to {counts.max()}."
        )
    return np.unique(counts.astype(np.int64))


def _running_metric(metric: str, labels: np.ndarray, mean: np.ndarray) -> float:
    if metric == "rmse":
        return rmse(labels, mean)
    if metric == "accuracy":
        return accuracy(labels, mean)
    if metric == "nll":
        return negative_log_likelihood(labels, mean)
    return expected_calibration_error(labels, mean)


def convergence_curve(
    samples: ArrayLike,
    y_true: ArrayLike | None = None,
    *,
    metric: str | Callable[[np.ndarray, np.ndarray], float] = "standard_error",
    sample_counts: ArrayLike | None = None,
    task: str = "classification",
    class_dim: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """A metric of the running Monte Carlo estimate from the first ``T`` samples, for several ``T``.

    The running mean and variance are the library's streaming moments (Chan et al. 1979, as in
    :func:`mcdrop.summarize_samples`), so the standard error stays exact for samples with a
    large mean and a tiny spread (no ``E[x²] - E[x]²`` cancellation).

    Parameters
    ----------
    samples : array-like or Tensor of shape (T, N, C, *S) or (T, N, *S)
        Sampled probabilities (classification, class dimension at ``class_dim`` of one sample)
        or sampled means (regression).
    y_true : array-like or Tensor of shape (N, *S) or None, default=None
        Labels or targets; needed by every metric but ``"standard_error"``.
    metric : str or callable, default="standard_error"
        ``"standard_error"``: mean over all outputs of the Monte Carlo standard error of the
        running mean, ``sqrt(s_T² / T)`` with the unbiased ``s_T²`` (needs ``T >= 2``).
        Classification: ``"nll"``, ``"accuracy"``, ``"ece"`` of the running mean
        probabilities. Regression: ``"rmse"`` of the running mean. A callable is called as
        ``metric(y_true, running_mean)`` with the flattened ``(M,)`` targets and ``(M, C)``
        probabilities (classification) or ``(M,)`` means (regression).
    sample_counts : sequence of int or None, default=None
        Values of ``T``, each in ``[1, T]``; about 20 log-spaced counts when ``None``.
    task : {"classification", "regression"}, default="classification"
        Kind of samples.
    class_dim : int, default=1
        Class dimension of one classification sample ``(N, C, *S)``.

    Returns
    -------
    sample_counts : ndarray of shape (K,), int64
        Increasing numbers of samples.
    values : ndarray of shape (K,)
        The metric at each count.
    """
    from mcdrop.uncertainty import _Moments

    task = check_choice("task", task, _CONVERGENCE_METRICS)
    draws = _convergence_draws(samples, task, class_dim)
    if callable(metric):
        metric_name = getattr(metric, "__name__", "metric")
    else:
        metric_name = check_choice("metric", metric, _CONVERGENCE_METRICS[task])
    standard_error = metric_name == "standard_error" and not callable(metric)
    labels = None
    if not standard_error:
        if y_true is None:
            raise ValueError(
                f"Expected `y_true` to be given for metric {metric_name!r}, but got None."
            )
        labels = to_array("y_true", y_true).reshape(-1)
        check_nonempty("y_true", labels)
        if labels.shape[0] != draws.shape[1]:
            raise ValueError(
                f"Expected `y_true` to hold {draws.shape[1]} values (one per output of a "
                f"sample), but got {labels.shape[0]}."
            )
    minimum = 2 if standard_error else 1
    if draws.shape[0] < minimum:
        raise ValueError(
            f"Expected `samples` to hold at least {minimum} Monte Carlo samples for metric "
            f"{metric_name!r}, but got {draws.shape[0]}."
        )
    counts = _convergence_counts(sample_counts, draws.shape[0], minimum)
    values = np.empty(counts.size)
    moments, done = _Moments(), 0
    for i, t in enumerate(counts):
        moments.update(torch.from_numpy(draws[done:t]))
        done = int(t)
        assert moments.mean is not None and moments.m2 is not None
        if standard_error:
            values[i] = float((moments.m2 / (int(t) * (int(t) - 1))).sqrt().mean())
            continue
        mean = moments.mean.numpy()
        assert labels is not None
        values[i] = float(
            metric(labels, mean) if callable(metric) else _running_metric(metric_name, labels, mean)
        )
    return counts, values
