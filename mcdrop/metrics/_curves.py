"""Curves and intervals drawn by :mod:`mcdrop.plot` (computed here, only drawn there)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mcdrop._validation import (
    ArrayLike,
    as_real,
    check_choice,
    check_classification,
    check_float,
    check_int,
    check_nonempty,
    check_std,
    describe_shape,
    match_shape,
    to_array,
)
from mcdrop.metrics._base import (
    _check_n_bins,
    _prob_matrix,
)
from mcdrop.metrics._calibration import (
    ReliabilityCurve,
    expected_calibration_error,
)
from mcdrop.metrics._ranking import (
    _ood_inputs,
)
from mcdrop.metrics._regression import (
    _regression_pair,
    rmse,
)
from mcdrop.metrics._scores import accuracy, negative_log_likelihood
from mcdrop.metrics._selective import (
    _accuracy_after_rejection,
)
from mcdrop.stats import Moments


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
    moments, done = Moments(), 0
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
