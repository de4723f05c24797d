"""Regression: likelihoods, CRPS, interval coverage and calibration."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.special import logsumexp

from mcdrop._validation import (
    ArrayLike,
    as_real,
    check_float,
    check_positive,
    describe_shape,
    match_shape,
)
from mcdrop.metrics._base import (
    _LOG_2PI,
    _reduce,
)


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


def energy_score(
    y: ArrayLike, samples: ArrayLike, *, reduction: str = "mean"
) -> float | np.ndarray:
    r"""Energy score of sample predictions (Gneiting & Raftery 2007), a proper scoring rule.

    For an example with target vector ``y`` and ``T`` sampled predictions ``x_1..x_T``,

    .. math::

        \mathrm{ES} = \frac1T \sum_t \lVert x_t - y \rVert
        - \frac{1}{2T^2} \sum_{t, s} \lVert x_t - x_s \rVert ,

    the energy score ``E‖X - y‖ - ½ E‖X - X'‖`` of the empirical distribution of the samples,
    with the Euclidean norm over all output elements of the example. Lower is better. In one
    dimension it is the CRPS, and equals :func:`crps_samples`.

    Parameters
    ----------
    y : array-like or Tensor of shape (N,) or (N, *S)
        Targets; the ``*S`` elements of an example form one vector.
    samples : array-like or Tensor of shape (T, N) or (T, N, *S)
        Sampled predictions, samples first (a trailing singleton dimension on either side is
        tolerated).
    reduction : {"mean", "none"}, default="mean"
        Average over the ``N`` examples, or return one score per example.

    Returns
    -------
    float or ndarray of shape (N,)
        In the units of ``y``; ``>= 0``.

    Notes
    -----
    The double sum is the V-statistic ``1/(2T²)`` (the exact energy score of the empirical
    distribution, as in :func:`crps_samples`), not the unbiased ``1/(2T(T-1))`` "fair"
    version. It costs ``O(T² N D)`` for ``D > 1`` output elements (``O(T log T)`` per example
    in one dimension).

    References
    ----------
    Gneiting & Raftery (2007), "Strictly proper scoring rules, prediction, and estimation",
    JASA (eq. 22). Gneiting, Stanberry, Grimit, Held & Johnson (2008), "Assessing probabilistic
    forecasts of multivariate quantities", TEST.
    """
    y_arr, samples_arr = _samples_and_target(y, samples)
    n_samples, n = samples_arr.shape[0], y_arr.shape[0]
    if y_arr.size == n:  # one element per example: the CRPS
        one_d = samples_arr.reshape(n_samples, n)
        values = np.asarray(crps_samples(y_arr.reshape(n), one_d, reduction="none"))
        return _reduce("reduction", values, reduction)
    flat = samples_arr.reshape(n_samples, n, -1)
    first = np.mean(np.linalg.norm(flat - y_arr.reshape(1, n, -1), axis=2), axis=0)
    pairs = np.zeros(n)
    for t in range(n_samples - 1):
        pairs += np.linalg.norm(flat[t + 1 :] - flat[t], axis=2).sum(axis=0)
    values = first - pairs / n_samples**2  # each unordered pair twice, halved
    return _reduce("reduction", values, reduction)
