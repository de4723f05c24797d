"""The report that ``mcdrop demo`` and ``mcdrop report`` write, as a library function.

:func:`report` scores a result (and, optionally, other models' probabilities on the same
examples) with :func:`mcdrop.metrics.evaluate`, draws the standard figures and returns them in a
:class:`Report`; with ``out=`` it also writes the figures as PNG files and ``report.json``. From a
notebook::

    rep = mcdrop.report(result, y_test, compare={"deterministic": probs})
    print(rep.table())
    rep.figures["reliability"]  # a Matplotlib Figure

Figures are built without pyplot (no GUI backend, nothing left open).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from mcdrop.results import ClassificationResult, RegressionResult

__all__ = ["Report", "report"]

#: Columns of the printed classification table (every metric of ``evaluate`` goes to the JSON).
CLASSIFICATION_COLUMNS = ("accuracy", "nll", "brier", "ece")
REGRESSION_COLUMNS = ("rmse", "gaussian_nll", "picp_95", "crps")


@dataclass
class Report:
    """Metrics, figures and JSON payload of one report.

    Attributes
    ----------
    metrics : dict of str to dict of str to float
        Model name to every metric of :func:`mcdrop.metrics.evaluate`.
    columns : tuple of str
        Metrics shown by :meth:`table`.
    figures : dict of str to matplotlib Figure
        Figure name (file name without ``.png``) to figure.
    payload : dict
        The content of ``report.json`` (NaN written as ``null``).
    files : list of str
        Files written by :meth:`save` (empty before).
    """

    metrics: dict[str, dict[str, float]]
    columns: tuple[str, ...]
    figures: dict[str, Figure]
    payload: dict[str, Any]
    files: list[str] = field(default_factory=list)

    def table(self, columns: Sequence[str] | None = None) -> str:
        """The metrics as a fixed-width text table (:func:`mcdrop.metrics.format_table`)."""
        from mcdrop.metrics import format_table

        keys = self.columns if columns is None else tuple(columns)
        return format_table(
            {name: {k: m[k] for k in keys if k in m} for name, m in self.metrics.items()}
        )

    def save(self, out: str | os.PathLike[str], *, dpi: int = 120) -> list[str]:
        """Write every figure as ``out/NAME.png`` and the payload as ``out/report.json``.

        Returns the names of the files written (also stored in ``files``). ``out`` is created
        if needed; a ``ValueError`` names it when that is impossible.
        """
        directory = output_dir(out)
        files = []
        for name, figure in self.figures.items():
            figure.savefig(directory / f"{name}.png", dpi=dpi)
            files.append(f"{name}.png")
        files.append("report.json")
        self.payload["files"] = [*files, *self.payload.get("extra_files", [])]
        write_json(directory / "report.json", self.payload)
        self.files = files
        return files


def output_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a directory, created if needed; ``ValueError`` when impossible."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(
            f"cannot create the output directory {str(path)!r}: a file is in the way"
        ) from None
    except OSError as error:
        raise ValueError(
            f"cannot create the output directory {str(path)!r}: {error.strerror}"
        ) from None
    return out


def json_safe(value: Any) -> Any:
    """Plain JSON values: NaN and infinities become ``null`` (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (np.floating, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    text = json.dumps(json_safe(payload), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


@contextmanager
def new_figure(
    figures: dict[str, Figure], name: str, *, figsize: tuple[float, float]
) -> Iterator[Figure]:
    """A pyplot-free Matplotlib figure stored under ``name`` once drawn."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    yield figure
    figures[name] = figure


def report(
    result: ClassificationResult | RegressionResult,
    targets: Any = None,
    *,
    name: str = "MC dropout",
    compare: Mapping[str, Any] | None = None,
    n_bins: int = 15,
    out: str | os.PathLike[str] | None = None,
    info: Mapping[str, Any] | None = None,
) -> Report:
    """Metrics table, figures and JSON report of a result (what ``mcdrop report`` writes).

    Parameters
    ----------
    result : ClassificationResult or RegressionResult
        MC dropout result, e.g. of :func:`mcdrop.predict_with_uncertainty` or
        :func:`mcdrop.load_result`.
    targets : array-like or Tensor of shape (N, *S) or None, default=None
        Labels or regression targets; ``result.targets`` when ``None``.
    name : str, default="MC dropout"
        Name of the result in the table and the legends.
    compare : mapping of str to array-like or None, default=None
        Other models' ``(N, C)`` probabilities on the same examples (classification with
        ``(N, C)`` outputs only), e.g. ``{"deterministic": probs}``: scored and drawn beside
        the result, in this order after it.
    n_bins : int, default=15
        Bins of the calibration errors and the reliability diagrams.
    out : path or None, default=None
        Directory to write ``NAME.png`` figures and ``report.json`` into; nothing is written
        when ``None`` (call :meth:`Report.save` later).
    info : mapping or None, default=None
        Extra JSON-safe entries of the payload (e.g. the command and its settings).

    Returns
    -------
    Report
        Figures: ``reliability``, ``accuracy_rejection`` and ``uncertainty_hist``
        (classification; only ``reliability`` for dense outputs), or
        ``regression_calibration`` and ``residual_std`` (regression).

    Raises
    ------
    ValueError
        No targets, targets that do not match the result, or an output directory that cannot
        be made. ``TypeError`` for a ``result`` that is not a result.
    """
    from mcdrop._version import __version__
    from mcdrop.metrics import evaluate
    from mcdrop.results import ClassificationResult, RegressionResult

    if not isinstance(result, (ClassificationResult, RegressionResult)):
        raise TypeError(
            "Expected `result` to be a ClassificationResult or RegressionResult, but got "
            f"{type(result).__name__}."
        )
    labels = _targets(result, targets)
    models: dict[str, Any] = {name: result}
    for other, probs in (compare or {}).items():
        if str(other) in models:
            raise ValueError(
                f"Expected distinct model names in `compare`, but got {other!r} twice."
            )
        models[str(other)] = probs
    try:
        metrics = {model: evaluate(value, labels, n_bins=n_bins) for model, value in models.items()}
    except (ValueError, TypeError) as error:
        raise ValueError(f"cannot score the result against its targets: {error}") from None

    figures: dict[str, Figure] = {}
    if isinstance(result, ClassificationResult):
        columns: tuple[str, ...] = CLASSIFICATION_COLUMNS
        if result.mean.ndim == 2:
            _plot_classification(figures, models, result, labels.reshape(-1), n_bins=n_bins)
        else:  # dense outputs (segmentation, tokens): one reliability diagram of every position
            _plot_dense_reliability(figures, result, labels, name, n_bins)
    else:
        columns = REGRESSION_COLUMNS
        _plot_regression(figures, result, labels)
    payload = {
        "mcdrop_version": __version__,
        **dict(info or {}),
        "task": result.task,
        "n_examples": int(result.mean.shape[0]),
        "n_samples": result.n_samples,
        "table_columns": list(columns),
        "metrics": metrics,
    }
    rep = Report(metrics=metrics, columns=columns, figures=figures, payload=payload)
    if out is not None:
        rep.save(out)
    return rep


def _targets(result: Any, targets: Any) -> np.ndarray:
    if targets is None:
        if result.targets is None:
            raise ValueError(
                "Expected `targets` to be given when `result.targets` is None, but got None."
            )
        targets = result.targets
    if hasattr(targets, "detach"):
        targets = targets.detach().cpu().numpy()
    array = np.asarray(targets)
    n = int(result.mean.shape[0])
    if array.ndim == 0 or array.shape[0] != n:
        raise ValueError(
            f"expected {n} targets (one per example of the result), but got shape "
            f"{tuple(array.shape)}"
        )
    return array


def _plot_classification(
    figures: dict[str, Figure],
    models: Mapping[str, Any],
    result: ClassificationResult,
    labels: np.ndarray,
    *,
    n_bins: int,
) -> None:
    """Reliability diagrams, accuracy-rejection curves and uncertainty histograms."""
    from mcdrop.plot import AccuracyRejectionDisplay, OODHistogramDisplay, ReliabilityDisplay

    n_models = len(models)
    with new_figure(figures, "reliability", figsize=(max(4.2 * n_models, 5.6), 6.0)) as fig:
        grid = fig.add_gridspec(2, n_models, height_ratios=(3.2, 1.0))
        for column, (model, value) in enumerate(models.items()):
            ax = fig.add_subplot(grid[0, column])
            hist_ax = fig.add_subplot(grid[1, column], sharex=ax)
            probs = value.mean if hasattr(value, "task") else value
            display = ReliabilityDisplay.from_predictions(
                labels,
                probs,
                n_bins=n_bins,
                name=model,
                ax=ax,
                hist_ax=hist_ax,
                color=f"C{column}",
            )
            ax.set_title(f"{model}\nECE = {display.ece:.4f}", fontsize="medium")
            legend = ax.get_legend()
            if legend is not None and column:
                legend.remove()
            elif legend is not None:
                ax.legend(loc="lower right", fontsize="x-small")
            if column:
                ax.set_ylabel("")
                hist_ax.set_ylabel("")
        fig.suptitle(
            "Accuracy per confidence bin (bars, with 95% Wilson intervals and the number of "
            "test images above)\nhatched: gap to the diagonal of perfect calibration",
            fontsize="medium",
        )

    with new_figure(figures, "accuracy_rejection", figsize=(5.6, 4.4)) as fig:
        ax = fig.add_subplot()
        AccuracyRejectionDisplay.from_result(result, labels, score="predictive_entropy", ax=ax)
        AccuracyRejectionDisplay.from_result(
            result, labels, score="mutual_information", ax=ax, oracle=False
        )
        ax.set_title(f"Accuracy–rejection, MC dropout (T = {result.n_samples})")

    with new_figure(figures, "uncertainty_hist", figsize=(9.0, 3.8)) as fig:
        correct = result.predicted_class.numpy().reshape(-1) == labels.reshape(-1)
        for ax, score in zip(
            fig.subplots(1, 2), ("predictive_entropy", "mutual_information"), strict=True
        ):
            values = getattr(result, score).numpy().reshape(-1)
            if correct.all() or not correct.any():
                ax.hist(values, bins=30, color="C0")
                ax.set(xlabel=score.replace("_", " "), ylabel="Count")
                continue
            hist = OODHistogramDisplay.from_scores(
                values[correct],
                values[~correct],
                bins=30,
                ax=ax,
                score_name=score.replace("_", " ").capitalize() + " (nats)",
            )
            hist.hist_in_.set_label(f"correct ({int(correct.sum())})")
            hist.hist_out_.set_label(f"wrong ({int((~correct).sum())}), AUROC = {hist.auroc:.3f}")
            ax.set_title("")
            ax.legend(loc="upper right", fontsize="small")
        fig.suptitle("MC dropout uncertainty of correct and wrong predictions")


def _plot_regression(
    figures: dict[str, Figure], result: RegressionResult, targets: np.ndarray
) -> None:
    from mcdrop.plot import RegressionCalibrationDisplay, ResidualStdDisplay

    with new_figure(figures, "regression_calibration", figsize=(5.0, 5.0)) as fig:
        RegressionCalibrationDisplay.from_result(
            result, targets, name="total", ax=fig.add_subplot()
        )
    with new_figure(figures, "residual_std", figsize=(5.6, 4.4)) as fig:
        ResidualStdDisplay.from_result(result, targets, ax=fig.add_subplot())


def _plot_dense_reliability(
    figures: dict[str, Figure],
    result: ClassificationResult,
    targets: np.ndarray,
    name: str,
    n_bins: int,
) -> None:
    from mcdrop.plot import ReliabilityDisplay

    with new_figure(figures, "reliability", figsize=(5.0, 6.2)) as fig:
        grid = fig.add_gridspec(2, 1, height_ratios=(3.2, 1.0))
        ax = fig.add_subplot(grid[0])
        hist_ax = fig.add_subplot(grid[1], sharex=ax)
        ReliabilityDisplay.from_result(
            result, targets, n_bins=n_bins, name=name, ax=ax, hist_ax=hist_ax
        )
