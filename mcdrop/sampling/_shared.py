"""Shared masks (``masks="shared"``): what a run adds so that sample ``t`` is one network ``f_t``.

The masks themselves come from :class:`mcdrop.dropout.MaskedDropout` (a counter-based generator
keyed by the seed, the sample index, the dropout call and each element's position within its
example). This module prepares a run for it: the refusals that come first (TorchScript), the
eager twin (dynamo cannot trace the mode), the hooks that name each call's module, and where
each dropout input holds the examples (:func:`learn_layouts`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from mcdrop.dropout import MaskedDropout, Sampling, infer_layouts, user_stacklevel
from mcdrop.sampling._inputs import _Batch
from mcdrop.sampling._strategies import Runner

__all__: list[str] = []

# Kernels that shared masks replace by explicit math, which vmap batches (the RNN kernels stay).
SHARED_VMAP_SAFE = frozenset({"F.scaled_dot_product_attention", "F.multi_head_attention_forward"})


def scripted_modules(model: nn.Module) -> list[str]:
    """The TorchScript modules of ``model``: their dropout runs in C++, where mcdrop can give it
    neither a mask nor a generator."""
    return [
        n or "<model>" for n, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)
    ]


def check_shareable(model: nn.Module) -> None:
    """TorchScript runs its dropout in C++, where no mask can be given: refuse shared masks."""
    scripted = scripted_modules(model)
    if scripted:
        raise ValueError(
            f"Expected a model without TorchScript modules with masks='shared', but "
            f"{', '.join(scripted[:3])} are scripted: their dropout runs inside TorchScript, "
            "whose masks mcdrop cannot give. Sample the eager model, or use masks='independent'."
        )


def eager_for_shared_masks(module: Any, compile_option: bool) -> Any:
    """Shared masks answer each dropout call from a ``TorchFunctionMode`` that dynamo cannot
    trace: the twin of a compiled model (or ``compile=``) runs eagerly, with a warning."""
    eager = getattr(module, "_orig_mod", module)
    if compile_option or eager is not module:
        warnings.warn(
            "masks='shared' runs the model eagerly: torch.compile cannot trace the mode that "
            "gives each dropout call its shared mask, so `compile=` (or the model's own "
            "torch.compile wrapper) is not used for this call.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return eager


def attribution(masks: MaskedDropout, twin: Sampling) -> Any:
    """The hooks that name the module of each dropout call: on the sampled modules of the twin
    (the probe attributes every call to one of them) and its root."""
    root = getattr(twin.module, "_orig_mod", twin.module)
    names = {site.name for site in twin.sites} | {""}
    modules = {name: m for name, m in root.named_modules() if name in names}
    return lambda: masks.attributed(modules)


def learn_layouts(runner: Runner, first: _Batch) -> None:
    """Where each dropout call's input holds the examples: the sampling twin on one example and
    on two, every dropout the identity (:func:`mcdrop.dropout.infer_layouts`). The second example
    is the batch's next one; where the values cannot tell contiguous from strided units (equal
    examples), the first example reversed along its last dimension."""
    masks = runner.masks
    assert masks is not None
    one = _probe_layout(runner, first.slice(0, 1), "one example")
    pairs = [first.slice(0, 2)] if first.size >= 2 else []
    reversed_pair = first.map_batched(
        lambda t: torch.cat([t[:1], t[:1].flip(-1) if t.ndim > 1 else t[:1]])
    )
    reversed_pair.size = 2
    for pair in [*pairs, reversed_pair]:
        layouts, unclear = infer_layouts(one, _probe_layout(runner, pair, "two examples"))
        if not unclear:
            masks.layouts = layouts
            return
    (site, label, index), reason = sorted(unclear.items())[0]
    raise ValueError(
        f"Expected to find which dimension of each dropout input holds the examples "
        f"(masks='shared' gives every example the same mask), but for call {index + 1} of "
        f"{label} in `{site or '<model>'}` {reason}. Use masks='independent' for this model."
    )


def _probe_layout(runner: Runner, batch: _Batch, what: str) -> dict[Any, Any]:
    """The inputs of the sampling twin's dropout calls on ``batch``, every dropout the identity."""
    masks = runner.masks
    assert masks is not None
    try:
        with masks.probing() as records:
            runner.run("loop", batch, 1)
    except torch.OutOfMemoryError:
        raise
    except (ValueError, TypeError, RuntimeError, IndexError) as error:
        if "masks=" in str(error):  # a refusal of shared masks: already explained
            raise
        raise ValueError(
            f"Running the sampling twin on {what} (masks='shared' finds where each dropout "
            f"input holds the examples this way) raised {type(error).__name__}: {error}. Use "
            "masks='independent' for a model that cannot run on so few examples."
        ) from error
    return records
