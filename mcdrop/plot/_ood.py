"""Out-of-distribution displays: score histograms and ROC curves."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from mcdrop._validation import as_real, check_bool, check_choice, check_int
from mcdrop.metrics import ood_auroc, ood_roc_curve
from mcdrop.plot._base import (
    REF_COLOR,
    ArrayLike,
    Display,
    labelled,
    legend_labels,
    paired_scores,
    style,
)

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes

    from mcdrop.results import ClassificationResult, RegressionResult

__all__ = ["OODHistogramDisplay", "OODRocDisplay"]


class OODHistogramDisplay(Display):
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
        self,
        *,
        ax: Axes | None = None,
        name: str | None = None,
        yscale: str = "auto",
        **kwargs: Any,
    ) -> OODHistogramDisplay:
        """Draw both histograms as filled steps on one axes.

        Parameters
        ----------
        ax : matplotlib Axes or None, default=None
            Axes to draw on; a new figure when ``None``.
        name : str or None, default=None
            Prefix of the legend entries; ``self.name`` when ``None``.
        yscale : {"auto", "linear", "log"}, default="auto"
            Scale of the density axis. ``"auto"`` uses a log scale when one bin holds more than
            half of either sample (a spike, e.g. scores of exactly zero, that would flatten
            everything else on a linear axis).
        **kwargs : dict
            Passed to :meth:`matplotlib.axes.Axes.stairs` for both histograms (e.g. ``alpha``).

        Returns
        -------
        display : OODHistogramDisplay
        """
        yscale = check_choice("yscale", yscale, ["auto", "linear", "log"])
        name = self.name if name is None else name
        prefix = f"{name}: " if name else ""
        out_label = f"{prefix}out-of-distribution" if name else "Out-of-distribution"
        if self.auroc is not None:
            out_label += f" (AUROC = {self.auroc:.3f})"
        in_label = f"{prefix}in-distribution" if name else "In-distribution"
        base = {"fill": True, "alpha": 0.45, "linewidth": 1.5}
        in_style = style({**base, "color": "C0", "label": in_label}, kwargs, "stairs")
        out_style = style({**base, "color": "C3", "label": out_label}, kwargs, "stairs")
        if yscale == "auto":
            yscale = "log" if self.spike_fraction > 0.5 else "linear"
        with self._axes(ax, figsize=(5.5, 4.2), layout="constrained") as ax:
            self.hist_in_ = ax.stairs(self.density_in, self.edges, **in_style)
            self.hist_out_ = ax.stairs(self.density_out, self.edges, **out_style)
            ax.set(xlabel=self.score_name, ylabel="Density")
            if yscale == "log":
                ax.set_yscale("log")
                ax.set_ylabel("Density (log scale)")
            else:
                ax.set_ylim(bottom=0.0)
            self._finish(ax, "Uncertainty: in- vs out-of-distribution", "upper right")
        return self

    @property
    def spike_fraction(self) -> float:
        """Largest fraction of either sample that falls in a single bin."""
        widths = np.diff(self.edges)
        masses = [density * widths for density in (self.density_in, self.density_out)]
        return float(max(np.nanmax(mass) if mass.size else 0.0 for mass in masses))

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
        s_in = as_real("scores_in", scores_in).reshape(-1)
        s_out = as_real("scores_out", scores_out).reshape(-1)
        if not isinstance(bins, str):
            bins = check_int("bins", bins, minimum=1)
        edges = np.histogram_bin_edges(np.concatenate([s_in, s_out]), bins=bins)
        density_in = np.histogram(s_in, bins=edges, density=True)[0]
        density_out = np.histogram(s_out, bins=edges, density=True)[0]
        display = cls(
            edges,
            density_in,
            density_out,
            auroc=float(ood_auroc(s_in, s_out)),
            score_name=score_name,
            name=name,
        )
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
            Results on in-distribution and out-of-distribution inputs, of the same task (the
            same measure is compared on both); dense outputs are flattened to one score per
            position.
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
        s_in, s_out, label = paired_scores(result_in, result_out, score)
        return cls.from_scores(s_in, s_out, bins=bins, score_name=label, name=name, ax=ax, **kwargs)


class OODRocDisplay(Display):
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
        check_bool("chance_line", chance_line)
        name = self.name if name is None else name
        label = labelled(name, None if self.auroc is None else f"AUROC = {self.auroc:.3f}")
        line_style = style({"linewidth": 2.0, "label": label, "drawstyle": "steps-post"}, kwargs)
        with self._axes(ax, figsize=(5.0, 5.0), layout="constrained") as ax:
            self.chance_line_ = None
            if chance_line and "Chance (AUROC = 0.5)" not in legend_labels(ax):
                (self.chance_line_,) = ax.plot(
                    [0, 1],
                    [0, 1],
                    linestyle="--",
                    color=REF_COLOR,
                    linewidth=1.2,
                    label="Chance (AUROC = 0.5)",
                )
            (self.line_,) = ax.plot(self.fpr, self.tpr, **line_style)
            ax.set(
                xlabel="False positive rate (in-distribution flagged)",
                ylabel="True positive rate (OOD detected)",
                xlim=(-0.01, 1.01),
                ylim=(-0.01, 1.01),
            )
            self._finish(ax, "Out-of-distribution detection", "lower right")
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
        s_in = as_real("scores_in", scores_in).reshape(-1)
        s_out = as_real("scores_out", scores_out).reshape(-1)
        fpr, tpr = ood_roc_curve(s_in, s_out)
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
            Results on in-distribution and out-of-distribution inputs, of the same task.
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
        s_in, s_out, label = paired_scores(result_in, result_out, score)
        if name is None:
            name = label.replace(" (nats)", "")
        return cls.from_scores(s_in, s_out, name=name, ax=ax, **kwargs)
