"""Structural twins: new module objects that share a model's parameters, buffers and hooks.

mcdrop never samples the user's model itself. It samples a *twin*: for every module of the model
a new object of the same class whose parameters, buffers and other attributes are the very same
objects (no copy, no extra memory), but whose ``training`` flag and hook registries are its own.
Switching the twin's dropout on, or registering probe hooks on it, writes nothing the model can
see, so any number of threads may call the model and mcdrop at once.

A twin is built at every call (O(number of modules), about a microsecond each), so a submodule,
parameter or attribute replaced between calls is never sampled stale.

TorchScript modules cannot be twinned (their state lives in C++): :func:`_twin` returns ``None``
for them and the caller falls back to switching flags under a per-model lock.
"""

from __future__ import annotations

import functools
import threading
import types
import weakref
from collections import OrderedDict
from typing import Any

import torch
from torch import nn

__all__: list[str] = []

# Per-instance registries that must not be shared between a module and its twin: hooks (so a
# probe hook on the twin never fires on the model) and the containers of children, parameters
# and buffers (so a twin's child can be replaced without touching the model).
_OWN_DICTS = (
    "_parameters",
    "_buffers",
    "_modules",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)
_OWN_SETS = ("_non_persistent_buffers_set",)


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
    """A twin of ``model`` (see the module docstring), or ``None`` when it holds TorchScript.

    Every twin module starts with the training flag of its original; the caller sets them.
    Raises ``ValueError`` for what cannot be twinned safely: uninitialised lazy modules (their
    first call rewrites the module itself) and ``forward`` wrappers that call an original module.
    """
    modules = list(model.named_modules(remove_duplicate=False))
    if any(_is_scripted(module) for _, module in modules):
        return None
    lazy = [name or "<model>" for name, m in modules if _uninitialised_lazy(m)]
    if lazy:
        raise ValueError(
            f"Expected a model with initialised parameters, but {', '.join(lazy)} "
            "(lazy modules) have none yet: call the model once on a batch (model(x)) before "
            "Monte Carlo dropout."
        )
    memo: dict[int, nn.Module] = {}
    twin = _copy_tree(model, memo)
    for new in memo.values():
        _rebind(new, memo)
    return twin


def _uninitialised_lazy(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.lazy.LazyModuleMixin) and bool(
        module.has_uninitialized_params()
    )


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
    new = cls.__new__(cls)
    state = dict(module.__dict__)
    for name in _OWN_DICTS:
        if name in state:
            state[name] = OrderedDict(state[name])
    for name in _OWN_SETS:
        if name in state:
            state[name] = set(state[name])
    new.__dict__.update(state)
    memo[key] = new
    children = new.__dict__["_modules"]
    for name, child in children.items():
        if child is not None:
            children[name] = _copy_tree(child, memo)
    return new


def _rebind(new: nn.Module, memo: dict[int, nn.Module]) -> None:
    """Point attributes that refer to modules of the original tree at their twins.

    Covers a module kept in a plain attribute or in a list, tuple, dict or set (not a registered
    child), a bound method of a module stored on an instance (``model.forward = other.method``)
    and a ``functools.partial`` whose first argument is a module (how accelerate wraps
    ``forward``). Plain lists, dicts and sets are copied, so a ``forward`` that appends to one
    never writes into the model's. A wrapped function that calls an original module (a decorator
    applied to ``module.forward``) cannot be redirected: ``ValueError``.
    """
    state = new.__dict__
    for name, value in list(state.items()):
        if name in _OWN_DICTS or name in _OWN_SETS:
            continue
        state[name] = _rebound(value, memo, depth=1)
        if callable(value) and not isinstance(value, (nn.Module, type)):
            _refuse_wrapped_original(name, state[name], memo)


def _map(value: Any, memo: dict[int, nn.Module]) -> Any:
    if isinstance(value, nn.Module) and id(value) in memo:
        return memo[id(value)]
    if isinstance(value, types.MethodType) and id(value.__self__) in memo:
        return types.MethodType(value.__func__, memo[id(value.__self__)])
    if (
        isinstance(value, functools.partial)
        and value.args
        and isinstance(value.args[0], nn.Module)
        and id(value.args[0]) in memo
    ):
        return functools.partial(
            value.func, memo[id(value.args[0])], *value.args[1:], **value.keywords
        )
    return value


def _rebound(value: Any, memo: dict[int, nn.Module], depth: int) -> Any:
    """``value`` with modules of the original tree replaced by twins; builtin containers copied."""
    if type(value) in (list, tuple, set) and depth >= 0:
        items = [_rebound(item, memo, depth - 1) for item in value]
        return type(value)(items)
    if type(value) is dict and depth >= 0:
        return {key: _rebound(item, memo, depth - 1) for key, item in value.items()}
    return _map(value, memo)


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
