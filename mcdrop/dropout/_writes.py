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
a custom op declared with ``mutates_args``), and the functionals and operators whose kernels
write their arguments: ``F.batch_norm``, ``F.instance_norm``, ``torch.native_batch_norm`` and
``torch.batch_norm_update_stats`` updating running statistics, ``F.embedding`` /
``F.embedding_bag`` with ``max_norm`` (which renormalise the weight). Let through: cuDNN moving
an RNN's weights into one flat buffer, values kept (``flatten_parameters()`` on CUDA).

What the mode cannot stop before it runs (a write inside a C++ extension or a TorchScript
submodule, ``Tensor.set_``, ``torch.utils.swap_tensors``, under
``torch._C.DisableTorchFunction``, from another thread) is still not silent where it moves a
tensor's version counter: every tensor of the model (as the call's fingerprint holds them, else
as :func:`_held` finds them) has its version read when the call starts and again when it ends,
and a change raises :class:`ModelWriteError` saying that the model was written. Not seen at all:
a write through ``tensor.numpy()`` or the storage object, which leaves the counter alone.
"""

from __future__ import annotations

import contextlib
import inspect
import itertools
import operator
import threading
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
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


def _renormalised(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
    """The weight of an embedding given a ``max_norm`` (renormalised in place, any norm)."""
    return (
        [_arg(args, kwargs, 1, "weight")] if _arg(args, kwargs, 3, "max_norm") is not None else []
    )


# Functionals whose kernels write their arguments (the mode sees the functional, not the
# kernel's write): running statistics, and embeddings renormalised in place by ``max_norm``.
_KERNEL_WRITES: dict[Any, Callable[[tuple[Any, ...], dict[str, Any]], list[Any]]] = {
    F.batch_norm: _if_flag((5, "training"), ((1, "running_mean"), (2, "running_var"))),
    F.instance_norm: _if_flag(
        (5, "use_input_stats"), ((1, "running_mean"), (2, "running_var")), default=True
    ),
    F.embedding: _renormalised,
    F.embedding_bag: _renormalised,
}
# ... and the operators behind them, by name (``torch.native_batch_norm`` and
# ``torch.ops.aten.native_batch_norm`` alike): their schemas mark no write.
_STATISTICS = ((3, "running_mean"), (4, "running_var"))
_OPERATOR_WRITES: dict[str, Callable[[tuple[Any, ...], dict[str, Any]], list[Any]]] = {
    **{
        name: _if_flag((5, "training"), _STATISTICS)
        for name in (
            "batch_norm",
            "native_batch_norm",
            "cudnn_batch_norm",
            "miopen_batch_norm",
            "_batch_norm_impl_index",
            "_native_batch_norm_legit",
        )
    },
    "instance_norm": _if_flag((5, "use_input_stats"), _STATISTICS),
    "batch_norm_update_stats": lambda a, k: [
        _arg(a, k, 1, "running_mean"),
        _arg(a, k, 2, "running_var"),
    ],
    "_cudnn_rnn_flatten_weight": lambda a, k: [_arg(a, k, 0, "weight_arr")],
}
# Writes that keep the values: cuDNN's RNN weights moved into one flat buffer (an LSTM's
# ``flatten_parameters()``, which forwards call on CUDA), allowed on the model's tensors.
_KEEP_VALUES = frozenset({"_cudnn_rnn_flatten_weight"})


def _operator_name(func: Any) -> str | None:
    """The name of an ATen operator: a ``torch.*`` builtin or a ``torch.ops.aten`` overload or
    packet; None for anything else (another library's operator of the same name included)."""
    if isinstance(func, torch._ops.OpOverload):
        return str(func._opname) if func.namespace == "aten" else None
    if isinstance(func, torch._ops.OpOverloadPacket):
        qualified = str(func._qualified_op_name)
        return qualified[len("aten::") :] if qualified.startswith("aten::") else None
    if isinstance(func, types.BuiltinFunctionType):
        name = getattr(func, "__name__", None)
        return name if isinstance(name, str) and getattr(torch, name, None) is func else None
    return None


def _how(func: Any) -> Any:
    """How ``func`` writes (see ``_HOW``); None when it does not (or cannot be read)."""
    try:
        known = _KERNEL_WRITES.get(func)
    except TypeError:
        known = None
    if known is not None:
        return known
    try:
        name = _operator_name(func)
        if name in _OPERATOR_WRITES:
            return _OPERATOR_WRITES[name]
        schema = getattr(func, "_schema", None)
        if isinstance(schema, torch._C.FunctionSchema):  # an operator overload
            return _schema_writes([schema])
        if isinstance(func, torch._ops.OpOverloadPacket):  # all its overloads
            return _schema_writes([getattr(func, o)._schema for o in func.overloads()])
        name = getattr(func, "__name__", "")
        if not isinstance(name, str):
            return None
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


def check_write(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Callable[[Any], Any] | None:
    """Raise :class:`ModelWriteError` if the call writes into a tensor of a model being guarded
    on this thread (:func:`guarding`). For a write that keeps the values (``_KEEP_VALUES``), a
    function to pass the call's result through once it ran: the tensors' versions after it
    become the ones a later write is told from. None otherwise (the usual case)."""
    targets = written(func, args, kwargs)
    if not targets:
        return None
    guard = getattr(_GUARD, "guard", None)
    if guard is None:
        return None
    if _operator_name(func) not in _KEEP_VALUES:
        guard.check(func, targets)
        return None

    def after(result: Any) -> Any:
        guard.rebase(targets)
        return result

    return after


_ATOMS = frozenset({bool, int, float, complex, str, bytes, type(None)})
_REGISTRIES = frozenset(nn.Module().__dict__) - {"training"}
_SEQUENCES = frozenset({tuple, list})
_DEPTH = 2  # containers and plain objects looked into below a module attribute


def _held(module: nn.Module, seen: set[int], out: list[Any], prefix: str | None = None) -> None:
    """Append the tensors ``module`` holds to ``out`` (with ``prefix``, as ``(qualified name,
    tensor)``): parameters (and their gradients), buffers, tensors in its other attributes, and
    in lists, tuples, dicts and plain objects (a config, a namespace) below them, two levels
    down. ``seen``: the ids of the containers looked into already (an object shared by several
    modules is looked into once). Runs at every call: plain values are passed over in C."""
    state = module.__dict__
    named = prefix is not None
    parameters = state.get("_parameters")
    if parameters:
        for key, tensor in parameters.items():
            if tensor is not None:
                out.append((f"{prefix}{key}", tensor) if named else tensor)
                grad = tensor.grad
                if grad is not None:
                    out.append((f"{prefix}{key}.grad", grad) if named else grad)
    buffers = state.get("_buffers")
    if buffers:
        for key, tensor in buffers.items():
            if tensor is not None:
                out.append((f"{prefix}{key}", tensor) if named else tensor)
    if isinstance(module, torch.jit.ScriptModule):  # (its tensors live in C++)
        for key, tensor in (
            *module.named_parameters(recurse=False),
            *module.named_buffers(recurse=False),
        ):
            out.append((f"{prefix}{key}", tensor) if named else tensor)
    atoms = _ATOMS
    for key in state.keys() - _REGISTRIES:
        value = state[key]
        kind = type(value)
        if kind in atoms or (kind in _SEQUENCES and atoms.issuperset(map(type, value))):
            continue  # (rates, flags, kernel sizes: most attributes)
        _inside(value, 0, seen, out, f"{prefix}{key}" if named else None)


def _inside(value: Any, depth: int, seen: set[int], out: list[Any], path: str | None) -> None:
    if isinstance(value, torch.Tensor):
        out.append(value if path is None else (path, value))
        return
    if depth >= _DEPTH or isinstance(value, (nn.Module, type)) or callable(value):
        return
    if isinstance(value, (list, tuple, set, frozenset)):
        if _plain(value, depth):
            return
        items: Any = ((f"[{i}]", item) for i, item in enumerate(value))
    elif isinstance(value, dict):
        if _plain(value.keys(), depth) and _plain(value.values(), depth):
            return
        items = [(f".keys()[{i}]", key) for i, key in enumerate(value) if type(key) not in _ATOMS]
        items += [
            (f"[{key!r}]" if type(key) in _ATOMS else f"[<key {i}>]", item)
            for i, (key, item) in enumerate(value.items())
        ]
    else:
        attrs = getattr(value, "__dict__", None)
        if not isinstance(attrs, dict):
            return
        items = ((f".{key}", item) for key, item in attrs.items())
    if id(value) in seen:
        return
    seen.add(id(value))
    for name, item in items:
        if type(item) not in _ATOMS:
            _inside(item, depth + 1, seen, out, None if path is None else path + name)


def _plain(items: Any, depth: int) -> bool:
    """Whether ``items`` (a container's, at ``depth``) hold no tensor within reach: plain values,
    or (one level above the last) sequences of plain values. Looked at in C: a tokenizer's
    200,000 merges are passed over in milliseconds."""
    kinds = set(map(type, items))
    if kinds <= _ATOMS:
        return True
    if depth + 1 >= _DEPTH or not kinds <= _ATOMS | _SEQUENCES:
        return False
    inner = itertools.chain.from_iterable(i for i in items if type(i) in _SEQUENCES)
    return set(map(type, inner)) <= _ATOMS


def _tensors_of(model: nn.Module) -> list[torch.Tensor]:
    out: list[Any] = []
    seen: set[int] = set()
    for module in modules_of(model):
        _held(module, seen, out)
    return out


def _version(tensor: torch.Tensor) -> int:
    try:
        return int(tensor._version)
    except Exception:  # an inference tensor keeps none
        return -1


def _versions(tensors: list[torch.Tensor]) -> list[int]:
    try:
        return list(map(_VERSION, tensors))  # (in C)
    except Exception:
        return list(map(_version, tensors))


_VERSION = operator.attrgetter("_version")


class _Guard:
    """One model's tensors and their versions as the call found them (and the guard it was
    entered inside); their names and memory addresses are looked up at the first write a pass
    makes."""

    def __init__(
        self, model: nn.Module, outer: _Guard | None, tensors: list[torch.Tensor] | None
    ) -> None:
        self.model = model
        self.outer = outer
        self.tensors = _tensors_of(model) if tensors is None else tensors
        self.versions = _versions(self.tensors)
        self._names: dict[int, str] | None = None
        self.refused: ModelWriteError | None = None  # raised again on leaving, if swallowed

    def names(self) -> dict[int, str]:
        """Qualified names of the model's tensors, by id and by the address of their memory
        (a tensor with neither readable memory nor elements, by id only)."""
        if self._names is None:
            by_id: dict[int, str] = {}
            by_address: dict[int, str] = {}
            seen: set[int] = set()
            held: list[tuple[str, torch.Tensor]] = []
            for prefix, module in self.model.named_modules(remove_duplicate=False):
                _held(module, seen, held, f"{prefix}." if prefix else "")
            for name, tensor in held:
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

    def rebase(self, targets: list[torch.Tensor]) -> None:
        """``targets`` were written keeping their values (``_KEEP_VALUES``): their versions now
        are those a later write is told from."""
        guard: _Guard | None = self
        while guard is not None:
            index = {id(t): i for i, t in enumerate(guard.tensors)}
            for target in targets:
                i = index.get(id(target))
                if i is not None:
                    guard.versions[i] = _version(target)
            guard = guard.outer

    def changed(self) -> str | None:
        """The name of a tensor of the model whose version moved since the call started."""
        now = _versions(self.tensors)
        if now == self.versions:
            return None
        for tensor, before, after in zip(self.tensors, self.versions, now, strict=True):
            if after != before:
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


def checked_call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``func(*args, **kwargs)``, unless it writes into the model being sampled
    (:func:`check_write`)."""
    after = check_write(func, args, kwargs)
    out = func(*args, **kwargs)
    return out if after is None else after(out)


class NoModelWrites(TorchFunctionMode):
    """Every call checked by :func:`check_write`: a pass that runs under none of mcdrop's modes
    that check it (PyTorch's own dropout, the model in eval mode) writes nothing of the model."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return checked_call(func, args, kwargs or {})
