"""Isotonic recalibration of regression quantiles (Kuleshov et al. 2018)."""

from __future__ import annotations

from typing import Any

import numpy as np

from mcdrop._validation import ArrayLike, as_real, check_float, check_positive, match_shape
from mcdrop.calibration._base import Persistent, not_fitted, state_array


class IsotonicQuantileCalibration(Persistent):
    r"""Recalibrated regression quantiles by isotonic regression (Kuleshov et al. 2018).

    A Gaussian predictive distribution ``N(mean, std²)`` has the CDF
    ``F(y) = Φ((y - mean) / std)``. On validation data the probability integral transforms
    ``p_i = F_i(y_i)`` of a calibrated model are uniform; otherwise their empirical CDF
    ``P̂(p) = #{j : p_j <= p} / N`` departs from the diagonal. A non-decreasing map
    ``R`` is fitted by isotonic regression of ``P̂(p_i)`` on ``p_i``
    (:class:`sklearn.isotonic.IsotonicRegression`, linear between its knots) and extended
    linearly to ``R(0) = 0`` and ``R(1) = 1`` outside the fitted range; ``R ∘ F`` is the
    recalibrated CDF: its quantile at level ``τ`` is ``F^{-1}(R^{-1}(τ))``. Unlike
    :class:`StdScaling` it corrects a predictive spread of the wrong *shape* (e.g. heavy
    tails), not just of the wrong scale; it does not change the predicted median much.

    Attributes
    ----------
    thresholds_ : tuple of ndarray
        The increasing knots ``p`` and the fitted values ``R(p)`` of the map.

    Examples
    --------
    >>> recal = IsotonicQuantileCalibration().fit(val.mean, val.std, y_val)  # doctest: +SKIP
    >>> lower, upper = recal.interval(test.mean, test.std, level=0.9)  # doctest: +SKIP

    References
    ----------
    Kuleshov, Fenner & Ermon (2018), "Accurate uncertainties for deep learning using
    calibrated regression", ICML.
    """

    def __init__(self) -> None:
        self.thresholds_: tuple[np.ndarray, np.ndarray] | None = None

    def __repr__(self) -> str:
        fitted = "unfitted" if self.thresholds_ is None else f"{self.thresholds_[0].size} knots"
        return f"IsotonicQuantileCalibration({fitted})"

    def _state(self) -> dict[str, Any] | None:
        if self.thresholds_ is None:
            return None
        return {"x": self.thresholds_[0].tolist(), "y": self.thresholds_[1].tolist()}

    def _restore(self, state: dict[str, Any]) -> None:
        x = state_array(state, "x", (None,))
        y = state_array(state, "y", (x.shape[0],))
        ok = x.size >= 2 and np.all(np.diff(x) > 0) and np.all(np.diff(y) >= 0)
        if not ok or x[0] != 0.0 or x[-1] != 1.0 or y[0] != 0.0 or y[-1] != 1.0:
            raise ValueError(
                "Expected the saved map to be non-decreasing from (0, 0) to (1, 1) on increasing "
                "knots."
            )
        self.thresholds_ = (x, y)

    def _map(self) -> tuple[np.ndarray, np.ndarray]:
        if self.thresholds_ is None:
            raise not_fitted("IsotonicQuantileCalibration", "fit(mean, std, y)")
        return self.thresholds_

    @staticmethod
    def _gaussian(
        mean: Any, std: Any, ref_name: str, ref: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        mean_arr = match_shape("mean", as_real("mean", mean), ref_name, ref)
        std_arr = match_shape("std", as_real("std", std), ref_name, ref)
        check_positive("std", std_arr)
        return mean_arr, std_arr

    def fit(self, mean: ArrayLike, std: ArrayLike, y: ArrayLike) -> IsotonicQuantileCalibration:
        """Fit the map ``R`` on validation predictions.

        Parameters
        ----------
        mean, std : array-like or Tensor of shape (N, *S)
            Predictive mean and standard deviation (``std > 0``), e.g. ``result.mean`` and
            ``result.std``.
        y : array-like or Tensor of shape (N, *S)
            Targets; every element is one observation.

        Returns
        -------
        IsotonicQuantileCalibration
            ``self``, fitted.
        """
        from scipy.special import ndtr
        from scipy.stats import rankdata
        from sklearn.isotonic import IsotonicRegression

        y_arr = as_real("y", y)
        mean_arr, std_arr = self._gaussian(mean, std, "y", y_arr)
        pit = ndtr((y_arr - mean_arr) / std_arr).ravel()
        frequency = rankdata(pit, method="max") / pit.size  # #{j: p_j <= p_i} / N
        regression = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        regression.fit(pit, frequency)
        knots = np.asarray(regression.X_thresholds_, dtype=np.float64)
        values = np.asarray(regression.y_thresholds_, dtype=np.float64)
        # A CDF runs from (0, 0) to (1, 1): linear from there to the first and last knots.
        if knots[0] > 0.0:
            knots, values = np.r_[0.0, knots], np.r_[0.0, values]
        if knots[-1] < 1.0:
            knots, values = np.r_[knots, 1.0], np.r_[values, 1.0]
        values[0], values[-1] = 0.0, 1.0
        self.thresholds_ = (knots, values)
        return self

    def transform(self, probabilities: ArrayLike) -> np.ndarray:
        """The map ``R``: calibrated probability of a nominal Gaussian CDF value.

        Parameters
        ----------
        probabilities : array-like or Tensor of any shape
            Values of the uncalibrated CDF ``F(y)``, in ``[0, 1]``.

        Returns
        -------
        ndarray of the same shape
            ``R(probabilities)``, in ``[0, 1]``.
        """
        knots, values = self._map()
        p = as_real("probabilities", probabilities)
        if np.any((p < 0.0) | (p > 1.0)):
            raise ValueError(
                f"Expected `probabilities` in [0, 1], but got a value of "
                f"{float(p[(p < 0.0) | (p > 1.0)].ravel()[0])}."
            )
        return np.interp(p, knots, values)

    def cdf(self, y: ArrayLike, mean: ArrayLike, std: ArrayLike) -> np.ndarray:
        """Recalibrated CDF ``R(Φ((y - mean) / std))`` at the targets, shape of ``y``."""
        from scipy.special import ndtr

        y_arr = as_real("y", y)
        mean_arr, std_arr = self._gaussian(mean, std, "y", y_arr)
        knots, values = self._map()
        return np.interp(ndtr((y_arr - mean_arr) / std_arr), knots, values)

    def _inverse(self, level: float) -> float:
        """``R^{-1}(τ) = min {p : R(p) >= τ}`` of the piecewise-linear, non-decreasing ``R``."""
        knots, values = self._map()
        j = int(np.searchsorted(values, level, side="left"))  # first knot with R >= level
        if values[j] == level:
            return float(knots[j])
        # values[j - 1] < level < values[j]: on the rising segment between the two knots
        share = (level - values[j - 1]) / (values[j] - values[j - 1])
        return float(knots[j - 1] + share * (knots[j] - knots[j - 1]))

    def quantile(self, mean: ArrayLike, std: ArrayLike, *, level: float) -> np.ndarray:
        """Recalibrated quantile ``mean + std Φ^{-1}(R^{-1}(level))``.

        Parameters
        ----------
        mean, std : array-like or Tensor of shape (N, *S)
            Predictive mean and standard deviation (``std > 0``).
        level : float
            Quantile level in ``(0, 1)``.

        Returns
        -------
        ndarray of shape (N, *S)
        """
        from scipy.special import ndtri

        level = check_float(
            "level", level, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
        )
        mean_arr = as_real("mean", mean)
        _, std_arr = self._gaussian(mean_arr, std, "mean", mean_arr)
        p = min(max(self._inverse(level), np.nextafter(0.0, 1.0)), np.nextafter(1.0, 0.0))
        return mean_arr + std_arr * float(ndtri(p))

    def interval(
        self, mean: ArrayLike, std: ArrayLike, *, level: float = 0.9
    ) -> tuple[np.ndarray, np.ndarray]:
        """Recalibrated central interval: the quantiles at ``(1 ∓ level) / 2``.

        Parameters
        ----------
        mean, std : array-like or Tensor of shape (N, *S)
            Predictive mean and standard deviation (``std > 0``).
        level : float, default=0.9
            Nominal coverage in ``(0, 1)``.

        Returns
        -------
        lower, upper : ndarray of shape (N, *S)
            Feed them to :func:`mcdrop.metrics.picp` or compare them with the intervals of
            :class:`mcdrop.conformal.SplitConformalRegressor`.
        """
        level = check_float(
            "level", level, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
        )
        lower = self.quantile(mean, std, level=(1.0 - level) / 2.0)
        upper = self.quantile(mean, std, level=(1.0 + level) / 2.0)
        return lower, upper
