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
calls the twin made. So the kept twin's modules whose flag training mode would flip are
*watched* (:func:`watch_flags`): the flag leaves the module's ``__dict__`` for its own parameter
registry (``_parameters``, a :class:`_Noting` dictionary), where ``nn.Module.__getattr__`` finds
it and the registry notes the code that read it, whichever thread reads, while
:meth:`FlagReads.noting` is on. A kept call whose first chunk read none runs no training-mode
probe; one that read any runs it (:func:`mcdrop.dropout.training_calls`).

Nothing else about a watched module changes: its class (``type(module) is X`` holds), its
parameters as ``named_parameters`` and ``state_dict`` list them, and the model is never touched.
What differs: ``vars(module)`` has no ``"training"`` (a read from the instance dictionary is not
seen: ``module.__dict__["training"]`` raises, and the kept call plans afresh;
``module.__dict__.get("training", default)`` gets the default). A ``forward`` that assigns the
flag (``self.backbone.eval()``) puts it back in ``__dict__``, where later reads are not noted:
the value is then the one assigned, in training mode as in the twin, whatever the mode was
(an assigned value computed from a flag, ``sub.train(self.training)``, read that flag, which was
noted). :meth:`FlagReads.arm` watches it again at the next call.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import CodeType
from typing import Any

from torch import nn

__all__: list[str] = []

_OWN = str(Path(__file__).resolve().parent.parent) + os.sep  # mcdrop's own code reads freely
# Library code known to read the flag only to gate what mcdrop never samples, and to make no
# dropout call either way: (module, the reading function's qualified name, the function it
# passes the flag to, the other globals that function uses: name -> the module that defines
# it). torchvision's StochasticDepth: ``stochastic_depth(x, p, mode, self.training)`` draws a
# Bernoulli mask per row (not dropout) in training mode, and raises for a bad ``p`` or ``mode``
# in both modes (EfficientNet, ConvNeXt, Swin). PyTorch itself is taken as it is.
_KNOWN_READERS = (
    (
        "torchvision.ops.stochastic_depth",
        "StochasticDepth.forward",
        "stochastic_depth",
        {"torch": "torch", "_log_api_usage_once": "torchvision.utils"},
    ),
)
_GETATTR = nn.Module.__getattr__.__code__
_SETATTR = nn.Module.__setattr__.__code__


class FlagReads:
    """The reads of the watched training flags of one twin: the code that read them while
    :meth:`noting` is on, on any thread; and the registries that hold the flags."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.modules = modules
        self.registries = [_Noting() for _ in modules]
        self.flags = [bool(m.__dict__["training"]) for m in modules]  # as the plan set them
        self.on = False
        self.reads: list[CodeType] = []
        for registry in self.registries:
            registry.owner = self

    @contextlib.contextmanager
    def noting(self) -> Iterator[list[CodeType]]:
        """Inside, every read of a watched flag is noted; the list holds the code that read
        them (mcdrop's own left out) once the block ends."""
        self.reads = []
        self.on = True
        found: list[CodeType] = []
        try:
            yield found
        finally:
            self.on = False
            found.extend(
                code for code in dict.fromkeys(self.reads) if not _ours(code) and not _known(code)
            )
            self.reads = []

    def arm(self) -> None:
        """Every module's flag in its noting registry, with the value the plan gave it, its
        parameters those of its registry now (a forward that wrote the flag into
        ``module.__dict__``, or a registry replaced, undoes the watch until this runs)."""
        for module, registry, flag in zip(self.modules, self.registries, self.flags, strict=True):
            state = module.__dict__
            params = state.get("_parameters")
            if params is not registry:
                registry.clear()
                registry.update(params or {})
                state["_parameters"] = registry
            state.pop("training", None)
            registry.flag = flag


class _Noting(dict):  # type: ignore[type-arg]
    """The parameter registry of a watched module: its parameters, and the training flag, which
    ``nn.Module.__getattr__`` finds here (``"training" in`` it, not in its keys or items)."""

    __slots__ = ("flag", "owner")
    flag: bool
    owner: FlagReads

    def __contains__(self, key: object) -> bool:
        if key == "training":  # for a read; an assignment goes to __dict__, as nn.Module's does
            return sys._getframe(1).f_code is not _SETATTR
        return dict.__contains__(self, key)

    def __getitem__(self, key: Any) -> Any:
        if key != "training":
            return dict.__getitem__(self, key)
        owner = self.owner
        if owner.on:
            frame = sys._getframe(1)
            while frame.f_back is not None and frame.f_code is _GETATTR:
                frame = frame.f_back
            owner.reads.append(frame.f_code)
        return self.flag


def watch_flags(modules: Iterable[nn.Module]) -> FlagReads | None:
    """Watch the training flags of ``modules`` (a twin's own objects, never a model's); None
    (and nothing changed) when one of them cannot be watched: a class of its own attribute
    lookup (``__getattr__``, ``__getattribute__``) or with a ``training`` of its own, a flag not
    in the instance dictionary, a parameter registry that is not a plain dictionary."""
    modules = list({id(m): m for m in modules}.values())
    for module in modules:
        cls = type(module)
        if (
            cls.__getattr__ is not nn.Module.__getattr__  # type: ignore[comparison-overlap]
            or cls.__getattribute__ is not object.__getattribute__
            or any("training" in vars(klass) for klass in cls.__mro__)
            or not isinstance(module.__dict__.get("training"), bool)
            or type(module.__dict__.get("_parameters")) not in (dict, OrderedDict)
        ):
            return None
    reads = FlagReads(modules)
    reads.arm()
    return reads


def set_flag(module: nn.Module, value: bool) -> None:
    """Set the training flag of a twin module, watched or not (on a watched module,
    ``module.training = value`` would put the flag back in ``__dict__``, unwatched)."""
    params = module.__dict__.get("_parameters")
    if type(params) is _Noting and "training" not in module.__dict__:
        params.flag = value
    else:
        module.training = value


def _ours(code: Any) -> bool:
    return str(code.co_filename).startswith(_OWN)


def _known(code: Any) -> bool:
    """Whether ``code`` is one of the library functions of ``_KNOWN_READERS``, unpatched: its
    own code, in its own file, calling that library's own function (a replaced function, or a
    class of the same name elsewhere, is not known)."""
    qualname = getattr(code, "co_qualname", None)  # (Python 3.11+)
    filename = code.co_filename
    for module_name, reader, callee, uses in _KNOWN_READERS:
        if qualname != reader:
            continue
        module = sys.modules.get(module_name)
        path = getattr(module, "__file__", None)
        if path is None or os.path.realpath(filename) != os.path.realpath(path):
            continue
        owner, _, name = reader.partition(".")
        method = vars(getattr(module, owner, object)).get(name)
        function = getattr(module, callee, None)
        if (
            getattr(method, "__code__", None) is code
            and getattr(getattr(function, "__code__", None), "co_filename", None) == filename
            and getattr(function, "__name__", None) == callee
            and getattr(function, "__globals__", None) is vars(module)
            and all(_unpatched(vars(module).get(name), source) for name, source in uses.items())
        ):
            return True
    return False


def _unpatched(value: Any, source: str) -> bool:
    """Whether ``value`` is the module ``source`` itself, or a function defined in its file."""
    defining = sys.modules.get(source)
    if defining is None:
        return False
    if value is defining:
        return True
    path = getattr(defining, "__file__", None)
    code = getattr(value, "__code__", None)
    return path is not None and code is not None and code.co_filename == path
