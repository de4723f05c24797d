"""Argument checks shared by the whole package.

Every message follows one template: it names the argument, says what was expected and shows the
value that was received, e.g. ``"Expected `n_samples` to be an integer >= 1, but got 0."``
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import Any

__all__: list[str] = []


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


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a ``bool`` (``numpy.bool_`` too), else raise a ``TypeError``."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise TypeError(f"Expected `{name}` to be True or False, but got {_describe(value)}.")


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
