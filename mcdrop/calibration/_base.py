"""What every recalibrator shares: input conversion, the not-fitted error, and persistence.

A fitted recalibrator is saved as a small JSON file (``save`` / ``load``, or ``to_dict`` /
``from_dict`` to embed it in a checkpoint): its class, options and fitted numbers, never a
pickle. Loading checks every field against what the class expects before it is used.
"""

from __future__ import annotations

import json
import math
import numbers
import os
from typing import Any, ClassVar, TypeVar

import numpy as np

from mcdrop._validation import (
    check_choice,
    check_labels,
    check_probs,
    describe_shape,
    to_real_array,
)

FORMAT = "mcdrop-recalibrator"
FORMAT_VERSION = 1
INPUTS = ("logits", "probs", "log_probs")
_LOG_TINY = math.log(float(np.finfo(np.float64).tiny))

R = TypeVar("R", bound="Persistent")


def not_fitted(name: str, how: str) -> Exception:
    from sklearn.exceptions import NotFittedError

    return NotFittedError(f"This {name} is not fitted yet; call `{how}` first.")


class Persistent:
    """``to_dict`` / ``from_dict`` and ``save`` / ``load`` on top of ``_options`` (constructor
    keywords), ``_state`` (fitted numbers, JSON-ready) and ``_restore`` (the reverse)."""

    _fields: ClassVar[tuple[str, ...]] = ()

    def _options(self) -> dict[str, Any]:
        return {}

    def _state(self) -> dict[str, Any] | None:  # None: not fitted
        raise NotImplementedError

    def _restore(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """The recalibrator as plain JSON-compatible data (class, options, fitted state).

        Returns
        -------
        dict
            ``{"format", "version", "class", "options", "state"}``; ``state`` is ``None`` before
            ``fit``. Floats keep every bit (JSON writes them with ``repr``).
        """
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "class": type(self).__name__,
            "options": self._options(),
            "state": self._state(),
        }

    @classmethod
    def from_dict(cls: type[R], data: Any) -> R:
        """Rebuild a recalibrator from :meth:`to_dict`'s output, checking every field.

        Raises
        ------
        ValueError
            When ``data`` is not a saved recalibrator of this class or a field is malformed.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(
                f"Expected `data` to be a saved mcdrop recalibrator (format {FORMAT!r}), but "
                f"got {str(data)[:60]!r}."
            )
        if data.get("version") != FORMAT_VERSION or data.get("class") != cls.__name__:
            raise ValueError(
                f"Expected `data` to hold a {cls.__name__} (format version {FORMAT_VERSION}), "
                f"but it holds a {data.get('class')!r} (version {data.get('version')!r})."
            )
        options, state = data.get("options"), data.get("state")
        if not isinstance(options, dict) or not (state is None or isinstance(state, dict)):
            raise ValueError("Expected `options` and `state` to be JSON objects in `data`.")
        try:
            recalibrator = cls(**options)
        except TypeError as error:
            raise ValueError(
                f"Expected valid options for {cls.__name__} in `data`: {error}"
            ) from None
        if state is not None:
            recalibrator._restore(state)
        return recalibrator

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write :meth:`to_dict` to ``path`` as JSON (no pickle)."""
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, allow_nan=False)

    @classmethod
    def load(cls: type[R], path: str | os.PathLike[str]) -> R:
        """Read a recalibrator written by :meth:`save`; the file must hold this class."""
        with open(path, encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(
                    f"Expected `path` to be a JSON file written by save(), but {os.fspath(path)!r} "
                    f"is not JSON ({error})."
                ) from None
        return cls.from_dict(data)


def state_array(state: dict[str, Any], key: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """``state[key]`` as a finite float64 array of ``shape`` (``None``: any length)."""
    if key not in state:
        raise ValueError(f"Expected the saved state to hold `{key}`, but it does not.")
    value = state[key]
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):
        array = np.asarray(None)
    if array.dtype.kind not in "iuf":  # booleans, strings, ragged lists: not what was saved
        raise ValueError(
            f"Expected `{key}` in the saved state to be numbers, but got {array.dtype.name} values."
        )
    array = array.astype(np.float64)
    if array.ndim != len(shape) or any(
        want is not None and got != want for got, want in zip(array.shape, shape, strict=True)
    ):
        raise ValueError(
            f"Expected `{key}` in the saved state to have shape {shape}, but got "
            f"{describe_shape(array)}."
        )
    if not np.all(np.isfinite(array)):
        raise ValueError(f"Expected `{key}` in the saved state to be finite.")
    return array


def state_int(state: dict[str, Any], key: str, minimum: int) -> int:
    value = state.get(key)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"Expected `{key}` in the saved state to be an integer >= {minimum}.")
    return int(value)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------


def class_scores(name: str, value: Any, inputs: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(M, C)`` float64 logits (``log p`` for probabilities) and the leading shape.

    ``value`` has shape ``(..., C)``: ``(N, C)``, or ``(T, N, C)`` per-sample outputs. Zero
    probabilities (and ``-inf`` log-probabilities) become ``log(tiny) ≈ -708``, so that an
    affine map of them stays finite.
    """
    array = to_real_array(name, value)
    if array.ndim < 2 or array.shape[-1] < 1 or array.size == 0:
        raise ValueError(
            f"Expected `{name}` to have shape (N, C) or (..., N, C) with N, C >= 1, but got "
            f"shape {describe_shape(array)}."
        )
    leading = tuple(int(s) for s in array.shape[:-1])
    flat = array.reshape(-1, array.shape[-1])
    if inputs == "probs":
        probs = check_probs(name, flat, allow_1d=False)
        return np.log(np.maximum(probs, np.finfo(np.float64).tiny)), leading
    flat = flat.astype(np.float64, copy=False)
    bad = np.isnan(flat) | (flat == np.inf)
    if inputs == "logits":
        bad |= flat == -np.inf
    if np.any(bad):
        raise ValueError(
            f"Expected `{name}` to hold finite values, but got {int(bad.sum())} non-finite "
            f"value(s) (e.g. {flat[bad][0]})."
        )
    if inputs == "log_probs":
        if np.any(flat > 0.0):
            raise ValueError(
                f"Expected `{name}` to hold log-probabilities (<= 0), but got {float(flat.max())}."
            )
        flat = np.maximum(flat, _LOG_TINY)
    return flat, leading


def class_probs(name: str, value: Any, inputs: str) -> tuple[np.ndarray, tuple[int, ...]]:
    """``(M, C)`` probabilities (softmax of logits, exp of log-probabilities) and leading shape."""
    if inputs == "probs":
        array = to_real_array(name, value)
        if array.ndim < 2 or array.size == 0:
            raise ValueError(
                f"Expected `{name}` to have shape (N, C) or (..., N, C) with N, C >= 1, but "
                f"got shape {describe_shape(array)}."
            )
        leading = tuple(int(s) for s in array.shape[:-1])
        return check_probs(name, array.reshape(-1, array.shape[-1]), allow_1d=False), leading
    scores, leading = class_scores(name, value, inputs)
    from scipy.special import softmax

    return softmax(scores, axis=1), leading


def fit_labels(name: str, y: Any, n_classes: int, leading: tuple[int, ...]) -> np.ndarray:
    """Labels ``(N,)`` for outputs of leading shape ``(N,)`` or ``(T, N)`` (repeated T times)."""
    n = leading[-1]
    labels = check_labels(name, y, n_classes, n)
    if np.unique(labels).size < 2:
        raise ValueError(
            f"Expected `{name}` to hold at least two classes to fit a recalibrator on, but every "
            f"label is {int(labels[0]) if labels.size else 'missing'}: the fit would be certain "
            "of that class."
        )
    if len(leading) == 1:
        return labels
    repeats = int(np.prod(leading[:-1]))
    return np.tile(labels, repeats)


def check_inputs(inputs: Any) -> str:
    return check_choice("inputs", inputs, INPUTS)


def check_class_count(name: str, got: int, fitted: int) -> None:
    if got != fitted:
        raise ValueError(
            f"Expected `{name}` with {fitted} classes (as in fit), but got {got} classes."
        )
