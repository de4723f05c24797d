"""What sampling refuses before it runs anything: a model or inputs without data (the meta
device), an empty batch. Running them would fail deep inside, or report something else (a NaN
check that cannot read a meta tensor, "all passes are identical" for no examples at all)."""

from __future__ import annotations

import torch
from torch import nn

from mcdrop.dropout import check_materialised
from mcdrop.sampling._inputs import _Batch, _summary

__all__: list[str] = []


def refuse_up_front(model: nn.Module, batch: _Batch, device: torch.device) -> None:
    """Raise ``ValueError`` for a model or batch that cannot be sampled at all."""
    _refuse_meta_model(model, device)
    _refuse_meta_inputs(batch)
    if batch.size == 0:
        raise ValueError(
            "Expected a batch of at least one example, but got an empty batch "
            f"{_summary(batch.args, batch.kwargs)}: there is nothing to sample."
        )


def _refuse_meta_model(model: nn.Module, device: torch.device) -> None:
    check_materialised(model)
    if device.type == "meta":
        raise ValueError(
            "Expected `device` to be a real device (cpu, cuda, ...), but got 'meta': meta "
            "tensors hold no data, so nothing can be computed."
        )


def _refuse_meta_inputs(batch: _Batch) -> None:
    only = len(batch.args) == 1 and not batch.kwargs
    named = [("inputs" if only else f"inputs[{i}]", a) for i, a in enumerate(batch.args)]
    named += [(k, v) for k, v in batch.kwargs.items()]
    for name, value in named:
        if isinstance(value, torch.Tensor) and value.is_meta:
            raise ValueError(
                f"Expected `{name}` on a real device (cpu, cuda, ...), but "
                f"got a meta tensor {tuple(value.shape)} (shapes without data): nothing can be "
                "computed from it. Pass the tensor with its data."
            )
