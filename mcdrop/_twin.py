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


def _unwrap_compiled(model: nn.Module) -> tuple[nn.Module, bool]:
    """``(module to twin, was compiled)``: a ``torch.compile``d model is twinned through
    ``_orig_mod``; hooks or probes on the compiled wrapper itself would trip dynamo."""
    orig = getattr(model, "_orig_mod", None)
    if isinstance(orig, nn.Module) and type(model).__name__ == "OptimizedModule":
        return orig, True
    return model, False


def _twin(model: nn.Module) -> nn.Module | None:
    """A twin of ``model`` (see the module docstring), or ``None`` when it holds TorchScript.

    Every twin module starts with the training flag of its original; the caller sets them.
    """
    if any(_is_scripted(module) for module in model.modules()):
        return None
    memo: dict[int, nn.Module] = {}
    twin = _copy_tree(model, memo)
    for new in memo.values():
        _rebind(new, memo)
    return twin


def _copy_tree(module: nn.Module, memo: dict[int, nn.Module]) -> nn.Module:
    key = id(module)
    if key in memo:  # a module used twice in the tree stays one module in the twin
        return memo[key]
    cls = type(module)
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

    Covers a module kept in a plain attribute (not a registered child), a bound method of a
    module stored on an instance (``model.forward = other.method``) and a ``functools.partial``
    whose first argument is a module (how accelerate wraps ``forward``).
    """
    state = new.__dict__
    for name, value in list(state.items()):
        if name in _OWN_DICTS or name in _OWN_SETS:
            continue
        if isinstance(value, nn.Module) and id(value) in memo:
            state[name] = memo[id(value)]
        elif isinstance(value, types.MethodType) and id(value.__self__) in memo:
            state[name] = types.MethodType(value.__func__, memo[id(value.__self__)])
        elif (
            isinstance(value, functools.partial)
            and value.args
            and isinstance(value.args[0], nn.Module)
            and id(value.args[0]) in memo
        ):
            state[name] = functools.partial(
                value.func, memo[id(value.args[0])], *value.args[1:], **value.keywords
            )


_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(model: nn.Module) -> threading.RLock:
    """The per-model lock that serialises flag switching on models that cannot be twinned."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock
