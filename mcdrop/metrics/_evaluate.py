"""Headline metrics of a result (``evaluate``) and their table (``format_table``)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from mcdrop._validation import (
    ArrayLike,
    check_classification,
    check_int,
    to_array,
    to_real_array,
)
from mcdrop.metrics._base import (
    _check_n_bins,
)
from mcdrop.metrics._calibration import (
    adaptive_calibration_error,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
)
from mcdrop.metrics._ranking import (
    misclassification_auroc,
)
from mcdrop.metrics._regression import (
    _regression_pair,
    crps_gaussian,
    gaussian_nll,
    mc_log_likelihood,
    mean_interval_width,
    miscalibration_area,
    picp,
    rmse,
    sharpness,
)
from mcdrop.metrics._regression_calibration import ence
from mcdrop.metrics._scores import _entropy, accuracy, brier_score, negative_log_likelihood
from mcdrop.metrics._selective import (
    augrc,
    aurc,
    ause,
    prediction_rejection_ratio,
)
from mcdrop.metrics._smooth_calibration import smooth_calibration_error
from mcdrop.results import ClassificationResult, RegressionResult


def _safe(function: Callable[[], float]) -> float:
    try:
        return float(function())
    except ValueError:
        return math.nan


def _evaluate_classification(probs: np.ndarray, labels: Any, n_bins: int) -> dict[str, float]:
    y_true, y_prob = check_classification(labels, probs, allow_1d=False)
    entropy = _entropy(y_prob)
    return {
        "accuracy": accuracy(y_true, y_prob),
        "nll": negative_log_likelihood(y_true, y_prob),
        "brier": brier_score(y_true, y_prob),
        "ece": expected_calibration_error(y_true, y_prob, n_bins=n_bins),
        "mce": maximum_calibration_error(y_true, y_prob, n_bins=n_bins),
        "ace": adaptive_calibration_error(y_true, y_prob, n_bins=n_bins),
        "classwise_ece": classwise_calibration_error(y_true, y_prob, n_bins=n_bins),
        "smooth_ece": smooth_calibration_error(y_true, y_prob),
        "aurc": aurc(y_true, y_prob, entropy),
        "augrc": augrc(y_true, y_prob, entropy),
        "prr": _safe(lambda: prediction_rejection_ratio(y_true, y_prob, entropy)),
        "misclassification_auroc": _safe(lambda: misclassification_auroc(y_true, y_prob, entropy)),
    }


_SPREAD_METRICS = (
    "gaussian_nll",
    "picp_95",
    "mean_width_95",
    "crps",
    "miscalibration_area",
    "ence",
)


def _evaluate_regression(result: RegressionResult, y: Any) -> dict[str, float]:
    from scipy.stats import norm

    mean = to_real_array("result.mean", result.mean).astype(np.float64)
    variance = to_real_array("result.variance", result.variance).astype(np.float64)
    y_arr, mean = _regression_pair(y, "result.mean", mean)
    variance = variance.reshape(mean.shape)
    std = np.sqrt(variance)
    out: dict[str, float] = {"rmse": rmse(y_arr, mean)}
    if np.all(variance > 0.0):
        z = float(norm.ppf(0.975))
        out["gaussian_nll"] = float(gaussian_nll(y_arr, mean, variance))
        out["picp_95"] = picp(y_arr, mean - z * std, mean + z * std)
        out["mean_width_95"] = mean_interval_width(mean - z * std, mean + z * std)
        out["crps"] = float(crps_gaussian(y_arr, mean, std))
        out["miscalibration_area"] = miscalibration_area(y_arr, mean, std)
        out["ence"] = ence(y_arr, mean, std)
        out["ause"] = ause(np.abs(y_arr - mean), std)
    else:  # a deterministic prediction: no distributional metric
        for key in (*_SPREAD_METRICS, "ause"):
            out[key] = math.nan
    out["sharpness"] = sharpness(std)
    if result.samples is not None and result.tau is not None:
        out["mc_log_likelihood"] = float(mc_log_likelihood(y_arr, result.samples, result.tau))
    return out


def evaluate(
    result: ClassificationResult | RegressionResult | ArrayLike,
    y_true: ArrayLike | None = None,
    *,
    n_bins: int = 15,
    ignore_index: int | None = None,
) -> dict[str, float]:
    """Headline metrics of one model's predictions, by name.

    Parameters
    ----------
    result : ClassificationResult, RegressionResult, or array-like of shape (N, C)
        Output of :func:`mcdrop.predict_with_uncertainty`, or a plain probability array
        (classification). For a :class:`~mcdrop.ClassificationResult` of shape ``(N, C, *S)``
        the class dimension ``class_dim`` is moved last and the ``*S`` positions (pixels,
        tokens) are flattened, so each position counts as one prediction.
    y_true : array-like or Tensor or None, default=None
        Targets, shape ``(N,)`` / ``(N, *S)``; ``None`` uses ``result.targets``.
    n_bins : int, default=15
        Bins of the binned calibration errors.
    ignore_index : int or None, default=None
        Classification only: predictions whose label equals this value are left out (the
        ``ignore_index`` of ``torch.nn.CrossEntropyLoss``, e.g. 255 for unlabelled pixels).

    Returns
    -------
    dict of str to float
        Classification: ``accuracy``, ``nll``, ``brier``, ``ece``, ``mce`` (uniform bins, top
        label), ``ace``, ``classwise_ece``, ``smooth_ece`` (fixed-point bandwidth), ``aurc``,
        ``augrc``, ``prr`` (prediction-rejection ratio) and ``misclassification_auroc`` (the
        last four with the predictive entropy as the uncertainty score; ``prr`` and the AUROC
        are NaN when every prediction is right or every one wrong). Regression: ``rmse``,
        ``gaussian_nll`` (total predictive variance), ``picp_95`` and ``mean_width_95``
        (Gaussian central 95 % intervals), ``crps`` (Gaussian closed form),
        ``miscalibration_area``, ``ence`` (10 equal-count bins of the predictive std),
        ``ause`` (absolute errors sparsified by the predictive std), ``sharpness``, and
        ``mc_log_likelihood`` when ``result.samples`` and ``result.tau`` are set. Metrics that
        need a predictive spread are NaN when some predictive variance is zero.

    Raises
    ------
    ValueError
        When no targets are given and the result holds none, or for invalid inputs.
    """
    n_bins = _check_n_bins(n_bins)
    if ignore_index is not None:
        ignore_index = check_int("ignore_index", ignore_index)
    targets: Any = y_true
    if isinstance(result, RegressionResult):
        if ignore_index is not None:
            raise ValueError(
                "Expected `ignore_index` only for classification results, but got a RegressionResult."
            )
        if targets is None:
            targets = result.targets
        if targets is None:
            raise ValueError(
                "Expected `y_true` (or `result.targets`) to hold targets, but got None."
            )
        return _evaluate_regression(result, targets)
    if isinstance(result, ClassificationResult):
        if targets is None:
            targets = result.targets
        mean = result.mean.movedim(result.class_dim, -1)
        probs = to_real_array("result.mean", mean.reshape(-1, mean.shape[-1]))
        if targets is not None:
            targets = to_array("y_true", targets).reshape(-1)
    else:
        probs = to_real_array("result", result)
    if targets is None:
        raise ValueError("Expected `y_true` (or `result.targets`) to hold labels, but got None.")
    if ignore_index is not None:
        targets = to_array("y_true", targets).reshape(-1)
        keep = targets != ignore_index
        if probs.shape[0] != keep.shape[0]:
            raise ValueError(
                f"Expected `y_true` with {probs.shape[0]} labels, but got {keep.shape[0]}."
            )
        if not keep.any():
            raise ValueError(
                f"Expected some labels other than `ignore_index` ({ignore_index}), but all "
                f"{keep.shape[0]} labels of `y_true` equal it: there is nothing to evaluate."
            )
        probs, targets = probs[keep], targets[keep]
    return _evaluate_classification(probs, targets, n_bins)


def format_table(rows: Mapping[str, Mapping[str, float]], *, precision: int = 4) -> str:
    """Lay out the metrics of several models as a fixed-width text table.

    Parameters
    ----------
    rows : mapping of str to mapping of str to float
        Model name to its metrics (e.g. the output of :func:`evaluate`), such as
        ``{"deterministic": {...}, "MC dropout": {...}, "temperature-scaled": {...}}``. One line
        per model, one column per metric name (in order of first appearance); a missing metric
        shows as ``-``.
    precision : int, default=4
        Digits after the decimal point.

    Returns
    -------
    str
        The table, lines separated by ``"\\n"``, without a trailing newline.
    """
    precision = check_int("precision", precision, minimum=0)
    if not isinstance(rows, Mapping):
        raise TypeError(
            f"Expected `rows` to be a mapping of model name to metrics, but got "
            f"{type(rows).__name__}."
        )
    if not rows:
        raise ValueError("Expected `rows` to hold at least one model, but got an empty mapping.")
    columns: list[str] = []
    for metrics in rows.values():
        for key in metrics:
            if key not in columns:
                columns.append(str(key))

    def cell(metrics: Mapping[str, float], key: str) -> str:
        if key not in metrics:
            return "-"
        value = metrics[key]
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return str(int(value))
        return f"{float(value):.{precision}f}"

    header = ["model", *columns]
    body = [[str(name), *(cell(metrics, key) for key in columns)] for name, metrics in rows.items()]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(line: list[str]) -> str:
        first = line[0].ljust(widths[0])
        rest = [text.rjust(width) for text, width in zip(line[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([render(header), rule, *(render(line) for line in body)])
