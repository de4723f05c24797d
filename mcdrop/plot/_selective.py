"""Selective-prediction displays: risk-coverage curves (AURC, AUGRC) and sparsification plots
(AUSE)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from mcdrop._validation import as_real, check_bool, check_choice, match_shape
from mcdrop.metrics import (
    augrc,
    aurc,
    ause,
    risk_coverage_curve,
    sparsification_curve,
)
from mcdrop.plot._base import (
    ArrayLike,
    Display,
    labelled,
    reference_line,
    regression_arrays,
    rejection_inputs,
    scored_result,
    style,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from mcdrop.results import ClassificationResult, RegressionResult

__all__ = ["RiskCoverageDisplay", "SparsificationDisplay"]

_RISKS = ("selective", "generalized")


class RiskCoverageDisplay(Display):
    """Risk-coverage curve: the error rate among the accepted predictions against the share
    accepted, accepting the least uncertain first.

    A useful uncertainty makes the selective risk fall as the coverage shrinks. The legend
    gives the AURC (area under this curve) and the AUGRC (area under the generalised risk,
    the probability of an accepted error, Traub et al. 2024). ``kind="generalized"`` draws the
    generalised risk instead, whose area is the AUGRC.

    Parameters
    ----------
    coverage, risk, generalized_risk : ndarray of shape (N,)
        Output of :func:`mcdrop.metrics.risk_coverage_curve`.
    aurc, augrc : float or None, default=None
        Areas shown in the legend (:func:`mcdrop.metrics.aurc`, :func:`mcdrop.metrics.augrc`).
    name : str or None, default=None
        Legend name (model or uncertainty score).
    oracle_risk, oracle_generalized_risk : ndarray of shape (N,) or None, default=None
        The curves of the oracle that accepts the correct predictions first.

    Attributes
    ----------
    error_rate : float
        Risk at full coverage, the level of random rejection.
    line_ : matplotlib Line2D
    random_line_ : matplotlib Line2D or None
        Random rejection: the error rate (selective) or ``coverage × error rate``
        (generalised).
    oracle_line_ : matplotlib Line2D or None
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from mcdrop.plot import RiskCoverageDisplay
    >>> rng = np.random.default_rng(0)
    >>> probs = rng.dirichlet(np.ones(4), size=400)
    >>> y = rng.integers(0, 4, size=400)
    >>> display = RiskCoverageDisplay.from_predictions(y, probs, name="max prob")
    >>> display.ax_.get_xlabel()
    'Coverage'
    """

    def __init__(
        self,
        coverage: np.ndarray,
        risk: np.ndarray,
        generalized_risk: np.ndarray,
        *,
        aurc: float | None = None,
        augrc: float | None = None,
        name: str | None = None,
        oracle_risk: np.ndarray | None = None,
        oracle_generalized_risk: np.ndarray | None = None,
    ) -> None:
        self.coverage = np.asarray(coverage, dtype=float)
        self.risk = np.asarray(risk, dtype=float)
        self.generalized_risk = np.asarray(generalized_risk, dtype=float)
        self.aurc, self.augrc, self.name = aurc, augrc, name
        self.oracle_risk = oracle_risk
        self.oracle_generalized_risk = oracle_generalized_risk
        self.error_rate = float(self.risk[-1]) if self.risk.size else math.nan

    def _legend(self, name: str | None) -> str | None:
        areas = [
            f"{label} = {value:.3f}"
            for label, value in (("AURC", self.aurc), ("AUGRC", self.augrc))
            if value is not None
        ]
        return labelled(name, ", ".join(areas) or None)

    def plot(
        self,
        *,
        ax: Axes | None = None,
        name: str | None = None,
        kind: str = "selective",
        random_line: bool = True,
        oracle: bool = True,
        **kwargs: Any,
    ) -> RiskCoverageDisplay:
        """Draw the risk-coverage curve.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Axes to draw on; a new figure when ``None``.
        name : str or None, default=None
            Legend name; ``self.name`` when ``None``. The AURC and AUGRC are appended.
        kind : {"selective", "generalized"}, default="selective"
            Draw the selective risk (error rate among accepted) or the generalised risk
            (accepted errors over all predictions).
        random_line : bool, default=True
            Draw random rejection.
        oracle : bool, default=True
            Draw the oracle curve, when it was computed.
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot` for the curve.

        Returns
        -------
        display : RiskCoverageDisplay
        """
        for flag, value in {"random_line": random_line, "oracle": oracle}.items():
            check_bool(flag, value)
        kind = check_choice("kind", kind, _RISKS)
        name = self.name if name is None else name
        line_style = style({"linewidth": 2.0, "label": self._legend(name), "zorder": 3}, kwargs)
        selective = kind == "selective"
        curve = self.risk if selective else self.generalized_risk
        oracle_curve = self.oracle_risk if selective else self.oracle_generalized_risk
        with self._axes(ax, figsize=(5.5, 4.2), layout="constrained") as ax:
            self.random_line_ = self.oracle_line_ = None
            if random_line and math.isfinite(self.error_rate):
                random = [self.error_rate] * 2 if selective else [0.0, self.error_rate]
                self.random_line_ = reference_line(
                    ax, [0.0, 1.0], random, "Random rejection", linestyle=":"
                )
            if oracle and oracle_curve is not None:
                self.oracle_line_ = reference_line(ax, self.coverage, oracle_curve, "Oracle")
            (self.line_,) = ax.plot(self.coverage, curve, **line_style)
            ylabel = "Risk (error rate of accepted)" if selective else "Generalised risk"
            ax.set(xlabel="Coverage", ylabel=ylabel, xlim=(0.0, 1.0))
            title = "Risk–coverage curve" if selective else "Generalised risk–coverage curve"
            self._finish(ax, title, "best", fontsize="small")
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
    ) -> RiskCoverageDisplay:
        """Compute the risk-coverage curve of predictions and plot it.

        Parameters
        ----------
        y_true : array-like or Tensor of shape (N,)
            Integer labels.
        y_prob : array-like or Tensor of shape (N, C) or (N,)
            Predictive probabilities (``(N,)``: positive class of a binary problem).
        scores : array-like or Tensor of shape (N,) or None, default=None
            Uncertainty per example, higher accepted last; ``1 - max probability`` when
            ``None``.
        name : str or None, default=None
            Legend name.
        oracle : bool, default=True
            Also compute (and draw) the curve of an oracle accepting correct predictions first.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        **kwargs : dict
            Passed to :meth:`plot` (``kind``, ``random_line``, style keywords).

        Returns
        -------
        display : RiskCoverageDisplay
        """
        check_bool("oracle", oracle)
        labels, probs, score = rejection_inputs(y_true, y_prob, scores)
        coverage, risk, generalized = risk_coverage_curve(labels, probs, score)
        oracle_risk = oracle_generalized = None
        if oracle:
            matrix = np.stack([1.0 - probs, probs], axis=1) if probs.ndim == 1 else probs
            wrong = (matrix.argmax(axis=1) != labels).astype(np.float64)
            _, oracle_risk, oracle_generalized = risk_coverage_curve(labels, probs, wrong)
        display = cls(
            coverage,
            risk,
            generalized,
            aurc=aurc(labels, probs, score),
            augrc=augrc(labels, probs, score),
            name=name,
            oracle_risk=oracle_risk,
            oracle_generalized_risk=oracle_generalized,
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
    ) -> RiskCoverageDisplay:
        """Risk-coverage curve of a result, accepting by one of its uncertainty scores.

        Parameters
        ----------
        result : ClassificationResult
            MC dropout result; dense outputs are flattened to one prediction per position.
        y_true : array-like or Tensor of shape (N, *S) or None, default=None
            Labels; ``result.targets`` when ``None``.
        score : {"predictive_entropy", "mutual_information", "expected_entropy", \
"variation_ratio", "confidence", "margin"}, default="predictive_entropy"
            Uncertainty used to accept (``confidence`` and ``margin``: high values first).
        name : str or None, default=None
            Legend name; the score's name when ``None``.
        oracle, ax, **kwargs
            As in :meth:`from_predictions`.

        Returns
        -------
        display : RiskCoverageDisplay
        """
        labels, probs, values, name = scored_result(result, y_true, score, name)
        return cls.from_predictions(
            labels, probs, scores=values, name=name, oracle=oracle, ax=ax, **kwargs
        )


_ERRORS = ("absolute", "squared")


class SparsificationDisplay(Display):
    """Sparsification plot: mean error of the retained predictions as the most uncertain are
    removed, beside the oracle that removes the largest errors first (Ilg et al. 2018).

    The shaded gap between the two curves is the sparsification error; its area, the AUSE,
    is in the legend. An uncertainty that ranks the errors well keeps the curves together.

    Parameters
    ----------
    fraction_removed, error, oracle_error : ndarray of shape (M,)
        Output of :func:`mcdrop.metrics.sparsification_curve`.
    ause : float or None, default=None
        Output of :func:`mcdrop.metrics.ause`, shown in the legend.
    name : str or None, default=None
        Legend name.
    error_label : str, default="Mean error of retained"
        Label of the y axis.

    Attributes
    ----------
    line_ : matplotlib Line2D
    oracle_line_ : matplotlib Line2D or None
    fill_ : matplotlib PolyCollection or None
        The gap between the curve and the oracle.
    ax_ : matplotlib Axes
    figure_ : matplotlib Figure

    Examples
    --------
    >>> import numpy as np
    >>> from mcdrop.plot import SparsificationDisplay
    >>> rng = np.random.default_rng(0)
    >>> std = rng.uniform(0.5, 2.0, 300)
    >>> errors = np.abs(std * rng.normal(size=300))
    >>> display = SparsificationDisplay.from_errors(errors, std, name="std")
    >>> display.ax_.get_xlabel()
    'Fraction of samples removed'
    """

    def __init__(
        self,
        fraction_removed: np.ndarray,
        error: np.ndarray,
        oracle_error: np.ndarray,
        *,
        ause: float | None = None,
        name: str | None = None,
        error_label: str = "Mean error of retained",
    ) -> None:
        self.fraction_removed = np.asarray(fraction_removed, dtype=float)
        self.error = np.asarray(error, dtype=float)
        self.oracle_error = np.asarray(oracle_error, dtype=float)
        self.ause, self.name, self.error_label = ause, name, error_label

    def plot(
        self,
        *,
        ax: Axes | None = None,
        name: str | None = None,
        oracle: bool = True,
        fill: bool = True,
        **kwargs: Any,
    ) -> SparsificationDisplay:
        """Draw the sparsification curve, the oracle and the gap between them.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Axes to draw on; a new figure when ``None``.
        name : str or None, default=None
            Legend name; ``self.name`` when ``None``. The AUSE is appended.
        oracle : bool, default=True
            Draw the oracle curve.
        fill : bool, default=True
            Shade the gap between the curve and the oracle (the sparsification error).
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.plot` for the curve.

        Returns
        -------
        display : SparsificationDisplay
        """
        for flag, value in {"oracle": oracle, "fill": fill}.items():
            check_bool(flag, value)
        name = self.name if name is None else name
        label = labelled(name, None if self.ause is None else f"AUSE = {self.ause:.3g}")
        line_style = style({"linewidth": 2.0, "label": label, "zorder": 3}, kwargs)
        with self._axes(ax, figsize=(5.5, 4.2), layout="constrained") as ax:
            self.oracle_line_ = self.fill_ = None
            (self.line_,) = ax.plot(self.fraction_removed, self.error, **line_style)
            if oracle:
                self.oracle_line_ = reference_line(
                    ax, self.fraction_removed, self.oracle_error, "Oracle"
                )
            if fill:
                self.fill_ = ax.fill_between(
                    self.fraction_removed,
                    self.oracle_error,
                    self.error,
                    color=self.line_.get_color(),
                    alpha=0.15,
                    linewidth=0,
                )
            ax.set(xlabel="Fraction of samples removed", ylabel=self.error_label, xlim=(0.0, 1.0))
            self._finish(ax, "Sparsification", "upper right", fontsize="small")
        return self

    @classmethod
    def from_errors(
        cls,
        errors: ArrayLike,
        scores: ArrayLike,
        *,
        name: str | None = None,
        error_label: str = "Mean error of retained",
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> SparsificationDisplay:
        """Sparsification of any per-example errors by an uncertainty score.

        Parameters
        ----------
        errors : array-like or Tensor of shape (N, *S)
            Per-element losses, ``>= 0`` (absolute or squared error, end-point error, a
            classifier's per-example Brier score, ...).
        scores : array-like or Tensor of shape (N, *S)
            Uncertainty, higher removed first.
        name : str or None, default=None
            Legend name.
        error_label : str, default="Mean error of retained"
            Label of the y axis.
        ax : matplotlib Axes or None, default=None
            Axes to draw on.
        **kwargs : dict
            Passed to :meth:`plot`.

        Returns
        -------
        display : SparsificationDisplay
        """
        fraction, error, oracle_error = sparsification_curve(errors, scores)
        display = cls(
            fraction, error, oracle_error, ause=ause(errors, scores), name=name,
            error_label=error_label,
        )  # fmt: skip
        return display.plot(ax=ax, **kwargs)

    @classmethod
    def from_predictions(
        cls,
        y: ArrayLike,
        mean: ArrayLike,
        std: ArrayLike,
        *,
        error: str = "absolute",
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> SparsificationDisplay:
        """Sparsification of regression errors by the predictive standard deviation.

        Parameters
        ----------
        y, mean, std : array-like or Tensor of shape (N, *S)
            Targets, predictive means and standard deviations (``std >= 0``).
        error : {"absolute", "squared"}, default="absolute"
            Per-element error ``|y - mean|`` or ``(y - mean)²``.
        name, ax, **kwargs
            As in :meth:`from_errors`.

        Returns
        -------
        display : SparsificationDisplay
        """
        error = check_choice("error", error, _ERRORS)
        y_arr = as_real("y", y)
        mean_arr = match_shape("mean", as_real("mean", mean), "y", y_arr)
        residual = np.abs(y_arr - mean_arr)
        values = residual if error == "absolute" else residual**2
        label = "Mean absolute error of retained" if error == "absolute" else "MSE of retained"
        return cls.from_errors(values, std, name=name, error_label=label, ax=ax, **kwargs)

    @classmethod
    def from_result(
        cls,
        result: RegressionResult,
        y_true: ArrayLike | None = None,
        *,
        kind: str = "total",
        error: str = "absolute",
        name: str | None = None,
        ax: Axes | None = None,
        **kwargs: Any,
    ) -> SparsificationDisplay:
        """Sparsification of a regression result by its predictive standard deviation.

        Parameters
        ----------
        result : RegressionResult
            MC dropout result; every output element is one prediction.
        y_true : array-like or Tensor of shape (N, *S) or None, default=None
            Targets; ``result.targets`` when ``None``.
        kind : {"total", "epistemic"}, default="total"
            Which standard deviation ranks the predictions.
        error, name, ax, **kwargs
            As in :meth:`from_predictions`; ``name`` defaults to the kind of std.

        Returns
        -------
        display : SparsificationDisplay
        """
        y, mean, std = regression_arrays(result, y_true, kind)
        if name is None:
            name = "Total std" if kind == "total" else "Epistemic std"
        return cls.from_predictions(y, mean, std, error=error, name=name, ax=ax, **kwargs)
