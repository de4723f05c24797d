"""Shared masks (``masks="shared"``): what a run adds so that sample ``t`` is one network ``f_t``.

The masks themselves come from :class:`mcdrop.dropout.MaskedDropout` (a counter-based generator
keyed by the seed, the sample index, the dropout call and each element's position within its
example). This module prepares a run for it: the refusals that come first (TorchScript), the
eager twin (dynamo cannot trace the mode), the hooks that name each call's module, and where
each dropout input holds the examples (:func:`learn_layouts`), kept between calls for what
decided them (:func:`layouts_key`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from mcdrop.dropout import (
    Layout,
    MaskedDropout,
    ModelWriteError,
    Sampling,
    infer_layouts,
    user_stacklevel,
)
from mcdrop.sampling._inputs import _Batch
from mcdrop.sampling._options import SamplingOptions
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


def learn_layouts(runner: Runner, first: _Batch, key: Any = None) -> bool:
    """Where each dropout call's input holds the examples: the sampling twin on one example and
    on two, every dropout the identity (:func:`mcdrop.dropout.infer_layouts`). The second example
    is the batch's next one; where the values cannot tell contiguous from strided units (equal
    examples), the first example reversed along its last dimension.

    ``key`` (:func:`layouts_key`): what decided the layouts; those learned for the same key
    before are taken without running the twin (two passes saved per call), and new ones are
    kept for it, unless a batch dimension's size is that of another dimension of its input
    (:func:`_ambiguous`). None: learned, not kept. Returns whether the layouts may be kept
    (with a plan: :meth:`mcdrop.sampling._run.Run.kept`), i.e. are not ambiguous."""
    masks = runner.masks
    assert masks is not None
    if key is not None and key in _LAYOUTS:
        masks.layouts = dict(_LAYOUTS[key])
        return True
    masks.layouts, two = _learned(runner, first)
    keepable = not _ambiguous(masks.layouts, two)
    if key is not None and keepable:
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            _LAYOUTS.pop(next(iter(_LAYOUTS)))
        _LAYOUTS[key] = dict(masks.layouts)
    return keepable


def _ambiguous(layouts: dict[Any, Layout], two: dict[Any, Any]) -> bool:
    """Whether some call's batch dimension has the size of another of its dimensions on two
    examples: state the key cannot see (a module-level flag that transposes) could then move it
    without changing any shape the key holds, so such layouts are learned every call."""
    for call, layout in layouts.items():
        x = two.get(call)
        if layout.dim is None or not isinstance(x, torch.Tensor) or layout.dim >= x.ndim:
            continue
        if list(x.shape).count(x.shape[layout.dim]) > 1:
            return True
    return False


def _learned(runner: Runner, first: _Batch) -> tuple[dict[Any, Layout], dict[Any, Any]]:
    """The layouts, and the calls' inputs on the two examples that settled them."""
    one = _probe_layout(runner, first.slice(0, 1), "one example")
    pairs = [first.slice(0, 2)] if first.size >= 2 else []
    reversed_pair = first.map_batched(
        lambda t: torch.cat([t[:1], t[:1].flip(-1) if t.ndim > 1 else t[:1]])
    )
    reversed_pair.size = 2
    for pair in [*pairs, reversed_pair]:
        two = _probe_layout(runner, pair, "two examples")
        layouts, unclear = infer_layouts(one, two)
        if not unclear:
            return layouts, two
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
    except (torch.OutOfMemoryError, ModelWriteError):
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


# -- layouts kept between calls ------------------------------------------------------------------
# Layouts learned per key (:func:`layouts_key`): ids, types, shapes and plain values, no reference
# to a model or its inputs. Bounded; the oldest entry goes first.
_LAYOUTS: dict[Any, dict[Any, Layout]] = {}
_MAX_LAYOUTS = 256
_PLAIN = (bool, int, float, complex, str, bytes, type(None), torch.dtype, torch.device)
_PLAIN_TYPES = frozenset(_PLAIN)
_TENSORS = frozenset(["_parameters", "_buffers"])
# nn.Module's own state that does not change what its forward computes
_SKIPPED = frozenset(
    [
        "_modules",
        "_non_persistent_buffers_set",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_state_dict_hooks",
        "_state_dict_pre_hooks",
        "_load_state_dict_pre_hooks",
        "_load_state_dict_post_hooks",
        "_is_full_backward_hook",
    ]
)


class _Unkeyable(Exception):
    """A value that :func:`layouts_key` cannot summarise: the layouts are learned every call."""


def layouts_key(
    model: nn.Module,
    twin: Sampling,
    first: _Batch,
    options: SamplingOptions,
    device: torch.device,
    runner: Runner,
) -> Any:
    """Everything that decides where each dropout call's input holds the examples, or None when
    something cannot be told (then :func:`learn_layouts` learns them every call).

    The key holds: every module of ``model`` (its id and its class's, its plain attributes,
    the ids of its hooks and of any function stored on it, the shapes of its parameters, buffers
    and tensor attributes, and the plain attributes of any other object it holds, such as a
    configuration); the sampling twin's sites and the training-mode probe's trace (each dropout
    call, its module and the shape of its input, on two examples); the options that change what
    runs; and one example's input signature (shapes without the batch dimension, dtypes,
    devices, other values). A model changed between calls (a site replaced, a flag set) or
    inputs of another length give another key, and the layouts are learned again.
    """
    if not twin.trace.calls:  # no probe: nothing recorded what the calls see
        return None
    try:
        return (
            id(model),
            _modules_key(model),
            tuple((s.name, s.type, s.rate, s.functions) for s in twin.sites),
            tuple(sorted(twin.trace.calls.items())),
            twin.trace.shapes,
            _example_key(first),
            options.scope,
            options.detect_silent,
            options.amp,
            _filter_key(options.include),
            _filter_key(options.exclude),
            str(device),
            runner.no_layer_skip,
        )
    except _Unkeyable:
        return None


def _filter_key(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if callable(value):
        return ("callable", id(value))
    return tuple(_plain(v) for v in value)


def _plain(value: Any) -> Any:
    """``value`` when hashable and plain (a tuple of them too); else :class:`_Unkeyable`."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, *(_plain(v) for v in value))
    raise _Unkeyable


def _tensor_key(t: torch.Tensor) -> Any:
    return tuple(t.shape), t.dtype, t.device.type, t.device.index


def _example_key(first: _Batch) -> Any:
    """The input signature of one example: batched tensors without their batch dimension."""
    batched = first.batched or frozenset()
    parts = []
    for key, value in [*enumerate(first.args), *sorted(first.kwargs.items())]:
        if key in batched and isinstance(value, torch.Tensor):
            parts.append((key, "batched", *_tensor_key(value[:1])))
            continue
        leaves, spec = tree_flatten(value)
        parts.append(
            (
                key,
                str(spec),
                tuple(
                    _tensor_key(leaf) if isinstance(leaf, torch.Tensor) else _plain(leaf)
                    for leaf in leaves
                ),
            )
        )
    return tuple(parts)


def _modules_key(model: nn.Module) -> Any:
    objects: dict[int, Any] = {}  # other objects' plain attributes, once each
    return tuple(
        (name, id(m), id(type(m)), *_attributes_key(m, objects))
        for name, m in model.named_modules()
    )


def _attributes_key(module: nn.Module, objects: dict[int, Any]) -> list[Any]:
    parts: list[Any] = []
    for name, value in module.__dict__.items():
        kind = type(value)
        if kind in _PLAIN_TYPES:
            parts.append((name, value))
        elif name in _TENSORS:  # parameters and buffers: their shapes
            parts.append(
                tuple((k, None if t is None else _tensor_key(t)) for k, t in value.items())
            )
        elif name in _SKIPPED:
            continue
        elif name.startswith("_forward"):  # forward hooks may change what a module sees
            if value:
                parts.append((name, tuple(id(h) for h in value.values())))
        elif isinstance(value, torch.Tensor):
            parts.append((name, _tensor_key(value)))
        elif isinstance(value, nn.Module):
            parts.append((name, id(value)))
        else:
            parts.append((name, _value_key(value, objects)))
    return parts


def _value_key(value: Any, objects: dict[int, Any]) -> Any:
    """A plain value (a dict of them too); a function by id; another object by id and its
    attributes' plain values (others by id)."""
    try:
        return _plain(value)
    except _Unkeyable:
        pass
    if isinstance(value, dict):
        try:
            return ("dict", tuple((_plain(k), _plain(v)) for k, v in value.items()))
        except _Unkeyable:
            return ("id", id(value))
    if callable(value) or not hasattr(value, "__dict__"):
        return ("id", id(value), type(value).__qualname__)
    found = objects.get(id(value))
    if found is None:
        found = (id(value), type(value).__qualname__, tuple(_shallow(vars(value))))
        objects[id(value)] = found
    return found


def _shallow(attributes: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for name, value in attributes.items():
        try:
            yield name, _plain(value)
        except _Unkeyable:
            yield name, ("id", id(value))
