"""Monte Carlo convergence: a metric, or the standard error, against the number of samples."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mcdrop._validation import check_bool
from mcdrop.metrics import convergence_curve
from mcdrop.plot._base import REF_COLOR, ArrayLike, Display, once, style, targets

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from mcdrop.results import ClassificationResult, RegressionResult

__all__ = ["ConvergenceDisplay"]


_CONVERGENCE_METRICS = {
    "standard_error": "Mean Monte Carlo standard error",
    "nll": "Negative log-likelihood",
    "accuracy": "Accuracy",
    "ece": "Expected calibration error",
    "rmse": "RMSE",
}
_TASKS = ("classification", "regression")


class ConvergenceDisplay(Display):
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
        check_bool("ref_line", ref_line)
        name = self.name if name is None else name
        ylabel = _CONVERGENCE_METRICS.get(self.metric, self.metric)
        line_style = style(
            {"marker": "o", "markersize": 4, "linewidth": 2.0, "label": name or ylabel}, kwargs
        )
        with self._axes(ax, figsize=(5.5, 4.2), layout="constrained") as ax:
            (self.line_,) = ax.plot(self.sample_counts, self.values, **line_style)
            self.ref_line_ = None
            if ref_line and self.reference is not None:
                (self.ref_line_,) = ax.plot(
                    self.sample_counts,
                    self.reference,
                    linestyle="--",
                    color=REF_COLOR,
                    linewidth=1.2,
                    label=once(ax, "∝ 1/√T"),
                )
            from matplotlib.ticker import FuncFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
            if self.metric == "standard_error":
                ax.set_yscale("log")
            ax.set(xlabel="Number of Monte Carlo samples T", ylabel=ylabel)
            self._finish(ax, "Monte Carlo convergence", "best")
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
            running mean, ``sqrt(s_T^2 / T)`` (needs ``T >= 2``), from the library's streaming
            moments (:func:`mcdrop.metrics.convergence_curve`). Classification:
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
        counts, values = convergence_curve(
            samples,
            y_true,
            metric=metric,
            sample_counts=sample_counts,
            task=task,
            class_dim=class_dim,
        )
        metric_name = getattr(metric, "__name__", "metric") if callable(metric) else metric
        reference = None
        if metric_name == "standard_error" and not callable(metric):
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
        if task not in _TASKS:
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
            y_true = targets(result, None)
        class_dim = getattr(result, "class_dim", 1)
        return cls.from_samples(
            result.samples,
            y_true,
            metric=metric,
            sample_counts=sample_counts,
            task=task,
            class_dim=class_dim,
            name=name,
            ax=ax,
            **kwargs,
        )
