"""Regression displays: interval calibration, predictive bands, residuals against std."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mcdrop._validation import as_real, check_bool, check_float, check_int, check_std
from mcdrop.metrics import (
    binned_residuals,
    central_interval,
    interval_calibration_curve,
    miscalibration_area,
)
from mcdrop.plot._base import (
    REF_COLOR,
    ArrayLike,
    Display,
    check_result,
    labelled,
    legend_labels,
    once,
    one_d,
    regression_arrays,
    style,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from mcdrop.results import RegressionResult

__all__ = ["PredictiveBandsDisplay", "RegressionCalibrationDisplay", "ResidualStdDisplay"]


class RegressionCalibrationDisplay(Display):
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
        for flag, value in {"ref_line": ref_line, "fill": fill}.items():
            check_bool(flag, value)
        name = self.name if name is None else name
        area = self.miscalibration_area
        label = labelled(name, None if area is None else f"miscalibration area = {area:.3f}")
        line_style = style(
            {"marker": "o", "markersize": 3.5, "linewidth": 2.0, "label": label}, kwargs
        )
        with self._axes(ax, figsize=(5.0, 5.0), layout="constrained") as ax:
            self.ref_line_ = None
            if ref_line and "Perfectly calibrated" not in legend_labels(ax):
                (self.ref_line_,) = ax.plot(
                    [0, 1],
                    [0, 1],
                    linestyle="--",
                    color=REF_COLOR,
                    linewidth=1.2,
                    label="Perfectly calibrated",
                )
            (self.line_,) = ax.plot(self.expected, self.observed, **line_style)
            self.fill_ = None
            if fill:
                self.fill_ = ax.fill_between(
                    self.expected,
                    self.expected,
                    self.observed,
                    color=self.line_.get_color(),
                    alpha=0.2,
                    linewidth=0,
                )
            ax.set(
                xlabel="Expected coverage (nominal level)",
                ylabel="Observed coverage",
                xlim=(0.0, 1.0),
                ylim=(0.0, 1.0),
            )
            ax.set_aspect("equal")
            self._finish(ax, "Regression calibration", "upper left")
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
        y = as_real("y_true", y_true)
        mu = as_real("mean", mean)
        sigma = as_real("std", std)
        if levels is not None:
            levels = as_real("levels", levels)
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
        y, mean, std = regression_arrays(result, y_true, kind)
        return cls.from_predictions(y, mean, std, levels=levels, name=name, ax=ax, **kwargs)


class PredictiveBandsDisplay(Display):
    """1-D regression: predictive mean with epistemic and total predictive bands.

    The wide, light band is the total predictive interval (epistemic + aleatoric variance),
    the narrow, darker one the epistemic interval (spread of the mean over the dropout masks).
    Both are central Gaussian intervals of the same ``level``. With shared masks
    (``masks="shared"``, ``keep_samples=True``) a sample is one network ``f_t``, and a few of
    them are drawn as thin lines: functions of ``x``, not independent noise per point.

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
    sample_functions : ndarray of shape (K, N) or None, default=None
        Outputs of ``K`` sampled networks at ``x`` (shared masks), drawn as thin lines.

    Attributes
    ----------
    line_ : matplotlib Line2D
        Predictive mean.
    total_band_, epistemic_band_ : matplotlib PolyCollection or None
    sample_lines_ : list of matplotlib Line2D
        One per sample function (empty without them).
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
        sample_functions: np.ndarray | None = None,
    ) -> None:
        self.x = x
        self.sample_functions = sample_functions
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
        name = self.name if name is None else name
        pct = (
            f"{self.level:.0%}"
            if round(self.level * 100) == self.level * 100
            else (f"{self.level:.1%}")
        )
        line_style = style(
            {"linewidth": 2.0, "label": name or "Predictive mean", "zorder": 4}, kwargs
        )
        with self._axes(ax, figsize=(7.0, 4.2), layout="constrained") as ax:
            self._draw(ax, name, pct, line_style)
        return self

    def _draw(self, ax: Axes, name: str | None, pct: str, line_style: dict[str, Any]) -> None:
        (self.line_,) = ax.plot(self.x, self.mean, **line_style)
        color = self.line_.get_color()
        prefix = f"{name}: " if name else ""
        self.total_band_ = ax.fill_between(
            self.x,
            self.total_lower,
            self.total_upper,
            color=color,
            alpha=0.18,
            linewidth=0,
            zorder=1,
            label=f"{prefix}{pct} interval (total)",
        )
        self.epistemic_band_ = None
        if self.epistemic_lower is not None and self.epistemic_upper is not None:
            self.epistemic_band_ = ax.fill_between(
                self.x,
                self.epistemic_lower,
                self.epistemic_upper,
                color=color,
                alpha=0.4,
                linewidth=0,
                zorder=2,
                label=f"{prefix}{pct} interval (epistemic)",
            )
        self.sample_lines_ = []
        for k, values in enumerate(() if self.sample_functions is None else self.sample_functions):
            (line,) = ax.plot(
                self.x,
                values,
                color=color,
                alpha=0.55,
                linewidth=0.9,
                zorder=3,
                label=f"{prefix}sampled networks" if k == 0 else None,
            )
            self.sample_lines_.append(line)
        self.targets_ = self.train_points_ = None
        if self.x_train is not None and self.y_train is not None:
            self.train_points_ = ax.scatter(
                self.x_train,
                self.y_train,
                s=12,
                color="black",
                alpha=0.6,
                zorder=3,
                label=once(ax, "Training data"),
            )
        if self.y_true is not None:
            self.targets_ = ax.scatter(
                self.x,
                self.y_true,
                s=10,
                facecolors="none",
                edgecolors="0.25",
                linewidths=0.7,
                alpha=0.8,
                zorder=3,
                label=once(ax, "Targets"),
            )
        ax.set(xlabel="x", ylabel="y")
        self._finish(ax, "Predictive mean and uncertainty bands", "best")

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
        sample_functions: ArrayLike | None = None,
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
        sample_functions : array-like or Tensor of shape (K, N) or None, default=None
            Outputs of ``K`` sampled networks at ``x`` (one network for every input: shared
            masks), drawn as thin lines.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        **kwargs : dict
            Passed to :meth:`plot`.

        Returns
        -------
        display : PredictiveBandsDisplay
        """
        level = check_float(
            "level", level, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
        )
        xs = one_d("x", x)
        order = np.argsort(xs, kind="stable")
        n = xs.size

        def column(argument: str, value: ArrayLike | None) -> np.ndarray | None:
            if value is None:
                return None
            array = one_d(argument, value)
            if array.size != n:
                raise ValueError(
                    f"Expected `{argument}` to hold {n} values like `x`, but got {array.size}."
                )
            return array[order]

        mu = column("mean", mean)
        sigma = column("std", std)
        assert mu is not None and sigma is not None
        total_lower, total_upper = central_interval(mu, sigma, level=level)
        epi = column("epistemic_std", epistemic_std)
        epistemic_lower = epistemic_upper = None
        if epi is not None:
            epistemic_lower, epistemic_upper = _interval("epistemic_std", mu, epi, level)
        x_tr = None if x_train is None else one_d("x_train", x_train)
        y_tr = None if y_train is None else one_d("y_train", y_train)
        if (x_tr is None) != (y_tr is None) or (
            x_tr is not None and y_tr is not None and x_tr.size != y_tr.size
        ):
            raise ValueError(
                "Expected `x_train` and `y_train` to be given together with equal lengths, but "
                f"got {None if x_tr is None else x_tr.size} and "
                f"{None if y_tr is None else y_tr.size} values."
            )
        functions = None
        if sample_functions is not None:
            functions = as_real("sample_functions", sample_functions).reshape(-1, n)[:, order]
        display = cls(
            xs[order],
            mu,
            total_lower=total_lower,
            total_upper=total_upper,
            epistemic_lower=epistemic_lower,
            epistemic_upper=epistemic_upper,
            level=level,
            y_true=column("y_true", y_true),
            x_train=x_tr,
            y_train=y_tr,
            name=name,
            sample_functions=functions,
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
        n_functions: int | None = None,
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
        n_functions : int or None, default=None
            How many sampled networks to draw as functions of ``x`` (the first ones). ``None``:
            5 when the result has shared masks and kept samples, else none. Independent masks
            give no functions (each point drew its own network): asking for some is an error.

        Returns
        -------
        display : PredictiveBandsDisplay
        """
        check_result(result, "regression")
        if y_true is None:
            y_true = result.targets
        functions = _sample_functions(result, n_functions)
        return cls.from_predictions(
            x,
            result.mean,
            result.std,
            epistemic_std=result.epistemic_variance.sqrt(),
            level=level,
            y_true=y_true,
            x_train=x_train,
            y_train=y_train,
            name=name,
            sample_functions=functions,
            ax=ax,
            **kwargs,
        )


def _sample_functions(result: RegressionResult, n_functions: int | None) -> Any:
    """The first ``n_functions`` samples of a shared-mask result, ``(K, N)``; None if none."""
    usable = result.masks == "shared" and result.samples is not None
    if n_functions is None:
        n_functions = 5 if usable else 0
    n_functions = check_int("n_functions", n_functions, minimum=0)
    if n_functions == 0:
        return None
    if not usable:
        raise ValueError(
            f"Expected a result sampled with masks='shared' and keep_samples=True to draw "
            f"`n_functions={n_functions}` sampled networks, but it has masks={result.masks!r} "
            f"and {'kept' if result.samples is not None else 'no'} samples: with independent "
            "masks each point drew its own network, so a sample is no function of x."
        )
    assert result.samples is not None
    return result.samples[:n_functions].reshape(min(n_functions, result.n_samples), -1)


def _interval(
    argument: str, mean: np.ndarray, std: np.ndarray, level: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mcdrop.metrics.central_interval`, its errors naming ``argument`` for ``std``."""
    try:
        return central_interval(mean, std, level=level)
    except ValueError as error:
        raise ValueError(str(error).replace("`std`", f"`{argument}`")) from None


class ResidualStdDisplay(Display):
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
        check_bool("ref_line", ref_line)
        name = self.name if name is None else name
        prefix = f"{name}: " if name else ""
        scatter_style = style(
            {
                "s": 8,
                "alpha": 0.35,
                "linewidths": 0,
                "label": f"{prefix}examples" if name else "Examples",
            },
            kwargs,
            "scatter",
        )
        with self._axes(ax, figsize=(5.0, 5.0), layout="constrained") as ax:
            self._draw(ax, name, prefix, scatter_style, ref_line)
        return self

    def _draw(
        self, ax: Axes, name: str | None, prefix: str, scatter_style: dict[str, Any], ref_line: bool
    ) -> None:
        self.scatter_ = ax.scatter(self.std, self.abs_residual, **scatter_style)
        rgba = np.asarray(self.scatter_.get_facecolor(), dtype=float).reshape(-1, 4)
        color: Any = tuple(rgba[0, :3]) if len(rgba) else "C0"
        self.binned_line_ = None
        if self.binned_std is not None and self.binned_rmse is not None:
            (self.binned_line_,) = ax.plot(
                self.binned_std,
                self.binned_rmse,
                marker="o",
                markersize=5,
                linewidth=2.0,
                color=color,
                markeredgecolor="black",
                markeredgewidth=0.6,
                zorder=4,
                label=f"{prefix}binned RMSE vs RMS std" if name else "Binned RMSE vs RMS std",
            )
        self.ref_line_ = None
        if ref_line and "Calibrated: RMSE = std" not in legend_labels(ax):
            self.ref_line_ = ax.axline(
                (0.0, 0.0),
                slope=1.0,
                linestyle="--",
                color=REF_COLOR,
                linewidth=1.2,
                label="Calibrated: RMSE = std",
            )
        ax.set(xlabel="Predicted standard deviation", ylabel="|Residual|")
        ax.set_xlim(left=0.0)
        ax.set_ylim(bottom=0.0)
        self._finish(ax, "Residuals vs predicted uncertainty", "upper left")

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
        y = as_real("y_true", y_true).reshape(-1)
        mu = as_real("mean", mean).reshape(-1)
        sigma = check_std("std", std).reshape(-1)
        if not (y.size == mu.size == sigma.size):
            raise ValueError(
                "Expected `y_true`, `mean` and `std` to hold the same number of values, but got "
                f"{y.size}, {mu.size} and {sigma.size}."
            )
        binned_std = binned_rmse = None
        if n_bins:
            binned_std, binned_rmse = binned_residuals(y, mu, sigma, n_bins=n_bins)
        abs_residual = np.abs(y - mu)
        display = cls(
            sigma, abs_residual, binned_std=binned_std, binned_rmse=binned_rmse, name=name
        )
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
        y, mean, std = regression_arrays(result, y_true, kind)
        return cls.from_predictions(y, mean, std, n_bins=n_bins, name=name, ax=ax, **kwargs)


# --------------------------------------------------------------------------------------------
# Monte Carlo convergence
# --------------------------------------------------------------------------------------------
