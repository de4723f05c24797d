"""A result in a few lines: what ``repr(result)`` and ``result.summary()`` print.

Every number is computed here from the result's own tensors (float64 means over every example
and position); nothing is stored for it. The sampling record, when the result carries one, is
read duck-typed (:func:`format_record`), so this module needs nothing from :mod:`mcdrop.sampling`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["format_record", "summarize_result"]

RECORD_WIDTH = 96  # characters of one record line
RECORD_LINES = 2  # lines of the record at most


def _num(value: float) -> str:
    """Four significant digits; ``inf`` and ``nan`` as Python writes them."""
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _mean_max(values: torch.Tensor) -> tuple[float, float]:
    if values.numel() == 0:
        return math.nan, math.nan
    values = values.detach().double()
    return float(values.mean()), float(values.max())


def _shape(tensor: torch.Tensor) -> str:
    return f"({', '.join(map(str, tensor.shape))}{',' if tensor.ndim == 1 else ''})"


def _standard_error_line(result: Any) -> str:
    reached = result.standard_error_reached
    if reached is not None:
        return (
            f"  Monte Carlo standard error of mean: reached {_num(reached)} "
            f"(n_samples='auto', up to T={result.n_samples} per example)"
        )
    se = result.standard_error
    worst = _mean_max(se)[1] if se is not None else math.nan
    return (
        f"  Monte Carlo standard error of mean: max {_num(worst)} "
        f"(n_samples={result.n_samples} fixed)"
    )


def _clip(text: str, width: int = RECORD_WIDTH) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_record(record: Any) -> list[str]:
    """At most :data:`RECORD_LINES` lines for the sampling record a result may carry.

    ``None`` gives no line; an object with a ``summary()`` method gives the first lines of what
    it returns; a mapping gives ``key=value`` pairs; anything else its ``str``. Each line is
    clipped to :data:`RECORD_WIDTH` characters.
    """
    if record is None:
        return []
    summary = getattr(record, "summary", None)
    if callable(summary):
        text = str(summary())
    elif isinstance(record, Mapping):
        text = ", ".join(f"{key}={value}" for key, value in record.items())
    else:
        text = str(record)
    lines = [line for line in text.splitlines() if line.strip()] or [""]
    shown = [_clip(line) for line in lines[:RECORD_LINES]]
    if len(lines) > RECORD_LINES:
        shown[-1] = _clip(shown[-1] + f" (+{len(lines) - RECORD_LINES} lines)")
    return [f"  sampling: {shown[0]}", *(f"            {line}" for line in shown[1:])]


def _head(result: Any, extra: str = "") -> str:
    n = result.mean.shape[0] if result.mean.ndim else 1
    if result.masks == "shared":  # one network per sample: joint quantities are meaningful
        extra += ", masks='shared'"
    return (
        f"{type(result).__name__}(task={result.task!r}, N={n}, T={result.n_samples}{extra}, "
        f"mean {_shape(result.mean)} {str(result.mean.dtype).removeprefix('torch.')})"
    )


def _tail(result: Any) -> list[str]:
    lines = []
    kept = []
    if result.targets is not None:
        kept.append(f"targets {_shape(result.targets)}")
    if result.samples is not None:
        kept.append(f"samples {_shape(result.samples)}")
    if kept:
        lines.append(f"  kept: {', '.join(kept)}")
    return lines + format_record(result.sampling)


def _classification(result: Any) -> list[str]:
    per = "example" if result.mean.ndim == 2 else "position"
    h_mean, h_max = _mean_max(result.predictive_entropy)
    mi_mean, mi_max = _mean_max(result.mutual_information)
    conf_mean, _ = _mean_max(result.confidence)
    return [
        _head(result, f", C={result.num_classes}"),
        f"  predictive entropy: mean {_num(h_mean)} nats, max {_num(h_max)} "
        f"(per {per}; at most log C = {_num(math.log(max(result.num_classes, 1)))})",
        f"  mutual information (BALD): mean {_num(mi_mean)} nats, max {_num(mi_max)}",
        f"  confidence (largest probability): mean {_num(conf_mean)}",
        _standard_error_line(result),
        *_tail(result),
    ]


def _regression(result: Any) -> list[str]:
    std_mean, std_max = _mean_max(result.std)
    epi_mean, _ = _mean_max(result.epistemic_variance.sqrt())
    ale_mean, _ = _mean_max(result.aleatoric_variance.sqrt())
    noise = "no aleatoric variance given"
    if result.tau is not None:
        noise = f"tau={_num(result.tau)}"
    elif ale_mean > 0 or math.isnan(ale_mean):
        noise = "heteroscedastic"
    return [
        _head(result),
        f"  predictive std: mean {_num(std_mean)}, max {_num(std_max)}",
        f"    epistemic std: mean {_num(epi_mean)}; aleatoric std: mean {_num(ale_mean)} ({noise})",
        _standard_error_line(result),
        *_tail(result),
    ]


def summarize_result(result: Any) -> str:
    """The lines of ``result.summary()`` joined: at most ten, whatever the size of the result."""
    if result.task == "classification":
        return "\n".join(_classification(result))
    return "\n".join(_regression(result))
