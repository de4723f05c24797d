"""Bootstrap confidence intervals for any metric."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from mcdrop._validation import (
    ArrayLike,
    check_float,
    check_int,
    check_nonempty,
    to_array,
)


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
