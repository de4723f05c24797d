"""Shared set-up of every display: axes and figure, names and legends, styles, input checks.

Displays only draw: the plotted statistics come from :mod:`mcdrop.metrics` or the results.
Every ``plot`` validates its style keywords *before* it creates a figure, and closes a figure it
created when drawing fails, so an error never leaves a figure open.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from mcdrop._validation import as_real, check_choice, check_nonempty, to_array

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from mcdrop.results import ClassificationResult, RegressionResult

ArrayLike = Any  # numpy array, torch tensor or nested sequence

#: Matplotlib's short aliases of style keywords.
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

#: Keywords that the Axes methods accept besides the properties of the artist they make.
_METHOD_KEYWORDS = {
    "line": {"scalex", "scaley", "data"},
    "bar": {"tick_label", "xerr", "yerr", "ecolor", "capsize", "error_kw", "log", "data"},
    "stairs": {"orientation", "baseline", "fill", "data"},
    "scatter": {
        "s",
        "c",
        "marker",
        "cmap",
        "norm",
        "vmin",
        "vmax",
        "plotnonfinite",
        "data",
        "linewidths",
        "edgecolors",
        "colorizer",
    },
    "fill": {"where", "interpolate", "step", "data"},
}

REF_COLOR = "0.35"

#: Classification uncertainty scores: result attribute and axis label; "higher = more uncertain".
CLASSIFICATION_SCORES = {
    "predictive_entropy": "Predictive entropy (nats)",
    "mutual_information": "Mutual information (nats)",
    "expected_entropy": "Expected entropy (nats)",
    "variation_ratio": "Variation ratio",
    "confidence": "1 − confidence",
    "margin": "1 − margin",
    "disagreement": "Disagreement",
    "expected_pairwise_kl": "Expected pairwise KL (nats)",
    "reverse_mutual_information": "Reverse mutual information (nats)",
}
REGRESSION_SCORES = {
    "std": "Predictive standard deviation",
    "variance": "Predictive variance",
    "epistemic_variance": "Epistemic variance",
    "aleatoric_variance": "Aleatoric variance",
}


def _artist_class(kind: str) -> type:
    from matplotlib.collections import PathCollection, PolyCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle, StepPatch

    return {
        "line": Line2D,
        "bar": Rectangle,
        "stairs": StepPatch,
        "scatter": PathCollection,
        "fill": PolyCollection,
    }[kind]


def style(
    defaults: Mapping[str, Any], user: Mapping[str, Any], kind: str = "line"
) -> dict[str, Any]:
    """Merge user style keywords over defaults, resolving Matplotlib aliases (``c``, ``ls``...).

    A user alias replaces the default under its full name, so ``c="red"`` overrides a default
    ``color`` instead of making Matplotlib complain about both being given. Every user keyword
    is checked against the properties of the artist ``kind`` draws, so a typo raises a
    ``TypeError`` before anything is drawn.
    """
    artist = _artist_class(kind)
    out = dict(defaults)
    for key, value in user.items():
        full = _ALIASES.get(key, key)
        if full != key and full in user:
            raise TypeError(f"Expected only one of `{key}` and `{full}` (aliases), but got both.")
        if key not in _METHOD_KEYWORDS[kind] and not callable(getattr(artist, f"set_{key}", None)):
            raise TypeError(
                f"Expected the style keywords to be properties of a Matplotlib "
                f"{artist.__name__}, but got the unknown keyword {key!r}."
            )
        out[full] = value
    return out


def legend_labels(ax: Axes) -> list[str]:
    return list(ax.get_legend_handles_labels()[1])


def once(ax: Axes, label: str) -> str:
    """``label`` the first time it appears on ``ax``; a hidden label afterwards."""
    return label if label not in legend_labels(ax) else f"_{label}"


def reference_line(
    ax: Axes, x: Any, y: Any, label: str, *, linestyle: str = "--", zorder: float = 2
) -> Line2D:
    """A thin grey reference curve (oracle, random rejection) on ``ax``, in the legend once."""
    (line,) = ax.plot(
        x,
        y,
        color=REF_COLOR,
        linestyle=linestyle,
        linewidth=1.2,
        label=once(ax, label),
        zorder=zorder,
    )
    return line


def labelled(name: str | None, value_text: str | None) -> str | None:
    """``"name (ECE = 0.042)"``, ``"name"``, ``"ECE = 0.042"`` or ``None``."""
    if name and value_text:
        return f"{name} ({value_text})"
    return name or value_text


class Display:
    """Base of every display: figure set-up, a closed figure on error, title and legend.

    Subclasses set ``ax_`` and ``figure_`` through :meth:`_axes` inside ``plot`` and return
    ``self``.
    """

    ax_: Axes
    figure_: Figure

    @contextmanager
    def _axes(self, ax: Axes | None, *, owned: bool = False, **subplots: Any) -> Iterator[Axes]:
        """The given axes, or a new figure's; the new figure is closed if drawing fails.

        ``owned=True`` marks a given ``ax`` as made by the display (closed on failure too).
        """
        created = ax is None or owned
        if ax is None:
            import matplotlib.pyplot as plt

            _, ax = plt.subplots(**subplots)
        self.ax_, self.figure_ = ax, ax.figure  # type: ignore[assignment]
        try:
            yield ax
        except BaseException:
            if created:
                import matplotlib.pyplot as plt

                plt.close(self.figure_)
            raise

    @staticmethod
    def _finish(ax: Axes, title: str, legend_loc: Any = "best", **legend: Any) -> None:
        """Default title (kept when the user set one) and a refreshed legend."""
        if not ax.get_title():
            ax.set_title(title)
        if legend_loc is not None and ax.get_legend_handles_labels()[0]:
            ax.legend(loc=legend_loc, **legend)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def labels_of(name: str, value: ArrayLike) -> np.ndarray:
    """Non-empty flattened labels (range checked later by the metric)."""
    array = to_array(name, value).reshape(-1)
    check_nonempty(name, array)
    return array


def probabilities(y_prob: ArrayLike, argument: str = "y_prob") -> np.ndarray:
    """Non-empty, finite ``(N, C)`` or ``(N,)`` probabilities (values checked by the metric)."""
    probs = as_real(argument, y_prob)
    if probs.ndim not in (1, 2):
        raise ValueError(
            f"Expected `{argument}` of shape (N, C) or (N,), but got shape {probs.shape}."
        )
    return probs


def rejection_inputs(
    y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, probabilities and uncertainty scores of a rejection or risk-coverage curve;
    ``1 - max probability`` when ``scores`` is ``None`` (``max(p, 1 - p)`` for an ``(N,)`` p)."""
    probs = probabilities(y_prob)
    labels = labels_of("y_true", y_true)
    if scores is None:
        top = np.maximum(probs, 1.0 - probs) if probs.ndim == 1 else probs.max(axis=-1)
        return labels, probs, 1.0 - top
    return labels, probs, as_real("scores", scores).reshape(-1)


def one_d(name: str, value: ArrayLike) -> np.ndarray:
    """Non-empty, finite 1-D array; ``(N, 1)`` is squeezed."""
    array = as_real(name, value)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise ValueError(
            f"Expected `{name}` of shape (N,) or (N, 1) (a 1-D problem), but got shape "
            f"{array.shape}."
        )
    return array


def targets(result: Any, y_true: ArrayLike | None, argument: str = "y_true") -> ArrayLike:
    if y_true is not None:
        return y_true
    if getattr(result, "targets", None) is not None:
        return result.targets
    raise ValueError(
        f"Expected `{argument}` to be given when `result.targets` is None, but got None. "
        "Pass the labels, or predict on (inputs, targets) batches so the result keeps them."
    )


def check_result(result: Any, task: str, argument: str = "result") -> None:
    if getattr(result, "task", None) != task:
        expected = "ClassificationResult" if task == "classification" else "RegressionResult"
        raise TypeError(
            f"Expected `{argument}` to be a {expected}, but got {type(result).__name__}."
        )


def flatten_classification(
    result: ClassificationResult, y_true: ArrayLike | None
) -> tuple[np.ndarray | None, np.ndarray]:
    """Targets ``(M,)`` and probabilities ``(M, C)`` with the class dimension moved last."""
    check_result(result, "classification")
    probs = as_real("result.mean", result.mean)
    probs = np.moveaxis(probs, result.class_dim, -1).reshape(-1, probs.shape[result.class_dim])
    labels = None
    if y_true is not None:
        labels = labels_of("y_true", y_true)
        if labels.shape[0] != probs.shape[0]:
            raise ValueError(
                f"Expected `y_true` to hold {probs.shape[0]} labels (one per example and "
                f"position of `result.mean`), but got {labels.shape[0]}."
            )
    return labels, probs


def classification_score(result: ClassificationResult, score: str) -> tuple[np.ndarray, str]:
    """Flattened uncertainty score named ``score`` (higher = more uncertain) and its label."""
    check_result(result, "classification")
    score = check_choice("score", score, CLASSIFICATION_SCORES)
    values = as_real(f"result.{score}", getattr(result, score)).reshape(-1)
    if score in ("confidence", "margin"):
        values = 1.0 - values
    return values, CLASSIFICATION_SCORES[score]


def scored_result(
    result: ClassificationResult, y_true: ArrayLike | None, score: str, name: str | None
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray, str]:
    """Flattened labels, probabilities and the uncertainty ``score`` of a result, and the legend
    name (the score's, without its unit, when ``name`` is ``None``)."""
    values, score_label = classification_score(result, score)
    labels, probs = flatten_classification(result, targets(result, y_true))
    return labels, probs, values, score_label.replace(" (nats)", "") if name is None else name


def result_score(
    result: Any, score: str | None, argument: str = "result"
) -> tuple[np.ndarray, str]:
    task = getattr(result, "task", None)
    if task == "classification":
        return classification_score(result, score or "mutual_information")
    if task == "regression":
        score = check_choice("score", score or "std", REGRESSION_SCORES)
        return as_real(f"{argument}.{score}", getattr(result, score)).reshape(-1), (
            REGRESSION_SCORES[score]
        )
    raise TypeError(
        f"Expected `{argument}` to be a ClassificationResult or RegressionResult, but got "
        f"{type(result).__name__}."
    )


def paired_scores(
    result_in: Any, result_out: Any, score: str | None
) -> tuple[np.ndarray, np.ndarray, str]:
    """The same uncertainty measure of an in- and an out-of-distribution result of one task."""
    task_in, task_out = getattr(result_in, "task", None), getattr(result_out, "task", None)
    if task_in in ("classification", "regression") and task_out != task_in:
        raise TypeError(
            f"Expected `result_out` to be a {type(result_in).__name__} like `result_in` (the "
            f"same uncertainty measure on both), but got {type(result_out).__name__}."
        )
    s_in, label = result_score(result_in, score, "result_in")
    s_out, _ = result_score(result_out, score, "result_out")
    return s_in, s_out, label


def regression_arrays(
    result: RegressionResult, y_true: ArrayLike | None, kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flattened ``y``, ``mean`` and ``std`` (total or epistemic) of a regression result."""
    check_result(result, "regression")
    kind = check_choice("kind", kind, ["total", "epistemic"])
    y = as_real("y_true", targets(result, y_true)).reshape(-1)
    mean = as_real("result.mean", result.mean).reshape(-1)
    var = result.variance if kind == "total" else result.epistemic_variance
    std = np.sqrt(np.clip(as_real(f"result.{kind} variance", var), 0.0, None)).reshape(-1)
    if y.shape != mean.shape:
        raise ValueError(
            f"Expected `y_true` to hold {mean.shape[0]} values like `result.mean`, but got "
            f"{y.shape[0]}."
        )
    return y, mean, std
