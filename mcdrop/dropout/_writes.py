"""The model's own tensors are never written by a pass of its twin.

A twin shares the model's parameters, buffers and tensor attributes (its modules that sample,
and those a probe runs in training mode, get copies of their buffers). A forward that writes one
of the shared tensors in place (``self.calls += 1`` on a buffer, ``self.stats.copy_(...)``,
``self.weight.data.clamp_(...)``, ``torch.add(a, b, out=self.buffer)``) would therefore write into
the user's model while mcdrop samples it, and its samples would drift from pass to pass.

While :func:`guarding` is entered for a model, every torch call of a pass reaches
:func:`check_write` first (from mcdrop's modes: :class:`mcdrop.dropout.MaskedDropout`, the
probe's recorder, :class:`NoModelWrites` where neither runs): a call that writes in place into the
storage of one of the model's tensors raises :class:`ModelWriteError` before it runs, naming the
tensor, so the model is never written, not even once. Writes to anything else (activations, the
twin's own copies of buffers) run as they are.

What counts as a write: a function or method whose name ends in ``_`` (``add_``, ``copy_``,
``index_put_``, ``t_``, ``requires_grad_``), the in-place operators (``+=``, ``x[i] = v``), setting a
tensor property (``.data = ...``), an ``out=`` argument, ``inplace=True`` of a functional, and an
operator whose schema marks an argument written (``torch.ops.aten.add_.Tensor``). Not seen: writes
that bypass PyTorch's Python dispatch (``tensor.numpy()[...] = v``, a C++ extension, a compiled
graph).
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__: list[str] = []

_IN_PLACE_OPERATORS = frozenset(
    {
        "__iadd__",
        "__isub__",
        "__imul__",
        "__imatmul__",
        "__itruediv__",
        "__ifloordiv__",
        "__imod__",
        "__ipow__",
        "__iand__",
        "__ior__",
        "__ixor__",
        "__ilshift__",
        "__irshift__",
        "__setitem__",
        "__set__",  # a tensor property set: ``tensor.data = other``
    }
)


class ModelWriteError(ValueError):
    """A pass of the sampling twin was about to write in place into one of the model's own
    tensors; it was stopped before the write."""


# How each function writes: None (it does not, but through ``out=`` or ``inplace=``), "first"
# (its first argument, or each tensor of a list there), a tuple of argument positions and names
# (an operator's schema), or ("inplace", position): its first argument when that flag is true.
_HOW: dict[Any, Any] = {}
_GUARD = threading.local()


def _how(func: Any) -> Any:
    schema = getattr(func, "_schema", None)
    if schema is not None:  # an OpOverload: the arguments its schema marks written
        written = tuple(
            (i, arg.name)
            for i, arg in enumerate(schema.arguments)
            if arg.alias_info is not None and arg.alias_info.is_write
        )
        return written or None
    name = getattr(func, "__name__", "")
    if not isinstance(name, str):
        return None
    if name in _IN_PLACE_OPERATORS or (name.endswith("_") and not name.endswith("__")):
        return "first"
    if inspect.isfunction(func):  # a functional with an ``inplace`` flag (F.relu, F.elu, ...)
        try:
            parameters = list(inspect.signature(func).parameters)
        except (TypeError, ValueError):
            return None
        if "inplace" in parameters:
            return ("inplace", parameters.index("inplace"))
    return None


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, torch.Tensor)]
    return []


def written(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[torch.Tensor]:
    """The tensors the call ``func(*args, **kwargs)`` writes in place (usually none: one dict
    lookup)."""
    try:
        how = _HOW[func]
    except KeyError:
        how = _HOW[func] = _how(func)
    except TypeError:  # an unhashable callable
        how = _how(func)
    if how is None:
        if not kwargs or "out" not in kwargs:
            return []
        return _tensors(kwargs["out"])
    found = _tensors(kwargs.get("out")) if kwargs else []
    if how == "first":
        if args:
            found += _tensors(args[0])
        elif kwargs:
            found += _tensors(kwargs.get("input", kwargs.get("self")))
    elif how[0] == "inplace":
        index = how[1]
        flag = kwargs["inplace"] if "inplace" in kwargs else args[index : index + 1] == (True,)
        if flag and args:
            found += _tensors(args[0])
    else:
        for index, name in how:
            found += _tensors(args[index] if index < len(args) else kwargs.get(name))
    return found


def check_write(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise :class:`ModelWriteError` if the call writes into a tensor of a model being guarded
    on this thread (:func:`guarding`)."""
    targets = written(func, args, kwargs)
    if targets:
        guard = getattr(_GUARD, "guard", None)
        if guard is not None:
            guard.check(func, targets)


class _Guard:
    """The storages of one model's tensors (and those of the guard it was entered inside),
    found at the first write a pass makes."""

    def __init__(self, model: nn.Module, outer: _Guard | None) -> None:
        self.model = model
        self.outer = outer
        self._names: dict[int, str] | None = None
        self.refused: ModelWriteError | None = None  # raised again on leaving, if swallowed

    def names(self) -> dict[int, str]:
        """The model's tensors by storage address: parameters, buffers, and tensors held as
        plain attributes of its modules."""
        if self._names is None:
            names: dict[int, str] = {}
            for prefix, module in self.model.named_modules(remove_duplicate=False):
                for attr, value in vars(module).items():
                    if attr in ("_parameters", "_buffers"):
                        items = list(value.items())
                    elif isinstance(value, torch.Tensor):
                        items = [(attr, value)]
                    else:
                        continue
                    for key, tensor in items:
                        address = _address(tensor)
                        if address:
                            names.setdefault(address, f"{prefix}.{key}" if prefix else key)
            self._names = names
        return self._names

    def check(self, func: Any, targets: list[torch.Tensor]) -> None:
        guard: _Guard | None = self
        while guard is not None:
            names = guard.names()
            for target in targets:
                name = names.get(_address(target))
                if name is not None:
                    self.refused = ModelWriteError(_message(guard.model, name, func))
                    raise self.refused
            guard = guard.outer


def _address(tensor: torch.Tensor) -> int:
    """The address of ``tensor``'s storage; 0 when it has none mcdrop can read (a tensor
    subclass without storage, a tensor batched by vmap, one on the meta device)."""
    try:
        return int(tensor.untyped_storage().data_ptr())
    except Exception:
        return 0


def _message(model: nn.Module, name: str, func: Any) -> str:
    what = getattr(func, "__name__", None) or repr(func)
    return (
        f"Expected the forward of `{type(model).__name__}` not to write into its own tensors "
        f"while mcdrop samples it, but it writes `{name}` in place ({what}). mcdrop never "
        "writes to the model it samples, and a forward whose state changes from pass to pass "
        "gives samples that depend on how many passes ran. Compute the value out of place "
        "(`self.count = self.count + 1`), or, if the writes are meant, sample a copy of the "
        "model (`copy.deepcopy(model)`)."
    )


@contextlib.contextmanager
def guarding(model: nn.Module) -> Iterator[None]:
    """Inside, on this thread, no pass may write into ``model``'s tensors (nor into those of
    a model guarded around it). A refusal that the forward (or a fallback) caught is raised
    again on leaving: samples of a forward whose write was stopped are not the model's."""
    outer = getattr(_GUARD, "guard", None)
    guard = _GUARD.guard = _Guard(model, outer)
    try:
        yield
    finally:
        _GUARD.guard = outer
    if guard.refused is not None:
        raise guard.refused


class NoModelWrites(TorchFunctionMode):
    """Every call checked by :func:`check_write`: a pass that runs under none of mcdrop's modes
    that check it (PyTorch's own dropout, the model in eval mode) writes nothing of the model."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        check_write(func, args, kwargs)
        return func(*args, **kwargs)
