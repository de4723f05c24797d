"""Smooth calibration error (Błasiok & Nakkiran 2024): a kernel-smoothed, binning-free ECE."""

from __future__ import annotations

import math

import numpy as np

from mcdrop._validation import ArrayLike, check_float
from mcdrop.metrics._calibration import _calibration_target

_MIN_BANDWIDTH = 1e-3  # relplot's smallest bandwidth (its `eps`)
_STEPS_PER_BANDWIDTH = 200  # grid spacing at most bandwidth / 200
_MIN_INTERVALS = 2000


def _reflected_kernel(offsets: np.ndarray, bandwidth: float) -> np.ndarray:
    """Gaussian density of ``offsets`` wrapped on a circle of circumference 2.

    Smoothing masses placed at ``t`` and ``-t`` on that circle with it is smoothing on [0, 1]
    with the Gaussian kernel reflected at both ends (every image ``±t + 2k``).
    """
    wraps = math.ceil(4.0 * bandwidth) + 1
    shifts = 2.0 * np.arange(-wraps, wraps + 1)
    z = (offsets[:, None] + shifts[None, :]) / bandwidth
    return np.exp(-0.5 * z**2).sum(axis=1) / (bandwidth * math.sqrt(2.0 * math.pi))


def _smooth_ece_at(values: np.ndarray, residuals: np.ndarray, bandwidth: float) -> float:
    r"""``∫_0^1 |(1/N) Σ_i K_σ(t, f_i) r_i| dt`` with the reflected Gaussian kernel ``K_σ``.

    The residuals are spread on a uniform grid by linear binning, convolved with the wrapped
    kernel by FFT (the reflections are the masses at ``-t`` on the circle of circumference 2)
    and the absolute value is integrated with the trapezoidal rule.
    """
    intervals = max(_MIN_INTERVALS, math.ceil(_STEPS_PER_BANDWIDTH / bandwidth))
    circle = 2 * intervals
    position = values * intervals
    left = np.minimum(np.floor(position).astype(np.int64), intervals - 1)
    frac = position - left
    masses = np.bincount(left, weights=(1.0 - frac) * residuals, minlength=circle)
    masses += np.bincount(left + 1, weights=frac * residuals, minlength=circle)
    masses[circle - np.arange(1, intervals)] += masses[1:intervals]  # the images at -t
    masses[intervals] *= 2.0  # t = 1 is its own image at -1 on the circle; so is t = 0
    masses[0] *= 2.0
    steps = np.arange(circle)
    offsets = np.minimum(steps, circle - steps) / intervals
    kernel = _reflected_kernel(offsets, bandwidth)
    smoothed = np.fft.irfft(np.fft.rfft(masses) * np.fft.rfft(kernel), n=circle)
    gap = np.abs(smoothed[: intervals + 1]) / values.shape[0]
    return float((gap.sum() - 0.5 * (gap[0] + gap[-1])) / intervals)


def smooth_calibration_error(
    y_true: ArrayLike, y_prob: ArrayLike, *, bandwidth: float | None = None
) -> float:
    r"""Smooth ECE (Błasiok & Nakkiran 2024): calibration error without bins.

    With ``f_i`` the predicted probability (top-label confidence) and ``y_i`` its 0/1 outcome
    (the top label is right), the residuals ``r_i = f_i - y_i`` are smoothed by a Gaussian
    kernel of bandwidth ``σ`` reflected at 0 and 1,

    .. math::

        \mathrm{smECE}_\sigma = \int_0^1 \Bigl| \frac1N \sum_{i=1}^N K_\sigma(t, f_i)\, r_i
        \Bigr| \, dt = \int_0^1 |\hat r_\sigma(t)|\, \hat\delta_\sigma(t)\, dt,

    the smoothed residual ``r̂`` weighted by the smoothed density ``δ̂`` of the predictions.
    ``bandwidth=None`` takes the unique fixed point ``σ* = smECE_σ*`` (the paper's choice:
    it needs no tuning and is a consistent calibration measure).

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities. ``(N, C)``: top-label confidence and correctness;
        ``(N,)``: positive-class probability and ``y_true == 1``, as in
        :func:`expected_calibration_error`.
    bandwidth : float or None, default=None
        Kernel bandwidth ``σ`` in ``(0, 1]``; ``None`` solves ``σ = smECE_σ`` (Brent's method
        on ``[1e-3, 1]``; when even ``σ = 1e-3`` exceeds its smECE, that is used, as
        relplot does).

    Returns
    -------
    float
        In ``[0, 1]``.

    Notes
    -----
    The integral is computed on a uniform grid of spacing ``min(1/2000, σ/200)``: residuals
    are spread on the grid by linear binning and smoothed by FFT, exact for the reflected
    kernel up to ``O((spacing/σ)²)``, below ``1e-5`` relative. relplot (the authors' code) and
    torch-uncertainty's ``SmoothCalibrationError(kernel_type="reflected")`` discretise more
    coarsely (200 evaluation points, an additive ``1e-4`` on the density, a kernel cut at
    ``±0.5``) and locate ``σ*`` by 10 bisection steps (``±1/1024``), so they agree with this
    function to about ``1e-3``.

    References
    ----------
    Błasiok & Nakkiran (2024), "Smooth ECE: Principled reliability diagrams via kernel
    smoothing", ICLR.
    """
    values, hits = _calibration_target(y_true, y_prob)
    residuals = values - hits.astype(np.float64)
    if bandwidth is not None:
        sigma = check_float("bandwidth", bandwidth, low=0.0, high=1.0, low_inclusive=False)
        return _smooth_ece_at(values, residuals, sigma)
    from scipy.optimize import brentq

    def excess(sigma: float) -> float:
        return _smooth_ece_at(values, residuals, sigma) - sigma

    if excess(_MIN_BANDWIDTH) <= 0.0:
        return _smooth_ece_at(values, residuals, _MIN_BANDWIDTH)
    sigma = brentq(excess, _MIN_BANDWIDTH, 1.0, xtol=1e-10, rtol=1e-10)
    return _smooth_ece_at(values, residuals, float(sigma))
