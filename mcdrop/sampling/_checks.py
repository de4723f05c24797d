"""Checks around the passes: whether the examples of a pass interact (replicate), NaN/Inf and
"dropout changed nothing" on the outputs, shapes across batches, memory for ``keep_samples``."""

from __future__ import annotations

import os

import torch
from torch import nn

from mcdrop.dropout import DropoutSite, ModelWriteError, NoDropout
from mcdrop.sampling._inputs import _Batch
from mcdrop.sampling._strategies import Outputs, Runner

__all__: list[str] = []

INTERACT = "an example's output depends on the other examples of its batch"
RANDOM = "the model is random with its dropout off"


# -- do the examples of a pass interact? ----------------------------------------------------------
def rows_interact(runner: Runner, first: _Batch) -> str | None:
    """Why one example's output depends on the other examples of its pass (batch statistics,
    graphs over the batch): replicating the batch would then mix the samples of its copies.

    Runs the sampling twin as it samples, with every dropout call at rate 0
    (:class:`mcdrop.dropout.NoDropout`): the first two examples alone, then between two others,
    one before and one after them (the next examples of the batch, or for a smaller batch the
    first ones reversed along their last dimension: the same values in another example; before
    them, so that an output that depends on the batch's first row, ``z - z[:1]``, is seen).
    ``None`` when their outputs agree; :data:`INTERACT` when they differ and the first pass is
    repeatable; :data:`RANDOM` when it is not (other randomness in the model: the check cannot
    tell); the error, when the passes raise.
    """
    alone, beside = _interaction_batches(first)
    try:
        # other randomness of the model: not the caller's
        with runner.forked():
            a = runner.run("loop", alone, 1, record=NoDropout)
            b = runner.run("loop", beside, 1, record=NoDropout)
            if _outputs_agree(a, b, runner, offset=1):
                return None
            again = runner.run("loop", alone, 1, record=NoDropout)
    except (torch.OutOfMemoryError, ModelWriteError):
        raise
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return INTERACT if _outputs_agree(a, again, runner) else RANDOM


def _interaction_batches(first: _Batch) -> tuple[_Batch, _Batch]:
    """The first (up to) two examples, and the same between two companions, one before them
    and one after: the next examples, or where the batch has fewer, the first ones reversed
    along their last dimension (token ids and masks keep their values; zero rows would leave a
    sum over the batch unchanged)."""
    n = min(2, first.size)
    alone = first.slice(0, n)
    extra = min(2, first.size - n)
    pad = 2 - extra

    def companions(t: torch.Tensor) -> torch.Tensor:
        mirrored = t[:n].flip(-1) if t.ndim > 1 else t[:n]
        others = torch.cat([t[n : n + extra], mirrored.repeat(2, *[1] * (t.ndim - 1))[:pad]])
        return torch.cat([others[:1], t[:n], others[1:]])

    beside = first.map_batched(companions)
    beside.size = n + 2
    return alone, beside


def _outputs_agree(a: Outputs, b: Outputs, runner: Runner, offset: int = 0) -> bool:
    """Whether ``a`` equals the rows of ``b`` from ``offset`` on. Kernels differ by batch size:
    a tolerance relative to the largest output (small outputs are compared at their own scale),
    wider in low precision. Detached: an output that requires grad is read without autograd's
    warning."""
    for x, y in zip(a, b, strict=True):
        low = runner.amp is not None or x.dtype in (torch.float16, torch.bfloat16)
        tol = 3e-2 if low else 1e-4
        rows = x.shape[1]
        if x.shape[2:] != y.shape[2:] or y.shape[1] < offset + rows:
            return False
        x, y = x.detach().double(), y[:, offset : offset + rows].detach().double()
        finite = torch.isfinite(x)
        scale = float(x[finite].abs().max()) if bool(finite.any()) else 0.0
        if not torch.allclose(x, y, rtol=tol, atol=tol * scale + 1e-30, equal_nan=True):
            return False
    return True


def varies(outputs: Outputs) -> bool:
    """Whether the samples (dim 0) of the first output differ."""
    first = outputs[0].detach()
    return first.shape[0] > 1 and bool((first != first[:1]).any())


# -- the outputs: NaN/Inf, dropout that changes nothing ------------------------------------------
def _finite_flag(outputs: Outputs) -> torch.Tensor:
    """Device-side "all outputs finite" flag: no host sync until it is read."""
    flag = torch.isfinite(outputs[0]).all()
    for out in outputs[1:]:
        flag = flag & torch.isfinite(out).all()
    return flag


def check_finite(flag: torch.Tensor, index: int, batch: _Batch, start: int) -> None:
    if not bool(flag):
        raise ValueError(
            f"The model returned NaN or Inf in batch {index} (examples {start} to "
            f"{start + batch.size - 1}) while sampling with dropout on; check the inputs of "
            "that batch, or use a lower `amp` precision."
        )


class OutputChecks:
    """NaN/Inf (every batch) and "dropout changed nothing" (the first batch) as device flags."""

    def __init__(self, check_variation: bool) -> None:
        self.finite: torch.Tensor | None = None
        self.first: torch.Tensor | None = None
        self.varied: torch.Tensor | None = None
        self.check_variation = check_variation

    def update(self, outs: Outputs) -> None:
        out = outs[0]
        own = self.check_variation and self.first is None  # the first sample is this chunk's
        if own:
            self.first = out[:1]
        changed = None
        if out.is_floating_point() and out.numel():
            # One pass over the chunk: per element its least and greatest sample (NaN
            # propagates into both). All finite iff both are; a sample differs from another
            # iff they differ, or differ from the first batch's first sample.
            lo, hi = torch.aminmax(out, dim=0)
            flag = torch.isfinite(torch.stack((lo, hi))).all()
            for other in outs[1:]:
                flag = flag & torch.isfinite(other).all()
            if own:  # lo <= the first sample <= hi: it differs from another iff lo != hi
                changed = (lo != hi).any()
            elif self.first is not None:
                changed = (lo != hi).any() | (lo != self.first[0]).any()
        else:
            flag = _finite_flag(outs)
            if self.first is not None:
                changed = (out != self.first).any()
        self.finite = flag if self.finite is None else self.finite & flag
        if changed is not None:
            self.varied = changed if self.varied is None else self.varied | changed

    def check_finite(self, index: int, batch: _Batch, start: int) -> None:
        assert self.finite is not None
        check_finite(self.finite, index, batch, start)

    def raise_if_bad(
        self,
        index: int,
        batch: _Batch,
        start: int,
        count: int,
        model: nn.Module,
        sites: list[DropoutSite],
    ) -> None:
        self.check_finite(index, batch, start)
        if (
            self.check_variation
            and count > 1
            and not (self.varied is not None and bool(self.varied))
        ):
            raise ValueError(_unchanged_message(model, self.first, sites, count))


def _unchanged_message(
    model: nn.Module, first: torch.Tensor | None, sites: list[DropoutSite], count: int
) -> str:
    """Why all passes were identical, with the hint that fits."""
    head = (
        f"Expected Monte Carlo dropout to change the output of `{type(model).__name__}`, but all "
        f"{count} passes of the first batch are identical: the uncertainty would be zero. "
    )
    full = [s.name or "<model>" for s in sites if s.rate is not None and s.rate >= 1.0]
    if full:
        return head + (
            f"Dropout sites with p = 1 drop every unit: {', '.join(full)}; a trained model "
            "never uses p = 1."
        )
    if first is not None and first.shape[1] > 1 and bool((first == first[:, :1]).all()):
        return head + (
            "The output is the same for every example too: the layers after the dropout may be "
            "zero or untrained (e.g. a zero-initialised head)."
        )
    names = ", ".join(s.name or "<model>" for s in sites[:5])
    if any(s.functions for s in sites):  # the probe saw the dropout run
        return head + (
            f"Dropout runs ({names}) but the output does not depend on what it drops (its result "
            "discarded, or zero weights after it)."
        )
    return head + (
        f"The sites ({names}) may not be what the model's randomness depends on: `include=` names "
        "modules to put in training mode, `scope='train_except_norm'` puts all but the norm "
        "layers in training mode."
    )


# -- across batches, and before keeping every sample ------------------------------------------
def check_consistent(
    shape: tuple[int, ...] | None, out: torch.Tensor, index: int
) -> tuple[int, ...]:
    current = tuple(out.shape[2:])
    if shape is not None and current != shape:
        raise ValueError(
            f"Expected every batch to give outputs of shape (N, {', '.join(map(str, shape))}), but "
            f"batch {index} gave (N, {', '.join(map(str, current))})."
        )
    return current


def check_samples_fit(
    keep_samples: bool, n_samples: int, n_examples: int | None, first: Outputs
) -> None:
    """With ``keep_samples=True``: refuse up front what cannot fit in memory."""
    if not keep_samples or n_examples is None:
        return
    per_sample = sum(int(o[0, :1].numel()) * o.element_size() for o in first)
    need = n_samples * n_examples * per_sample
    total = (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    )
    if total and need > total:
        raise ValueError(
            f"Expected `keep_samples=True` to fit in memory, but {n_samples} samples of "
            f"{n_examples} examples need {need / 2**30:.1f} GiB (this machine has "
            f"{total / 2**30:.1f} GiB): lower `n_samples` or use keep_samples=False (the "
            "statistics stream in O(N x C) memory)."
        )
