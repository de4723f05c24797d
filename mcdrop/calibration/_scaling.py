"""Temperature scaling (classification) and std scaling (regression)."""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy.special import log_softmax, softmax

from mcdrop._validation import (
    ArrayLike,
    as_real,
    check_choice,
    check_float,
    check_labels,
    check_positive,
    check_probs,
    match_shape,
    to_real_array,
)
from mcdrop.calibration._base import Persistent, state_array

__all__ = ["StdScaling", "TemperatureScaling"]

_INPUTS = ("logits", "probs", "log_probs")
_HUGE = 1e300  # the objective where the NLL is beyond float64


class TemperatureScaling(Persistent):
    r"""Temperature scaling of a classifier's outputs (Guo et al. 2017).

    One scalar ``T > 0`` divides the logits, ``p = softmax(z / T)``; it is fitted by minimising
    the mean negative log-likelihood on validation data, over ``log T`` with bounded Brent
    search (:func:`scipy.optimize.minimize_scalar`). The NLL is convex in ``1 / T``, hence
    unimodal in ``log T``, so the search finds the global minimum inside ``bounds``. Scaling
    never changes the predicted class, only the confidence.

    Parameters
    ----------
    inputs : {"logits", "probs", "log_probs"}, default="logits"
        What ``fit`` and ``transform`` receive; it is never guessed from the values.
        ``"logits"``: unnormalised scores ``z``. ``"probs"``: probability vectors, e.g. the Monte
        Carlo average of the softmax outputs, ``result.mean``; their logarithm plays the role
        of ``z`` (probabilities are clipped below at the smallest positive ``float64``,
        ``~2.2e-308``, before the log so that exact zeros stay negligible). ``"log_probs"``:
        log-probabilities, used as ``z`` directly (``-inf`` allowed: it stays a zero
        probability).
    bounds : tuple of float, default=(0.01, 100.0)
        Search interval for ``T``. A fitted value at a bound triggers a ``RuntimeWarning``.

    Attributes
    ----------
    temperature : float
        The fitted ``T`` (read-only; ``> 1`` softens overconfident predictions).

    Examples
    --------
    >>> scaler = TemperatureScaling().fit(val_logits, val_labels)  # doctest: +SKIP
    >>> test_probs = scaler.transform(test_logits)  # doctest: +SKIP

    On MC dropout outputs, fit on the averaged probabilities:

    >>> scaler = TemperatureScaling(inputs="probs").fit(val_result.mean, y)  # doctest: +SKIP

    References
    ----------
    Guo, Pleiss, Sun & Weinberger (2017), "On calibration of modern neural networks", ICML.
    """

    def __init__(self, *, inputs: str = "logits", bounds: tuple[float, float] = (0.01, 100.0)):
        self.inputs = check_choice("inputs", inputs, _INPUTS)
        try:
            low, high = bounds
        except (TypeError, ValueError):
            raise ValueError(
                f"Expected `bounds` to be a pair (low, high), but got {bounds!r}."
            ) from None
        low = check_float("bounds[0]", low, low=0.0, low_inclusive=False)
        high = check_float("bounds[1]", high, low=0.0, low_inclusive=False)
        if not low < high:
            raise ValueError(f"Expected `bounds` to satisfy low < high, but got {bounds!r}.")
        self.bounds = (low, high)
        self._temperature: float | None = None

    def __repr__(self) -> str:
        fitted = "unfitted" if self._temperature is None else f"temperature={self._temperature:.4g}"
        return f"TemperatureScaling(inputs={self.inputs!r}, {fitted})"

    def _options(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "bounds": list(self.bounds)}

    def _state(self) -> dict[str, Any] | None:
        return None if self._temperature is None else {"temperature": self._temperature}

    def _restore(self, state: dict[str, Any]) -> None:
        value = float(state_array(state, "temperature", ()))
        self._temperature = check_float(
            "temperature in the saved state", value, low=0.0, low_inclusive=False
        )

    @property
    def temperature(self) -> float:
        """The fitted temperature ``T``; raises ``NotFittedError`` before :meth:`fit`."""
        if self._temperature is None:
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                "This TemperatureScaling is not fitted yet; call `fit(logits, y)` first."
            )
        return self._temperature

    def _scores(self, name: str, value: Any) -> np.ndarray:
        """The ``(N, C)`` float64 scores that the temperature divides, shifted by their row max.

        ``softmax(z / T)`` does not change when a row of ``z`` is shifted, and with the row
        maximum at 0 nothing overflows: ``z / T`` is at most 0 for any ``T`` (entries may
        underflow to ``-inf``, a zero probability), so no NaN can arise from finite logits.
        """
        scores = self._raw_scores(name, value)
        with np.errstate(over="ignore", invalid="ignore"):
            return scores - scores.max(axis=1, keepdims=True)

    def _raw_scores(self, name: str, value: Any) -> np.ndarray:
        if self.inputs == "probs":
            probs = check_probs(name, value, allow_1d=False)
            return np.log(np.maximum(probs, np.finfo(np.float64).tiny))
        if self.inputs == "log_probs":
            array = _to_2d(name, value, allow_neg_inf=True)
            if np.any(array > 0.0):
                raise ValueError(
                    f"Expected `{name}` to hold log-probabilities (<= 0), but got "
                    f"{float(array.max())}."
                )
            return array
        return _to_2d(name, value, allow_neg_inf=False)

    def fit(self, logits: ArrayLike, y: ArrayLike) -> TemperatureScaling:
        """Fit the temperature by minimising the NLL of ``y`` under ``softmax(logits / T)``.

        Parameters
        ----------
        logits : array-like or Tensor of shape (N, C)
            Validation outputs of the kind given by ``inputs`` (logits by default).
        y : array-like or Tensor of shape (N,)
            Integer labels in ``[0, C)``.

        Returns
        -------
        TemperatureScaling
            ``self``, fitted.
        """
        scores = self._scores("logits", logits)
        labels = check_labels("y", y, scores.shape[1], scores.shape[0])
        rows = np.arange(scores.shape[0])
        # The search minimises NLL / scale: the same minimum, and values the search can do
        # arithmetic on even for logits near the float64 limit.
        finite = scores[np.isfinite(scores)]
        scale = max(1.0, float(np.max(-finite)) if finite.size else 1.0)

        def nll(log_t: float) -> float:
            with np.errstate(over="ignore"):
                log_p = log_softmax(scores * math.exp(-log_t), axis=1)
            picked = log_p[rows, labels]
            if not np.all(np.isfinite(picked)):  # beyond float64: larger than any finite value
                return _HUGE
            return float(np.mean(picked / -scale))  # NLL / scale: no overflow in the mean

        low, high = math.log(self.bounds[0]), math.log(self.bounds[1])
        from scipy.optimize import minimize_scalar

        solution = minimize_scalar(
            nll, bounds=(low, high), method="bounded", options={"xatol": 1e-7}
        )
        log_t = float(solution.x)
        if nll(low) == nll(high):
            raise ValueError(
                "Expected `logits` whose fit depends on the temperature, but the negative "
                f"log-likelihood is {nll(low) * scale:.6g} at both ends of `bounds` {self.bounds}: the "
                "probabilities are saturated (e.g. logits of magnitude "
                f"{float(np.max(np.abs(scores[np.isfinite(scores)]))):.3g}) or constant, so no "
                "temperature can be identified."
            )
        if min(log_t - low, high - log_t) < 1e-4:
            warnings.warn(
                f"The fitted temperature {math.exp(log_t):.4g} is at the edge of `bounds` "
                f"{self.bounds}; widen them.",
                RuntimeWarning,
                stacklevel=2,
            )
        self._temperature = math.exp(log_t)
        return self

    def transform(self, logits: ArrayLike) -> np.ndarray:
        """Calibrated probabilities ``softmax(logits / T)``.

        Parameters
        ----------
        logits : array-like or Tensor of shape (N, C) or (..., N, C)
            Outputs of the kind given by ``inputs``, e.g. the ``(T, N, C)`` outputs of ``T``
            Monte Carlo samples (each scaled alike).

        Returns
        -------
        ndarray of the shape of ``logits``
            Probabilities (``float64``).
        """
        temperature = self.temperature
        shape = tuple(logits.shape) if hasattr(logits, "shape") else np.shape(logits)
        leading = shape[:-1] if len(shape) > 2 else None
        if leading is not None:  # per-sample outputs: scale every row alike
            flat = logits if hasattr(logits, "reshape") else np.asarray(logits)
            logits = flat.reshape(-1, shape[-1])  # type: ignore[union-attr]
        scores = self._scores("logits", logits)
        with np.errstate(over="ignore"):  # scores <= 0: an overflow is a zero probability
            probs = np.asarray(softmax(scores / temperature, axis=1), dtype=np.float64)
        return probs if leading is None else probs.reshape(*leading, probs.shape[-1])

    def fit_transform(self, logits: ArrayLike, y: ArrayLike) -> np.ndarray:
        """:meth:`fit` then :meth:`transform` on the same data."""
        return self.fit(logits, y).transform(logits)


def _to_2d(name: str, value: Any, *, allow_neg_inf: bool) -> np.ndarray:
    """A ``(N, C)`` float64 array without NaN (and without infinities unless ``-inf`` allowed)."""
    array = to_real_array(name, value)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(
            f"Expected `{name}` to have shape (N, C) with N, C >= 1, but got shape "
            f"{tuple(int(s) for s in array.shape)}."
        )
    array = array.astype(np.float64, copy=False)
    bad = np.isnan(array) | (array == np.inf)
    if not allow_neg_inf:
        bad |= array == -np.inf
    if np.any(bad):
        raise ValueError(
            f"Expected `{name}` to hold finite values, but got {int(bad.sum())} non-finite "
            f"value(s) (e.g. {array[bad][0]})."
        )
    if allow_neg_inf and np.any(np.all(array == -np.inf, axis=1)):
        raise ValueError(
            f"Expected every row of `{name}` to have a finite entry, but one is all -inf."
        )
    return array


class StdScaling(Persistent):
    r"""Std scaling of a regressor's predictive standard deviation (Levi et al. 2019).

    One scalar ``s > 0`` multiplies the predicted standard deviation. The value minimising the
    Gaussian negative log-likelihood ``mean(log(s std) + (y - mean)^2 / (2 s^2 std^2))`` has the
    closed form

    .. math::

        s^2 = \frac{1}{N} \sum_i \frac{(y_i - \mu_i)^2}{\sigma_i^2}.

    Attributes
    ----------
    scale : float
        The fitted ``s`` (read-only).

    References
    ----------
    Levi, Gispan, Giladi & Fetaya (2019), "Evaluating and calibrating uncertainty prediction in
    regression tasks", arXiv:1905.11659. Laves, Ihler, Fast, Kahrs & Ortmaier (2020),
    "Well-calibrated regression uncertainty in medical imaging with deep learning", MIDL.
    """

    def __init__(self) -> None:
        self._scale: float | None = None

    def __repr__(self) -> str:
        fitted = "unfitted" if self._scale is None else f"scale={self._scale:.4g}"
        return f"StdScaling({fitted})"

    def _state(self) -> dict[str, Any] | None:
        return None if self._scale is None else {"scale": self._scale}

    def _restore(self, state: dict[str, Any]) -> None:
        value = float(state_array(state, "scale", ()))
        self._scale = check_float("scale in the saved state", value, low=0.0, low_inclusive=False)

    @property
    def scale(self) -> float:
        """The fitted factor ``s``; raises ``NotFittedError`` before :meth:`fit`."""
        if self._scale is None:
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                "This StdScaling is not fitted yet; call `fit(mean, std, y)` first."
            )
        return self._scale

    def fit(self, mean: ArrayLike, std: ArrayLike, y: ArrayLike) -> StdScaling:
        """Fit ``s`` in closed form on validation predictions.

        Parameters
        ----------
        mean : array-like or Tensor of shape (N, *S)
            Predictive means.
        std : array-like or Tensor of shape (N, *S)
            Predictive standard deviations, ``> 0``.
        y : array-like or Tensor of shape (N, *S)
            Targets (a trailing singleton dimension on either side is tolerated).

        Returns
        -------
        StdScaling
            ``self``, fitted.
        """
        y_arr = as_real("y", y)
        mean_arr = match_shape("mean", as_real("mean", mean), "y", y_arr)
        std_arr = match_shape("std", as_real("std", std), "y", y_arr)
        check_positive("std", std_arr)
        log_scale = _log_rms_ratio(y_arr, mean_arr, std_arr)
        if log_scale == -math.inf:
            raise ValueError(
                "Expected `y` to differ from `mean` somewhere, but every residual is zero; "
                "the scale would be 0."
            )
        if not _LOG_MIN_FLOAT < log_scale < _LOG_MAX_FLOAT:
            raise ValueError(
                f"Expected residuals `y - mean` on the scale of `std`, but the fitted scale "
                f"would be 10**{log_scale / math.log(10):.0f}, outside the range of float64; "
                "check that `std` is a standard deviation in the units of `y`."
            )
        self._scale = math.exp(log_scale)
        return self

    def transform(self, std: ArrayLike) -> np.ndarray:
        """Recalibrated standard deviation ``s * std``.

        Parameters
        ----------
        std : array-like or Tensor of shape (N, *S)
            Predictive standard deviations, ``>= 0``.

        Returns
        -------
        ndarray of shape (N, *S)
        """
        scale = self.scale
        std_arr = as_real("std", std)
        if float(std_arr.min()) < 0.0:
            raise ValueError(
                f"Expected `std` to be >= 0 everywhere, but got a value of {float(std_arr.min())}."
            )
        with np.errstate(over="ignore"):
            scaled = std_arr * scale
        if not np.all(np.isfinite(scaled)):
            raise ValueError(
                f"Expected `std` small enough to scale by {scale:.4g}, but the product overflows "
                f"float64 (largest std {float(std_arr.max()):.4g})."
            )
        return scaled


_LOG_MAX_FLOAT = math.log(float(np.finfo(np.float64).max))
_LOG_MIN_FLOAT = math.log(float(np.finfo(np.float64).tiny))


def _log_rms_ratio(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> float:
    """``log sqrt(mean(((y - mean) / std)^2))``, computed in logs: nothing overflows.

    ``-inf`` when every residual is zero.
    """
    with np.errstate(over="ignore", divide="ignore"):
        diff, log_factor = y - mean, 0.0
        if not np.all(np.isfinite(diff)):
            diff, log_factor = y / 2.0 - mean / 2.0, math.log(2.0)
        log_z = np.log(np.abs(diff)) + log_factor - np.log(std)
    top = float(np.max(log_z))
    if top == -math.inf:
        return top
    return top + 0.5 * math.log(float(np.mean(np.exp(2.0 * (log_z - top)))))
