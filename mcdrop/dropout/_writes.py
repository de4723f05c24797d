"""The model's own tensors are never written by a pass of its twin.

A twin shares the model's parameters, buffers and tensor attributes (its modules that sample,
and those a probe runs in training mode, get copies of their buffers). A forward that writes one
of the shared tensors in place (``self.calls += 1`` on a buffer, ``self.stats.copy_(...)``,
``self.weight.data.clamp_(...)``, ``torch.add(a, b, out=self.buffer)``) would therefore write into
the user's model while mcdrop samples it, and its samples would drift from pass to pass.

While :func:`guarding` is entered for a model, every torch call of a pass reaches
:func:`check_write` first (from mcdrop's modes: :class:`mcdrop.dropout.MaskedDropout`, the
probe's recorder, :class:`NoModelWrites` where neither runs): a call that writes in place into
one of the model's tensors (the same tensor, a view of its memory, or one held in a list, tuple
or dict attribute of a module) raises :class:`ModelWriteError` before it runs, naming the tensor,
so the model is not written. Writes to anything else (activations, the twin's own copies of
buffers) run as they are.

What counts as a write: a function or method whose name ends in ``_`` (``add_``, ``copy_``,
``index_put_``, ``t_``, ``requires_grad_``, ``nn.init.normal_``), the in-place operators (``+=``,
``x[i] = v``), setting a tensor property (``.data = ...``), an ``out=`` argument, ``inplace=True``
of a functional, an operator whose schema marks an argument written (``torch.ops.aten.add_``,
a custom op declared with ``mutates_args``), and the functionals whose kernels write their
arguments: ``F.batch_norm`` and ``F.instance_norm`` updating running statistics,
``F.embedding`` / ``F.embedding_bag`` with ``max_norm`` (which renormalise the weight).

What the mode cannot stop before it runs (a write inside a C++ extension or a TorchScript
submodule, through ``tensor.numpy()`` or the storage object, under
``torch._C.DisableTorchFunction``, from another thread) is still not silent where it goes
through a tensor's version counter: every tensor of the model has its version read when the call
starts and again when it ends, and a change raises :class:`ModelWriteError` saying that the model
was written. Not seen at all: a write through ``numpy()`` or the storage object, which leaves
the version counter alone.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.utils
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from mcdrop.dropout._twin import modules_of

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
    """A pass of the sampling twin writes in place into one of the model's own tensors: stopped
    before the write where mcdrop's mode sees it, else found when the call ends."""


# How each function writes: None (it does not, but through ``out=`` or ``inplace=``), or a
# function of ``(args, kwargs)`` giving the tensors it writes (possibly lists of them).
_HOW: dict[Any, Any] = {}
_GUARD = threading.local()


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _first(name: str | None) -> Callable[[tuple[Any, ...], dict[str, Any]], list[Any]]:
    """The first argument: positional, or by its name (``nn.init.normal_(tensor=...)``)."""
    names = (name,) if name else ("input", "self", "tensor")

    def first(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        if args:
            return [args[0]]
        return [kwargs.get(n) for n in names if n in kwargs][:1]

    return first


def _if_flag(
    flag: tuple[int, str], written: tuple[tuple[int, str], ...], default: bool = False
) -> Callable[[tuple[Any, ...], dict[str, Any]], list[Any]]:
    """The arguments ``written`` when the argument ``flag`` (``default`` when not given) is
    true (a functional's ``inplace``, batch norm's ``training``)."""

    def when(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        index, name = flag
        value = args[index] if len(args) > index else kwargs.get(name, default)
        if not (isinstance(value, (bool, int)) and value):
            return []
        return [_arg(args, kwargs, i, n) for i, n in written]

    return when


def _schema_writes(
    schemas: list[Any],
) -> Callable[[tuple[Any, ...], dict[str, Any]], list[Any]] | None:
    """The arguments an operator's schemas mark written (for a packet, those of every
    overload: which one runs is decided later)."""
    written = {
        (i, arg.name)
        for schema in schemas
        for i, arg in enumerate(schema.arguments)
        if arg.alias_info is not None and arg.alias_info.is_write
    }
    if not written:
        return None
    ordered = tuple(sorted(written))
    return lambda args, kwargs: [_arg(args, kwargs, i, n) for i, n in ordered]


def _never(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    return []


# Functionals whose kernels write their arguments (the mode sees the functional, not the
# kernel's write): running statistics, and embeddings renormalised in place by ``max_norm``.
_RENORM = ((1, "weight"),)
_KERNEL_WRITES: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], list[Any]]] = {
    F.batch_norm: _if_flag((5, "training"), ((1, "running_mean"), (2, "running_var"))),
    torch.batch_norm: _if_flag((5, "training"), ((3, "running_mean"), (4, "running_var"))),
    F.instance_norm: _if_flag(
        (5, "use_input_stats"), ((1, "running_mean"), (2, "running_var")), default=True
    ),
    torch.instance_norm: _if_flag(
        (5, "use_input_stats"), ((3, "running_mean"), (4, "running_var"))
    ),
    F.embedding: lambda a, k: [_arg(a, k, 1, "weight")] if _arg(a, k, 3, "max_norm") else [],
    F.embedding_bag: lambda a, k: [_arg(a, k, 1, "weight")] if _arg(a, k, 3, "max_norm") else [],
    torch.utils.swap_tensors: lambda a, k: [_arg(a, k, 0, "t1"), _arg(a, k, 1, "t2")],
}


def _how(func: Any) -> Any:
    """How ``func`` writes (see ``_HOW``); None when it does not (or cannot be read)."""
    try:
        known = _KERNEL_WRITES.get(func)
    except TypeError:
        known = None
    if known is not None:
        return known
    try:
        schema = getattr(func, "_schema", None)
        if isinstance(schema, torch._C.FunctionSchema):  # an operator overload
            return _schema_writes([schema])
        if isinstance(func, torch._ops.OpOverloadPacket):  # all its overloads
            return _schema_writes([getattr(func, o)._schema for o in func.overloads()])
        name = getattr(func, "__name__", "")
        if not isinstance(name, str):
            return None
        if name == "__set__":  # a tensor property set (``.data = ...``): the tensor
            return _first(None)
        if name in _IN_PLACE_OPERATORS or (name.endswith("_") and not name.endswith("__")):
            parameters = _parameters(func)
            return _first(parameters[0] if parameters else None)
        parameters = _parameters(func)
        if "inplace" in parameters:  # a functional with an ``inplace`` flag (F.relu, F.elu)
            return _if_flag((parameters.index("inplace"), "inplace"), ((0, parameters[0]),))
    except Exception:  # (an object posing as a function: nothing mcdrop can read)
        return None
    return None


def _parameters(func: Any) -> list[str]:
    """The parameter names of a Python function (none for a builtin)."""
    if not inspect.isfunction(func):
        return []
    try:
        return list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return []


def _tensors(values: list[Any]) -> list[torch.Tensor]:
    found = []
    for value in values:
        if isinstance(value, torch.Tensor):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(v for v in value if isinstance(v, torch.Tensor))
    return found


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
        return _tensors([kwargs["out"]])
    found = how(args, kwargs)
    if kwargs and "out" in kwargs:
        found = [*found, kwargs["out"]]
    return _tensors(found)


def check_write(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Raise :class:`ModelWriteError` if the call writes into a tensor of a model being guarded
    on this thread (:func:`guarding`)."""
    targets = written(func, args, kwargs)
    if targets:
        guard = getattr(_GUARD, "guard", None)
        if guard is not None:
            guard.check(func, targets)


def _held(module: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors ``module`` holds: parameters, buffers, tensor attributes, and tensors in
    list, tuple and dict attributes (one level down)."""
    for attr, value in vars(module).items():
        if attr in ("_parameters", "_buffers"):
            yield from ((k, t) for k, t in value.items() if t is not None)
        elif isinstance(value, torch.Tensor):
            yield attr, value
        elif isinstance(value, (list, tuple)) and not attr.startswith("_"):
            for i, item in enumerate(value):
                if isinstance(item, torch.Tensor):
                    yield f"{attr}[{i}]", item
        elif isinstance(value, dict) and not attr.startswith("_"):
            for key, item in value.items():
                if isinstance(item, torch.Tensor):
                    yield f"{attr}[{key!r}]", item


def _version(tensor: torch.Tensor) -> int:
    try:
        return int(tensor._version)
    except Exception:  # an inference tensor keeps none
        return -1


class _Guard:
    """One model's tensors and their versions as the call found them (and the guard it was
    entered inside); their names and memory addresses are looked up at the first write a pass
    makes."""

    def __init__(
        self, model: nn.Module, outer: _Guard | None, tensors: list[torch.Tensor] | None
    ) -> None:
        self.model = model
        self.outer = outer
        if tensors is None:
            tensors = [t for m in modules_of(model) for _, t in _held(m)]
        self.tensors = tensors
        self.versions = list(map(_version, tensors))
        self._names: dict[int, str] | None = None
        self.refused: ModelWriteError | None = None  # raised again on leaving, if swallowed

    def names(self) -> dict[int, str]:
        """Qualified names of the model's tensors, by id and by the address of their memory
        (a tensor with neither readable memory nor elements, by id only)."""
        if self._names is None:
            by_id: dict[int, str] = {}
            by_address: dict[int, str] = {}
            for prefix, module in self.model.named_modules(remove_duplicate=False):
                for key, tensor in _held(module):
                    name = f"{prefix}.{key}" if prefix else key
                    by_id.setdefault(id(tensor), name)
                    address = _address(tensor)
                    if address:
                        by_address.setdefault(address, name)
            self._names = {**{-a: n for a, n in by_address.items()}, **by_id}
        return self._names

    def check(self, func: Any, targets: list[torch.Tensor]) -> None:
        guard: _Guard | None = self
        while guard is not None:
            names = guard.names()
            for target in targets:
                name = names.get(id(target))
                address = _address(target) if name is None else 0
                name = name if name is not None else names.get(-address) if address else None
                if name is not None:
                    self.refused = ModelWriteError(_message(guard.model, name, func))
                    raise self.refused
            guard = guard.outer

    def changed(self) -> str | None:
        """The name of a tensor of the model whose version moved since the call started."""
        for tensor, version in zip(self.tensors, self.versions, strict=True):
            if _version(tensor) != version:
                return self.names().get(id(tensor), "<a tensor of the model>")
        return None


def _address(tensor: torch.Tensor) -> int:
    """The address of ``tensor``'s memory; 0 when mcdrop cannot read one (a sparse tensor, a
    tensor subclass without storage, a tensor batched by vmap) or it has no elements."""
    try:
        return int(tensor.untyped_storage().data_ptr())
    except Exception:
        return 0


def _what(func: Any) -> str:
    name = getattr(func, "__name__", None)
    if name == "__set__":  # a property of a tensor: its name
        prop = getattr(getattr(func, "__self__", None), "__name__", None)
        return f"sets .{prop}" if isinstance(prop, str) else "sets a property"
    return name if isinstance(name, str) else type(func).__name__


def _message(model: nn.Module, name: str, func: Any) -> str:
    return (
        f"Expected the forward of `{type(model).__name__}` not to write into its own tensors "
        f"while mcdrop samples it, but it writes `{name}` in place ({_what(func)}); stopped "
        "before the write. mcdrop never writes to the model it samples, and a forward whose "
        "state changes from pass to pass gives samples that depend on how many passes ran. "
        "Compute the value out of place (`self.count = self.count + 1`), or, if the writes are "
        "meant, sample a copy of the model (`copy.deepcopy(model)`)."
    )


def _written_message(model: nn.Module, name: str) -> str:
    return (
        f"Expected the tensors of `{type(model).__name__}` to stay as they were while mcdrop "
        f"samples it, but `{name}` was written in place during the call by code mcdrop could "
        "not stop before it ran: a C++ extension or TorchScript submodule in the forward, code "
        "under torch._C.DisableTorchFunction, or another thread writing the model (a training "
        "step) while it was sampled. The samples would mix the model before and after; compute "
        "the value out of place in the forward, sample a copy of the model "
        "(`copy.deepcopy(model)`), or do not update it during the call."
    )


@contextlib.contextmanager
def guarding(model: nn.Module, tensors: list[torch.Tensor] | None = None) -> Iterator[None]:
    """Inside, on this thread, no pass may write into ``model``'s tensors (nor into those of a
    model guarded around it). A refusal that the forward (or a fallback) caught is raised again
    on leaving, also in place of another error it led to: samples of a forward whose write was
    stopped are not the model's. A write mcdrop could not stop is raised on leaving, if it moved
    the version of one of ``tensors`` (the model's tensors, when the caller has them: a
    fingerprint's; else every tensor the model's modules hold, as :func:`_held` finds them)."""
    outer = getattr(_GUARD, "guard", None)
    guard = _GUARD.guard = _Guard(model, outer, tensors)
    try:
        yield
    except ModelWriteError:
        raise
    except Exception as error:
        _raise_if_written(guard, error)
        raise
    else:
        _raise_if_written(guard, None)
    finally:
        _GUARD.guard = outer


def _raise_if_written(guard: _Guard, error: Exception | None) -> None:
    name = guard.changed()
    if name is not None:
        raise ModelWriteError(_written_message(guard.model, name)) from error
    if guard.refused is not None:
        raise guard.refused from error


class NoModelWrites(TorchFunctionMode):
    """Every call checked by :func:`check_write`: a pass that runs under none of mcdrop's modes
    that check it (PyTorch's own dropout, the model in eval mode) writes nothing of the model."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        check_write(func, args, kwargs)
        return func(*args, **kwargs)
