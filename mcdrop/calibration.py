"""Post-hoc recalibration: temperature scaling (classification) and std scaling (regression).

Both recalibrators follow the scikit-learn pattern ``fit(...) -> self`` then ``transform(...)``,
accept NumPy arrays or :class:`torch.Tensor` objects, compute in ``float64`` NumPy and raise
:class:`sklearn.exceptions.NotFittedError` (a ``ValueError`` and ``AttributeError``) when used
before ``fit``. Fit them on held-out validation data, never on the test set.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy.special import log_softmax, softmax

from mcdrop._validation import (
    as_real,
    check_choice,
    check_float,
    check_labels,
    check_positive,
    check_probs,
    match_shape,
    to_array,
)
from mcdrop.metrics import ArrayLike

__all__ = ["StdScaling", "TemperatureScaling"]

_INPUTS = ("logits", "probs", "log_probs")


class TemperatureScaling:
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
        """The ``(N, C)`` float64 scores that the temperature divides."""
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

        def nll(log_t: float) -> float:
            log_p = log_softmax(scores * math.exp(-log_t), axis=1)
            return float(-np.mean(log_p[rows, labels]))

        low, high = math.log(self.bounds[0]), math.log(self.bounds[1])
        from scipy.optimize import minimize_scalar

        solution = minimize_scalar(
            nll, bounds=(low, high), method="bounded", options={"xatol": 1e-7}
        )
        log_t = float(solution.x)
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
        logits : array-like or Tensor of shape (N, C)
            Outputs of the kind given by ``inputs``.

        Returns
        -------
        ndarray of shape (N, C)
            Probabilities (``float64``).
        """
        temperature = self.temperature
        scores = self._scores("logits", logits)
        return np.asarray(softmax(scores / temperature, axis=1), dtype=np.float64)

    def fit_transform(self, logits: ArrayLike, y: ArrayLike) -> np.ndarray:
        """:meth:`fit` then :meth:`transform` on the same data."""
        return self.fit(logits, y).transform(logits)


def _to_2d(name: str, value: Any, *, allow_neg_inf: bool) -> np.ndarray:
    """A ``(N, C)`` float64 array without NaN (and without infinities unless ``-inf`` allowed)."""
    array = to_array(name, value)
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


class StdScaling:
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
        scale = math.sqrt(float(np.mean(((y_arr - mean_arr) / std_arr) ** 2)))
        if scale == 0.0:
            raise ValueError(
                "Expected `y` to differ from `mean` somewhere, but every residual is zero; "
                "the scale would be 0."
            )
        self._scale = scale
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
        return std_arr * scale
