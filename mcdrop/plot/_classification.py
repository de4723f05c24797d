"""Classification displays: reliability diagrams and accuracy-rejection curves."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from mcdrop._validation import check_bool, check_choice
from mcdrop.metrics import (
    ReliabilityCurve,
    accuracy_rejection_curve,
    aurc,
    expected_calibration_error,
    oracle_rejection_curve,
    reliability_curve,
    reliability_intervals,
)
from mcdrop.plot._base import (
    REF_COLOR,
    ArrayLike,
    Display,
    flatten_classification,
    labelled,
    labels_of,
    legend_labels,
    once,
    probabilities,
    reference_line,
    rejection_inputs,
    scored_result,
    style,
    targets,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from mcdrop.results import ClassificationResult

__all__ = ["AccuracyRejectionDisplay", "ReliabilityDisplay", "plot_reliability_comparison"]


class ReliabilityDisplay(Display):
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
    lower, upper : ndarray of shape (n_bins,) or None, default=None
        Interval of the accuracy of each bin (:func:`mcdrop.metrics.reliability_intervals`),
        drawn as error bars; bins of few examples get wide intervals.

    Attributes
    ----------
    confidence, accuracy : ndarray of shape (n_bins,)
        Mean confidence and accuracy per bin, NaN for empty bins.
    count : ndarray of shape (n_bins,)
        Number of examples per bin (written above each bar).
    edges : ndarray of shape (n_bins + 1,)
        Bin edges.
    bars_ : matplotlib BarContainer or None
        Accuracy bars of the non-empty bins (``kind="bars"``).
    gap_bars_ : matplotlib BarContainer or None
        Gap bars between accuracy and confidence (``kind="bars"`` and ``gaps=True``).
    line_ : matplotlib Line2D or None
        Accuracy against confidence (``kind="line"``).
    intervals_ : matplotlib ErrorbarContainer or None
        Error bars of ``lower`` and ``upper`` (``intervals=True``).
    counts_ : list of matplotlib Text
        Per-bin counts written above the bars (``counts=True``).
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
        lower: np.ndarray | None = None,
        upper: np.ndarray | None = None,
    ) -> None:
        self.curve = curve
        self.lower = None if lower is None else np.asarray(lower, dtype=float)
        self.upper = None if upper is None else np.asarray(upper, dtype=float)
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
        intervals: bool = True,
        counts: bool | None = None,
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
        intervals : bool, default=True
            Draw the per-bin intervals ``lower``/``upper`` as error bars, when computed.
        counts : bool or None, default=None
            Write the number of examples above each bar; ``None`` writes them for
            ``kind="bars"`` only.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.bar` (``kind="bars"``) or
            :meth:`matplotlib.axes.Axes.plot` (``kind="line"``), e.g. ``color``.

        Returns
        -------
        display : ReliabilityDisplay
            ``self``, with the artists, ``ax_``, ``hist_ax_`` and ``figure_`` set.
        """
        for flag, value in {"gaps": gaps, "ref_line": ref_line, "intervals": intervals}.items():
            check_bool(flag, value)
        check_bool("histogram", histogram, allow_none=True)
        check_bool("counts", counts, allow_none=True)
        kind = check_choice("kind", kind, ["bars", "line"])
        name = self.name if name is None else name
        label = labelled(name, None if self.ece is None else f"ECE = {self.ece:.3f}")
        if kind == "bars":
            bar_style = style(
                {"edgecolor": "black", "linewidth": 0.6, "alpha": 0.9, "label": label, "zorder": 2},
                kwargs,
                "bar",
            )
        else:
            line_style = style(
                {"marker": "o", "markersize": 5, "linewidth": 1.8, "label": label, "zorder": 4},
                kwargs,
                "line",
            )
        if histogram is None:
            histogram = ax is None or hist_ax is not None
        if counts is None:
            counts = kind == "bars"
        created = ax is None
        if ax is None:
            ax, hist_ax = self._new_axes(histogram)
        with self._axes(ax, owned=created):
            if not created and histogram and hist_ax is None:
                from mpl_toolkits.axes_grid1 import make_axes_locatable

                hist_ax = make_axes_locatable(ax).append_axes(
                    "bottom", size="30%", pad=0.12, sharex=ax
                )
            self.hist_ax_ = hist_ax if histogram else None
            nonempty = (self.count > 0) & np.isfinite(self.accuracy) & np.isfinite(self.confidence)
            left, width = self.edges[:-1][nonempty], np.diff(self.edges)[nonempty]
            accuracy, confidence = self.accuracy[nonempty], self.confidence[nonempty]

            self.ref_line_ = None
            if ref_line and "Perfectly calibrated" not in legend_labels(ax):
                (self.ref_line_,) = ax.plot(
                    [0, 1],
                    [0, 1],
                    linestyle="--",
                    color=REF_COLOR,
                    linewidth=1.2,
                    label="Perfectly calibrated",
                    zorder=3,
                )
            self.bars_ = self.gap_bars_ = self.line_ = None
            if kind == "bars":
                self.bars_ = ax.bar(left, accuracy, width=width, align="edge", **bar_style)
                color: Any = self.bars_.patches[0].get_facecolor() if len(accuracy) else "C0"
                if gaps:
                    self.gap_bars_ = ax.bar(
                        left,
                        np.abs(confidence - accuracy),
                        width=width,
                        bottom=np.minimum(confidence, accuracy),
                        align="edge",
                        facecolor="none",
                        edgecolor="red",
                        hatch="//",
                        linewidth=0.8,
                        label=once(ax, "Gap"),
                        zorder=2.5,
                    )
                centres = left + width / 2.0
            else:
                (self.line_,) = ax.plot(confidence, accuracy, **line_style)
                color = self.line_.get_color()
                centres = confidence
            self._draw_intervals(ax, intervals, nonempty, centres, accuracy, color, kind)
            self.counts_ = []
            if counts:
                for x, y, n in zip(centres, accuracy, self.count[nonempty], strict=True):
                    self.counts_.append(
                        ax.annotate(
                            f"{int(n)}",
                            (x, y),
                            xytext=(0, 3),
                            textcoords="offset points",
                            ha="center",
                            va="bottom",
                            fontsize="x-small",
                            color="0.2",
                            zorder=5,
                        )
                    )

            xlabel, ylabel = (
                ("Mean predicted probability", "Fraction of positives")
                if self.binary
                else ("Confidence", "Accuracy")
            )
            ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.05 if counts else 1.0), ylabel=ylabel)
            self._finish(ax, "Reliability diagram", "upper left")
            self._draw_histogram(ax, hist_ax if histogram else None, kind, color, label, xlabel)
        return self

    def _draw_intervals(
        self,
        ax: Axes,
        intervals: bool,
        nonempty: np.ndarray,
        centres: np.ndarray,
        accuracy: np.ndarray,
        color: Any,
        kind: str,
    ) -> None:
        self.intervals_ = None
        if not intervals or self.lower is None or self.upper is None:
            return
        below = np.clip(accuracy - self.lower[nonempty], 0.0, None)
        above = np.clip(self.upper[nonempty] - accuracy, 0.0, None)
        self.intervals_ = ax.errorbar(
            centres,
            accuracy,
            yerr=np.vstack([below, above]),
            fmt="none",
            capsize=2,
            elinewidth=1.0,
            ecolor="0.15" if kind == "bars" else color,
            zorder=4.5,
            label=once(ax, "95% interval") if kind == "bars" else None,
        )

    def _draw_histogram(
        self, ax: Axes, hist_ax: Axes | None, kind: str, color: Any, label: str | None, xlabel: str
    ) -> None:
        self.hist_ = None
        if hist_ax is None:
            ax.set_xlabel(xlabel)
            return
        total = max(int(self.count.sum()), 1)
        filled = kind == "bars"
        self.hist_ = hist_ax.stairs(
            self.count / total,
            self.edges,
            fill=filled,
            color=color,
            alpha=0.6 if filled else 1.0,
            linewidth=1.5,
            label=label,
        )
        hist_ax.set(xlim=(0.0, 1.0), xlabel=xlabel, ylabel="Fraction\nof samples")
        if hist_ax.get_yscale() == "linear":
            hist_ax.set_ylim(bottom=0.0)
        ax.set_xlabel("")
        ax.tick_params(labelbottom=False)

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
        probs = probabilities(y_prob)
        labels = labels_of("y_true", y_true)
        curve = reliability_curve(labels, probs, n_bins=n_bins, strategy=strategy)
        ece = expected_calibration_error(labels, probs, n_bins=n_bins, strategy=strategy)
        lower, upper = reliability_intervals(curve)
        display = cls(
            curve, ece=float(ece), name=name, binary=probs.ndim == 1, lower=lower, upper=upper
        )
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
        labels, probs = flatten_classification(result, targets(result, y_true))
        return cls.from_predictions(
            labels, probs, n_bins=n_bins, strategy=strategy, name=name, ax=ax, **kwargs
        )


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
        options: dict[str, Any] = {
            "n_bins": n_bins,
            "strategy": strategy,
            "name": str(name),
            "ax": ax,
            "kind": "line",
            "histogram": histogram,
            "hist_ax": hist_ax,
        }
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


class AccuracyRejectionDisplay(Display):
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
        for flag, value in {"random_line": random_line, "oracle": oracle}.items():
            check_bool(flag, value)
        name = self.name if name is None else name
        label = labelled(name, None if self.aurc is None else f"AURC = {self.aurc:.3f}")
        line_style = style({"linewidth": 2.0, "label": label, "zorder": 3}, kwargs)
        with self._axes(ax, figsize=(5.5, 4.2), layout="constrained") as ax:
            self.random_line_ = self.oracle_line_ = None
            if random_line and math.isfinite(self.base_accuracy):
                self.random_line_ = ax.axhline(
                    self.base_accuracy,
                    color=REF_COLOR,
                    linestyle=":",
                    linewidth=1.2,
                    label=once(ax, "Random rejection"),
                )
            if (
                oracle
                and self.oracle_accuracy is not None
                and self.oracle_rejection_fraction is not None
            ):
                self.oracle_line_ = reference_line(
                    ax, self.oracle_rejection_fraction, self.oracle_accuracy, "Oracle"
                )
            (self.line_,) = ax.plot(self.rejection_fraction, self.accuracy, **line_style)
            ax.set(
                xlabel="Fraction of samples rejected",
                ylabel="Accuracy on retained samples",
                xlim=(0.0, 1.0),
            )
            self._finish(ax, "Accuracy–rejection curve", "lower right", fontsize="small")
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
        labels, probs, score = rejection_inputs(y_true, y_prob, scores)
        fraction, accuracy = accuracy_rejection_curve(labels, probs, score)
        area = float(aurc(labels, probs, score))
        oracle_fraction = oracle_accuracy = None
        if oracle:
            oracle_fraction, oracle_accuracy = oracle_rejection_curve(labels, probs)
        display = cls(
            fraction,
            accuracy,
            aurc=area,
            name=name,
            oracle_rejection_fraction=oracle_fraction,
            oracle_accuracy=oracle_accuracy,
        )
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
        labels, probs, values, name = scored_result(result, y_true, score, name)
        return cls.from_predictions(
            labels, probs, scores=values, name=name, oracle=oracle, ax=ax, **kwargs
        )
