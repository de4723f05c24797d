"""Plots of Monte Carlo dropout uncertainty, following scikit-learn's Display pattern.

Every display is built in two steps, as :class:`sklearn.calibration.CalibrationDisplay`:

1. a class method (``from_predictions``, ``from_result``, ``from_scores`` or ``from_samples``)
   computes the plotted quantities with the functions of :mod:`mcdrop.metrics` and stores them
   as attributes of the display;
2. :meth:`plot` draws them on the given Matplotlib axes (or on a new figure), keeps the drawn
   artists (``line_``, ``bars_``, ...), the axes ``ax_`` and the figure ``figure_``, and
   returns the display.

The class methods call :meth:`plot` themselves, so ``Display.from_predictions(...)`` gives a
finished figure; call ``display.plot(ax=ax)`` again to redraw the stored data elsewhere. Pass the
same ``ax`` to several displays to compare models on one axes: each plot adds its own labelled
artists and refreshes the legend.

Matplotlib is imported only when something is drawn (``import mcdrop.plot`` does not import it),
and nothing here calls ``plt.show()``.

Displays
--------
* :class:`ReliabilityDisplay` – reliability diagram with gap bars and a confidence histogram;
  :func:`plot_reliability_comparison` overlays several models.
* :class:`AccuracyRejectionDisplay` – accuracy on the retained examples against the fraction
  rejected as most uncertain.
* :class:`OODHistogramDisplay`, :class:`OODRocDisplay` – uncertainty scores of in- and
  out-of-distribution inputs: histograms and ROC curve.
* :class:`RegressionCalibrationDisplay` – expected against observed coverage of central
  predictive intervals.
* :class:`PredictiveBandsDisplay` – 1-D regression: mean with epistemic and total bands.
* :class:`ResidualStdDisplay` – absolute residuals against the predicted standard deviation.
* :class:`ConvergenceDisplay` – a metric, or the Monte Carlo standard error, against the
  number of samples ``T``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mcdrop._validation import check_choice, check_float, check_int
from mcdrop.metrics import (
    ReliabilityCurve,
    accuracy_rejection_curve,
    aurc,
    expected_calibration_error,
    interval_calibration_curve,
    miscalibration_area,
    negative_log_likelihood,
    ood_auroc,
    reliability_curve,
    rmse,
)
from mcdrop.metrics import accuracy as _accuracy

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from mcdrop.results import ClassificationResult, RegressionResult

__all__ = [
    "AccuracyRejectionDisplay",
    "ConvergenceDisplay",
    "OODHistogramDisplay",
    "OODRocDisplay",
    "PredictiveBandsDisplay",
    "RegressionCalibrationDisplay",
    "ReliabilityDisplay",
    "ResidualStdDisplay",
    "plot_reliability_comparison",
]

ArrayLike = Any  # numpy array, torch tensor or nested sequence

# --------------------------------------------------------------------------------------------
# private helpers
# --------------------------------------------------------------------------------------------

_ALIASES = {
    "c": "color",
    "ls": "linestyle",
    "lw": "linewidth",
    "ec": "edgecolor",
    "fc": "facecolor",
    "ms": "markersize",
    "mec": "markeredgecolor",
    "mfc": "markerfacecolor",
    "mew": "markeredgewidth",
    "aa": "antialiased",
}

_REF_COLOR = "0.35"

#: Classification uncertainty scores: result attribute and axis label; "higher = more uncertain".
_CLASSIFICATION_SCORES = {
    "predictive_entropy": "Predictive entropy (nats)",
    "mutual_information": "Mutual information (nats)",
    "expected_entropy": "Expected entropy (nats)",
    "variation_ratio": "Variation ratio",
    "confidence": "1 − confidence",
    "margin": "1 − margin",
}
_REGRESSION_SCORES = {
    "std": "Predictive standard deviation",
    "variance": "Predictive variance",
    "epistemic_variance": "Epistemic variance",
    "aleatoric_variance": "Aleatoric variance",
}


def _to_numpy(value: ArrayLike, dtype: Any = None) -> np.ndarray:
    """Array of ``value`` (numpy, torch tensor on any device, or sequence)."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype)


def _style(defaults: Mapping[str, Any], user: Mapping[str, Any]) -> dict[str, Any]:
    """Merge user style keywords over defaults, resolving Matplotlib aliases (``c``, ``ls``...).

    A user alias replaces the default under its full name, so ``c="red"`` overrides a default
    ``color`` instead of making Matplotlib complain about both being given.
    """
    out = dict(defaults)
    for key, value in user.items():
        full = _ALIASES.get(key, key)
        if full != key and full in user:
            raise TypeError(
                f"Expected only one of `{key}` and `{full}` (aliases), but got both."
            )
        out[full] = value
    return out


def _get_axes(ax: Axes | None, **subplots: Any) -> tuple[Axes, Figure]:
    """The given axes and its figure, or a new figure with one axes (imports pyplot lazily)."""
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(**subplots)
    return ax, ax.figure  # type: ignore[return-value]


def _legend_labels(ax: Axes) -> list[str]:
    return list(ax.get_legend_handles_labels()[1])


def _once(ax: Axes, label: str) -> str:
    """``label`` the first time it appears on ``ax``; a hidden label afterwards."""
    return label if label not in _legend_labels(ax) else f"_{label}"


def _default_title(ax: Axes, title: str) -> None:
    if not ax.get_title():
        ax.set_title(title)


def _labelled(name: str | None, value_text: str | None) -> str | None:
    """``"name (ECE = 0.042)"``, ``"name"``, ``"ECE = 0.042"`` or ``None``."""
    if name and value_text:
        return f"{name} ({value_text})"
    return name or value_text


def _targets(result: Any, y_true: ArrayLike | None, argument: str = "y_true") -> ArrayLike:
    if y_true is not None:
        return y_true
    if getattr(result, "targets", None) is not None:
        return result.targets
    raise ValueError(
        f"Expected `{argument}` to be given when `result.targets` is None, but got None. "
        "Pass the labels, or predict on (inputs, targets) batches so the result keeps them."
    )


def _check_result(result: Any, task: str, argument: str = "result") -> None:
    if getattr(result, "task", None) != task:
        expected = "ClassificationResult" if task == "classification" else "RegressionResult"
        raise TypeError(
            f"Expected `{argument}` to be a {expected}, but got {type(result).__name__}."
        )


def _flatten_classification(
    result: ClassificationResult, y_true: ArrayLike | None
) -> tuple[np.ndarray | None, np.ndarray]:
    """Targets ``(M,)`` and probabilities ``(M, C)`` with the class dimension moved last."""
    _check_result(result, "classification")
    probs = _to_numpy(result.mean, float)
    probs = np.moveaxis(probs, result.class_dim, -1).reshape(-1, probs.shape[result.class_dim])
    labels = None
    if y_true is not None:
        labels = _to_numpy(y_true).reshape(-1)
        if labels.shape[0] != probs.shape[0]:
            raise ValueError(
                f"Expected `y_true` to hold {probs.shape[0]} labels (one per example and "
                f"position of `result.mean`), but got {labels.shape[0]}."
            )
    return labels, probs


def _classification_score(result: ClassificationResult, score: str) -> tuple[np.ndarray, str]:
    """Flattened uncertainty score named ``score`` (higher = more uncertain) and its label."""
    _check_result(result, "classification")
    score = check_choice("score", score, _CLASSIFICATION_SCORES)
    values = _to_numpy(getattr(result, score), float)
    if score in ("confidence", "margin"):
        values = 1.0 - values
    return values.reshape(-1), _CLASSIFICATION_SCORES[score]


def _result_score(result: Any, score: str | None) -> tuple[np.ndarray, str]:
    task = getattr(result, "task", None)
    if task == "classification":
        return _classification_score(result, score or "mutual_information")
    if task == "regression":
        score = check_choice("score", score or "std", _REGRESSION_SCORES)
        return _to_numpy(getattr(result, score), float).reshape(-1), _REGRESSION_SCORES[score]
    raise TypeError(
        f"Expected `result` to be a ClassificationResult or RegressionResult, but got "
        f"{type(result).__name__}."
    )


def _regression_arrays(
    result: RegressionResult, y_true: ArrayLike | None, kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flattened ``y``, ``mean`` and ``std`` (total or epistemic) of a regression result."""
    _check_result(result, "regression")
    kind = check_choice("kind", kind, ["total", "epistemic"])
    y = _to_numpy(_targets(result, y_true), float).reshape(-1)
    mean = _to_numpy(result.mean, float).reshape(-1)
    var = result.variance if kind == "total" else result.epistemic_variance
    std = np.sqrt(_to_numpy(var, float)).reshape(-1)
    if y.shape != mean.shape:
        raise ValueError(
            f"Expected `y_true` to hold {mean.shape[0]} values like `result.mean`, but got "
            f"{y.shape[0]}."
        )
    return y, mean, std


def _top_label_predictions(y_prob: np.ndarray) -> np.ndarray:
    """Predicted class of ``(N, C)`` probabilities, or of ``(N,)`` positive-class ones."""
    if y_prob.ndim == 1:  # argmax of [1 - p, p]: a tie at 0.5 predicts class 0
        return (y_prob > 0.5).astype(np.int64)
    return y_prob.argmax(axis=-1)


def _max_probability(y_prob: np.ndarray) -> np.ndarray:
    if y_prob.ndim == 1:
        return np.maximum(y_prob, 1.0 - y_prob)
    return y_prob.max(axis=-1)


def _check_probabilities(y_prob: ArrayLike, argument: str = "y_prob") -> np.ndarray:
    probs = _to_numpy(y_prob, float)
    if probs.ndim not in (1, 2):
        raise ValueError(
            f"Expected `{argument}` of shape (N, C) or (N,), but got shape {probs.shape}."
        )
    return probs


# --------------------------------------------------------------------------------------------
# classification: reliability diagram
# --------------------------------------------------------------------------------------------


class ReliabilityDisplay:
    """Reliability diagram: accuracy against confidence per bin, with gap bars and a histogram.

    Build it with :meth:`from_predictions` or :meth:`from_result`; all parameters are stored as
    attributes. The default drawing follows Guo et al. (2017): one bar per non-empty bin up to
    the accuracy of that bin, a hatched red "gap" bar between accuracy and mean confidence, the
    diagonal of perfect calibration, and underneath the fraction of examples per bin.

    Parameters
    ----------
    curve : ReliabilityCurve
        Output of :func:`mcdrop.metrics.reliability_curve`.
    ece : float or None, default=None
        Expected calibration error, shown in the legend.
    name : str or None, default=None
        Name of the model for the legend.
    binary : bool, default=False
        Whether the curve is of positive-class probabilities of a binary problem (axes read
        "Predicted probability" / "Fraction of positives") rather than top-label confidences
        ("Confidence" / "Accuracy").

    Attributes
    ----------
    confidence, accuracy : ndarray of shape (n_bins,)
        Mean confidence and accuracy per bin, NaN for empty bins.
    count : ndarray of shape (n_bins,)
        Number of examples per bin.
    edges : ndarray of shape (n_bins + 1,)
        Bin edges.
    bars_ : matplotlib BarContainer or None
        Accuracy bars of the non-empty bins (``kind="bars"``).
    gap_bars_ : matplotlib BarContainer or None
        Gap bars between accuracy and confidence (``kind="bars"`` and ``gaps=True``).
    line_ : matplotlib Line2D or None
        Accuracy against confidence (``kind="line"``).
    ref_line_ : matplotlib Line2D or None
        Diagonal, ``None`` when not drawn (or already on the axes).
    hist_ : matplotlib StepPatch or None
        Histogram of the fraction of examples per bin.
    ax_ : matplotlib Axes
        Axes of the reliability diagram.
    hist_ax_ : matplotlib Axes or None
        Axes of the histogram.
    figure_ : matplotlib Figure
        Figure holding the axes.

    See Also
    --------
    plot_reliability_comparison : Several models on one figure.
    mcdrop.metrics.reliability_curve : The binned statistics drawn here.

    Examples
    --------
    >>> import numpy as np
    >>> from mcdrop.plot import ReliabilityDisplay
    >>> rng = np.random.default_rng(0)
    >>> probs = rng.dirichlet(np.ones(3), size=500)
    >>> labels = rng.integers(0, 3, size=500)
    >>> display = ReliabilityDisplay.from_predictions(labels, probs, n_bins=10, name="model")
    >>> display.ax_.get_ylabel()
    'Accuracy'
    """

    def __init__(
        self,
        curve: ReliabilityCurve,
        *,
        ece: float | None = None,
        name: str | None = None,
        binary: bool = False,
    ) -> None:
        self.curve = curve
        self.confidence = np.asarray(curve.confidence, dtype=float)
        self.accuracy = np.asarray(curve.accuracy, dtype=float)
        self.count = np.asarray(curve.count)
        self.edges = np.asarray(curve.edges, dtype=float)
        self.ece = ece
        self.name = name
        self.binary = binary

    def plot(
        self,
        *,
        ax: Axes | None = None,
        name: str | None = None,
        kind: str = "bars",
        gaps: bool = True,
        ref_line: bool = True,
        histogram: bool | None = None,
        hist_ax: Axes | None = None,
        **kwargs: Any,
    ) -> ReliabilityDisplay:
        """Draw the reliability diagram.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Axes to draw on; a new figure when ``None``.
        name : str or None, default=None
            Legend name; ``self.name`` when ``None``. The ECE is appended.
        kind : {"bars", "line"}, default="bars"
            Bars per bin (one model), or a line with markers through (confidence, accuracy) of
            the non-empty bins, which overlays well when several models share the axes.
        gaps : bool, default=True
            Draw the gap between accuracy and confidence as hatched red bars (``kind="bars"``).
        ref_line : bool, default=True
            Draw the diagonal of perfect calibration (once per axes).
        histogram : bool or None, default=None
            Draw the fraction of examples per bin on a second axes below. ``None`` draws it
            when ``ax`` is ``None`` or ``hist_ax`` is given, so ``plot(ax=ax)`` draws on ``ax``
            only. With ``histogram=True``, a given ``ax`` and no ``hist_ax``, the histogram axes
            is carved out of the bottom of ``ax``.
        hist_ax : matplotlib Axes or None, default=None
            Axes for the histogram; pass ``display.hist_ax_`` of an earlier plot to stack the
            histograms of several models.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.bar` (``kind="bars"``) or
            :meth:`matplotlib.axes.Axes.plot` (``kind="line"``), e.g. ``color``.

        Returns
        -------
        display : ReliabilityDisplay
            ``self``, with the artists, ``ax_``, ``hist_ax_`` and ``figure_`` set.
        """
        kind = check_choice("kind", kind, ["bars", "line"])
        if histogram is None:
            histogram = ax is None or hist_ax is not None
        if ax is None:
            ax, hist_ax = self._new_axes(histogram)
        elif histogram and hist_ax is None:
            from mpl_toolkits.axes_grid1 import make_axes_locatable

            hist_ax = make_axes_locatable(ax).append_axes("bottom", size="30%", pad=0.12,
                                                          sharex=ax)
        self.ax_, self.figure_ = ax, ax.figure
        self.hist_ax_ = hist_ax if histogram else None
        name = self.name if name is None else name
        label = _labelled(name, None if self.ece is None else f"ECE = {self.ece:.3f}")

        nonempty = (self.count > 0) & np.isfinite(self.accuracy) & np.isfinite(self.confidence)
        left, width = self.edges[:-1][nonempty], np.diff(self.edges)[nonempty]
        accuracy, confidence = self.accuracy[nonempty], self.confidence[nonempty]

        self.ref_line_ = None
        if ref_line and "Perfectly calibrated" not in _legend_labels(ax):
            (self.ref_line_,) = ax.plot([0, 1], [0, 1], linestyle="--", color=_REF_COLOR,
                                        linewidth=1.2, label="Perfectly calibrated", zorder=3)
        self.bars_ = self.gap_bars_ = self.line_ = None
        if kind == "bars":
            style = _style({"edgecolor": "black", "linewidth": 0.6, "alpha": 0.9,
                            "label": label, "zorder": 2}, kwargs)
            self.bars_ = ax.bar(left, accuracy, width=width, align="edge", **style)
            color: Any = self.bars_.patches[0].get_facecolor() if len(accuracy) else "C0"
            if gaps:
                self.gap_bars_ = ax.bar(
                    left, np.abs(confidence - accuracy), width=width,
                    bottom=np.minimum(confidence, accuracy), align="edge", facecolor="none",
                    edgecolor="red", hatch="//", linewidth=0.8,
                    label=_once(ax, "Gap"), zorder=2.5,
                )
        else:
            style = _style({"marker": "o", "markersize": 5, "linewidth": 1.8, "label": label,
                            "zorder": 4}, kwargs)
            (self.line_,) = ax.plot(confidence, accuracy, **style)
            color = self.line_.get_color()

        xlabel, ylabel = (("Mean predicted probability", "Fraction of positives") if self.binary
                          else ("Confidence", "Accuracy"))
        ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.0), ylabel=ylabel)
        _default_title(ax, "Reliability diagram")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left")

        self.hist_ = None
        if histogram and hist_ax is not None:
            total = max(int(self.count.sum()), 1)
            filled = kind == "bars"
            self.hist_ = hist_ax.stairs(
                self.count / total, self.edges, fill=filled, color=color,
                alpha=0.6 if filled else 1.0, linewidth=1.5, label=label,
            )
            hist_ax.set(xlim=(0.0, 1.0), xlabel=xlabel, ylabel="Fraction\nof samples")
            if hist_ax.get_yscale() == "linear":
                hist_ax.set_ylim(bottom=0.0)
            ax.set_xlabel("")
            ax.tick_params(labelbottom=False)
        else:
            ax.set_xlabel(xlabel)
        return self

    @staticmethod
    def _new_axes(histogram: bool) -> tuple[Axes, Axes | None]:
        import matplotlib.pyplot as plt

        if not histogram:
            _, ax = plt.subplots(figsize=(5.0, 5.0), layout="constrained")
            return ax, None
        fig = plt.figure(figsize=(5.0, 6.2), layout="constrained")
        grid = fig.add_gridspec(2, 1, height_ratios=(3.2, 1.0))
        ax = fig.add_subplot(grid[0])
        return ax, fig.add_subplot(grid[1], sharex=ax)

    @classmethod
    def from_predictions(
        cls,
        y_true: ArrayLike,
        y_prob: ArrayLike,
        *,
        n_bins: int = 15,
        strategy: str = "uniform",
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> ReliabilityDisplay:
        """Compute the reliability curve of predictions and plot it.

        Parameters
        ----------
        y_true : array-like or Tensor of shape (N,)
            Integer labels (0/1 for binary ``y_prob``).
        y_prob : array-like or Tensor of shape (N, C) or (N,)
            Predictive probabilities: top-label confidence is binned for ``(N, C)``; ``(N,)``
            holds positive-class probabilities of a binary problem.
        n_bins : int, default=15
            Number of bins.
        strategy : {"uniform", "quantile"}, default="uniform"
            Equal-width bins, or bins holding equal numbers of examples.
        name : str or None, default=None
            Legend name of the model.
        ax : matplotlib Axes or None, default=None
            Axes to draw on; a new figure when ``None``.
        **kwargs : dict
            Passed to :meth:`plot` (``kind``, ``gaps``, ``ref_line``, ``histogram``,
            ``hist_ax``, Matplotlib style keywords).

        Returns
        -------
        display : ReliabilityDisplay

        Examples
        --------
        >>> import numpy as np
        >>> from mcdrop.plot import ReliabilityDisplay
        >>> rng = np.random.default_rng(0)
        >>> p = rng.uniform(size=200)
        >>> y = (rng.uniform(size=200) < p).astype(int)
        >>> display = ReliabilityDisplay.from_predictions(y, p, n_bins=5)
        >>> display.binary
        True
        """
        probs = _check_probabilities(y_prob)
        labels = _to_numpy(y_true)
        curve = reliability_curve(labels, probs, n_bins=n_bins, strategy=strategy)
        ece = expected_calibration_error(labels, probs, n_bins=n_bins, strategy=strategy)
        display = cls(curve, ece=float(ece), name=name, binary=probs.ndim == 1)
        return display.plot(ax=ax, **kwargs)

    @classmethod
    def from_result(
        cls,
        result: ClassificationResult,
        y_true: ArrayLike | None = None,
        *,
        n_bins: int = 15,
        strategy: str = "uniform",
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> ReliabilityDisplay:
        """Reliability diagram of the MC dropout predictive probabilities ``result.mean``.

        Parameters
        ----------
        result : ClassificationResult
            Output of :func:`mcdrop.predict_with_uncertainty`. Dense outputs ``(N, C, *S)``
            are flattened to one prediction per position.
        y_true : array-like or Tensor of shape (N, *S) or None, default=None
            Labels; ``result.targets`` when ``None``.
        n_bins, strategy, name, ax, **kwargs
            As in :meth:`from_predictions`.

        Returns
        -------
        display : ReliabilityDisplay

        Raises
        ------
        ValueError
            When ``y_true`` is ``None`` and the result holds no targets.
        """
        labels, probs = _flatten_classification(result, _targets(result, y_true))
        return cls.from_predictions(labels, probs, n_bins=n_bins, strategy=strategy, name=name,
                                    ax=ax, **kwargs)


def plot_reliability_comparison(
    predictions: Mapping[str, Any],
    y_true: ArrayLike | None = None,
    *,
    n_bins: int = 15,
    strategy: str = "uniform",
    ax: Axes | None = None,
    histogram: bool | None = None,
    hist_ax: Axes | None = None,
) -> dict[str, ReliabilityDisplay]:
    """Reliability curves of several models on one figure (lines, shared histogram below).

    Parameters
    ----------
    predictions : mapping of str to array-like, Tensor or ClassificationResult
        Model name to ``(N, C)`` / ``(N,)`` probabilities, or to a result (its ``mean``), e.g.
        ``{"deterministic": probs, "MC dropout": result, "temperature-scaled": probs_t}``.
    y_true : array-like or Tensor of shape (N,) or None, default=None
        Labels; may be ``None`` when every value is a result holding targets.
    n_bins : int, default=15
        Number of bins.
    strategy : {"uniform", "quantile"}, default="uniform"
        Binning strategy.
    ax : matplotlib Axes or None, default=None
        Axes for the curves; a new figure when ``None``.
    histogram : bool or None, default=None
        Draw the per-bin fractions of every model on an axes below; as in
        :meth:`ReliabilityDisplay.plot`.
    hist_ax : matplotlib Axes or None, default=None
        Axes for the histograms.

    Returns
    -------
    displays : dict of str to ReliabilityDisplay
        One display per model, in the order given, all drawn on the same axes.

    Examples
    --------
    >>> import numpy as np
    >>> from mcdrop.plot import plot_reliability_comparison
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 3, size=300)
    >>> sharp = np.eye(3)[rng.integers(0, 3, size=300)] * 0.9 + 0.1 / 3
    >>> displays = plot_reliability_comparison({"a": sharp, "b": np.full((300, 3), 1 / 3)}, y)
    >>> list(displays)
    ['a', 'b']
    """
    if not isinstance(predictions, Mapping) or not predictions:
        raise ValueError(
            "Expected `predictions` to be a non-empty mapping of model name to probabilities, "
            f"but got {type(predictions).__name__}."
        )
    displays: dict[str, ReliabilityDisplay] = {}
    for name, value in predictions.items():
        options: dict[str, Any] = {"n_bins": n_bins, "strategy": strategy, "name": str(name),
                                   "ax": ax, "kind": "line", "histogram": histogram,
                                   "hist_ax": hist_ax}
        if getattr(value, "task", None) == "classification":
            display = ReliabilityDisplay.from_result(value, y_true, **options)
        else:
            if y_true is None:
                raise ValueError(
                    f"Expected `y_true` to be given for the probabilities of {name!r}, but got "
                    "None."
                )
            display = ReliabilityDisplay.from_predictions(y_true, value, **options)
        displays[str(name)] = display
        ax, hist_ax = display.ax_, display.hist_ax_
        histogram = hist_ax is not None
    return displays


# --------------------------------------------------------------------------------------------
# classification: accuracy-rejection curve
# --------------------------------------------------------------------------------------------


class AccuracyRejectionDisplay:
    """Accuracy on the retained examples against the fraction rejected as most uncertain.

    A useful uncertainty makes the curve climb: rejecting the most uncertain examples first
    removes errors first. The horizontal line of random rejection (the overall accuracy) and the
    oracle curve (errors rejected first) bracket it.

    Parameters
    ----------
    rejection_fraction : ndarray of shape (K,)
        Fractions of examples rejected, from :func:`mcdrop.metrics.accuracy_rejection_curve`.
    accuracy : ndarray of shape (K,)
        Accuracy on the retained examples.
    aurc : float or None, default=None
        Area under the risk-coverage curve (lower is better), shown in the legend.
    name : str or None, default=None
        Legend name (model or uncertainty score).
    oracle_rejection_fraction, oracle_accuracy : ndarray of shape (K',) or None, default=None
        Curve of the oracle that rejects the errors first.

    Attributes
    ----------
    base_accuracy : float
        Accuracy without rejection: the random-rejection baseline.
    line_ : matplotlib Line2D
        The curve.
    random_line_ : matplotlib Line2D or None
        Random-rejection baseline.
    oracle_line_ : matplotlib Line2D or None
        Oracle curve.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from mcdrop.plot import AccuracyRejectionDisplay
    >>> rng = np.random.default_rng(0)
    >>> probs = rng.dirichlet(np.ones(4), size=400)
    >>> y = rng.integers(0, 4, size=400)
    >>> display = AccuracyRejectionDisplay.from_predictions(y, probs, name="max prob")
    >>> display.ax_.get_xlabel()
    'Fraction of samples rejected'
    """

    def __init__(
        self,
        rejection_fraction: np.ndarray,
        accuracy: np.ndarray,
        *,
        aurc: float | None = None,
        name: str | None = None,
        oracle_rejection_fraction: np.ndarray | None = None,
        oracle_accuracy: np.ndarray | None = None,
    ) -> None:
        self.rejection_fraction = np.asarray(rejection_fraction, dtype=float)
        self.accuracy = np.asarray(accuracy, dtype=float)
        self.aurc = aurc
        self.name = name
        self.oracle_rejection_fraction = oracle_rejection_fraction
        self.oracle_accuracy = oracle_accuracy
        finite = np.isfinite(self.accuracy)
        first = np.argmin(np.where(finite, self.rejection_fraction, np.inf))
        self.base_accuracy = float(self.accuracy[first]) if finite.any() else math.nan

    def plot(
        self,
        *,
        ax: Axes | None = None,
        name: str | None = None,
        random_line: bool = True,
        oracle: bool = True,
        **kwargs: Any,
    ) -> AccuracyRejectionDisplay:
        """Draw the accuracy-rejection curve.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Axes to draw on; a new figure when ``None``.
        name : str or None, default=None
            Legend name; ``self.name`` when ``None``. The AURC is appended.
        random_line : bool, default=True
            Draw the accuracy of random rejection (a horizontal line at ``base_accuracy``).
        oracle : bool, default=True
            Draw the oracle curve, when it was computed.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot` for the curve.

        Returns
        -------
        display : AccuracyRejectionDisplay
        """
        ax, self.figure_ = _get_axes(ax, figsize=(5.5, 4.2), layout="constrained")
        self.ax_ = ax
        name = self.name if name is None else name
        label = _labelled(name, None if self.aurc is None else f"AURC = {self.aurc:.3f}")
        self.random_line_ = self.oracle_line_ = None
        if random_line and math.isfinite(self.base_accuracy):
            self.random_line_ = ax.axhline(self.base_accuracy, color=_REF_COLOR, linestyle=":",
                                           linewidth=1.2, label=_once(ax, "Random rejection"))
        if (oracle and self.oracle_accuracy is not None
                and self.oracle_rejection_fraction is not None):
            (self.oracle_line_,) = ax.plot(self.oracle_rejection_fraction, self.oracle_accuracy,
                                           color=_REF_COLOR, linestyle="--", linewidth=1.2,
                                           label=_once(ax, "Oracle"), zorder=2)
        style = _style({"linewidth": 2.0, "label": label, "zorder": 3}, kwargs)
        (self.line_,) = ax.plot(self.rejection_fraction, self.accuracy, **style)
        ax.set(xlabel="Fraction of samples rejected", ylabel="Accuracy on retained samples",
               xlim=(0.0, 1.0))
        _default_title(ax, "Accuracy–rejection curve")
        ax.legend(loc="lower right", fontsize="small")
        return self

    @classmethod
    def from_predictions(
        cls,
        y_true: ArrayLike,
        y_prob: ArrayLike,
        *,
        scores: ArrayLike | None = None,
        name: str | None = None,
        oracle: bool = True,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> AccuracyRejectionDisplay:
        """Compute the accuracy-rejection curve of predictions and plot it.

        Parameters
        ----------
        y_true : array-like or Tensor of shape (N,)
            Integer labels.
        y_prob : array-like or Tensor of shape (N, C) or (N,)
            Predictive probabilities (``(N,)``: positive class of a binary problem).
        scores : array-like or Tensor of shape (N,) or None, default=None
            Uncertainty per example, higher rejected first; ``1 - max probability`` when
            ``None``.
        name : str or None, default=None
            Legend name.
        oracle : bool, default=True
            Also compute (and draw) the curve of an oracle rejecting errors first.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        **kwargs : dict
            Passed to :meth:`plot`.

        Returns
        -------
        display : AccuracyRejectionDisplay
        """
        probs = _check_probabilities(y_prob)
        labels = _to_numpy(y_true)
        score = 1.0 - _max_probability(probs) if scores is None else _to_numpy(scores, float)
        fraction, accuracy = accuracy_rejection_curve(labels, probs, score)
        area = float(aurc(labels, probs, score))
        oracle_fraction = oracle_accuracy = None
        if oracle:
            errors = (_top_label_predictions(probs) != labels.reshape(-1)).astype(float)
            oracle_fraction, oracle_accuracy = accuracy_rejection_curve(labels, probs, errors)
        display = cls(fraction, accuracy, aurc=area, name=name,
                      oracle_rejection_fraction=oracle_fraction, oracle_accuracy=oracle_accuracy)
        return display.plot(ax=ax, **kwargs)

    @classmethod
    def from_result(
        cls,
        result: ClassificationResult,
        y_true: ArrayLike | None = None,
        *,
        score: str = "predictive_entropy",
        name: str | None = None,
        oracle: bool = True,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> AccuracyRejectionDisplay:
        """Accuracy-rejection curve of a result, rejecting by one of its uncertainty scores.

        Parameters
        ----------
        result : ClassificationResult
            MC dropout result; dense outputs are flattened to one prediction per position.
        y_true : array-like or Tensor of shape (N, *S) or None, default=None
            Labels; ``result.targets`` when ``None``.
        score : {"predictive_entropy", "mutual_information", "expected_entropy", \
"variation_ratio", "confidence", "margin"}, default="predictive_entropy"
            Uncertainty used to reject (``confidence`` and ``margin`` reject low values first).
        name : str or None, default=None
            Legend name; the score's name when ``None``, so calls with different scores on
            one axes compare them.
        oracle, ax, **kwargs
            As in :meth:`from_predictions`.

        Returns
        -------
        display : AccuracyRejectionDisplay
        """
        values, score_label = _classification_score(result, score)
        labels, probs = _flatten_classification(result, _targets(result, y_true))
        if name is None:
            name = score_label.replace(" (nats)", "")
        return cls.from_predictions(labels, probs, scores=values, name=name, oracle=oracle,
                                    ax=ax, **kwargs)


# --------------------------------------------------------------------------------------------
# out-of-distribution detection
# --------------------------------------------------------------------------------------------


class OODHistogramDisplay:
    """Histograms of an uncertainty score on in-distribution and out-of-distribution inputs.

    Parameters
    ----------
    edges : ndarray of shape (n_bins + 1,)
        Bin edges shared by both histograms.
    density_in, density_out : ndarray of shape (n_bins,)
        Normalised histograms (densities) of the in- and out-of-distribution scores.
    auroc : float or None, default=None
        AUROC of separating the two with the score (:func:`mcdrop.metrics.ood_auroc`).
    score_name : str, default="Uncertainty score"
        Label of the x axis.
    name : str or None, default=None
        Model name, prefixed to the legend entries.

    Attributes
    ----------
    hist_in_, hist_out_ : matplotlib StepPatch
        The two histograms.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from mcdrop.plot import OODHistogramDisplay
    >>> rng = np.random.default_rng(0)
    >>> display = OODHistogramDisplay.from_scores(rng.gamma(1, size=300), rng.gamma(3, size=300))
    >>> round(display.auroc, 2) > 0.5
    True
    """

    def __init__(
        self,
        edges: np.ndarray,
        density_in: np.ndarray,
        density_out: np.ndarray,
        *,
        auroc: float | None = None,
        score_name: str = "Uncertainty score",
        name: str | None = None,
    ) -> None:
        self.edges = np.asarray(edges, dtype=float)
        self.density_in = np.asarray(density_in, dtype=float)
        self.density_out = np.asarray(density_out, dtype=float)
        self.auroc = auroc
        self.score_name = score_name
        self.name = name

    def plot(
        self, *, ax: Axes | None = None, name: str | None = None, **kwargs: Any
    ) -> OODHistogramDisplay:
        """Draw both histograms as filled steps on one axes.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Axes to draw on; a new figure when ``None``.
        name : str or None, default=None
            Prefix of the legend entries; ``self.name`` when ``None``.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.stairs` for both histograms (e.g. ``alpha``).

        Returns
        -------
        display : OODHistogramDisplay
        """
        ax, self.figure_ = _get_axes(ax, figsize=(5.5, 4.2), layout="constrained")
        self.ax_ = ax
        name = self.name if name is None else name
        prefix = f"{name}: " if name else ""
        out_label = f"{prefix}out-of-distribution" if name else "Out-of-distribution"
        if self.auroc is not None:
            out_label += f" (AUROC = {self.auroc:.3f})"
        in_label = f"{prefix}in-distribution" if name else "In-distribution"
        base = {"fill": True, "alpha": 0.45, "linewidth": 1.5}
        self.hist_in_ = ax.stairs(self.density_in, self.edges,
                                  **_style({**base, "color": "C0", "label": in_label}, kwargs))
        self.hist_out_ = ax.stairs(self.density_out, self.edges,
                                   **_style({**base, "color": "C3", "label": out_label}, kwargs))
        ax.set(xlabel=self.score_name, ylabel="Density")
        ax.set_ylim(bottom=0.0)
        _default_title(ax, "Uncertainty: in- vs out-of-distribution")
        ax.legend(loc="upper right")
        return self

    @classmethod
    def from_scores(
        cls,
        scores_in: ArrayLike,
        scores_out: ArrayLike,
        *,
        bins: int | str = "auto",
        score_name: str = "Uncertainty score",
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> OODHistogramDisplay:
        """Histogram uncertainty scores of in- and out-of-distribution inputs and plot them.

        Parameters
        ----------
        scores_in, scores_out : array-like or Tensor of shape (N_in,), (N_out,)
            Uncertainty scores (higher = more uncertain); flattened.
        bins : int or str, default="auto"
            Number of bins, or a :func:`numpy.histogram_bin_edges` rule, for the pooled scores.
        score_name : str, default="Uncertainty score"
            Label of the x axis.
        name : str or None, default=None
            Model name for the legend.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        **kwargs : dict
            Passed to :meth:`plot`.

        Returns
        -------
        display : OODHistogramDisplay
        """
        s_in = _to_numpy(scores_in, float).reshape(-1)
        s_out = _to_numpy(scores_out, float).reshape(-1)
        if not isinstance(bins, str):
            bins = check_int("bins", bins, minimum=1)
        edges = np.histogram_bin_edges(np.concatenate([s_in, s_out]), bins=bins)
        density_in = np.histogram(s_in, bins=edges, density=True)[0]
        density_out = np.histogram(s_out, bins=edges, density=True)[0]
        display = cls(edges, density_in, density_out, auroc=float(ood_auroc(s_in, s_out)),
                      score_name=score_name, name=name)
        return display.plot(ax=ax, **kwargs)

    @classmethod
    def from_result(
        cls,
        result_in: ClassificationResult | RegressionResult,
        result_out: ClassificationResult | RegressionResult,
        *,
        score: str | None = None,
        bins: int | str = "auto",
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> OODHistogramDisplay:
        """Histograms of one uncertainty score of two results (in- and out-of-distribution).

        Parameters
        ----------
        result_in, result_out : ClassificationResult or RegressionResult
            Results on in-distribution and out-of-distribution inputs; dense outputs are
            flattened to one score per position.
        score : str or None, default=None
            Result attribute used as score: for classification one of
            ``"mutual_information"`` (default), ``"predictive_entropy"``,
            ``"expected_entropy"``, ``"variation_ratio"``, ``"confidence"``, ``"margin"``
            (the last two as ``1 - value``); for regression ``"std"`` (default),
            ``"variance"``, ``"epistemic_variance"``, ``"aleatoric_variance"``.
        bins, name, ax, **kwargs
            As in :meth:`from_scores`.

        Returns
        -------
        display : OODHistogramDisplay
        """
        s_in, label = _result_score(result_in, score)
        s_out, _ = _result_score(result_out, score)
        return cls.from_scores(s_in, s_out, bins=bins, score_name=label, name=name, ax=ax,
                               **kwargs)


class OODRocDisplay:
    """ROC curve of detecting out-of-distribution inputs by an uncertainty score.

    Out-of-distribution is the positive class, and a higher score means "more likely OOD".

    Parameters
    ----------
    fpr, tpr : ndarray of shape (K,)
        False and true positive rates from :func:`sklearn.metrics.roc_curve`.
    auroc : float or None, default=None
        Area under the curve (:func:`mcdrop.metrics.ood_auroc`), shown in the legend.
    name : str or None, default=None
        Legend name (model or score).

    Attributes
    ----------
    line_ : matplotlib Line2D
        The ROC curve.
    chance_line_ : matplotlib Line2D or None
        Diagonal of a score that cannot tell the two apart.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from mcdrop.plot import OODRocDisplay
    >>> rng = np.random.default_rng(0)
    >>> display = OODRocDisplay.from_scores(rng.normal(0, 1, 200), rng.normal(1, 1, 200),
    ...                                     name="entropy")
    >>> display.line_.get_label().startswith("entropy (AUROC = ")
    True
    """

    def __init__(
        self,
        fpr: np.ndarray,
        tpr: np.ndarray,
        *,
        auroc: float | None = None,
        name: str | None = None,
    ) -> None:
        self.fpr = np.asarray(fpr, dtype=float)
        self.tpr = np.asarray(tpr, dtype=float)
        self.auroc = auroc
        self.name = name

    def plot(
        self,
        *,
        ax: Axes | None = None,
        name: str | None = None,
        chance_line: bool = True,
        **kwargs: Any,
    ) -> OODRocDisplay:
        """Draw the ROC curve.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Axes to draw on; a new figure when ``None``.
        name : str or None, default=None
            Legend name; ``self.name`` when ``None``. The AUROC is appended.
        chance_line : bool, default=True
            Draw the diagonal of chance (once per axes).
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot`.

        Returns
        -------
        display : OODRocDisplay
        """
        ax, self.figure_ = _get_axes(ax, figsize=(5.0, 5.0), layout="constrained")
        self.ax_ = ax
        name = self.name if name is None else name
        label = _labelled(name, None if self.auroc is None else f"AUROC = {self.auroc:.3f}")
        self.chance_line_ = None
        if chance_line and "Chance (AUROC = 0.5)" not in _legend_labels(ax):
            (self.chance_line_,) = ax.plot([0, 1], [0, 1], linestyle="--", color=_REF_COLOR,
                                           linewidth=1.2, label="Chance (AUROC = 0.5)")
        style = _style({"linewidth": 2.0, "label": label, "drawstyle": "steps-post"}, kwargs)
        (self.line_,) = ax.plot(self.fpr, self.tpr, **style)
        ax.set(xlabel="False positive rate (in-distribution flagged)",
               ylabel="True positive rate (OOD detected)", xlim=(-0.01, 1.01),
               ylim=(-0.01, 1.01))
        _default_title(ax, "Out-of-distribution detection")
        ax.legend(loc="lower right")
        return self

    @classmethod
    def from_scores(
        cls,
        scores_in: ArrayLike,
        scores_out: ArrayLike,
        *,
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> OODRocDisplay:
        """ROC curve of uncertainty scores separating out- from in-distribution inputs.

        Parameters
        ----------
        scores_in, scores_out : array-like or Tensor of shape (N_in,), (N_out,)
            Uncertainty scores (higher = more uncertain); flattened.
        name : str or None, default=None
            Legend name.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        **kwargs : dict
            Passed to :meth:`plot`.

        Returns
        -------
        display : OODRocDisplay
        """
        from sklearn.metrics import roc_curve

        s_in = _to_numpy(scores_in, float).reshape(-1)
        s_out = _to_numpy(scores_out, float).reshape(-1)
        is_out = np.concatenate([np.zeros(s_in.size, dtype=int), np.ones(s_out.size, dtype=int)])
        fpr, tpr, _ = roc_curve(is_out, np.concatenate([s_in, s_out]))
        display = cls(fpr, tpr, auroc=float(ood_auroc(s_in, s_out)), name=name)
        return display.plot(ax=ax, **kwargs)

    @classmethod
    def from_result(
        cls,
        result_in: ClassificationResult | RegressionResult,
        result_out: ClassificationResult | RegressionResult,
        *,
        score: str | None = None,
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> OODRocDisplay:
        """ROC curve of one uncertainty score of two results (in- and out-of-distribution).

        Parameters
        ----------
        result_in, result_out : ClassificationResult or RegressionResult
            Results on in-distribution and out-of-distribution inputs.
        score : str or None, default=None
            Result attribute used as score, as in :meth:`OODHistogramDisplay.from_result`.
        name : str or None, default=None
            Legend name; the score's name when ``None``.
        ax, **kwargs
            As in :meth:`from_scores`.

        Returns
        -------
        display : OODRocDisplay
        """
        s_in, label = _result_score(result_in, score)
        s_out, _ = _result_score(result_out, score)
        if name is None:
            name = label.replace(" (nats)", "")
        return cls.from_scores(s_in, s_out, name=name, ax=ax, **kwargs)


# --------------------------------------------------------------------------------------------
# regression
# --------------------------------------------------------------------------------------------


class RegressionCalibrationDisplay:
    """Calibration of regression intervals: observed against expected coverage.

    Each point is a central Gaussian predictive interval of nominal level ``expected``; its
    ``observed`` coverage is the fraction of targets inside. A calibrated model follows the
    diagonal; the shaded area between them is the miscalibration area.

    Parameters
    ----------
    expected, observed : ndarray of shape (L,)
        Output of :func:`mcdrop.metrics.interval_calibration_curve`.
    miscalibration_area : float or None, default=None
        Output of :func:`mcdrop.metrics.miscalibration_area`, shown in the legend.
    name : str or None, default=None
        Legend name.

    Attributes
    ----------
    line_ : matplotlib Line2D
    fill_ : matplotlib PolyCollection or None
        Area between the curve and the diagonal.
    ref_line_ : matplotlib Line2D or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from mcdrop.plot import RegressionCalibrationDisplay
    >>> rng = np.random.default_rng(0)
    >>> y = rng.normal(size=500)
    >>> display = RegressionCalibrationDisplay.from_predictions(y, np.zeros(500), np.ones(500))
    >>> display.ax_.get_ylabel()
    'Observed coverage'
    """

    def __init__(
        self,
        expected: np.ndarray,
        observed: np.ndarray,
        *,
        miscalibration_area: float | None = None,
        name: str | None = None,
    ) -> None:
        self.expected = np.asarray(expected, dtype=float)
        self.observed = np.asarray(observed, dtype=float)
        self.miscalibration_area = miscalibration_area
        self.name = name

    def plot(
        self,
        *,
        ax: Axes | None = None,
        name: str | None = None,
        ref_line: bool = True,
        fill: bool = True,
        **kwargs: Any,
    ) -> RegressionCalibrationDisplay:
        """Draw observed against expected coverage.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Axes to draw on; a new figure when ``None``.
        name : str or None, default=None
            Legend name; ``self.name`` when ``None``. The miscalibration area is appended.
        ref_line : bool, default=True
            Draw the diagonal of perfect calibration (once per axes).
        fill : bool, default=True
            Shade the area between the curve and the diagonal.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot`.

        Returns
        -------
        display : RegressionCalibrationDisplay
        """
        ax, self.figure_ = _get_axes(ax, figsize=(5.0, 5.0), layout="constrained")
        self.ax_ = ax
        name = self.name if name is None else name
        area = self.miscalibration_area
        label = _labelled(name, None if area is None else f"miscalibration area = {area:.3f}")
        self.ref_line_ = None
        if ref_line and "Perfectly calibrated" not in _legend_labels(ax):
            (self.ref_line_,) = ax.plot([0, 1], [0, 1], linestyle="--", color=_REF_COLOR,
                                        linewidth=1.2, label="Perfectly calibrated")
        style = _style({"marker": "o", "markersize": 3.5, "linewidth": 2.0, "label": label},
                       kwargs)
        (self.line_,) = ax.plot(self.expected, self.observed, **style)
        self.fill_ = None
        if fill:
            self.fill_ = ax.fill_between(self.expected, self.expected, self.observed,
                                         color=self.line_.get_color(), alpha=0.2, linewidth=0)
        ax.set(xlabel="Expected coverage (nominal level)", ylabel="Observed coverage",
               xlim=(0.0, 1.0), ylim=(0.0, 1.0))
        ax.set_aspect("equal")
        _default_title(ax, "Regression calibration")
        ax.legend(loc="upper left")
        return self

    @classmethod
    def from_predictions(
        cls,
        y_true: ArrayLike,
        mean: ArrayLike,
        std: ArrayLike,
        *,
        levels: ArrayLike | None = None,
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> RegressionCalibrationDisplay:
        """Coverage calibration curve of Gaussian predictions, then plot it.

        Parameters
        ----------
        y_true, mean, std : array-like or Tensor of shape (N, *S)
            Targets, predictive means and predictive standard deviations.
        levels : array-like of shape (L,) or None, default=None
            Nominal levels in (0, 1); the metric's default grid when ``None``.
        name : str or None, default=None
            Legend name.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        **kwargs : dict
            Passed to :meth:`plot`.

        Returns
        -------
        display : RegressionCalibrationDisplay
        """
        y = _to_numpy(y_true, float)
        mu = _to_numpy(mean, float)
        sigma = _to_numpy(std, float)
        if levels is not None:
            levels = _to_numpy(levels, float)
        expected, observed = interval_calibration_curve(y, mu, sigma, levels=levels)
        area = float(miscalibration_area(y, mu, sigma, levels=levels))
        display = cls(expected, observed, miscalibration_area=area, name=name)
        return display.plot(ax=ax, **kwargs)

    @classmethod
    def from_result(
        cls,
        result: RegressionResult,
        y_true: ArrayLike | None = None,
        *,
        kind: str = "total",
        levels: ArrayLike | None = None,
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> RegressionCalibrationDisplay:
        """Coverage calibration curve of a regression result.

        Parameters
        ----------
        result : RegressionResult
            MC dropout result.
        y_true : array-like or Tensor of shape (N, *S) or None, default=None
            Targets; ``result.targets`` when ``None``.
        kind : {"total", "epistemic"}, default="total"
            Which predictive standard deviation to use.
        levels, name, ax, **kwargs
            As in :meth:`from_predictions`.

        Returns
        -------
        display : RegressionCalibrationDisplay
        """
        y, mean, std = _regression_arrays(result, y_true, kind)
        return cls.from_predictions(y, mean, std, levels=levels, name=name, ax=ax, **kwargs)


class PredictiveBandsDisplay:
    """1-D regression: predictive mean with epistemic and total predictive bands.

    The wide, light band is the total predictive interval (epistemic + aleatoric variance),
    the narrow, darker one the epistemic interval (spread of the mean over the dropout masks).
    Both are central Gaussian intervals of the same ``level``.

    Parameters
    ----------
    x : ndarray of shape (N,)
        Inputs, sorted increasingly.
    mean : ndarray of shape (N,)
        Predictive mean at ``x``.
    total_lower, total_upper : ndarray of shape (N,)
        Total predictive interval.
    epistemic_lower, epistemic_upper : ndarray of shape (N,) or None, default=None
        Epistemic interval.
    level : float, default=0.95
        Nominal level of the intervals (for the legend).
    y_true : ndarray of shape (N,) or None, default=None
        Targets at ``x``, drawn as points.
    x_train, y_train : ndarray of shape (M,) or None, default=None
        Training data, drawn as points.
    name : str or None, default=None
        Legend name of the mean.

    Attributes
    ----------
    line_ : matplotlib Line2D
        Predictive mean.
    total_band_, epistemic_band_ : matplotlib PolyCollection or None
    targets_, train_points_ : matplotlib PathCollection or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from mcdrop.plot import PredictiveBandsDisplay
    >>> x = np.linspace(-3, 3, 50)
    >>> display = PredictiveBandsDisplay.from_predictions(
    ...     x, np.sin(x), np.full(50, 0.3), epistemic_std=np.full(50, 0.1))
    >>> display.epistemic_band_ is not None
    True
    """

    def __init__(
        self,
        x: np.ndarray,
        mean: np.ndarray,
        *,
        total_lower: np.ndarray,
        total_upper: np.ndarray,
        epistemic_lower: np.ndarray | None = None,
        epistemic_upper: np.ndarray | None = None,
        level: float = 0.95,
        y_true: np.ndarray | None = None,
        x_train: np.ndarray | None = None,
        y_train: np.ndarray | None = None,
        name: str | None = None,
    ) -> None:
        self.x = x
        self.mean = mean
        self.total_lower = total_lower
        self.total_upper = total_upper
        self.epistemic_lower = epistemic_lower
        self.epistemic_upper = epistemic_upper
        self.level = level
        self.y_true = y_true
        self.x_train = x_train
        self.y_train = y_train
        self.name = name

    def plot(
        self,
        *,
        ax: Axes | None = None,
        name: str | None = None,
        **kwargs: Any,
    ) -> PredictiveBandsDisplay:
        """Draw the mean, the bands and the data points.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Axes to draw on; a new figure when ``None``.
        name : str or None, default=None
            Legend name of the mean; ``self.name`` (or "Predictive mean") when ``None``.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot` for the mean; its ``color`` also
            colours the bands.

        Returns
        -------
        display : PredictiveBandsDisplay
        """
        ax, self.figure_ = _get_axes(ax, figsize=(7.0, 4.2), layout="constrained")
        self.ax_ = ax
        name = self.name if name is None else name
        pct = f"{self.level:.0%}" if round(self.level * 100) == self.level * 100 else (
            f"{self.level:.1%}")
        style = _style({"linewidth": 2.0, "label": name or "Predictive mean", "zorder": 4},
                       kwargs)
        (self.line_,) = ax.plot(self.x, self.mean, **style)
        color = self.line_.get_color()
        prefix = f"{name}: " if name else ""
        self.total_band_ = ax.fill_between(self.x, self.total_lower, self.total_upper,
                                           color=color, alpha=0.18, linewidth=0, zorder=1,
                                           label=f"{prefix}{pct} interval (total)")
        self.epistemic_band_ = None
        if self.epistemic_lower is not None and self.epistemic_upper is not None:
            self.epistemic_band_ = ax.fill_between(
                self.x, self.epistemic_lower, self.epistemic_upper, color=color, alpha=0.4,
                linewidth=0, zorder=2, label=f"{prefix}{pct} interval (epistemic)",
            )
        self.targets_ = self.train_points_ = None
        if self.x_train is not None and self.y_train is not None:
            self.train_points_ = ax.scatter(self.x_train, self.y_train, s=12, color="black",
                                            alpha=0.6, zorder=3, label=_once(ax, "Training data"))
        if self.y_true is not None:
            self.targets_ = ax.scatter(self.x, self.y_true, s=10, facecolors="none",
                                       edgecolors="0.25", linewidths=0.7, alpha=0.8, zorder=3,
                                       label=_once(ax, "Targets"))
        ax.set(xlabel="x", ylabel="y")
        _default_title(ax, "Predictive mean and uncertainty bands")
        ax.legend(loc="best")
        return self

    @classmethod
    def from_predictions(
        cls,
        x: ArrayLike,
        mean: ArrayLike,
        std: ArrayLike,
        *,
        epistemic_std: ArrayLike | None = None,
        level: float = 0.95,
        y_true: ArrayLike | None = None,
        x_train: ArrayLike | None = None,
        y_train: ArrayLike | None = None,
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> PredictiveBandsDisplay:
        """Gaussian predictive bands of 1-D predictions, then plot them.

        Parameters
        ----------
        x : array-like or Tensor of shape (N,) or (N, 1)
            Inputs (need not be sorted).
        mean : array-like or Tensor of shape (N,) or (N, 1)
            Predictive mean.
        std : array-like or Tensor of shape (N,) or (N, 1)
            Total predictive standard deviation.
        epistemic_std : array-like or Tensor of shape (N,) or (N, 1) or None, default=None
            Epistemic standard deviation; no epistemic band when ``None``.
        level : float, default=0.95
            Level of the central intervals, in (0, 1).
        y_true : array-like or Tensor of shape (N,) or None, default=None
            Targets at ``x``.
        x_train, y_train : array-like or Tensor of shape (M,) or None, default=None
            Training data.
        name : str or None, default=None
            Legend name of the mean.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        **kwargs : dict
            Passed to :meth:`plot`.

        Returns
        -------
        display : PredictiveBandsDisplay
        """
        from scipy.stats import norm

        level = check_float("level", level, low=0.0, high=1.0, low_inclusive=False,
                            high_inclusive=False)
        xs = _one_d("x", x)
        order = np.argsort(xs, kind="stable")
        n = xs.size

        def column(argument: str, value: ArrayLike | None) -> np.ndarray | None:
            if value is None:
                return None
            array = _one_d(argument, value)
            if array.size != n:
                raise ValueError(
                    f"Expected `{argument}` to hold {n} values like `x`, but got {array.size}."
                )
            return array[order]

        mu = column("mean", mean)
        sigma = column("std", std)
        assert mu is not None and sigma is not None
        z = float(norm.ppf(0.5 + level / 2.0))
        epi = column("epistemic_std", epistemic_std)
        x_tr = None if x_train is None else _one_d("x_train", x_train)
        y_tr = None if y_train is None else _one_d("y_train", y_train)
        if (x_tr is None) != (y_tr is None) or (x_tr is not None and y_tr is not None
                                                 and x_tr.size != y_tr.size):
            raise ValueError(
                "Expected `x_train` and `y_train` to be given together with equal lengths, but "
                f"got {None if x_tr is None else x_tr.size} and "
                f"{None if y_tr is None else y_tr.size} values."
            )
        display = cls(
            xs[order], mu, total_lower=mu - z * sigma, total_upper=mu + z * sigma,
            epistemic_lower=None if epi is None else mu - z * epi,
            epistemic_upper=None if epi is None else mu + z * epi,
            level=level, y_true=column("y_true", y_true), x_train=x_tr, y_train=y_tr, name=name,
        )
        return display.plot(ax=ax, **kwargs)

    @classmethod
    def from_result(
        cls,
        result: RegressionResult,
        x: ArrayLike,
        *,
        y_true: ArrayLike | None = None,
        level: float = 0.95,
        x_train: ArrayLike | None = None,
        y_train: ArrayLike | None = None,
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> PredictiveBandsDisplay:
        """Predictive bands of a 1-D regression result.

        Parameters
        ----------
        result : RegressionResult
            MC dropout result with ``mean`` of shape ``(N,)`` or ``(N, 1)``.
        x : array-like or Tensor of shape (N,) or (N, 1)
            Inputs the result was predicted at.
        y_true : array-like or Tensor of shape (N,) or None, default=None
            Targets at ``x``; ``result.targets`` when ``None`` (no points if neither).
        level, x_train, y_train, name, ax, **kwargs
            As in :meth:`from_predictions`.

        Returns
        -------
        display : PredictiveBandsDisplay
        """
        _check_result(result, "regression")
        if y_true is None:
            y_true = result.targets
        return cls.from_predictions(
            x, result.mean, result.std, epistemic_std=result.epistemic_variance.sqrt(),
            level=level, y_true=y_true, x_train=x_train, y_train=y_train, name=name, ax=ax,
            **kwargs,
        )


def _one_d(argument: str, value: ArrayLike) -> np.ndarray:
    array = _to_numpy(value, float)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(
            f"Expected `{argument}` of shape (N,) or (N, 1) (a 1-D problem), but got shape "
            f"{array.shape}."
        )
    return array


class ResidualStdDisplay:
    """Absolute residuals against the predicted standard deviation.

    For calibrated Gaussian predictions the root-mean-square error of examples with similar
    predicted ``std`` equals their root-mean-square ``std``: the binned curve follows the
    diagonal (Levi et al. 2019). Points far above it are overconfident, far below
    underconfident.

    Parameters
    ----------
    std : ndarray of shape (N,)
        Predicted standard deviations.
    abs_residual : ndarray of shape (N,)
        ``|y_true - mean|``.
    binned_std, binned_rmse : ndarray of shape (n_bins,) or None, default=None
        Root-mean-square ``std`` and RMSE of bins of examples with similar ``std``.
    name : str or None, default=None
        Legend name.

    Attributes
    ----------
    scatter_ : matplotlib PathCollection
    binned_line_ : matplotlib Line2D or None
    ref_line_ : matplotlib Line2D or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from mcdrop.plot import ResidualStdDisplay
    >>> rng = np.random.default_rng(0)
    >>> std = rng.uniform(0.5, 2.0, size=400)
    >>> y = rng.normal(0.0, std)
    >>> display = ResidualStdDisplay.from_predictions(y, np.zeros(400), std, n_bins=8)
    >>> display.binned_rmse.shape
    (8,)
    """

    def __init__(
        self,
        std: np.ndarray,
        abs_residual: np.ndarray,
        *,
        binned_std: np.ndarray | None = None,
        binned_rmse: np.ndarray | None = None,
        name: str | None = None,
    ) -> None:
        self.std = np.asarray(std, dtype=float)
        self.abs_residual = np.asarray(abs_residual, dtype=float)
        self.binned_std = binned_std
        self.binned_rmse = binned_rmse
        self.name = name

    def plot(
        self,
        *,
        ax: Axes | None = None,
        name: str | None = None,
        ref_line: bool = True,
        **kwargs: Any,
    ) -> ResidualStdDisplay:
        """Draw the scatter, the binned RMSE and the diagonal.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Axes to draw on; a new figure when ``None``.
        name : str or None, default=None
            Legend name; ``self.name`` when ``None``.
        ref_line : bool, default=True
            Draw the diagonal ``RMSE = std`` (once per axes).
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.scatter`; its ``color`` also colours the
            binned curve.

        Returns
        -------
        display : ResidualStdDisplay
        """
        ax, self.figure_ = _get_axes(ax, figsize=(5.0, 5.0), layout="constrained")
        self.ax_ = ax
        name = self.name if name is None else name
        prefix = f"{name}: " if name else ""
        style = _style({"s": 8, "alpha": 0.35, "linewidths": 0,
                        "label": f"{prefix}examples" if name else "Examples"}, kwargs)
        self.scatter_ = ax.scatter(self.std, self.abs_residual, **style)
        rgba = np.asarray(self.scatter_.get_facecolor(), dtype=float).reshape(-1, 4)
        color: Any = tuple(rgba[0, :3]) if len(rgba) else "C0"
        self.binned_line_ = None
        if self.binned_std is not None and self.binned_rmse is not None:
            (self.binned_line_,) = ax.plot(
                self.binned_std, self.binned_rmse, marker="o", markersize=5, linewidth=2.0,
                color=color, markeredgecolor="black", markeredgewidth=0.6, zorder=4,
                label=f"{prefix}binned RMSE vs RMS std" if name else "Binned RMSE vs RMS std",
            )
        self.ref_line_ = None
        if ref_line and "Calibrated: RMSE = std" not in _legend_labels(ax):
            self.ref_line_ = ax.axline((0.0, 0.0), slope=1.0, linestyle="--", color=_REF_COLOR,
                                       linewidth=1.2, label="Calibrated: RMSE = std")
        ax.set(xlabel="Predicted standard deviation", ylabel="|Residual|")
        ax.set_xlim(left=0.0)
        ax.set_ylim(bottom=0.0)
        _default_title(ax, "Residuals vs predicted uncertainty")
        ax.legend(loc="upper left")
        return self

    @classmethod
    def from_predictions(
        cls,
        y_true: ArrayLike,
        mean: ArrayLike,
        std: ArrayLike,
        *,
        n_bins: int = 10,
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> ResidualStdDisplay:
        """Residuals and equal-count bins of the predicted ``std``, then plot them.

        Parameters
        ----------
        y_true, mean, std : array-like or Tensor of shape (N, *S)
            Targets, predictive means and standard deviations; flattened.
        n_bins : int, default=10
            Number of bins of equal size (by increasing ``std``) for the RMSE curve; ``0``
            for none. At most ``N``.
        name : str or None, default=None
            Legend name.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        **kwargs : dict
            Passed to :meth:`plot`.

        Returns
        -------
        display : ResidualStdDisplay
        """
        n_bins = check_int("n_bins", n_bins, minimum=0)
        y = _to_numpy(y_true, float).reshape(-1)
        mu = _to_numpy(mean, float).reshape(-1)
        sigma = _to_numpy(std, float).reshape(-1)
        if not (y.size == mu.size == sigma.size):
            raise ValueError(
                "Expected `y_true`, `mean` and `std` to hold the same number of values, but got "
                f"{y.size}, {mu.size} and {sigma.size}."
            )
        abs_residual = np.abs(y - mu)
        binned_std = binned_rmse = None
        if n_bins and y.size:
            groups = np.array_split(np.argsort(sigma, kind="stable"), min(n_bins, y.size))
            binned_std = np.array([np.sqrt(np.mean(sigma[g] ** 2)) for g in groups])
            binned_rmse = np.array([np.sqrt(np.mean(abs_residual[g] ** 2)) for g in groups])
        display = cls(sigma, abs_residual, binned_std=binned_std, binned_rmse=binned_rmse,
                      name=name)
        return display.plot(ax=ax, **kwargs)

    @classmethod
    def from_result(
        cls,
        result: RegressionResult,
        y_true: ArrayLike | None = None,
        *,
        kind: str = "total",
        n_bins: int = 10,
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> ResidualStdDisplay:
        """Residuals against the predicted ``std`` of a regression result.

        Parameters
        ----------
        result : RegressionResult
            MC dropout result.
        y_true : array-like or Tensor of shape (N, *S) or None, default=None
            Targets; ``result.targets`` when ``None``.
        kind : {"total", "epistemic"}, default="total"
            Which predictive standard deviation to use.
        n_bins, name, ax, **kwargs
            As in :meth:`from_predictions`.

        Returns
        -------
        display : ResidualStdDisplay
        """
        y, mean, std = _regression_arrays(result, y_true, kind)
        return cls.from_predictions(y, mean, std, n_bins=n_bins, name=name, ax=ax, **kwargs)


# --------------------------------------------------------------------------------------------
# Monte Carlo convergence
# --------------------------------------------------------------------------------------------

_CONVERGENCE_METRICS = {
    "standard_error": "Mean Monte Carlo standard error",
    "nll": "Negative log-likelihood",
    "accuracy": "Accuracy",
    "ece": "Expected calibration error",
    "rmse": "RMSE",
}
_NEEDS_TARGETS = {"nll", "accuracy", "ece", "rmse"}
_TASK_METRICS = {
    "classification": ["standard_error", "nll", "accuracy", "ece"],
    "regression": ["standard_error", "rmse"],
}


class ConvergenceDisplay:
    """A metric of the running Monte Carlo estimate against the number of samples ``T``.

    Shows how many dropout samples are enough: the Monte Carlo standard error of the mean falls
    like ``1/sqrt(T)`` (drawn as a reference slope on log-log axes), and metrics of the running
    mean (NLL, accuracy, ECE, RMSE) level off.

    Parameters
    ----------
    sample_counts : ndarray of shape (K,)
        Numbers of samples ``T``, increasing.
    values : ndarray of shape (K,)
        Metric of the estimate from the first ``T`` samples.
    metric : str, default="standard_error"
        Name of the metric (``"standard_error"``, ``"nll"``, ``"accuracy"``, ``"ece"``,
        ``"rmse"`` or a callable's name); sets the y label.
    reference : ndarray of shape (K,) or None, default=None
        Reference curve, ``c / sqrt(T)`` through the last point for the standard error.
    name : str or None, default=None
        Legend name.

    Attributes
    ----------
    line_ : matplotlib Line2D
    ref_line_ : matplotlib Line2D or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from mcdrop.plot import ConvergenceDisplay
    >>> rng = np.random.default_rng(0)
    >>> samples = rng.dirichlet(np.ones(3), size=(64, 20))  # (T, N, C)
    >>> display = ConvergenceDisplay.from_samples(samples)
    >>> int(display.sample_counts[-1])
    64
    """

    def __init__(
        self,
        sample_counts: np.ndarray,
        values: np.ndarray,
        *,
        metric: str = "standard_error",
        reference: np.ndarray | None = None,
        name: str | None = None,
    ) -> None:
        self.sample_counts = np.asarray(sample_counts)
        self.values = np.asarray(values, dtype=float)
        self.metric = metric
        self.reference = reference
        self.name = name

    def plot(
        self,
        *,
        ax: Axes | None = None,
        name: str | None = None,
        ref_line: bool = True,
        **kwargs: Any,
    ) -> ConvergenceDisplay:
        """Draw the metric against ``T`` (log-scaled ``T``; log-log for the standard error).

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Axes to draw on; a new figure when ``None``.
        name : str or None, default=None
            Legend name; ``self.name`` (or the metric's name) when ``None``.
        ref_line : bool, default=True
            Draw the reference curve, when there is one.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot`.

        Returns
        -------
        display : ConvergenceDisplay
        """
        ax, self.figure_ = _get_axes(ax, figsize=(5.5, 4.2), layout="constrained")
        self.ax_ = ax
        name = self.name if name is None else name
        ylabel = _CONVERGENCE_METRICS.get(self.metric, self.metric)
        style = _style({"marker": "o", "markersize": 4, "linewidth": 2.0,
                        "label": name or ylabel}, kwargs)
        (self.line_,) = ax.plot(self.sample_counts, self.values, **style)
        self.ref_line_ = None
        if ref_line and self.reference is not None:
            (self.ref_line_,) = ax.plot(self.sample_counts, self.reference, linestyle="--",
                                        color=_REF_COLOR, linewidth=1.2,
                                        label=_once(ax, "∝ 1/√T"))
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        if self.metric == "standard_error":
            ax.set_yscale("log")
        ax.set(xlabel="Number of Monte Carlo samples T", ylabel=ylabel)
        _default_title(ax, "Monte Carlo convergence")
        ax.legend(loc="best")
        return self

    @classmethod
    def from_samples(
        cls,
        samples: ArrayLike,
        y_true: ArrayLike | None = None,
        *,
        metric: str | Callable[[np.ndarray, np.ndarray], float] = "standard_error",
        sample_counts: Sequence[int] | ArrayLike | None = None,
        task: str = "classification",
        class_dim: int = 1,
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> ConvergenceDisplay:
        """Running metric of the first ``T`` Monte Carlo samples for increasing ``T``.

        Parameters
        ----------
        samples : array-like or Tensor of shape (T, N, C, *S) or (T, N, *S)
            Sampled probabilities (classification, class dimension at ``class_dim`` of one
            sample) or sampled means (regression).
        y_true : array-like or Tensor of shape (N, *S) or None, default=None
            Labels or targets; needed by every metric but ``"standard_error"``.
        metric : str or callable, default="standard_error"
            ``"standard_error"``: mean over all outputs of the Monte Carlo standard error of the
            running mean, ``sqrt(s_T^2 / T)`` (needs ``T >= 2``). Classification:
            ``"nll"``, ``"accuracy"``, ``"ece"`` of the running mean probabilities.
            Regression: ``"rmse"`` of the running mean. A callable is called as
            ``metric(y_true, running_mean)`` with the flattened ``(M,)`` targets and ``(M, C)``
            probabilities (classification) or ``(M,)`` means (regression).
        sample_counts : sequence of int or None, default=None
            Values of ``T``, each in ``[1, T]``; about 20 log-spaced counts when ``None``.
        task : {"classification", "regression"}, default="classification"
            Kind of samples.
        class_dim : int, default=1
            Class dimension of one classification sample ``(N, C, *S)``.
        name : str or None, default=None
            Legend name.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        **kwargs : dict
            Passed to :meth:`plot`.

        Returns
        -------
        display : ConvergenceDisplay
        """
        task = check_choice("task", task, ["classification", "regression"])
        draws = _to_numpy(samples, float)
        if draws.ndim < (3 if task == "classification" else 2):
            shape = "(T, N, C, *S)" if task == "classification" else "(T, N, *S)"
            raise ValueError(f"Expected `samples` of shape {shape}, but got shape {draws.shape}.")
        if task == "classification":
            class_dim = check_int("class_dim", class_dim)
            sample_ndim = draws.ndim - 1  # one sample is (N, C, *S)
            position = class_dim + sample_ndim if class_dim < 0 else class_dim
            if not 1 <= position < sample_ndim:
                raise ValueError(
                    f"Expected `class_dim` to be a dimension of one sample after N, in "
                    f"[1, {sample_ndim - 1}], but got {class_dim}."
                )
            draws = np.moveaxis(draws, position + 1, -1)
        n_total = draws.shape[0]
        if callable(metric):
            metric_name = getattr(metric, "__name__", "metric")
            metric_fn: Callable[[np.ndarray, np.ndarray], float] | None = metric
        else:
            metric_name = check_choice("metric", metric, _TASK_METRICS[task])
            metric_fn = None
        labels = None
        if metric_name != "standard_error" or metric_fn is not None:
            if y_true is None:
                raise ValueError(
                    f"Expected `y_true` to be given for metric {metric_name!r}, but got None."
                )
            labels = _to_numpy(y_true).reshape(-1)
        minimum = 2 if metric_fn is None and metric_name == "standard_error" else 1
        if n_total < minimum:
            raise ValueError(
                f"Expected `samples` to hold at least {minimum} Monte Carlo samples for metric "
                f"{metric_name!r}, but got {n_total}."
            )
        counts = _sample_counts(sample_counts, n_total, minimum)

        values = np.empty(counts.size)
        running = np.zeros(draws.shape[1:])
        running_sq = np.zeros(draws.shape[1:])
        done = 0
        for i, t in enumerate(counts):
            chunk = draws[done:t]
            running += chunk.sum(axis=0)
            running_sq += np.square(chunk).sum(axis=0)
            done = int(t)
            mean = running / t
            if metric_fn is None and metric_name == "standard_error":
                var = np.clip(running_sq / t - mean**2, 0.0, None) * t / (t - 1)
                values[i] = float(np.mean(np.sqrt(var / t)))
                continue
            flat = mean.reshape(-1, mean.shape[-1]) if task == "classification" else (
                mean.reshape(-1))
            assert labels is not None
            if labels.shape[0] != flat.shape[0]:
                raise ValueError(
                    f"Expected `y_true` to hold {flat.shape[0]} values (one per output of a "
                    f"sample), but got {labels.shape[0]}."
                )
            values[i] = float(metric_fn(labels, flat) if metric_fn is not None
                              else _running_metric(metric_name, labels, flat))
        reference = None
        if metric_fn is None and metric_name == "standard_error":
            reference = values[-1] * np.sqrt(counts[-1] / counts)
        display = cls(counts, values, metric=metric_name, reference=reference, name=name)
        return display.plot(ax=ax, **kwargs)

    @classmethod
    def from_result(
        cls,
        result: ClassificationResult | RegressionResult,
        y_true: ArrayLike | None = None,
        *,
        metric: str | Callable[[np.ndarray, np.ndarray], float] = "standard_error",
        sample_counts: Sequence[int] | ArrayLike | None = None,
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> ConvergenceDisplay:
        """Convergence of a result predicted with ``keep_samples=True``.

        Parameters
        ----------
        result : ClassificationResult or RegressionResult
            MC dropout result holding its ``samples``.
        y_true : array-like or Tensor of shape (N, *S) or None, default=None
            Labels or targets; ``result.targets`` when ``None`` (only needed by metrics other
            than ``"standard_error"``).
        metric, sample_counts, name, ax, **kwargs
            As in :meth:`from_samples`.

        Returns
        -------
        display : ConvergenceDisplay

        Raises
        ------
        ValueError
            When the result holds no samples, or the metric needs targets and there are none.
        """
        task = getattr(result, "task", None)
        if task not in _TASK_METRICS:
            raise TypeError(
                f"Expected `result` to be a ClassificationResult or RegressionResult, but got "
                f"{type(result).__name__}."
            )
        if result.samples is None:
            raise ValueError(
                "Expected `result.samples` to hold the Monte Carlo samples, but got None; "
                "predict with `keep_samples=True`."
            )
        if y_true is None and metric != "standard_error":
            y_true = _targets(result, None)
        class_dim = getattr(result, "class_dim", 1)
        return cls.from_samples(result.samples, y_true, metric=metric,
                                sample_counts=sample_counts, task=task, class_dim=class_dim,
                                name=name, ax=ax, **kwargs)


def _sample_counts(sample_counts: Any, n_total: int, minimum: int) -> np.ndarray:
    if sample_counts is None:
        counts = np.geomspace(minimum, n_total, num=min(20, n_total - minimum + 1))
        return np.unique(np.round(counts).astype(np.int64))
    counts = _to_numpy(sample_counts).reshape(-1)
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
        return float(rmse(labels, mean))
    if metric == "accuracy":
        return float(_accuracy(labels, mean))
    if metric == "nll":
        return float(negative_log_likelihood(labels, mean))
    return float(expected_calibration_error(labels, mean))
