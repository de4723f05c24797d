"""Calibration of classifiers: reliability curves and binned calibration errors (one binning code path)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mcdrop._validation import (
    ArrayLike,
    check_choice,
    check_classification,
)
from mcdrop.metrics._base import (
    _NORMS,
    _STRATEGIES,
    _check_n_bins,
    _prob_matrix,
)


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

    def calibration_error(self, norm: str = "l1") -> float:
        """The count-weighted gap between accuracy and confidence over the filled bins.

        Parameters
        ----------
        norm : {"l1", "l2", "max"}, default="l1"
            ``"l1"``: expected calibration error; ``"l2"``: its root-mean-square form;
            ``"max"``: maximum calibration error.

        Returns
        -------
        float
        """
        return _gap_norm(self, check_choice("norm", norm, _NORMS))


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
