"""Structural twins: new module objects that share a model's parameters, buffers and hooks.

mcdrop never samples the user's model itself. It samples a *twin*: for every module of the model
a new object of the same class whose parameters, buffers and other attributes are the very same
objects (no copy, no extra memory), but whose ``training`` flag and hook registries are its own.
Switching the twin's dropout on, or registering probe hooks on it, writes nothing the model can
see, so any number of threads may call the model and mcdrop at once.

Every reference a twin module holds to a module of the model (in attributes, ``__slots__``,
containers and plain objects nested to any reasonable depth, bound methods, partials, closures,
hooks) is pointed at its twin (:class:`_Rebinder`); what cannot be redirected is returned in
:class:`Untwinned`, and the training-mode probe refuses a model whose forward runs it
(:mod:`mcdrop.dropout._probe`). fx ``GraphModule`` classes, made per instance with the generated
``forward``, are kept.

A twin is built when a call plans (O(number of modules), about a microsecond each); a plan kept
for later calls (guarded by a fingerprint of the model, :mod:`mcdrop.sampling`) has its twin
brought up to date by :func:`retwin` at each of them, so an attribute changed in place, or one
the twin's own ``forward`` wrote, is never sampled stale.

TorchScript modules cannot be twinned (their state lives in C++): :func:`_twin` returns ``None``
for them and the caller falls back to switching flags under a per-model lock.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import enum
import functools
import operator
import threading
import types
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__: list[str] = []

# Per-instance registries that must not be shared between a module and its twin: hooks (so a
# probe hook on the twin never fires on the model) and the containers of children, parameters
# and buffers (so a twin's child can be replaced without touching the model).
CALL_HOOKS = (  # the registries of the hooks that run when a module is called
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_OWN_DICTS = (
    "_parameters",
    "_buffers",
    "_modules",
    *CALL_HOOKS,
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
_OWN_SETS = ("_non_persistent_buffers_set",)
_HOOK_DICTS = frozenset(_OWN_DICTS[3:])
_REGISTRIES = frozenset(_OWN_DICTS + _OWN_SETS)
_TENSOR_DICTS = _OWN_DICTS[:2]
_QUIET = _OWN_DICTS[3:] + _OWN_SETS  # registries that are usually empty
_NOT_ATTRIBUTES = _REGISTRIES | {"training"}
_PLAIN = frozenset({bool, int, float, str, type(None)})  # attribute values never looked into


def _is_scripted(module: nn.Module) -> bool:
    return isinstance(module, torch.jit.ScriptModule)


def unwrap_compiled(model: nn.Module) -> tuple[nn.Module, bool]:
    """``(module to twin, was compiled)``: a ``torch.compile``d model is twinned through
    ``_orig_mod``; hooks or probes on the compiled wrapper itself would trip dynamo."""
    orig = getattr(model, "_orig_mod", None)
    if isinstance(orig, nn.Module) and type(model).__name__ == "OptimizedModule":
        return orig, True
    return model, False


def _twin(model: nn.Module) -> nn.Module | None:
    """A twin of ``model`` (see the module docstring), or ``None`` when it holds TorchScript."""
    return twin_of(model)[0]


def twin_of(model: nn.Module) -> tuple[nn.Module | None, Untwinned]:
    """A twin of ``model`` (see the module docstring), or ``None`` when it holds TorchScript, and
    what it could not redirect (:class:`Untwinned`, checked by the probe).

    Every twin module starts with the training flag of its original; the caller sets them.
    Raises ``ValueError`` for what cannot be twinned safely: uninitialised lazy modules (their
    first call rewrites the module itself) and ``forward`` wrappers that call an original module.
    """
    modules = list(model.named_modules(remove_duplicate=False))
    if any(_is_scripted(module) for _, module in modules):
        return None, Untwinned()
    lazy = [name or "<model>" for name, m in modules if _uninitialised_lazy(m)]
    if lazy:
        raise ValueError(
            f"Expected a model with initialised parameters, but {', '.join(lazy)} "
            "(lazy modules) have none yet: call the model once on a batch (model(x)) before "
            "Monte Carlo dropout."
        )
    memo: dict[int, nn.Module] = {}
    twin = _copy_tree(model, memo)
    names = {id(module): name for name, module in reversed(modules)}  # first name wins
    rebinder = _Rebinder(memo)
    for key, new in memo.items():
        rebinder.module(names.get(key, "?"), new)
    return twin, Untwinned(
        originals=names, twins={id(m) for m in memo.values()}, left=rebinder.left
    )


@dataclass
class Untwinned:
    """What a twin could not redirect: ``originals`` maps the id of every module of the user's
    model to its name, ``twins`` holds the ids of the twin's modules, ``left`` maps the id of an
    original module to the attribute path of a reference to it that the twin still holds (in a
    container or object mcdrop cannot copy: its ``__copy__`` returns itself, a C type, nested
    deeper than it looks)."""

    originals: dict[int, str] = field(default_factory=dict)
    twins: set[int] = field(default_factory=set)
    left: dict[int, str] = field(default_factory=dict)


def _uninitialised_lazy(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.lazy.LazyModuleMixin) and bool(
        module.has_uninitialized_params()
    )


def _new_instance(module: nn.Module) -> nn.Module:
    """An empty instance of ``type(module)``, without running a ``__new__`` of the class: fx's
    ``GraphModule.__new__`` makes a new class per instance, without the generated ``forward``."""
    cls = type(module)
    try:
        return object.__new__(cls)
    except TypeError:  # a base in C with its own allocator
        return cls.__new__(cls)


_SLOTS: weakref.WeakKeyDictionary[type, tuple[tuple[str, Any], ...]] = weakref.WeakKeyDictionary()


def _slots(cls: type) -> tuple[tuple[str, Any], ...]:
    """``(name, descriptor)`` of every ``__slots__`` entry of ``cls`` and its bases."""
    found = _SLOTS.get(cls)
    if found is None:
        found = _SLOTS[cls] = tuple(_slot_entries(cls))
    return found


def _slot_entries(cls: type) -> Iterator[tuple[str, Any]]:
    for klass in cls.__mro__:
        names = klass.__dict__.get("__slots__", ())
        for name in (names,) if isinstance(names, str) else names:
            if name in ("__dict__", "__weakref__"):
                continue
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{klass.__name__.lstrip('_')}{name}"  # name mangling
            descriptor = klass.__dict__.get(name)
            if descriptor is not None and hasattr(descriptor, "__set__"):
                yield name, descriptor


def _copy_tree(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    key = id(module)
    if key in memo:  # a module used twice in the tree stays one module in the twin
        return memo[key]
    cls = type(module)
    if cls.__name__ == "OptimizedModule" and isinstance(
        getattr(module, "_orig_mod", None), nn.Module
    ):
        # A compiled submodule: compile the twin of what it wraps, in the same dynamo context.
        new = cls(_copy_tree(module._orig_mod, memo), module.dynamo_ctx)  # type: ignore[call-arg, arg-type]
        memo[key] = new
        return new
    new = _new_instance(module)
    _fill(new, module)
    memo[key] = new
    children = new.__dict__["_modules"]
    for name, child in children.items():
        if child is not None:
            children[name] = _copy_tree(child, memo)
    return new


def _fill(new: nn.Module, module: nn.Module) -> None:
    """Give ``new`` the attributes of ``module``: the same objects, in registries of its own."""
    state = dict(module.__dict__)
    for name in _OWN_DICTS:
        if name in state:
            state[name] = OrderedDict(state[name])
    for name in _OWN_SETS:
        if name in state:
            state[name] = set(state[name])
    new.__dict__.update(state)
    _fill_slots(new, module)


def retwin(
    model: nn.Module,
    twins: dict[str, nn.Module],
    rebound: dict[str, tuple[str, ...]] | None,
    originals: list[nn.Module] | None = None,
) -> dict[str, tuple[str, ...]] | None:
    """Set the modules ``twins`` (a twin of ``model`` built earlier, by name) back to what a new
    twin of ``model`` would hold now, keeping their training flags: attributes the model changed
    in place below what a fingerprint sees, or that the twin's own ``forward`` changed on an
    earlier call (a counter, a list it appends to), are taken again from the model.

    ``rebound``: per module, the attributes the twin holds copies of (not the model's objects),
    as the previous call returned them: only those are rebuilt (the others are the model's own
    objects again). None: every attribute is looked into, as when the twin was built. Returns
    the attributes to rebuild next time, or None when the twin cannot be brought up to date
    (the module trees differ, a compiled submodule, a reference to a module of the model that
    cannot be redirected), with nothing reliable left in ``twins``. ``originals``: the modules
    of ``model`` (:func:`modules_of` of what it wraps), when the caller has walked them."""
    if originals is None:
        originals = modules_of(unwrap_compiled(model)[0])
    if len(originals) != len(twins):
        return None
    # By position, as both were walked: each module's children checked to be the twins of its
    # original's (_reset), from the root down, pair every module with its twin as names would.
    memo = {id(original): twin for original, twin in zip(originals, twins.values(), strict=True)}
    for original, twin in zip(originals, twins.values(), strict=True):
        if type(twin) is not type(original) or type(original).__name__ == "OptimizedModule":
            return None
        if not _reset(twin, original, memo):
            return None
    rebinder = _Rebinder(memo)
    for original, (name, twin) in zip(originals, twins.items(), strict=True):
        slotted = bool(_slots(type(twin)))
        if slotted:
            _fill_slots(twin, original)
        known = None if rebound is None or slotted else rebound.get(name)
        if known != ():
            rebinder.module(name, twin, known)
    if rebinder.left:
        return None
    if rebound is not None:
        return rebound
    return {
        name: _copied(original, twin)
        for original, (name, twin) in zip(originals, twins.items(), strict=True)
    }


def modules_of(root: nn.Module) -> list[nn.Module]:
    """``list(root.modules())`` (pre-order, each module once) without the qualified names that
    ``named_modules`` builds: a fifth of its time, for the walks of every kept call."""
    found: list[nn.Module] = []
    seen: set[nn.Module] = set()  # (by hash and equality, as named_modules' memo)
    stack = [root]
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        found.append(module)
        children = module.__dict__.get("_modules")
        if children:
            stack.extend(child for child in reversed(children.values()) if child is not None)
    return found


def _reset(twin: nn.Module, original: nn.Module, memo: dict[int, nn.Module]) -> bool:
    """The attributes of ``twin`` back to ``original``'s objects (as :func:`_fill` gives them),
    its registries its own, its children the twins of ``original``'s; False when a child is
    not (a ``forward`` that replaced one). Runs on every module at every kept call: the usual
    case (no attribute added, empty hook registries) is looked at in C, as sets and maps."""
    mine, theirs = twin.__dict__, original.__dict__
    for attr in mine.keys() - theirs.keys():
        if attr != "training":
            del mine[attr]  # set by the twin's own forward
    children, value = mine.get("_modules"), theirs.get("_modules")
    if value is not None and (
        children is None
        or children.keys() != value.keys()
        # (by identity, not a class's __eq__; None is no module's id)
        or not all(map(operator.is_, children.values(), map(memo.get, map(id, value.values()))))
    ):
        return False
    for attr in _TENSOR_DICTS:
        _reset_registry(mine, attr, theirs.get(attr))
    if any(map(theirs.get, _QUIET)) or any(map(mine.get, _QUIET)):  # (usually all empty)
        for attr in _QUIET:
            _reset_registry(mine, attr, theirs.get(attr))
    for attr in theirs.keys() - _NOT_ATTRIBUTES:
        value = theirs[attr]
        if mine.get(attr, _EMPTY) is not value:
            mine[attr] = value
    return True


def _reset_registry(mine: dict[str, Any], attr: str, value: Any) -> None:
    """The twin's own copy of the registry ``value`` (None: the model has none), unless it holds
    the same objects already."""
    if value is None:
        return
    own = mine.get(attr)
    if not _same_registry(own, value):
        mine[attr] = set(value) if isinstance(value, set) else OrderedDict(value)


def _same_registry(own: Any, value: Any) -> bool:
    """Whether the twin's own registry holds the very objects of the model's."""
    if own is None or len(own) != len(value):
        return False
    if isinstance(value, set):
        return bool(own == value)
    # (in C: the same keys in the same order, and the same objects; a registry the twin's
    # forward reordered is not the model's: a module may iterate it)
    return all(map(operator.eq, own, value)) and all(
        map(operator.is_, own.values(), value.values())
    )


def _fill_slots(new: nn.Module, module: nn.Module) -> None:
    """The attributes an ``nn.Module`` subclass keeps in ``__slots__``, from ``module``."""
    cls = type(module)
    for _, descriptor in _slots(cls):
        with contextlib.suppress(AttributeError):
            descriptor.__set__(new, descriptor.__get__(module, cls))


def _copied(original: nn.Module, twin: nn.Module) -> tuple[str, ...]:
    """The attributes of ``twin`` that are not ``original``'s objects (registries aside, but for
    hooks, which may be methods of modules)."""
    theirs = original.__dict__
    return tuple(
        attr
        for attr, value in twin.__dict__.items()
        if (attr in _HOOK_DICTS and value)
        or (attr not in _REGISTRIES and attr != "training" and value is not theirs.get(attr))
    )


# Types never looked into: values, and library objects whose internals hold no user module (an
# fx Graph refers to its GraphModule, which must not be copied with it).
_ATOMS = (str, bytes, int, float, complex, bool, type(None), torch.Tensor, type, enum.Enum)
_OPAQUE_MODULES = ("torch", "numpy", "logging", "threading", "weakref", "_thread", "io", "re")
_MAX_DEPTH = 8  # attribute -> container -> ... nesting looked into
_MAX_ITEMS = 50_000  # values looked at per twin; beyond, the probe's check is the guard


class _Rebinder:
    """Points every reference the twin's attributes hold to a module of the original tree at its
    twin: in attributes and ``__slots__``, inside lists, tuples (named ones too), dicts (any
    subclass: ``OrderedDict``, ``defaultdict``), sets, ``SimpleNamespace`` and other plain
    objects (their ``__dict__`` and ``__slots__``), nested up to ``_MAX_DEPTH``, in bound methods
    and in ``functools.partial``. A container or object holding such a reference is copied (the
    model's is never written); one that holds none stays shared, except plain lists, dicts and
    sets directly in an attribute (or one level below), which are always copied so a ``forward``
    that appends to one never writes into the model's. What cannot be copied is listed in
    ``left`` (original module id -> attribute path)."""

    def __init__(self, memo: dict[int, nn.Module]) -> None:
        self.memo = memo
        self.done: dict[int, Any] = {}  # id -> rebound value, for values met again (and cycles)
        self.alive: list[Any] = []  # keeps the values in ``done`` alive: their ids stay unique
        self.items = 0
        self.left: dict[int, str] = {}

    def module(self, name: str, new: nn.Module, only: tuple[str, ...] | None = None) -> None:
        """Rebind the attributes of ``new`` (``only``: just those named, and no slots)."""
        state = new.__dict__
        where = name or "<model>"
        items = list(state.items()) if only is None else [(a, state[a]) for a in only]
        for attr, value in items:
            if type(value) in _PLAIN:
                continue
            if attr in _REGISTRIES:
                if value and attr in _HOOK_DICTS:  # a hook that is a method of a module
                    for key, hook in list(value.items()):
                        value[key] = self.value(hook, f"{where}.{attr}[{key}]", 1)
                continue
            state[attr] = self.value(value, f"{where}.{attr}", 0, copies=2)
            if callable(value) and not isinstance(value, (nn.Module, type)):
                _refuse_wrapped_original(attr, state[attr], self.memo)
        if only is not None:
            return
        for attr, descriptor in _slots(type(new)):
            with contextlib.suppress(AttributeError):
                value = descriptor.__get__(new, type(new))
                rebound = self.value(value, f"{where}.{attr}", 0, copies=2)
                if rebound is not value:
                    descriptor.__set__(new, rebound)

    def value(self, value: Any, path: str, depth: int, copies: int = 0) -> Any:
        """``value`` with the original modules in it replaced by their twins; ``copies`` more
        levels of plain lists, dicts and sets are copied even when nothing in them changes."""
        if isinstance(value, _ATOMS):
            return value
        if isinstance(value, nn.Module):
            return self.memo.get(id(value), value)
        key = id(value)
        if key in self.done:
            return self.done[key]
        self.items += 1
        new = value
        self.done[key] = value  # a cycle back to this value keeps the original
        self.alive.append(value)
        if depth <= _MAX_DEPTH and self.items <= _MAX_ITEMS:
            try:
                new = self._rebuilt(value, path, depth, copies)
            except Exception:  # cannot be rebuilt: the probe's check decides (``left``)
                new = value
        if new is value:
            for ref in _direct_modules(value):
                if id(ref) in self.memo:
                    self.left.setdefault(id(ref), path)
        self.done[key] = new
        return new

    def _rebuilt(self, value: Any, path: str, depth: int, copies: int) -> Any:
        if isinstance(value, types.MethodType):
            owner = value.__self__
            if isinstance(owner, nn.Module) and id(owner) in self.memo:
                return types.MethodType(value.__func__, self.memo[id(owner)])
            return value
        if isinstance(value, functools.partial):
            args = [self.value(a, f"{path}.args[{i}]", depth + 1) for i, a in enumerate(value.args)]
            keywords = {
                k: self.value(v, f"{path}.{k}", depth + 1) for k, v in value.keywords.items()
            }
            if _same(args, value.args) and _same(keywords.values(), value.keywords.values()):
                return value
            return functools.partial(value.func, *args, **keywords)
        if isinstance(value, dict):
            return self._rebuilt_dict(value, path, depth, copies)
        if isinstance(value, weakref.ReferenceType):
            target = value()
            if isinstance(target, nn.Module) and id(target) in self.memo:
                return weakref.ref(self.memo[id(target)])
            return value
        if isinstance(value, _COLLECTIONS):
            return self._rebuilt_collection(value, path, depth, copies)
        if isinstance(value, types.FunctionType):
            return self._rebuilt_function(value, path, depth)
        if isinstance(value, _FUNCTIONS) or _opaque(type(value)):
            return value
        return self._rebuilt_object(value, path, depth)

    def _rebuilt_function(self, fn: types.FunctionType, path: str, depth: int) -> Any:
        """A closure (a lambda, a decorator's wrapper) over modules of the model: a new function
        with the same code over new cells holding the twins. Its ``__dict__`` (``__wrapped__``)
        too."""
        cells = fn.__closure__ or ()
        old = [c.cell_contents if _filled(c) else _EMPTY for c in cells]
        new = [
            v if v is _EMPTY else self.value(v, f"{path}.<closure {name}>", depth + 1)
            for v, name in zip(old, fn.__code__.co_freevars, strict=True)
        ]
        attrs = {k: self.value(v, f"{path}.{k}", depth + 1) for k, v in vars(fn).items()}
        if _same(new, old) and _same(attrs.values(), vars(fn).values()):
            return fn
        closure = tuple(
            cell if a is b else types.CellType(b)
            for cell, a, b in zip(cells, old, new, strict=True)
        )
        twin = types.FunctionType(
            fn.__code__, fn.__globals__, fn.__name__, fn.__defaults__, closure
        )
        twin.__kwdefaults__ = fn.__kwdefaults__
        twin.__qualname__ = fn.__qualname__
        twin.__dict__.update(attrs)
        return twin

    def _rebuilt_dict(self, value: dict[Any, Any], path: str, depth: int, copies: int) -> Any:
        items = {
            k: self.value(v, f"{path}[{k!r}]", depth + 1, copies - 1) for k, v in value.items()
        }
        if type(value) is dict:
            return items if copies > 0 or not _same(items.values(), value.values()) else value
        if _same(items.values(), value.values()):
            return value
        new = copy.copy(value)  # keeps the subclass: OrderedDict's order, defaultdict's factory
        for k, v in items.items():
            if v is not value[k]:
                new[k] = v
        return new

    def _rebuilt_collection(self, value: Any, path: str, depth: int, copies: int) -> Any:
        old = list(value)
        items = [self.value(v, f"{path}[{i}]", depth + 1, copies - 1) for i, v in enumerate(old)]
        kind = type(value)
        if kind in (list, set) and copies > 0:
            return kind(items)
        if _same(items, old):
            return value
        if kind in (list, tuple, set, frozenset):
            return kind(items)
        if isinstance(value, tuple) and hasattr(kind, "_make"):  # a namedtuple
            return kind._make(items)
        if isinstance(value, list):
            new = copy.copy(value)
            new[:] = items
            return new
        if isinstance(value, collections.deque):
            return kind(items, maxlen=value.maxlen)
        return kind(items)

    def _rebuilt_object(self, value: Any, path: str, depth: int) -> Any:
        """A plain object (``SimpleNamespace``, a dataclass, ``__slots__``): copied with its
        attributes rebound when one of them changes."""
        changed: dict[str, Any] = {}
        for attr, item in list(getattr(value, "__dict__", {}).items()):
            new = self.value(item, f"{path}.{attr}", depth + 1)
            if new is not item:
                changed[attr] = new
        slots = dict(_slots(type(value)))
        for attr, descriptor in slots.items():
            try:
                item = descriptor.__get__(value, type(value))
            except AttributeError:
                continue
            new = self.value(item, f"{path}.{attr}", depth + 1)
            if new is not item:
                changed[attr] = new
        if not changed:
            return value
        twin = copy.copy(value)
        if twin is value:
            return value
        for attr, new in changed.items():
            if attr in slots:
                slots[attr].__set__(twin, new)
            else:
                twin.__dict__[attr] = new
        return twin


_EMPTY = object()  # an empty closure cell
_COLLECTIONS = (list, tuple, set, frozenset, collections.deque)
_FUNCTIONS = (
    types.BuiltinFunctionType,
    types.MethodWrapperType,
    types.WrapperDescriptorType,
    types.ModuleType,
    staticmethod,
    classmethod,
    property,
)


def _same(new: Any, old: Any) -> bool:
    return all(a is b for a, b in zip(new, old, strict=True))


def _opaque(cls: type) -> bool:
    module = getattr(cls, "__module__", None) or "builtins"
    return module == "builtins" or module.split(".")[0] in _OPAQUE_MODULES


def _direct_modules(value: Any) -> list[nn.Module]:
    """The modules a container or object holds directly (for naming what was not redirected)."""
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, _COLLECTIONS):
        items = list(value)
    elif isinstance(value, types.MethodType):
        items = [value.__self__]
    elif isinstance(value, weakref.ReferenceType):
        items = [value()]
    else:
        items = list(getattr(value, "__dict__", {}).values())
        for _, descriptor in _slots(type(value)):
            with contextlib.suppress(AttributeError):
                items.append(descriptor.__get__(value, type(value)))
    return [item for item in items if isinstance(item, nn.Module)]


def _refuse_wrapped_original(name: str, fn: Any, memo: dict[int, nn.Module]) -> None:
    """A function wrapping an original module's bound method (``torch.autocast(...)(m.forward)``)
    would run the original, not the twin: refuse it rather than sample the wrong modules."""
    inner = getattr(fn, "__wrapped__", None)
    cells = [c.cell_contents for c in (getattr(fn, "__closure__", None) or ()) if _filled(c)]
    for target in [inner, *cells]:
        owner = getattr(target, "__self__", target)
        if isinstance(owner, nn.Module) and id(owner) in memo:
            raise ValueError(
                f"Expected `{name}` of a `{type(owner).__name__}` to be a method mcdrop can "
                "redirect to its sampling twin, but it is a wrapper (a decorator) around the "
                "module's own method, which would run the model itself: wrap the module in a "
                "new nn.Module whose forward applies the decorator, or remove the wrapper."
            )


def _filled(cell: Any) -> bool:
    try:
        cell.cell_contents  # noqa: B018
    except ValueError:
        return False
    return True


SAMPLING_LOCK = threading.RLock()
"""Serialises sampling and probing within the process: PyTorch's default generators are
process-wide, so two seeded calls at once would draw from (and rewind) one stream."""

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> threading.RLock:
    """The per-model lock that serialises flag switching on models that cannot be twinned."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock
