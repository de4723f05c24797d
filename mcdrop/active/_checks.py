"""Validation of sampled probabilities, acquisition sizes and seeds, and chunked evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from mcdrop._validation import check_int, to_real_array

__all__: list[str] = []

# Elements (float64) of one chunk of work: 2**22 x 8 bytes = 32 MiB.
CHUNK_ELEMENTS = 2**22
REDUCTIONS = ("mean", "sum", "max")


def _shape(t: torch.Tensor) -> str:
    return str(tuple(int(s) for s in t.shape))


def as_tensor(name: str, value: Any) -> torch.Tensor:
    """A tensor view of ``value`` (no copy for tensors and NumPy arrays), real-valued."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
        if tensor.is_complex() or tensor.dtype == torch.bool:
            raise TypeError(
                f"Expected `{name}` to hold real numbers, but got dtype {tensor.dtype}."
            )
        return tensor
    return torch.from_numpy(np.ascontiguousarray(to_real_array(name, value)))


def sample_probs(
    name: str,
    value: Any,
    *,
    min_samples: int = 1,
    classes_last: bool = False,
    why: str = "",
) -> torch.Tensor:
    """Validated sampled probabilities ``(T, N, C, *S)``: finite, in ``[0, 1]``, summing to 1
    along ``C``; ``T >= min_samples``, ``N >= 1``, ``C >= 2``. Returned as given (not copied).

    ``classes_last=True`` asks for exactly ``(T, N, C)``.
    """
    probs = as_tensor(name, value)
    expected = "(T, N, C)" if classes_last else "(T, N, C) or (T, N, C, *S)"
    if (probs.ndim != 3) if classes_last else (probs.ndim < 3):
        raise ValueError(
            f"Expected `{name}` to have shape {expected} (samples first), but got shape "
            f"{_shape(probs)}."
        )
    t, n, c = (int(s) for s in probs.shape[:3])
    if t < min_samples:
        raise ValueError(
            f"Expected `{name}` to hold at least {min_samples} Monte Carlo samples along its "
            f"first dimension{why}, but got shape {_shape(probs)} (T = {t})."
        )
    if n == 0:
        raise ValueError(
            f"Expected `{name}` to hold at least one example, but got shape "
            f"{_shape(probs)} (N = 0)."
        )
    if c < 2:
        raise ValueError(
            f"Expected `{name}` to have at least 2 classes along dimension 2, but got shape "
            f"{_shape(probs)}."
        )
    if probs.numel() == 0:
        raise ValueError(f"Expected `{name}` to be non-empty, but got shape {_shape(probs)}.")
    if not probs.is_floating_point():
        probs = probs.to(torch.float64)
    if not bool(torch.isfinite(probs).all()):
        raise ValueError(f"Expected `{name}` to hold finite probabilities, but got NaN or inf.")
    low, high = float(probs.min()), float(probs.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(
            f"Expected `{name}` to hold probabilities in [0, 1], but got a value of "
            f"{low if low < 0.0 else high}."
        )
    sums = probs.sum(dim=2, dtype=torch.float64)
    tolerance = max(1e-6, c * float(torch.finfo(probs.dtype).eps))
    deviation = (sums - 1.0).abs()
    worst = int(deviation.argmax())
    if float(deviation.flatten()[worst]) > tolerance:
        where = tuple(int(i) for i in np.unravel_index(worst, tuple(sums.shape)))
        raise ValueError(
            f"Expected the probabilities in `{name}` to sum to 1 along the class dimension 2 "
            f"(within {tolerance:.3g}), but the entry at (sample, example, ...) = {where} sums "
            f"to {float(sums.flatten()[worst])!r}. Pass probabilities, not logits."
        )
    return probs


def acquisition_size(n: Any, pool_size: int, *, pool: str = "probs") -> int:
    """``n`` as an int in ``[1, pool_size]``."""
    n = check_int("n", n, minimum=1)
    if n > pool_size:
        raise ValueError(
            f"Expected `n` to be at most the number of pool examples in `{pool}` "
            f"({pool_size}), but got {n}."
        )
    return n


def generator(seed: Any) -> torch.Generator:
    """A CPU generator seeded from ``seed`` (fresh entropy for ``None``): never the global one."""
    gen = torch.Generator()
    if seed is None:
        gen.seed()
        return gen
    value = check_int("seed", seed, minimum=0)
    if value > 2**63 - 1:
        raise ValueError(f"Expected `seed` to be an integer in [0, 2**63 - 1], but got {value}.")
    gen.manual_seed(value)
    return gen


def per_example(probs: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn`` on float64 chunks ``(T, b, C, *S)`` of the examples, concatenated along dim 0.

    Memory stays within a chunk of ``CHUNK_ELEMENTS`` float64 values, whatever ``N``.
    """
    per = max(1, math.prod(int(s) for i, s in enumerate(probs.shape) if i != 1))
    step = max(1, CHUNK_ELEMENTS // per)
    n = int(probs.shape[1])
    parts = [fn(probs[:, s : s + step].to(torch.float64)) for s in range(0, n, step)]
    return parts[0] if len(parts) == 1 else torch.cat(parts)
