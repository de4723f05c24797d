"""A cheap fingerprint of everything that decided a plan, so that a plan can be kept between calls.

:class:`mcdrop.MCDropout` keeps the plan of its last call (the sampling twin, its sites, the
strategy, the rows per pass; :class:`~mcdrop.sampling._engine.Kept`) with the
:func:`fingerprint` taken at the start of that call. The next call takes a new fingerprint
first; only when the two are equal is the plan used again. The fingerprint holds:

- the module tree: every module (by identity) and its class, the class's ``forward`` and
  ``train``, the child names, the training flag;
- the hooks: the handles of every module's forward, pre-forward and backward hook registries,
  and of PyTorch's global module hooks;
- every parameter and buffer: identity, shape, dtype, device (``model.to(dtype)`` keeps the
  identity, ``param.data = ...`` too). Values are not in it: a parameter updated in place is
  read by the kept twin, which shares it (buffers of modules that sample are copied again at
  every call);
- every other attribute of every module: plain values (rates, ``attention_dropout``, flags,
  strings) by value, tensors by identity, shape, dtype and device, lists, tuples, dicts and
  plain objects (a ``config``: ``_attn_implementation``) by their contents, two levels deep;
  anything else (functions, an instance-level ``forward``, other objects) by identity;
- the input signature: the pytree structure, each tensor's shape, dtype, device and layout,
  other leaves by value (plain) or identity;
- torch's modes: deterministic algorithms, autocast per device type, the default dtype, the
  fused-attention fast path switch, the number of active ``TorchFunctionMode`` objects (grad and
  inference mode are not: sampling runs under inference mode whatever the caller's);
- the caller's own key (options, the call's size).

Objects are compared by identity and kept alive by the fingerprint (an id of a freed object may
be reused), except in a :meth:`Fingerprint.weakened` one (the plans of
:func:`mcdrop.predict_with_uncertainty`, kept per model for as long as the model lives): it holds
weak references where an object takes one, and a dead reference equals nothing. Comparing two
fingerprints costs one pass over lists; taking one costs about a microsecond per attribute.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import weakref
from collections.abc import Hashable
from typing import Any

import torch
from torch import nn
from torch.nn.modules import module as _module
from torch.utils._pytree import tree_flatten

from mcdrop.dropout import CALL_HOOKS, modules_of

__all__: list[str] = []

_PLAIN = frozenset({bool, int, float, complex, str, bytes, type(None)})
_TENSORS = ("_parameters", "_buffers")
_SKIPPED = frozenset(
    {
        "_modules",
        "training",
        "_non_persistent_buffers_set",
        "_state_dict_hooks",
        "_state_dict_pre_hooks",
        "_load_state_dict_pre_hooks",
        "_load_state_dict_post_hooks",
        *CALL_HOOKS,
        *_TENSORS,
    }
)
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_hooks_with_kwargs",
    "_global_forward_hooks_always_called",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)
_signature = operator.attrgetter("shape", "dtype", "device", "layout")  # a tensor's, in C
_DEPTH = 2  # containers and plain objects looked into, below a module attribute
_MAX_ITEMS = 64  # a longer container is taken by identity (its contents may change unseen)


class Fingerprint:
    """Plain values compared by value and objects compared by identity (held alive): those of
    the model (``model``) and those of the call (inputs, modes, the caller's key)."""

    __slots__ = ("call", "held", "model", "weak")

    def __init__(self, model: _Walker, call: _Walker) -> None:
        self.model = (model.values, model.refs)
        self.call = (call.values, call.refs)
        self.held: list[torch.Tensor] | None = None if model.partial else model.tensors
        self.weak = False

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Fingerprint)
            and _same(self.call, other.call, self.weak)
            and _same(self.model, other.model, self.weak)
        )

    __hash__ = None  # type: ignore[assignment]

    def tensors(self) -> list[torch.Tensor] | None:
        """The model's tensors it walked (parameters and their gradients, buffers, tensor
        attributes, tensors in the containers it looked into); None when it did not walk all of
        them (a container too long to walk) or is weakened."""
        held = self.held
        if held is None:
            return None
        grads = [g for t in held if type(t) is nn.Parameter and (g := t.grad) is not None]
        return held + grads if grads else held

    def same_model(self, other: Fingerprint) -> bool:
        """Whether the model part is the same (another input signature may differ)."""
        return _same(self.model, other.model, self.weak)

    def weakened(self) -> Fingerprint:
        """The same fingerprint holding weak references to the objects that take one (modules,
        tensors, functions, classes) and the ids of the others: it keeps nothing alive. Equal to
        a fingerprint taken later only while every object it refers to lives."""
        if self.weak:
            return self
        weak = Fingerprint.__new__(Fingerprint)
        weak.model = (self.model[0], [_weak(x) for x in self.model[1]])
        weak.call = (self.call[0], [_weak(x) for x in self.call[1]])
        weak.held = None
        weak.weak = True
        return weak


class _Weak:
    """A weak reference in a :meth:`Fingerprint.weakened` fingerprint (not one of the model's own
    ``weakref.ref`` attributes, which are compared by identity like any object)."""

    __slots__ = ("ref",)

    def __init__(self, ref: weakref.ref[Any]) -> None:
        self.ref = ref


class _Id:
    """An object that takes no weak reference (a list, a dict, a tuple) in a weakened
    fingerprint: its id only (holding it could hold the model: ``model.registry = [model]``).
    Its contents are compared by value to two levels like any attribute's; an id reused by a
    new container with the same contents down to there is taken for the old one, which the
    first chunk's counted calls still guard."""

    __slots__ = ("id",)

    def __init__(self, key: int) -> None:
        self.id = key


def _weak(x: Any) -> Any:
    if isinstance(x, (_Weak, _Id)):
        return x
    try:
        return _Weak(weakref.ref(x))
    except TypeError:
        return _Id(id(x))


def _is(x: Any, y: Any) -> bool:
    kind = type(x)
    if kind is _Weak:
        return bool(x.ref() is y)
    if kind is _Id:
        return bool(x.id == id(y))
    return x is y


def _same(
    a: tuple[list[Hashable], list[Any]], b: tuple[list[Hashable], list[Any]], weak: bool
) -> bool:
    """Equal values and the same objects; ``a`` may be a weakened fingerprint's (``weak``)."""
    if len(a[1]) != len(b[1]) or a[0] != b[0]:
        return False
    if weak:
        return all(_is(x, y) for x, y in zip(a[1], b[1], strict=True))
    return all(map(operator.is_, a[1], b[1]))  # (in C)


def _plain_items(items: tuple[Any, ...]) -> bool:
    """Whether a tuple holds only plain values (then compared by value, types included: an
    immutable tuple of them needs no identity)."""
    return len(items) <= _MAX_ITEMS and _PLAIN.issuperset(map(type, items))


@functools.lru_cache(maxsize=1024)
def _own_classes(mro: tuple[type, ...]) -> tuple[type, ...]:
    """The classes of an MRO whose functions the fingerprint holds: all but PyTorch's and
    ``object`` (keyed by the MRO itself: a class whose bases were reassigned is looked up anew)."""
    return tuple(
        klass for klass in mro if not (klass.__module__.startswith("torch.") or klass is object)
    )


class _Unseen:
    """Equal to nothing, itself included: a fingerprint that holds one matches no other."""

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return id(self)


class _Walker:
    def __init__(self) -> None:
        self.values: list[Hashable] = []
        self.refs: list[Any] = []
        self.seen: dict[int, int] = {}  # id of a container or object looked into -> its index
        self.tensors: list[torch.Tensor] = []  # the tensors among ``refs``
        self.partial = False  # a container too long to walk: ``tensors`` are not all of them
        self.classes: set[type] = set()

    def module(self, module: nn.Module) -> None:
        values, refs = self.values, self.refs
        cls = type(module)
        refs.append(module)
        refs.append(cls)
        values.append(module.training)
        if cls not in self.classes:
            self.classes.add(cls)
            refs.append(getattr(cls, "forward", None))
            refs.append(getattr(cls, "train", None))
            # every function the user's classes define (a patched helper method changes one)
            for klass in _own_classes(cls.__mro__):
                refs.extend(v for v in vars(klass).values() if callable(v))
        state = module.__dict__
        values.append(tuple(state["_modules"]))
        if any(map(state.get, CALL_HOOKS)):  # (usually none: one pass in C)
            for name in CALL_HOOKS:
                hooks = state.get(name)
                if hooks:
                    values.append((name, *hooks))  # handle ids: never reused
        for name in _TENSORS:
            registry = state.get(name)
            if registry:
                for key, tensor in registry.items():
                    values.append(key)
                    self.tensor(tensor)
        plain, value_of = _PLAIN, self.value
        # The other attributes: the registries left out in C (a set, ordered as the dict's
        # keys are for the same keys inserted in the same order; another order can only make
        # two fingerprints of the same model differ, and every entry names its attribute).
        for key in state.keys() - _SKIPPED:
            value = state[key]
            kind = type(value)
            if kind in plain:  # (most attributes: what value() appends, in one entry)
                values.append((key, kind, value))
            elif kind is tuple and _plain_items(value):  # kernel sizes, strides, shapes
                values.append((key, tuple, tuple(map(type, value)), value))
            else:
                values.append(key)
                value_of(value, 0)

    def tensor(self, tensor: torch.Tensor | None) -> None:
        if tensor is None:
            self.values.append(None)
            return
        self.refs.append(tensor)
        self.tensors.append(tensor)
        self.values.append(_signature(tensor))

    def value(self, value: Any, depth: int) -> None:
        kind = type(value)
        if kind in _PLAIN:
            self.values.append((kind, value))
            return
        if isinstance(value, torch.Tensor):
            self.tensor(value)
            return
        self.refs.append(value)
        if depth >= _DEPTH or isinstance(value, (nn.Module, type)) or callable(value):
            return
        key = id(value)
        if key in self.seen:
            self.values.append(("@", self.seen[key]))
            return
        self.seen[key] = len(self.values)
        if kind in (list, tuple, set, frozenset) or isinstance(value, (list, tuple)):
            items = value if kind not in (set, frozenset) else sorted(value, key=repr)
            if len(items) <= _MAX_ITEMS:
                self.values.append(("[", len(items)))
                for item in items:
                    self.value(item, depth + 1)
            else:
                self.long(tuple(items))
            return
        if isinstance(value, dict):
            if len(value) <= _MAX_ITEMS:
                self.values.append(("{", len(value)))
                for k, item in value.items():
                    self.value(k, depth + 1)
                    self.value(item, depth + 1)
            else:
                self.long(tuple(itertools.chain.from_iterable(value.items())))
            return
        attrs = getattr(value, "__dict__", None)
        if isinstance(attrs, dict) and len(attrs) <= 4 * _MAX_ITEMS:  # a config, a namespace
            self.values.append(("(", len(attrs)))
            for k, item in attrs.items():
                self.values.append(k)
                self.value(item, depth + 1)
        elif isinstance(attrs, dict):
            self.long(tuple(itertools.chain.from_iterable(attrs.items())))

    def long(self, items: tuple[Any, ...]) -> None:
        """A container too long to walk (the twin may hold a copy of it): its contents by value
        when they are plain values (``id2label``), else a value equal to nothing, so that no
        plan is kept while it is there (its contents could change unseen)."""
        if all(type(item) in _PLAIN for item in items):
            self.values.append(("[*", items))
        else:
            self.values.append(_Unseen())
            self.partial = True


def fingerprint(model: nn.Module, inputs: Any, key: Hashable) -> Fingerprint:
    """The fingerprint of ``model`` called on ``inputs`` (args and kwargs of the first batch)
    under the present torch modes, with the caller's ``key``; see the module docstring."""
    walker, call = _Walker(), _Walker()
    for name in _GLOBAL_HOOKS:
        hooks = getattr(_module, name, None)
        if hooks:
            walker.values.append((name, *hooks))
    for module in modules_of(model):
        walker.module(module)
    call.values.append(key)
    call.values.append(_modes())
    args, kwargs = inputs
    if not kwargs and all(type(arg) is torch.Tensor for arg in args):  # (most calls: no pytree)
        call.values.append(("tensors", len(args)))
        call.values.extend(map(_signature, args))
        return Fingerprint(walker, call)
    leaves, spec = tree_flatten(inputs)
    call.values.append(spec)
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            call.values.append(_signature(leaf))
        elif type(leaf) in _PLAIN:
            call.values.append((type(leaf), leaf))
        else:
            call.refs.append(leaf)
    return Fingerprint(walker, call)


def _modes() -> tuple[Hashable, ...]:
    autocast = tuple(
        (d, torch.is_autocast_enabled(d), torch.get_autocast_dtype(d))
        for d in ("cpu", "cuda")
        if torch.is_autocast_enabled(d)
    )
    functions = 0
    with contextlib.suppress(AttributeError):
        functions = torch._C._len_torch_function_stack()
    # Grad and inference mode are left out: every pass runs under inference mode.
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.get_default_dtype(),
        torch.backends.mha.get_fastpath_enabled(),
        functions,
        autocast,
    )
