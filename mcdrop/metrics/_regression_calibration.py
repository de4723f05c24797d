"""Calibration of regression uncertainty by bins of the predicted spread: ENCE, UCE, QCE."""

from __future__ import annotations

from typing import Any

import numpy as np

from mcdrop._validation import (
    ArrayLike,
    check_choice,
    check_std,
    match_shape,
)
from mcdrop.metrics._base import _STRATEGIES, _check_n_bins
from mcdrop.metrics._regression import _check_levels, _gaussian_inputs, _regression_pair


def _spread_bins(values: np.ndarray, n_bins: Any, strategy: Any) -> list[np.ndarray]:
    """Indices of the non-empty bins of ``values`` (a predicted spread), in increasing order.

    ``"quantile"``: ``min(n_bins, M)`` groups of consecutive sorted values whose sizes differ by
    at most one (``np.array_split`` of a stable argsort, as :func:`binned_residuals`).
    ``"uniform"``: equal-width bins on ``[min, max]``, left-closed and the last one closed
    (:func:`numpy.histogram`'s convention, netcal's); a constant spread is one bin.
    """
    n_bins = _check_n_bins(n_bins)
    strategy = check_choice("strategy", strategy, _STRATEGIES)
    if strategy == "quantile":
        order = np.argsort(values, kind="stable")
        return list(np.array_split(order, min(n_bins, values.size)))
    low, high = float(values.min()), float(values.max())
    if low == high:
        return [np.arange(values.size)]
    edges = np.linspace(low, high, n_bins + 1)
    ids = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, n_bins - 1)
    return [group for group in (np.flatnonzero(ids == b) for b in range(n_bins)) if group.size]


def ence(
    y: ArrayLike,
    mean: ArrayLike,
    std: ArrayLike,
    *,
    n_bins: int = 10,
    strategy: str = "quantile",
) -> float:
    r"""Expected normalised calibration error (Levi et al. 2019). Lower is better.

    The elements are binned by predicted ``std``; in each bin ``b`` the root mean variance
    ``RMV(b) = sqrt(mean(std²))`` is compared with the observed ``RMSE(b)``:

    .. math::

        \mathrm{ENCE} = \frac{1}{B} \sum_{b=1}^{B} \frac{|\mathrm{RMV}(b) - \mathrm{RMSE}(b)|}
        {\mathrm{RMV}(b)},

    the unweighted mean over the ``B`` non-empty bins. 0 when the predicted spread matches the
    error in every bin; ``0.5`` means errors half again as large (or half as large) as
    predicted. The bins are those drawn by :class:`~mcdrop.plot.ResidualStdDisplay`
    (:func:`binned_residuals`).

    Parameters
    ----------
    y : array-like or Tensor of shape (N, *S)
        Targets; every element is one prediction.
    mean, std : array-like or Tensor of shape (N, *S)
        Predictive mean and standard deviation (``std > 0``).
    n_bins : int, default=10
        Number of bins.
    strategy : {"quantile", "uniform"}, default="quantile"
        ``"quantile"``: bins holding equal numbers of elements (sizes differ by at most one),
        so no bin is nearly empty. ``"uniform"``: equal-width bins of ``std`` between its
        minimum and maximum, empty bins left out (netcal's ``ENCE``).

    Returns
    -------
    float
        ``>= 0``.

    Notes
    -----
    netcal scores each output dimension separately and returns one ENCE per dimension; here
    all elements are pooled (as every metric of :mod:`mcdrop.metrics` does), which equals
    netcal for one-dimensional targets with ``strategy="uniform"``. The ENCE grows like
    ``sqrt(n_bins / N)`` even for calibrated predictions (Pernot 2023): compare values at the
    same ``n_bins`` and ``N`` only.

    References
    ----------
    Levi, Gispan, Giladi & Fetaya (2019), "Evaluating and calibrating uncertainty prediction in
    regression tasks", arXiv:1905.11659 (Sensors 2022).
    """
    y_arr, mean_arr, std_arr = _gaussian_inputs(y, mean, std)
    std_flat, residual = std_arr.ravel(), (y_arr - mean_arr).ravel()
    ratios = []
    for group in _spread_bins(std_flat, n_bins, strategy):
        rmv = np.sqrt(np.mean(std_flat[group] ** 2))
        rmse = np.sqrt(np.mean(residual[group] ** 2))
        ratios.append(abs(rmv - rmse) / rmv)
    return float(np.mean(ratios))


def uce(
    y: ArrayLike,
    mean: ArrayLike,
    variance: ArrayLike,
    *,
    n_bins: int = 10,
    strategy: str = "uniform",
) -> float:
    r"""Uncertainty calibration error (Laves et al. 2020). Lower is better.

    The elements are binned by predicted variance; each bin compares its mean variance
    ``MV(b)`` with its mean squared error ``MSE(b)``, weighted by its share of the elements:

    .. math::

        \mathrm{UCE} = \sum_{b=1}^{B} \frac{n_b}{N} \,
        \bigl|\mathrm{MSE}(b) - \mathrm{MV}(b)\bigr| .

    In the squared units of ``y``; 0 when every bin's variance equals its squared error.

    Parameters
    ----------
    y : array-like or Tensor of shape (N, *S)
        Targets.
    mean : array-like or Tensor of shape (N, *S)
        Predictive means.
    variance : array-like or Tensor of shape (N, *S)
        Predictive variances, ``>= 0``.
    n_bins : int, default=10
        Number of bins.
    strategy : {"uniform", "quantile"}, default="uniform"
        ``"uniform"``: equal-width bins of the variance between its minimum and maximum (Laves
        et al.; netcal's ``UCE``). ``"quantile"``: equal-count bins.

    Returns
    -------
    float
        ``>= 0``.

    Notes
    -----
    Equal to netcal's ``UCE().measure((mean, std), y)`` for one-dimensional targets; netcal
    returns one value per output dimension, here all elements are pooled.

    References
    ----------
    Laves, Ihler, Fast, Kahrs & Ortmaier (2020), "Well-calibrated regression uncertainty in
    medical imaging with deep learning", MIDL.
    """
    y_arr, mean_arr = _regression_pair(y, "mean", mean)
    var_arr = match_shape("variance", check_std("variance", variance), "y", y_arr).ravel()
    squared = ((y_arr - mean_arr) ** 2).ravel()
    total = 0.0
    for group in _spread_bins(var_arr, n_bins, strategy):
        total += group.size * abs(np.mean(squared[group]) - np.mean(var_arr[group]))
    return float(total / var_arr.size)


def qce(
    y: ArrayLike,
    mean: ArrayLike,
    std: ArrayLike,
    *,
    levels: ArrayLike | None = None,
    n_bins: int = 10,
    strategy: str = "uniform",
) -> float:
    r"""Conditional quantile calibration error (Küppers et al. 2022). Lower is better.

    For each level ``τ`` an element is inside its Gaussian central interval when
    ``|y - mean| <= z_τ std`` with ``z_τ = Φ^{-1}((1 + τ) / 2)``. The elements are binned by
    predicted ``std`` and each bin's coverage ``freq_b(τ)`` is compared with ``τ``:

    .. math::

        \mathrm{C\text{-}QCE} = \frac{1}{L} \sum_{\tau} \sum_{b=1}^{B} \frac{n_b}{N}
        \bigl| \mathrm{freq}_b(\tau) - \tau \bigr| .

    With ``n_bins=1`` this is the marginal M-QCE, i.e. :func:`miscalibration_area` on the same
    levels; more bins also catch a spread that is right on average but wrong for small or
    large ``std``.

    Parameters
    ----------
    y : array-like or Tensor of shape (N, *S)
        Targets.
    mean, std : array-like or Tensor of shape (N, *S)
        Predictive mean and standard deviation (``std > 0``).
    levels : array-like of shape (L,) or None, default=None
        Interval levels in ``(0, 1)``; ``None`` means ``np.linspace(0.01, 0.99, 99)``.
    n_bins : int, default=10
        Number of bins of ``std``.
    strategy : {"uniform", "quantile"}, default="uniform"
        Binning of ``std``, as in :func:`uce` (``"uniform"`` is netcal's).

    Returns
    -------
    float
        In ``[0, 1)``.

    Notes
    -----
    Equal to netcal's ``QCE(bins=n_bins, marginal=False).measure((mean, std), y, q=levels)``
    for one-dimensional targets (netcal computes one value per dimension; here all elements
    are pooled).

    References
    ----------
    Küppers, Schneider & Haselhoff (2022), "Parametric and multivariate uncertainty
    calibration for regression and object detection", ECCV Workshops.
    """
    from scipy.special import ndtri

    y_arr, mean_arr, std_arr = _gaussian_inputs(y, mean, std)
    taus = _check_levels(levels)
    std_flat = std_arr.ravel()
    distance = (np.abs(y_arr - mean_arr) / std_arr).ravel()
    z = ndtri(0.5 + taus / 2.0)
    total = np.zeros(taus.shape[0])
    for group in _spread_bins(std_flat, n_bins, strategy):
        # coverage of every level from the sorted distances: O(n log n), no (L, n) array
        inside = np.searchsorted(np.sort(distance[group]), z, side="right")
        total += np.abs(inside - group.size * taus)
    return float(np.mean(total / std_flat.size))
