"""Conversion and validation helpers shared by the metric families."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mcdrop._validation import (
    check_choice,
    check_int,
)

_STRATEGIES = ("uniform", "quantile")
_NORMS = ("l1", "l2", "max")
_REDUCTIONS = ("mean", "none")
_LOG_2PI = math.log(2.0 * math.pi)


def _prob_matrix(probs: np.ndarray) -> np.ndarray:
    """``(N, C)`` probabilities; a binary ``(N,)`` vector ``p`` becomes ``[1 - p, p]``."""
    if probs.ndim == 1:
        return np.stack([1.0 - probs, probs], axis=1)
    return probs


def _reduce(name: str, values: np.ndarray, reduction: str) -> float | np.ndarray:
    reduction = check_choice(name, reduction, _REDUCTIONS)
    if reduction == "mean":
        return float(np.mean(values))
    return values


def _check_n_bins(n_bins: Any) -> int:
    return check_int("n_bins", n_bins, minimum=1)
