"""Argument checks shared by the whole package.

Every message follows one template: it names the argument, says what was expected and shows the
value that was received, e.g. ``"Expected `n_samples` to be an integer >= 1, but got 0."``
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any, TypeAlias

import numpy as np
import torch
from numpy.typing import ArrayLike as _NPArrayLike

__all__: list[str] = []


ArrayLike: TypeAlias = "_NPArrayLike | torch.Tensor"


def _describe(value: Any) -> str:
    """Short, readable rendering of a received value for an error message."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} (type {type(value).__name__})"


def check_int(name: str, value: Any, *, minimum: int | None = None) -> int:
    """Return ``value`` as an ``int`` or raise a ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise TypeError(f"Expected `{name}` to be an integer{bound}, but got {_describe(value)}.")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"Expected `{name}` to be an integer >= {minimum}, but got {value}.")
    return value


def check_float(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
) -> float:
    """Return ``value`` as a finite ``float`` inside the given bounds, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Expected `{name}` to be a real number, but got {_describe(value)}.")
    value = float(value)
    lo = "[" if low_inclusive else "("
    hi = "]" if high_inclusive else ")"
    interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    bad = not math.isfinite(value)
    if low is not None:
        bad = bad or (value < low if low_inclusive else value <= low)
    if high is not None:
        bad = bad or (value > high if high_inclusive else value >= high)
    if bad:
        raise ValueError(f"Expected `{name}` to be a number in {interval}, but got {value}.")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices`` (strings or ``str`` enums), else raise."""
    options = list(choices)
    if not isinstance(value, str):
        raise TypeError(f"Expected `{name}` to be one of {options}, but got {_describe(value)}.")
    text = str(value.value) if hasattr(value, "value") else str(value)
    if text not in options:
        raise ValueError(f"Expected `{name}` to be one of {options}, but got {text!r}.")
    return text


# --------------------------------------------------------------------------------------------
# Arrays: conversion, emptiness, finiteness, shapes, probabilities, labels, scores
# --------------------------------------------------------------------------------------------


def to_array(name: str, value: Any) -> np.ndarray:
    """Convert a tensor or array-like to a NumPy array (dtype kept), checking it is numeric."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.to(torch.float32)
        array = tensor.numpy()
    else:
        try:
            array = np.asarray(value)
        except (TypeError, ValueError) as error:
            raise TypeError(
                f"Expected `{name}` to be an array or tensor of numbers, but got a "
                f"{type(value).__name__} that NumPy cannot convert ({error})."
            ) from None
    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"Expected `{name}` to be an array or tensor of real numbers, but got dtype "
            f"{array.dtype}."
        )
    return array


def to_real_array(name: str, value: Any) -> np.ndarray:
    """:func:`to_array` for an argument that holds real values (scores, probabilities, logits,
    samples, targets, ...): integers and floats of any width pass, booleans are refused.

    A boolean array is almost always a mistake there (a mask or a comparison passed where the
    values were meant) and would otherwise be read silently as 0 and 1. Labels, which may be
    booleans, go through :func:`check_class_labels` instead.
    """
    array = to_array(name, value)
    if array.dtype.kind == "b":
        raise TypeError(
            f"Expected `{name}` to hold real numbers (an integer or floating-point array or "
            f"tensor), but got booleans (dtype bool); convert with `.astype(float)` or "
            f"`.float()` if 0 and 1 are meant."
        )
    return array


def describe_shape(array: np.ndarray) -> str:
    return str(tuple(int(s) for s in array.shape))


def check_nonempty(name: str, array: np.ndarray) -> None:
    if array.size == 0:
        raise ValueError(
            f"Expected `{name}` to be non-empty, but got shape {describe_shape(array)}."
        )


def check_finite(name: str, array: np.ndarray) -> None:
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        bad = array[~np.isfinite(array)].ravel()[0]
        count = int(np.sum(~np.isfinite(array)))
        raise ValueError(
            f"Expected `{name}` to hold finite values, but got {count} non-finite value(s) "
            f"(e.g. {bad})."
        )


def as_real(name: str, value: Any, *, ndim: int | None = None) -> np.ndarray:
    """A non-empty, finite float64 array, optionally of a given number of dimensions
    (booleans refused, see :func:`to_real_array`)."""
    array = to_real_array(name, value)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(
            f"Expected `{name}` to be {ndim}-dimensional, but got shape {describe_shape(array)}."
        )
    check_nonempty(name, array)
    check_finite(name, array)
    return array.astype(np.float64, copy=False)


def _row_sum_tolerance(value: Any, array: np.ndarray) -> float:
    """``max(1e-6, C * eps)`` with ``eps`` the machine epsilon of the input's own dtype."""
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        eps = float(torch.finfo(value.dtype).eps)  # bfloat16 is converted to float32 for NumPy
    elif array.dtype.kind == "f":
        eps = float(np.finfo(array.dtype).eps)
    else:
        eps = float(np.finfo(np.float64).eps)
    return max(1e-6, array.shape[1] * eps)


def check_probs(name: str, value: Any, *, allow_1d: bool = True) -> np.ndarray:
    """Validate probabilities: shape ``(N, C)`` rows summing to one, or ``(N,)`` in ``[0, 1]``
    (booleans refused, see :func:`to_real_array`)."""
    array = to_real_array(name, value)
    allowed = (1, 2) if allow_1d else (2,)
    if array.ndim not in allowed:
        expected = "(N, C) or (N,)" if allow_1d else "(N, C)"
        raise ValueError(
            f"Expected `{name}` to have shape {expected}, but got shape {describe_shape(array)}."
        )
    check_nonempty(name, array)
    check_finite(name, array)
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        value_out = low if low < 0.0 else high
        raise ValueError(
            f"Expected `{name}` to hold probabilities in [0, 1], but got a value of {value_out}."
        )
    if array.ndim == 2:
        sums = array.sum(axis=1, dtype=np.float64)
        tolerance = _row_sum_tolerance(value, array)
        deviation = np.abs(sums - 1.0)
        if np.any(deviation > tolerance):
            row = int(np.argmax(deviation))
            raise ValueError(
                f"Expected the rows of `{name}` to sum to 1 (within {tolerance:.3g}), but row "
                f"{row} sums to {float(sums[row])!r}."
            )
    return array.astype(np.float64, copy=False)


def check_labels(name: str, value: Any, n_classes: int, n: int) -> np.ndarray:
    """Validate integer labels of shape ``(n,)`` in ``[0, n_classes)``; return them as int64.

    Booleans and floats holding whole numbers are accepted.
    """
    array = to_array(name, value)
    if array.ndim != 1:
        raise ValueError(
            f"Expected `{name}` to have shape (N,), but got shape {describe_shape(array)}."
        )
    check_nonempty(name, array)
    if array.shape[0] != n:
        raise ValueError(
            f"Expected `{name}` to have {n} labels to match the predictions, but got "
            f"{array.shape[0]}."
        )
    return check_class_labels(name, array, n_classes)


def check_classification(
    y_true: Any,
    y_prob: Any,
    *,
    allow_1d: bool = True,
    names: tuple[str, str] = ("y_true", "y_prob"),
) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(labels, probs)``; a 1-d ``y_prob`` is returned as is (binary, p(class 1)).
    ``names`` are the caller's names of the two arguments, for the errors."""
    probs = check_probs(names[1], y_prob, allow_1d=allow_1d)
    n_classes = 2 if probs.ndim == 1 else probs.shape[1]
    labels = check_labels(names[0], y_true, n_classes, probs.shape[0])
    return labels, probs


def check_scores(name: str, value: Any, n: int | None = None) -> np.ndarray:
    scores = as_real(name, value, ndim=1)
    if n is not None and scores.shape[0] != n:
        raise ValueError(
            f"Expected `{name}` to have {n} entries to match the predictions, but got "
            f"{scores.shape[0]}."
        )
    return scores


def match_shape(name: str, array: np.ndarray, ref_name: str, ref: np.ndarray) -> np.ndarray:
    """Return ``array`` reshaped to ``ref.shape``, tolerating one trailing singleton dimension."""
    if array.shape == ref.shape:
        return array
    if array.shape == (*ref.shape, 1) or (*array.shape, 1) == ref.shape:
        return array.reshape(ref.shape)
    raise ValueError(
        f"Expected `{name}` to have the shape of `{ref_name}` {describe_shape(ref)}, but got "
        f"shape {describe_shape(array)}."
    )


def check_positive(name: str, array: np.ndarray) -> None:
    low = float(array.min())
    if low <= 0.0:
        raise ValueError(f"Expected `{name}` to be > 0 everywhere, but got a value of {low}.")


def check_std(name: str, value: Any) -> np.ndarray:
    """Finite, non-negative standard deviations as float64, or a ``ValueError`` naming ``name``."""
    std = as_real(name, value)
    low = float(std.min())
    if low < 0.0:
        raise ValueError(
            f"Expected `{name}` to hold standard deviations >= 0, but got a value of {low}."
        )
    return std


def check_bool(name: str, value: Any, *, allow_none: bool = False) -> bool:
    """Return ``value`` if it is a ``bool`` (``numpy.bool_`` too; ``None`` when allowed), else
    raise a ``TypeError``: ``keep_samples="no"`` is an error, not True."""
    if value is None and allow_none:
        return None  # type: ignore[return-value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    expected = "True, False or None" if allow_none else "True or False"
    raise TypeError(f"Expected `{name}` to be {expected}, but got {_describe(value)}.")


def check_class_labels(name: str, array: Any, n_classes: int) -> Any:
    """Return integer class labels in ``[0, n_classes)`` as ``int64``, or raise naming ``name``.

    ``array`` is a NumPy array of any real dtype: booleans and floats holding whole numbers are
    accepted. The range is checked *before* the cast, so a label of ``1e20`` (or a ``uint64``
    above the ``int64`` range) is reported as itself, never as the garbage a cast would make.
    """
    import numpy as np

    if array.dtype.kind not in "biuf":
        raise TypeError(
            f"Expected `{name}` to hold integer class labels, but got dtype {array.dtype}."
        )
    if array.dtype.kind == "f":
        finite = np.isfinite(array)
        if not np.all(finite):
            bad = array[~finite].ravel()[0]
            raise ValueError(
                f"Expected `{name}` to hold integer class labels, but got {float(bad)!r}."
            )
        fractional = array != np.round(array)
        if np.any(fractional):
            bad = float(array[fractional].ravel()[0])
            raise ValueError(f"Expected `{name}` to hold integer class labels, but got {bad!r}.")
    if array.size:
        low, high = array.min(), array.max()
        if low < 0 or high >= n_classes:
            bad = low if low < 0 else high
            shown = int(bad) if array.dtype.kind in "biu" else float(bad)
            raise ValueError(
                f"Expected `{name}` to hold labels in [0, {n_classes - 1}], but got {shown!r}."
            )
    return array.astype(np.int64)
