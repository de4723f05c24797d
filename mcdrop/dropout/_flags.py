"""Who reads the training flags of a twin's modules: what tells a kept plan that training mode
may have changed without running it.

A kept plan (:mod:`mcdrop.sampling`) must sample what a new plan would: the dropout that
training mode applies *now*. Its fingerprint sees the model's modules and attributes, its first
chunk counts the dropout calls the sampling twin makes; what neither sees is a gate that only
training mode opens, behind state the fingerprint cannot reach (``if self.training and FLAG``
with ``FLAG`` a module global, a class attribute, a helper's field). Training mode differs from
the sampling twin only in the training flags of some modules (those the twin runs in eval that
the model's ``train()`` switches on, norm layers aside): if no code reads one of those flags
while the twin runs, the flags cannot have changed what it did, and training mode makes the very
calls the twin made. So the kept twin's modules whose flag training mode would flip get a
*watched* class: a subclass of their own (made once per class, as FSDP2 makes its own) whose
``training`` is a property that notes the code reading it, on the thread that asked
(:func:`flag_reads`). A kept call whose first chunk read none runs no training-mode probe; one
that read any runs it (:func:`mcdrop.dropout.training_calls`).

The property keeps the flag where ``nn.Module`` keeps it (the instance ``__dict__``), so
``vars(module)`` and ``copy`` see the flag as before; a read straight from ``__dict__`` is not
noted (documented in the user guide).
"""

from __future__ import annotations

import abc
import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import CodeType
from typing import Any

from torch import nn

__all__: list[str] = []

_LOCAL = threading.local()  # .reads: the code objects noted on this thread, or None
_LOCK = threading.Lock()
# A watched class refers to the class it watches (its base): held weakly, as values, so that
# neither outlives the twins that use them (fx makes a class per GraphModule instance).
_WATCHED: weakref.WeakValueDictionary[type, type] = weakref.WeakValueDictionary()
_REFUSED: weakref.WeakSet[type] = weakref.WeakSet()
_MARK = "__mcdrop_unwatched__"  # on a watched class: the class it watches
_OWN = str(Path(__file__).resolve().parent.parent) + os.sep  # mcdrop's own code reads freely


def _get(module: nn.Module) -> bool:
    reads = getattr(_LOCAL, "reads", None)
    if reads is not None:
        reads.append(sys._getframe(1).f_code)
    return module.__dict__["training"]  # type: ignore[no-any-return]


def _set(module: nn.Module, value: bool) -> None:
    module.__dict__["training"] = value


_TRAINING = property(_get, _set, doc="The training flag; reads are noted (mcdrop.dropout._flags).")


def _watched_class(cls: type) -> type | None:
    """The watched subclass of ``cls`` (made once while any module uses it); None when ``cls``
    cannot have one safely."""
    if cls.__dict__.get(_MARK) is not None:
        return cls
    with _LOCK:
        watched = _WATCHED.get(cls)
        if watched is not None or cls in _REFUSED:
            return watched
        # a class (or base) with a ``training`` of its own keeps it; a metaclass of its own
        # might register the new class
        if type(cls) in (type, abc.ABCMeta) and not any(
            "training" in vars(klass) for klass in cls.__mro__
        ):
            namespace = {
                "training": _TRAINING,
                "__slots__": (),
                "__module__": cls.__module__,
                "__qualname__": cls.__qualname__,
                "__doc__": cls.__doc__,
                _MARK: cls,
            }
            try:
                watched = type(cls)(cls.__name__, (cls,), namespace)
            except Exception:  # a class that refuses subclasses: its modules are not watched
                watched = None
        if watched is None:
            _REFUSED.add(cls)
        else:
            _WATCHED[cls] = watched
        return watched


def unwatched(cls: type) -> type:
    """The class a watched class watches; ``cls`` itself otherwise."""
    return cls.__dict__.get(_MARK) or cls


def watch_flags(modules: Iterable[nn.Module]) -> bool:
    """Give each of ``modules`` (a twin's own objects, never a model's) its watched class; False
    (and nothing changed) when one of them cannot have one."""
    modules = list(modules)
    if any("training" not in vars(module) for module in modules):
        return False
    classes = [_watched_class(type(module)) for module in modules]
    if any(cls is None for cls in classes):
        return False
    for module, cls in zip(modules, classes, strict=True):
        if type(module) is not cls:
            try:
                object.__setattr__(module, "__class__", cls)
            except TypeError:  # a layout the subclass cannot take (not expected for modules)
                for done in modules:
                    object.__setattr__(done, "__class__", unwatched(type(done)))
                return False
    return True


@contextlib.contextmanager
def flag_reads() -> Iterator[list[CodeType]]:
    """Inside, every read of a watched training flag on this thread is noted; the list holds the
    code that read them, mcdrop's own left out, once the block ends."""
    outer = getattr(_LOCAL, "reads", None)
    noted: list[CodeType] = []
    _LOCAL.reads = noted
    found: list[CodeType] = []
    try:
        yield found
    finally:
        _LOCAL.reads = outer
        found.extend(code for code in dict.fromkeys(noted) if not _ours(code))
        if outer is not None:
            outer.extend(noted)


def _ours(code: Any) -> bool:
    return str(code.co_filename).startswith(_OWN)
