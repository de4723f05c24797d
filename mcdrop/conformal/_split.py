"""Split-conformal prediction sets and intervals, and their coverage curve."""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from mcdrop._validation import (
    as_real,
    check_choice,
    check_classification,
    check_float,
    check_int,
    check_labels,
    match_shape,
)
from mcdrop.results import ClassificationResult, RegressionResult

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

__all__ = [
    "ConformalCoverageDisplay",
    "CoverageCurve",
    "SplitConformalClassifier",
    "SplitConformalRegressor",
    "conformal_quantile",
    "coverage_curve",
    "mean_set_size",
    "set_coverage",
]

_METHODS = ("lac", "aps", "raps")
_STDS = ("total", "epistemic")


# --------------------------------------------------------------------------------------------
# The quantile
# --------------------------------------------------------------------------------------------


def _check_alpha(alpha: Any) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float, np.floating)):
        raise TypeError(f"Expected `alpha` to be a number in (0, 1), but got {alpha!r}.")
    value = float(alpha)
    if not (0.0 < value < 1.0):
        raise ValueError(
            f"Expected `alpha` to be a number in (0, 1), but got {value}; e.g. alpha=0.1 asks "
            "for 90 % coverage."
        )
    return value


def _rank(n: int, alpha: float) -> int:
    """``ceil((n + 1)(1 - alpha))`` in exact rational arithmetic (no float rounding)."""
    return math.ceil((n + 1) * (1 - Fraction(alpha)))


def _min_calibration(alpha: float) -> int:
    """Smallest ``n`` with ``ceil((n + 1)(1 - alpha)) <= n``."""
    n = max(1, math.floor((1 - Fraction(alpha)) / Fraction(alpha)))
    while _rank(n, alpha) > n:
        n += 1
    return n


def conformal_quantile(scores: Any, alpha: float) -> float:
    """The split-conformal threshold: the ``ceil((n + 1)(1 - alpha))``-th smallest score.

    Parameters
    ----------
    scores : array-like or Tensor of shape (n,)
        Nonconformity scores of the calibration examples (finite).
    alpha : float
        Miscoverage level in (0, 1).

    Returns
    -------
    float
        ``np.quantile(scores, ceil((n + 1)(1 - alpha)) / n, method="inverted_cdf")``; note that
        ``method="higher"`` would give the next order statistic (needlessly conservative).

    Raises
    ------
    ValueError
        ``alpha`` outside (0, 1), or fewer calibration scores than ``alpha`` needs
        (``ceil((n + 1)(1 - alpha)) > n``).
    """
    alpha = _check_alpha(alpha)
    values = as_real("scores", scores, ndim=1)
    n = values.shape[0]
    k = _rank(n, alpha)
    if k > n:
        need = _min_calibration(alpha)
        raise ValueError(
            f"Expected at least {need} calibration examples for alpha={alpha}, but got {n}: "
            f"with n examples the guarantee needs the ceil((n + 1)(1 - alpha))-th smallest "
            f"score. Use more calibration examples or a larger `alpha` (at least "
            f"{1.0 / (n + 1):.4g} for {n} examples)."
        )
    return float(np.partition(values, k - 1)[k - 1])


# --------------------------------------------------------------------------------------------
# Classification
# --------------------------------------------------------------------------------------------


def _probabilities(name: str, value: Any) -> tuple[np.ndarray, Any]:
    """``(N, C)`` float64 probabilities and the targets stored on a result (or ``None``)."""
    if isinstance(value, ClassificationResult):
        if value.mean.ndim != 2 or value.class_dim not in (1, -1):
            raise ValueError(
                f"Expected `{name}` to be a ClassificationResult of shape (N, C), but got mean "
                f"of shape {tuple(value.mean.shape)}; flatten dense outputs to (N, C) first."
            )
        probs, targets = value.mean, value.targets
    else:
        probs, targets = value, None
    dummy = np.zeros(as_real(name, probs, ndim=2).shape[0], dtype=np.int64)
    _, checked = check_classification(dummy, probs, allow_1d=False)
    return checked, targets


def _labels(y: Any, stored: Any, n_classes: int, n: int) -> np.ndarray:
    if y is None:
        y = stored
    if y is None:
        raise ValueError("Expected `y` (or the result's `targets`) to hold labels, but got None.")
    return check_labels("y", y, n_classes, n)


def _class_scores(
    probs: np.ndarray,
    method: str,
    *,
    k_reg: int = 1,
    lambda_reg: float = 0.0,
    u: np.ndarray | None = None,
) -> np.ndarray:
    """Score of every candidate class, shape (N, C): a class is in the set iff score <= q."""
    if method == "lac":
        return 1.0 - probs
    order = np.argsort(-probs, axis=1, kind="stable")
    cumulative = np.cumsum(np.take_along_axis(probs, order, axis=1), axis=1)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.arange(probs.shape[1])[None, :], axis=1)
    scores = np.take_along_axis(cumulative, rank, axis=1)  # mass ranked at or above each class
    if u is not None:
        scores = scores - u[:, None] * probs
    if method == "raps":
        scores = scores + lambda_reg * np.maximum(0, rank + 1 - k_reg)
    return scores


def _members(
    scores: np.ndarray, probs: np.ndarray, quantile: float, *, include_last: bool
) -> np.ndarray:
    """Sets: score ``<= q``; with ``include_last`` also the class whose mass crosses ``q``."""
    inside = scores <= quantile
    if include_last:
        inside |= (scores - probs) < quantile
    return inside


class SplitConformalClassifier:
    """Prediction sets with coverage ``>= 1 - alpha`` from MC dropout probabilities.

    Parameters
    ----------
    alpha : float, default=0.1
        Miscoverage level in (0, 1): sets contain the true label with probability
        ``>= 1 - alpha``.
    method : {"lac", "aps", "raps"}, default="lac"
        Nonconformity score, see the module docstring.
    k_reg : int, default=1
        RAPS: classes ranked below ``k_reg`` are penalised (``>= 1``).
    lambda_reg : float, default=0.01
        RAPS: penalty per rank beyond ``k_reg`` (``>= 0``; 0 gives APS).
    randomized : bool, default=False
        APS/RAPS: randomised scores (exact coverage in expectation, smaller sets, may be
        empty); otherwise sets keep the class crossing the threshold and are never empty.
    seed : int, default=0
        Seed of the uniform draws of ``randomized=True`` (one stream for ``fit``, another for
        ``predict``); same inputs and seed give the same sets, call after call.

    Attributes
    ----------
    quantile_ : float
        The conformal threshold ``q``.
    scores_ : ndarray of shape (n,)
        Calibration scores of the true labels.
    n_calibration_ : int

    Examples
    --------
    >>> import numpy as np
    >>> from mcdrop.conformal import SplitConformalClassifier, set_coverage
    >>> rng = np.random.default_rng(0)
    >>> probs = rng.dirichlet(np.ones(4), size=500)
    >>> y = np.array([rng.choice(4, p=p) for p in probs])
    >>> conformal = SplitConformalClassifier(alpha=0.2).fit(probs[:250], y[:250])
    >>> sets = conformal.predict(probs[250:])
    >>> sets.shape
    torch.Size([250, 4])
    """

    def __init__(
        self,
        *,
        alpha: float = 0.1,
        method: str = "lac",
        k_reg: int = 1,
        lambda_reg: float = 0.01,
        randomized: bool = False,
        seed: int = 0,
    ) -> None:
        self.alpha = _check_alpha(alpha)
        self.method = check_choice("method", method, _METHODS)
        self.k_reg = check_int("k_reg", k_reg, minimum=1)
        self.lambda_reg = check_float("lambda_reg", lambda_reg, low=0.0)
        if not isinstance(randomized, bool):
            raise TypeError(f"Expected `randomized` to be a bool, but got {randomized!r}.")
        if randomized and method == "lac":
            raise ValueError("Expected `randomized=True` only with method 'aps' or 'raps'.")
        self.randomized = randomized
        self.seed = check_int("seed", seed, minimum=0)

    def __repr__(self) -> str:
        return f"SplitConformalClassifier(alpha={self.alpha}, method={self.method!r})"

    def _uniforms(self, n: int, stream: int) -> np.ndarray | None:
        if not self.randomized:
            return None
        return np.random.default_rng([self.seed, stream]).uniform(size=n)

    def scores(self, probs: Any, *, stream: int = 0) -> np.ndarray:
        """Score of every class for every example, shape (N, C) (``<= quantile_`` is in the set).

        Parameters
        ----------
        probs : ClassificationResult or array-like of shape (N, C)
            MC predictive probabilities.
        stream : int, default=0
            Random stream of the ``randomized`` uniforms.
        """
        values, _ = _probabilities("probs", probs)
        return _class_scores(
            values,
            self.method,
            k_reg=self.k_reg,
            lambda_reg=self.lambda_reg,
            u=self._uniforms(values.shape[0], stream),
        )

    def fit(self, calibration: Any, y: Any = None) -> SplitConformalClassifier:
        """Compute the threshold from held-out calibration predictions.

        Parameters
        ----------
        calibration : ClassificationResult or array-like of shape (n, C)
            MC dropout result (``result.mean`` is used) or probabilities of the calibration
            examples, never seen in training.
        y : array-like of shape (n,), optional
            Labels; ``calibration.targets`` when ``None``.

        Returns
        -------
        self
        """
        probs, stored = _probabilities("calibration", calibration)
        labels = _labels(y, stored, probs.shape[1], probs.shape[0])
        scores = self.scores(probs, stream=0)
        self.scores_ = scores[np.arange(labels.shape[0]), labels]
        self.quantile_ = conformal_quantile(self.scores_, self.alpha)
        self.n_calibration_ = int(labels.shape[0])
        self.n_classes_ = int(probs.shape[1])
        return self

    def predict(self, result: Any) -> torch.Tensor:
        """Prediction sets.

        Parameters
        ----------
        result : ClassificationResult or array-like of shape (N, C)
            MC dropout result or probabilities of the test examples.

        Returns
        -------
        Tensor of shape (N, C), bool
            ``sets[i, c]`` is True when class ``c`` is in the set of example ``i``.
        """
        if not hasattr(self, "quantile_"):
            raise ValueError("Expected a fitted SplitConformalClassifier: call `fit` first.")
        probs, _ = _probabilities("result", result)
        if probs.shape[1] != self.n_classes_:
            raise ValueError(
                f"Expected `result` with {self.n_classes_} classes like the calibration set, but "
                f"got {probs.shape[1]}."
            )
        scores = self.scores(probs, stream=1)
        include_last = self.method != "lac" and not self.randomized
        return torch.from_numpy(_members(scores, probs, self.quantile_, include_last=include_last))


def _sets(sets: Any) -> np.ndarray:
    array = sets.detach().cpu().numpy() if isinstance(sets, torch.Tensor) else np.asarray(sets)
    if array.ndim != 2 or array.dtype != np.bool_:
        raise ValueError(
            f"Expected `sets` to be a boolean array of shape (N, C), but got dtype "
            f"{array.dtype} and shape {array.shape}."
        )
    return array


def set_coverage(sets: Any, y: Any) -> float:
    """Fraction of examples whose prediction set contains the true label.

    Parameters
    ----------
    sets : bool Tensor or array of shape (N, C)
        From :meth:`SplitConformalClassifier.predict`.
    y : array-like of shape (N,)
        Integer labels.

    Returns
    -------
    float
        In ``[0, 1]``; at least ``1 - alpha`` on average over calibration/test splits.
    """
    array = _sets(sets)
    labels = _labels(y, None, array.shape[1], array.shape[0])
    return float(np.mean(array[np.arange(labels.shape[0]), labels]))


def mean_set_size(sets: Any) -> float:
    """Average number of classes per prediction set (lower is more informative)."""
    return float(np.mean(_sets(sets).sum(axis=1)))


# --------------------------------------------------------------------------------------------
# Regression
# --------------------------------------------------------------------------------------------


class SplitConformalRegressor:
    """Intervals ``mean -/+ q * std`` with joint coverage ``>= 1 - alpha``.

    Parameters
    ----------
    alpha : float, default=0.1
        Miscoverage level in (0, 1).
    std : {"total", "epistemic"}, default="total"
        Which MC predictive standard deviation normalises the residuals: total
        (``result.std``, epistemic + aleatoric) or epistemic only.

    Attributes
    ----------
    quantile_ : float
        Threshold ``q`` on the normalised residuals: the interval half-width in units of std.
    scores_ : ndarray of shape (n,)
    n_calibration_ : int

    Examples
    --------
    >>> import torch
    >>> from mcdrop import RegressionResult
    >>> from mcdrop.conformal import SplitConformalRegressor
    >>> g = torch.Generator().manual_seed(0)
    >>> mean, y = torch.zeros(200), torch.randn(200, generator=g)
    >>> result = RegressionResult(mean, torch.ones(200), torch.zeros(200), n_samples=30)
    >>> lower, upper = SplitConformalRegressor(alpha=0.1).fit(result, y).predict(result)
    >>> lower.shape
    torch.Size([200])
    """

    def __init__(self, *, alpha: float = 0.1, std: str = "total") -> None:
        self.alpha = _check_alpha(alpha)
        self.std = check_choice("std", std, _STDS)

    def __repr__(self) -> str:
        return f"SplitConformalRegressor(alpha={self.alpha}, std={self.std!r})"

    def _mean_std(self, name: str, result: Any) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(result, RegressionResult):
            raise TypeError(
                f"Expected `{name}` to be a RegressionResult, but got {type(result).__name__}."
            )
        var = result.variance if self.std == "total" else result.epistemic_variance
        mean = as_real(f"{name}.mean", result.mean)
        std = np.sqrt(as_real(f"{name}.variance", var))
        if np.any(std <= 0.0):
            raise ValueError(
                f"Expected `{name}` to have a predictive std > 0 everywhere, but some is 0: "
                "sample with more passes, pass `tau=` to predict_with_uncertainty for an "
                "aleatoric floor, or use std='total'."
            )
        return mean, std

    def scores(self, result: RegressionResult, y: Any = None) -> np.ndarray:
        """Normalised residual of each example, ``max over *S of |y - mean| / std``, shape (N,)."""
        mean, std = self._mean_std("result", result)
        target = result.targets if y is None else y
        if target is None:
            raise ValueError(
                "Expected `y` (or the result's `targets`) to hold targets, but got None."
            )
        y_arr = match_shape("y", as_real("y", target), "result.mean", mean)
        residual = np.abs(y_arr - mean) / std
        return residual.reshape(residual.shape[0], -1).max(axis=1)

    def fit(self, calibration: RegressionResult, y: Any = None) -> SplitConformalRegressor:
        """Compute the threshold from a held-out calibration result (targets: ``y`` or stored)."""
        self.scores_ = self.scores(calibration, y)
        self.quantile_ = conformal_quantile(self.scores_, self.alpha)
        self.n_calibration_ = int(self.scores_.shape[0])
        return self

    def predict(self, result: RegressionResult) -> tuple[torch.Tensor, torch.Tensor]:
        """Intervals of shape (N, *S): ``(mean - q * std, mean + q * std)`` as float64 tensors."""
        if not hasattr(self, "quantile_"):
            raise ValueError("Expected a fitted SplitConformalRegressor: call `fit` first.")
        mean, std = self._mean_std("result", result)
        half = self.quantile_ * std
        return torch.from_numpy(mean - half), torch.from_numpy(mean + half)


# --------------------------------------------------------------------------------------------
# Coverage curve and its display
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoverageCurve:
    """Empirical coverage and size against the nominal level ``1 - alpha``.

    Attributes
    ----------
    level : ndarray of shape (K,)
        Nominal coverage ``1 - alpha``.
    coverage : ndarray of shape (K,)
        Empirical coverage on the test examples.
    size : ndarray of shape (K,)
        Mean set size (classification) or mean interval width (regression).
    n_test : int
        Number of test examples (for the binomial error of ``coverage``).
    """

    level: np.ndarray
    coverage: np.ndarray
    size: np.ndarray
    n_test: int


def coverage_curve(
    conformal: SplitConformalClassifier | SplitConformalRegressor,
    calibration: Any,
    test: Any,
    *,
    y_calibration: Any = None,
    y_test: Any = None,
    alphas: Any = None,
) -> CoverageCurve:
    """Refit ``conformal`` at each ``alpha`` and measure coverage and size on ``test``.

    Parameters
    ----------
    conformal : SplitConformalClassifier or SplitConformalRegressor
        Its options (method, std, ...) are kept; ``alpha`` is varied on a copy.
    calibration, test : result (or probabilities for classification)
        Calibration and test predictions.
    y_calibration, y_test : array-like, optional
        Targets; the results' ``targets`` when ``None``.
    alphas : array-like of floats in (0, 1), optional
        Default: ``0.02, 0.04, ..., 0.5``.

    Returns
    -------
    CoverageCurve
    """
    from mcdrop.metrics import mean_interval_width

    grid = np.arange(1, 26) * 0.02 if alphas is None else np.asarray(alphas, dtype=float)
    # decreasing alpha: the levels 1 - alpha increase along the curve
    grid = np.sort(np.asarray([_check_alpha(float(a)) for a in grid.reshape(-1)]))[::-1]
    coverage, size = [], []
    for alpha in grid:
        fitted = _with_alpha(conformal, float(alpha)).fit(calibration, y_calibration)
        if isinstance(fitted, SplitConformalClassifier):
            sets = fitted.predict(test)
            _, stored = _probabilities("test", test)
            labels = _labels(y_test, stored, sets.shape[1], sets.shape[0])
            coverage.append(set_coverage(sets, labels))
            size.append(mean_set_size(sets))
            n_test = labels.shape[0]
        else:
            lower, upper = fitted.predict(test)
            target = test.targets if y_test is None else y_test
            y_arr = match_shape("y_test", as_real("y_test", target), "lower", lower.numpy())
            inside = (y_arr >= lower.numpy()) & (y_arr <= upper.numpy())
            coverage.append(float(np.mean(inside.reshape(inside.shape[0], -1).all(axis=1))))
            size.append(mean_interval_width(lower, upper))
            n_test = y_arr.shape[0]
    return CoverageCurve(1.0 - grid, np.asarray(coverage), np.asarray(size), int(n_test))


def _with_alpha(conformal: Any, alpha: float) -> Any:
    if isinstance(conformal, SplitConformalClassifier):
        return SplitConformalClassifier(
            alpha=alpha,
            method=conformal.method,
            k_reg=conformal.k_reg,
            lambda_reg=conformal.lambda_reg,
            randomized=conformal.randomized,
            seed=conformal.seed,
        )
    if isinstance(conformal, SplitConformalRegressor):
        return SplitConformalRegressor(alpha=alpha, std=conformal.std)
    raise TypeError(
        "Expected `conformal` to be a SplitConformalClassifier or SplitConformalRegressor, but "
        f"got {type(conformal).__name__}."
    )


class ConformalCoverageDisplay:
    """Empirical against nominal coverage of split-conformal prediction, with a binomial band.

    Points on or above the diagonal keep the promise; the band is the central 95 % range of the
    empirical coverage of ``n_test`` examples at exactly the nominal level.

    Parameters
    ----------
    curve : CoverageCurve
        From :func:`coverage_curve`.
    name : str or None, default=None
        Legend name.

    Attributes
    ----------
    line_ : matplotlib Line2D
    band_ : matplotlib PolyCollection
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure
    """

    def __init__(self, curve: CoverageCurve, *, name: str | None = None) -> None:
        self.curve = curve
        self.name = name

    def plot(
        self, *, ax: Axes | None = None, name: str | None = None, **kwargs: Any
    ) -> ConformalCoverageDisplay:
        """Draw coverage against ``1 - alpha`` on ``ax`` (a new figure when ``None``)."""
        import matplotlib.pyplot as plt
        from scipy.stats import binom

        if ax is None:
            _, ax = plt.subplots(figsize=(5.0, 4.2), layout="constrained")
        self.ax_, self.figure_ = ax, ax.figure
        curve = self.curve
        lo = binom.ppf(0.025, curve.n_test, curve.level) / curve.n_test
        hi = binom.ppf(0.975, curve.n_test, curve.level) / curve.n_test
        self.band_ = ax.fill_between(
            curve.level, lo, hi, color="0.85", label="95 % binomial range at the nominal level"
        )
        ax.plot([0, 1], [0, 1], color="0.4", linestyle=":", linewidth=1.0)
        label = name if name is not None else self.name
        style = {"marker": "o", "markersize": 3.5, "linewidth": 1.8, "label": label, **kwargs}
        (self.line_,) = ax.plot(curve.level, curve.coverage, **style)
        low = float(min(curve.level.min(), curve.coverage.min())) - 0.02
        ax.set(
            xlabel="Nominal coverage 1 − α",
            ylabel="Empirical coverage",
            xlim=(low, 1.0),
            ylim=(low, 1.0),
        )
        if not ax.get_title():
            ax.set_title("Split-conformal coverage")
        ax.legend(loc="lower right", fontsize="small")
        return self

    @classmethod
    def from_results(
        cls,
        conformal: SplitConformalClassifier | SplitConformalRegressor,
        calibration: Any,
        test: Any,
        *,
        y_calibration: Any = None,
        y_test: Any = None,
        alphas: Any = None,
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> ConformalCoverageDisplay:
        """Compute :func:`coverage_curve` and plot it (arguments as there)."""
        curve = coverage_curve(
            conformal,
            calibration,
            test,
            y_calibration=y_calibration,
            y_test=y_test,
            alphas=alphas,
        )
        return cls(curve, name=name).plot(ax=ax, **kwargs)
