"""CUDA rows per pass, from quantities that are the same on every run of the same program.

Rows per pass decide how the random numbers are drawn, so they must not depend on anything that
changes between runs: not on the memory other processes hold (``torch.cuda.mem_get_info``), not
on a clock. They come from

* the card's capacity as this process sees it: ``total_memory`` less what this process has
  allocated (:func:`capacity`), and
* the activation bytes per row of one 2-sample replicate pass of the first batch, read as the
  highest ``torch.cuda.memory_allocated`` after any op of that pass (:class:`PeakAllocated`).
  The allocator's own peak counter belongs to the user: it is neither reset nor read.

Memory that other processes take can still make a pass fail; the out-of-memory back-off then
halves it (with a warning, since the numbers then differ from an unhindered run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__: list[str] = []

T = TypeVar("T")


class PeakAllocated(TorchDispatchMode):
    """Highest ``torch.cuda.memory_allocated(device)`` after any op run under the mode."""

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device
        self.peak = torch.cuda.memory_allocated(device)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, torch.cuda.memory_allocated(self.device))
        return out


def capacity(device: torch.device) -> int:
    """Bytes this process could still allocate on an otherwise idle card of this type."""
    total = torch.cuda.get_device_properties(device).total_memory
    return max(0, total - torch.cuda.memory_allocated(device))


def pass_bytes(run: Callable[[], T], device: torch.device) -> tuple[int, T]:
    """``run()``'s result and the bytes allocated above the current level at its peak (>= 1)."""
    base = torch.cuda.memory_allocated(device)
    mode = PeakAllocated(device)
    with mode:
        result = run()
    return max(1, mode.peak - base), result
