"""Dropout sites found by a training-mode probe, and the sampling twin that samples them."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import itertools
import os
import sys
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from mcdrop._validation import check_choice
from mcdrop.dropout import _probe
from mcdrop.dropout._flags import set_flag
from mcdrop.dropout._masks import MaskedDropout, private_randomness
from mcdrop.dropout._twin import (
    _REGISTRIES,
    SAMPLING_LOCK,
    Untwinned,
    _model_lock,
    twin_of,
    unwrap_compiled,
)
from mcdrop.dropout._writes import ModelWriteError, NoModelWrites, guarding

__all__ = ["DropoutSite", "Scope", "dropout_enabled", "dropout_sites"]


class Scope(str, Enum):
    """Which modules sample.

    ``"dropout"``
        The modules that make the dropout calls training makes (found by a training-mode probe),
        plus the parents whose flag a fused fast path needs: the default.
    ``"train_except_norm"``
        Every module in training mode except normalisation layers with running statistics: for
        stochastic layers that are not dropout (custom ``if self.training`` noise) that the user
        wants sampled too.
    """

    DROPOUT = "dropout"
    TRAIN_EXCEPT_NORM = "train_except_norm"


_DROPOUT_TYPES: tuple[type[nn.Module], ...] = (  # every PyTorch dropout module
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
# Modules whose dropout runs only while they are training (fused kernels, eval fast paths).
GATING_TYPES: tuple[type[nn.Module], ...] = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)
_FAST_PATH_TYPES = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
# Modules with a fused eval fast path that a TorchFunctionMode (a probe's recording) turns off.
_FAST_PATH_MODULES = (*_FAST_PATH_TYPES, nn.TransformerEncoder, nn.MultiheadAttention)
_RATED_TYPES: tuple[type[nn.Module], ...] = (*_DROPOUT_TYPES, *GATING_TYPES, nn.RNNBase)
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*, lazy ones
)
_NORM_NAMES = frozenset(
    ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm"]
    + [f"InstanceNorm{d}d" for d in (1, 2, 3)]
)
_MAX_GATING_ROUNDS = 8

ModuleFilter = str | Sequence[str] | Callable[[str, nn.Module], bool] | None
Call = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class DropoutSite:
    """One module that samples.

    Parameters
    ----------
    name : str
        Qualified name in ``model.named_modules()`` (``""`` for the model itself).
    type : str
        Class name of the module.
    rate : float or None
        Dropout probability the site uses when sampling, when known.
    reason : str
        Why the site samples.
    functions : tuple of str, default=()
        The dropout functions the site calls in training mode (``"F.dropout"``,
        ``"torch.lstm"``, ...), when a probe or the module type tells.
    """

    name: str
    type: str
    rate: float | None
    reason: str
    functions: tuple[str, ...] = ()

    def __str__(self) -> str:
        rate = "?" if self.rate is None else f"{self.rate:g}"
        return f"{self.name or '<model>'} ({self.type}, p={rate}): {self.reason}"


# -- small helpers ------------------------------------------------------------------------------
def _class_name(module: nn.Module) -> str:
    return str(getattr(module, "original_name", type(module).__name__))


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or _class_name(module) in _NORM_NAMES


def _static_rate(module: nn.Module) -> float | None:
    if isinstance(module, nn.MultiheadAttention):
        return float(module.dropout)
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return float(module.dropout.p)
    if isinstance(module, nn.RNNBase):
        return float(module.dropout) if module.num_layers > 1 else 0.0
    p = getattr(module, "p", None)
    return float(p) if isinstance(p, (int, float)) and not isinstance(p, bool) else None


def _matches(selector: ModuleFilter, name: str, module: nn.Module) -> bool:
    if selector is None:
        return False
    if callable(selector):
        return bool(selector(name, module))
    patterns = [selector] if isinstance(selector, str) else list(selector)
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)


def _check_selector(name: str, selector: ModuleFilter) -> None:
    if selector is None or callable(selector) or isinstance(selector, str):
        return
    if isinstance(selector, Sequence) and all(isinstance(item, str) for item in selector):
        return
    raise TypeError(
        f"Expected `{name}` to be a module name pattern, a list of patterns or a callable "
        f"(name, module) -> bool, but got {selector!r}."
    )


def _parent(name: str) -> str | None:
    if not name:
        return None
    return name.rsplit(".", 1)[0] if "." in name else ""


def user_stacklevel() -> int:
    """``stacklevel`` for ``warnings.warn`` that points at the first frame outside mcdrop."""
    internal = (
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep,  # all of mcdrop
        os.path.abspath(contextlib.__file__),
        os.path.dirname(os.path.abspath(nn.modules.module.__file__)) + os.sep,  # module calls
    )
    frame = sys._getframe(1)
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(internal):
        frame = frame.f_back  # type: ignore[assignment]
        level += 1
    return level


def _as_call(example_inputs: Any) -> Call:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


# -- static scan (no inputs, TorchScript) -------------------------------------------------------
def _static_sites(
    model: nn.Module,
    scope: str,
    include: ModuleFilter,
    exclude: ModuleFilter,
    trained: set[str] | None = None,
) -> dict[str, DropoutSite]:
    """Sites recognisable without running the model: dropout modules, attention, RNNs; only
    among the modules ``trained`` (what the model's ``train()`` switches on; all when None)."""
    sites: dict[str, DropoutSite] = {}
    for name, module in model.named_modules():
        if _matches(exclude, name, module) or _is_norm(module):
            continue
        if trained is not None and name not in trained and not _matches(include, name, module):
            continue  # the model's own train() keeps it in eval mode
        kind = _class_name(module)
        rate = _static_rate(module)
        if rate == 0 and not _matches(include, name, module):
            continue  # drops nothing (scope='train_except_norm' keeps it off: it is a no-op)
        if isinstance(module, _DROPOUT_TYPES) or kind in {t.__name__ for t in _DROPOUT_TYPES}:
            reason = "dropout module"
        elif isinstance(module, nn.MultiheadAttention):
            reason = "attention dropout gated on its training flag (dropout_p = 0 in eval)"
        elif isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            reason = "eval fast path skips dropout; training flag disables the fast path"
        elif isinstance(module, nn.RNNBase) and rate:
            reason = "inter-layer dropout of the RNN kernel, gated on its training flag"
            sites[name] = DropoutSite(name, kind, rate, reason, (f"torch.{module.mode.lower()}",))
            continue
        elif _matches(include, name, module):
            reason = "selected by include="
        elif scope == Scope.TRAIN_EXCEPT_NORM.value:
            reason = "scope='train_except_norm'"
        else:
            continue
        sites[name] = DropoutSite(name, kind, rate, reason)
    return sites


# -- the training-mode probe --------------------------------------------------------------------
class _TwinModules(dict):  # type: ignore[type-arg]
    """``{name: module}`` of a twin, with the buffers it shares with the model.

    A module in training mode may update its buffers in place (spectral norm's power iteration,
    EvoNorm's running variance): on the twin such a module gets private copies of its buffers, so
    the model's are never written. Modules in eval mode share the model's buffers.
    """

    def __init__(
        self, twin: nn.Module, untwinned: Untwinned | None = None, trained: set[str] | None = None
    ) -> None:
        super().__init__(twin.named_modules())
        self.shared = {name: dict(module._buffers) for name, module in self.items()}
        self.untwinned = untwinned  # what the twin could not redirect: the probe checks it
        self.trained = set(self) if trained is None else trained  # on under the model's train()


def _overrides_train(module: nn.Module) -> bool:
    return type(module).train is not nn.Module.train or "train" in vars(module)


def _trained(model: nn.Module) -> set[str] | None:
    """Names of the modules that ``model.train()`` puts in training mode, as the model's own
    ``train()`` decides (a frozen sub-network, "dropout only in the adapter"); None when no module
    overrides ``train()`` (then every module).

    The model's ``train()`` runs on a throwaway twin whose parameters and buffers are stand-ins
    on the meta device: what it writes (flags, ``requires_grad``, statistics reset) never reaches
    the model. A ``train()`` that is not supported (``torch.export``'s graphs) gives None.
    """
    if not any(_overrides_train(m) for m in model.modules()):
        return None
    twin, _ = twin_of(model)
    if twin is None:
        return None
    modules = dict(twin.named_modules())
    for module in modules.values():
        module._parameters = OrderedDict(
            (k, None if v is None else nn.Parameter(_meta(v), requires_grad=v.requires_grad))
            for k, v in module._parameters.items()
        )
        module._buffers = OrderedDict(
            (k, None if v is None else _meta(v)) for k, v in module._buffers.items()
        )
    before = {name: _plain_state(module) for name, module in modules.items()}
    try:
        twin.train(True)
    except NotImplementedError:
        return None
    except Exception as error:
        raise ValueError(
            f"Expected `{type(model).__name__}.train()` to run, as mcdrop takes training mode "
            f"from it, but it raised {type(error).__name__}: {error}."
        ) from error
    _warn_train_writes(model, before, modules)
    return {name for name, module in modules.items() if module.training}


def _plain_state(module: nn.Module) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items() if k not in _REGISTRIES and k != "training"}


def _warn_train_writes(
    model: nn.Module, before: dict[str, dict[str, Any]], modules: dict[str, nn.Module]
) -> None:
    """A ``train()`` that changes attributes besides the flags (a rate, a switch): mcdrop takes
    only the flags from it and samples the model's attributes as they are; say so."""
    changed = []
    for name, module in modules.items():
        after = _plain_state(module)
        for key in before[name].keys() | after.keys():
            old, new = before[name].get(key, "<unset>"), after.get(key, "<unset>")
            if old is not new and not (type(old) is type(new) and _equal(old, new)):
                changed.append(f"{name + '.' if name else ''}{key}: {old!r} -> {new!r}")
    if changed:
        warnings.warn(
            f"`{type(model).__name__}.train()` changes attributes besides the training flags "
            f"({'; '.join(changed[:5])}). mcdrop takes only the flags from it and samples the "
            "model with its attributes as they are: where one of them sets a dropout rate or "
            "switches dropout, set it on the model before sampling.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:
        return False


def _meta(tensor: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(tensor, device="meta")


def _training_flag(name: str, module: nn.Module, on: set[str] | None) -> bool:
    """The flag of a twin module: on for ``on`` (every module when None), never for norms."""
    return (on is None or name in on) and not _is_norm(module)


def _set_flags(modules: dict[str, nn.Module], on: set[str] | None) -> None:
    """Training flag of every twin module: on for ``on`` (what the model's ``train()`` switches
    on when None), never for norms."""
    if on is None:
        on = getattr(modules, "trained", None)
    shared = getattr(modules, "shared", None)
    for name, module in modules.items():
        set_flag(module, _training_flag(name, module, on))
        if shared is not None and shared[name]:
            module._buffers = OrderedDict(
                (key, None if value is None else value.clone() if module.training else value)
                for key, value in shared[name].items()
            )


@dataclass
class Probe:
    """Inputs of the probe passes: two examples, and the whole first batch to explain errors."""

    call: Call
    batch: Call | None = None
    devices: list[torch.device] = dataclasses.field(default_factory=list)  # CUDA RNGs to fork
    # A seed: the passes draw from mcdrop's own generators (masks='shared'), never from
    # PyTorch's global ones, which are then neither forked nor restored.
    private: int | None = None

    def randomness(self) -> contextlib.AbstractContextManager[Any]:
        """Where the probe's random numbers come from: forked global generators (restored
        afterwards), or mcdrop's own (``private``)."""
        if self.private is not None:
            return private_randomness(self.private)
        return torch.random.fork_rng(devices=self.devices)


def _run_probe(
    twin: nn.Module,
    modules: dict[str, nn.Module],
    probe: Probe,
    *,
    what: str,
    model: nn.Module,
    flops: bool = False,
) -> _probe.Trace:
    args, kwargs = probe.call
    guard = getattr(modules, "untwinned", None)
    try:
        with SAMPLING_LOCK, probe.randomness(), torch.inference_mode(), guarding(model):
            made = _probe.trace(modules, lambda: twin(*args, **kwargs), flops=flops, guard=guard)
    except ModelWriteError:
        raise
    except Exception as error:
        # The user's own error (a wrong input width, ...), as the whole batch in eval mode gives
        # it; the twin is discarded after this error, so its flags need no restoring.
        _set_flags(modules, set())
        full_args, full_kwargs = probe.batch or probe.call
        with probe.randomness(), torch.inference_mode(), guarding(model), NoModelWrites():
            twin(*full_args, **full_kwargs)
        if isinstance(model, torch.fx.GraphModule) and "Guard failed" in str(error):
            raise ValueError(
                f"Expected a `{type(model).__name__}` that runs on any number of examples, but "
                f"the exported graph fixes the batch size ({error}); mcdrop runs it on other "
                "batch sizes. Export with a dynamic batch dimension: torch.export.export(model, "
                "args, dynamic_shapes=...) with torch.export.Dim('batch') for dimension 0."
            ) from error
        raise ValueError(
            f"Running `{type(model).__name__}` {what} on 2 examples of the first batch raised "
            f"{type(error).__name__}: {error}; in eval mode it runs. mcdrop runs this probe to "
            "find the dropout that training applies. If the model needs other inputs in "
            "training mode (e.g. targets), pass `detect_silent=False` to sample the modules that "
            "are recognisably dropout (nn.Dropout, attention, RNNs), or `include=` naming the "
            "modules to sample."
        ) from error
    if made.intruders and guard is not None:
        _refuse_intruders(model, made.intruders, guard)
    return made


def _refuse_intruders(model: nn.Module, intruders: dict[int, str], guard: Untwinned) -> None:
    """Modules of the user's model ran inside the twin: they would sample in eval mode."""
    parts = []
    for key, name in intruders.items():
        path = guard.left.get(key)
        how = f"reached through `{path}`" if path else "reached from outside its attributes"
        parts.append(f"`{name or '<model>'}` ({how})")
    raise ValueError(
        f"Expected the forward of `{type(model).__name__}`'s sampling twin to run only the twin's "
        f"modules, but it ran the model's own {', '.join(parts)}: mcdrop could not redirect "
        "that reference (a container it cannot copy, a closure, a global, a cache), so those "
        "modules would run in eval mode and their dropout would never sample. Reach submodules "
        "through attributes, lists, tuples, dicts or plain objects of the model, or pass the "
        "module as a registered submodule."
    )


def _refuse_dead_dropout(
    model: nn.Module, modules: dict[str, nn.Module], trace: _probe.Trace
) -> None:
    """A traced or exported graph that calls dropout with ``training=False`` baked in (traced in
    eval mode): that dropout can never sample."""
    dead = [
        (name, label, p)
        for name, label, p in trace.dead
        if _in_graph(name, modules) and (name, label, p) not in trace.calls
    ]
    if not dead:
        return
    listing = "; ".join(
        f"{n or '<model>'}: {label}(p={p:g}, training=False)" for n, label, p in dead
    )
    raise ValueError(
        f"Expected the graph of `{type(model).__name__}` (torch.fx / torch.export) to keep its "
        f"dropout switchable, but it was traced in eval mode and bakes training=False into: "
        f"{listing}. Those dropout calls can never sample. Trace or export the model in training "
        "mode (model.train() before torch.fx.symbolic_trace or torch.export.export: mcdrop still "
        "samples only its dropout), or sample the eager model."
    )


def _in_graph(name: str, modules: dict[str, nn.Module]) -> bool:
    """Whether the module ``name`` is an fx ``GraphModule`` or inside one."""
    parts = name.split(".") if name else []
    return any(
        isinstance(modules.get(".".join(parts[:i])), torch.fx.GraphModule)
        for i in range(len(parts) + 1)
    )


def _reason(label: str, module: nn.Module) -> str:
    if isinstance(module, _DROPOUT_TYPES):
        return "dropout module"
    if "bernoulli" in label:
        return f"hand-written dropout: draws a mask with {label} in training mode"
    return f"calls {label} in training mode"


def _probed_sites(
    twin: nn.Module,
    modules: dict[str, nn.Module],
    probe: Probe,
    include: ModuleFilter,
    exclude: ModuleFilter,
    model: nn.Module,
    *,
    flops: bool = False,
) -> tuple[dict[str, DropoutSite], Counter[_probe.Call], _probe.Trace]:
    """Sites from the training-mode probe, the dropout calls the sampling twin must make, and the
    probe's trace."""
    _set_flags(modules, None)
    reference = _run_probe(
        twin,
        modules,
        probe,
        what="in training mode (norm layers in eval)",
        model=model,
        flops=flops,
    )
    _refuse_dead_dropout(model, modules, reference)
    expected: Counter[_probe.Call] = Counter()
    sites: dict[str, DropoutSite] = {}
    for (name, label, p), count in reference.calls.items():
        if _matches(exclude, name, modules[name]):
            continue
        expected[(name, label, p)] = count
        site = sites.get(name)
        if site is None:
            rate = None if p == _probe.UNKNOWN_RATE else p
            site = DropoutSite(
                name, _class_name(modules[name]), rate, _reason(label, modules[name])
            )
        if label not in site.functions:
            site = dataclasses.replace(site, functions=(*site.functions, label))
        sites[name] = site
    for name, module in modules.items():
        if (
            name not in sites
            and _matches(include, name, module)
            and not _matches(exclude, name, module)
        ):
            sites[name] = DropoutSite(
                name, _class_name(module), _static_rate(module), "selected by include="
            )
    return sites, expected, reference


def _add_gates(
    sites: dict[str, DropoutSite],
    modules: dict[str, nn.Module],
    missing: set[str],
    exclude: ModuleFilter,
) -> dict[str, str]:
    """Switch on the nearest parent of each module in ``missing``; return ``{parent: module}``."""
    added: dict[str, str] = {}
    trained = getattr(modules, "trained", None)
    for name in sorted(missing):
        parent = _parent(name)
        while parent is not None and (
            parent in sites or (trained is not None and parent not in trained)
        ):
            parent = _parent(parent)
        if parent is None or _matches(exclude, parent, modules[parent]):
            continue
        sites[parent] = DropoutSite(
            parent,
            _class_name(modules[parent]),
            sites[name].rate if name in sites else None,
            f"gates the dropout of {name or '<model>'!r}: it runs only while this module is "
            "training (fused fast path or `if self.training`)",
        )
        added[parent] = name
    return added


def _fast_path_gates(sites: dict[str, DropoutSite], modules: dict[str, nn.Module]) -> None:
    """Switch on PyTorch's transformer layers that hold a site: in eval mode their fused fast path
    skips every dropout inside. A probe cannot see it: the fast path is off whenever a hook or a
    ``TorchFunctionMode`` is active."""
    for name, module in modules.items():
        if name in sites or not isinstance(module, _FAST_PATH_TYPES):
            continue
        inner = [s for s in sites if s.startswith(f"{name}.")]
        if inner:
            sites[name] = DropoutSite(
                name,
                _class_name(module),
                sites[inner[0]].rate,
                "eval fast path skips dropout; training flag disables the fast path",
            )


def _drop_auxiliary(
    sites: dict[str, DropoutSite],
    expected: Counter[_probe.Call],
    gates: list[str],
    missing: set[_probe.Call],
    gated: dict[str, str],
) -> None:
    """Undo ``gates`` (their training mode changes what the model returns: auxiliary heads) and
    stop expecting the dropout that runs only inside those training-only branches (and drop the
    gates added for it in earlier rounds)."""
    for gate in gates:
        del sites[gate]
        prefix = f"{gate}." if gate else ""
        inside = {key for key in missing if key[0].startswith(prefix)}
        for key in inside:
            expected.pop(key, None)
            sites.pop(key[0], None)
        gone = {key[0] for key in inside}
        for parent, child in list(gated.items()):
            if child in gone and parent != gate:
                sites.pop(parent, None)
        warnings.warn(
            f"Switching `{gate or '<model>'}` to training mode changes what the model returns "
            "(an auxiliary branch); the dropout that runs only in that training-only branch ("
            f"{', '.join(sorted({k[0] for k in inside}))}) is left off.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


def _reproduce(
    twin: nn.Module,
    modules: dict[str, nn.Module],
    probe: Probe,
    sites: dict[str, DropoutSite],
    expected: Counter[_probe.Call],
    exclude: ModuleFilter,
    model: nn.Module,
) -> _probe.Trace:
    """Switch the sites on and check the twin makes the expected calls; add gating parents.

    Returns the trace of the sampling twin's probe (its FLOPs decide the ``auto`` strategy)."""
    what = "with its dropout sites in training mode"
    missing: set[_probe.Call] = set()
    ungated: Any = None
    gates: list[str] = []
    gated: dict[str, str] = {}  # gate -> the module whose dropout it was switched on for
    for _ in range(_MAX_GATING_ROUNDS):
        _fast_path_gates(sites, modules)
        _set_flags(modules, set(sites))
        made = _run_probe(twin, modules, probe, what=what, model=model, flops=True)
        if not gates:
            ungated = made.output  # what the model returns before any gate is added
        elif made.output != ungated:  # a gate that changes the output: an auxiliary branch
            _drop_auxiliary(sites, expected, gates, missing, gated)
            gates = []
            continue
        # Fewer calls in the training probe than now is a training-mode layer skip (layerdrop).
        missing = {key for key, count in expected.items() if made.calls[key] < count}
        if not missing:
            return made
        added = _add_gates(sites, modules, {name for name, _, _ in missing}, exclude)
        gated.update(added)
        gates = list(added)
        if not gates:
            break
    listing = "; ".join(f"{n or '<model>'}: {label}(p={p:g})" for n, label, p in sorted(missing))
    raise ValueError(
        f"Expected the sampling twin of `{type(model).__name__}` to make every dropout call that "
        f"training mode makes, but these would be missed: {listing}. Pass "
        "`scope='train_except_norm'` to sample with every module but the norm layers in "
        "training mode, or `include=` naming the modules that gate them."
    )


@dataclass(frozen=True)
class _Pending:
    """The sampling twin's own check, left to its first sampling chunk (``_plan(defer=True)``).

    Everything the full check of :func:`_reproduce` needs (gating parents, auxiliary branches,
    the error naming what cannot be reproduced); :meth:`Sampling.confirm` decides whether it
    runs.
    """

    twin: nn.Module
    modules: _TwinModules
    probe: Probe
    sites: dict[str, DropoutSite]
    expected: Counter[_probe.Call]
    exclude: ModuleFilter
    model: nn.Module

    def confirmed_by(self, passes: list[Counter[_probe.Call]]) -> bool:
        """Whether every pass (call of the root module) made every expected call exactly as
        often as the training probe. A count that depends on the rows (a loop over examples or
        to a length in the inputs) is not confirmed: more calls there could hide a missing one."""
        return bool(passes) and all(
            calls[key] == count for calls in passes for key, count in self.expected.items()
        )

    def settle(self) -> tuple[list[DropoutSite], _probe.Trace]:
        """The full check: the sites (flags set on the twin) and the sampling probe's trace."""
        made = _reproduce(
            self.twin, self.modules, self.probe, self.sites, self.expected, self.exclude, self.model
        )
        sites = _finish(self.modules, self.sites)
        check_sites(self.model, sites)  # an auxiliary branch may have held the only dropout
        return sites, made


def _finish(modules: _TwinModules, sites: dict[str, DropoutSite]) -> list[DropoutSite]:
    """Set the twin's flags for ``sites``; the sites in ``named_modules`` order."""
    _set_flags(modules, set(sites))
    order = {name: i for i, name in enumerate(modules)}
    return sorted(sites.values(), key=lambda site: order[site.name])


def _plan(
    twin: nn.Module,
    scope: str,
    include: ModuleFilter,
    exclude: ModuleFilter,
    probe: Probe | None,
    model: nn.Module,
    *,
    defer: bool = False,
    untwinned: Untwinned | None = None,
    trained: set[str] | None = None,
) -> tuple[list[DropoutSite], _probe.Trace, _Pending | None]:
    """Find the sites on ``twin`` and leave its flags set for sampling; also return the trace
    whose FLOPs plan the sampling (empty without a probe). With ``defer``, the second probe pass
    is left to the caller's first sampling chunk (:class:`_Pending`) and the FLOPs are counted in
    the training-mode probe. ``untwinned`` is what the twin could not redirect (checked),
    ``trained`` the modules the model's own ``train()`` switches on (all when None)."""
    modules = _TwinModules(twin, untwinned, trained)
    if probe is None or scope == Scope.TRAIN_EXCEPT_NORM.value:
        static = _static_sites(twin, scope, include, exclude, trained)
        if untwinned is not None:
            _refuse_left(model, twin, untwinned, static)
        return _finish(modules, static), _probe.Trace(), None
    devices = sorted({t.device for t in twin.parameters() if t.device.type == "cuda"}, key=str)
    probe = dataclasses.replace(probe, devices=devices)
    sites, expected, reference = _probed_sites(
        twin, modules, probe, include, exclude, model, flops=defer
    )
    if reference.random:  # random draws besides dropout: which of them sampling leaves out
        made = _reproduce(twin, modules, probe, sites, expected, exclude, model)
        _warn_random(model, modules, reference, made, exclude)
        if any(name in sites for name, _ in made.random):
            _set_flags(modules, set())
            plain = _run_probe(twin, modules, probe, what="in eval mode", model=model)
            _warn_sampled_noise(model, modules, made, plain, sites, include)
        return _finish(modules, sites), made, None
    if not expected:
        return _finish(modules, sites), _probe.Trace(), None
    if not defer:
        trace = _reproduce(twin, modules, probe, sites, expected, exclude, model)
        return _finish(modules, sites), trace, None
    _fast_path_gates(sites, modules)
    pending = _Pending(twin, modules, probe, sites, expected, exclude, model)
    return _finish(modules, sites), reference, pending


def _warn_random(
    model: nn.Module,
    modules: dict[str, nn.Module],
    reference: _probe.Trace,
    made: _probe.Trace,
    exclude: ModuleFilter,
) -> None:
    """Warn about random draws that training mode makes and the sampling twin does not, where
    they are neither recognised dropout nor known not-dropout (stochastic depth, layer drop,
    router noise): noise injection, hand-written dropout from ``torch.rand_like``, per-example
    masks. They are left out (only dropout samples), but never silently."""
    missed: dict[str, list[str]] = {}
    for (name, label), count in sorted(reference.random.items()):
        if made.random[(name, label)] >= count or _matches(exclude, name, modules[name]):
            continue
        missed.setdefault(name, []).append(label)
    if not missed:
        return
    listing = "; ".join(
        f"`{name or '<model>'}` ({_class_name(modules[name])}: {', '.join(labels)})"
        for name, labels in missed.items()
    )
    names = [name for name in missed]
    warnings.warn(
        f"Training mode of `{type(model).__name__}` draws random numbers that are not dropout "
        f"mcdrop recognises, and Monte Carlo dropout leaves them out (only dropout samples): "
        f"{listing}. If they are dropout (a mask from torch.rand_like, a per-example mask), "
        f"pass include={names!r} to sample them; if they are not (noise injection), pass "
        f"exclude={names!r} to leave them out without this warning.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


def _warn_sampled_noise(
    model: nn.Module,
    modules: dict[str, nn.Module],
    made: _probe.Trace,
    plain: _probe.Trace,
    sites: dict[str, DropoutSite],
    include: ModuleFilter,
) -> None:
    """A site whose training mode also draws random numbers that are not dropout (noise next
    to its dropout, in one ``if self.training``): they sample with its dropout, as one flag
    switches both; say so (not for modules the caller named with ``include=``)."""
    extra = sorted(
        (name, label)
        for (name, label), count in made.random.items()
        if name in sites
        and count > plain.random[(name, label)]
        and not _matches(include, name, modules[name])
    )
    if not extra:
        return
    listing = "; ".join(f"`{name or '<model>'}`: {label}" for name, label in extra)
    names = sorted({name for name, _ in extra})
    warnings.warn(
        f"Dropout sites of `{type(model).__name__}` also draw random numbers in training mode "
        f"that are not dropout ({listing}); one training flag switches both, so they sample "
        f"with the dropout. Pass exclude={names!r} to leave those modules (and their dropout) "
        "off, or move the other randomness into a module of its own.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


def _refuse_left(
    model: nn.Module, twin: nn.Module, untwinned: Untwinned, sites: dict[str, DropoutSite]
) -> None:
    """Without a probe nothing proves the forward reaches only the twin: refuse a reference to
    a module of the model that the twin could not redirect where that module holds a site."""
    held = [
        (name, untwinned.left[key])
        for key, name in untwinned.originals.items()
        if key in untwinned.left
        and any(s == name or s.startswith(f"{name}.") or not name for s in sites)
    ]
    if held:
        name, path = held[0]
        raise ValueError(
            f"Expected every reference to a module of `{type(model).__name__}` to lead to its "
            f"sampling twin, but `{path}` holds the model's own `{name or '<model>'}` in a "
            "container mcdrop cannot copy: that module would run in eval mode and its dropout "
            "would never sample. Keep submodules in attributes, lists, tuples, dicts or plain "
            "objects, or pass example inputs (a probe then checks what the forward runs)."
        )


def check_sites(model: nn.Module, sites: list[DropoutSite]) -> None:
    if sites:
        return
    zero = [
        name
        for name, module in model.named_modules()
        if isinstance(module, _RATED_TYPES) and _static_rate(module) == 0
    ]
    if zero:
        raise ValueError(
            f"Expected a dropout rate > 0, but every dropout site of `{type(model).__name__}` has "
            f"rate 0 ({', '.join(zero)}); Monte Carlo dropout would return zero uncertainty."
        )
    raise ValueError(
        f"Found no dropout in the model `{type(model).__name__}`: training mode makes no dropout "
        "call with a rate above 0 (nn.Dropout, attention dropout, RNN dropout, F.dropout). For "
        "other stochastic layers, pass `scope='train_except_norm'` or `include=` naming the "
        "modules to put in training mode."
    )


class SamplingWrapper(nn.Module):
    """Base of the modules whose forward samples a model they wrap (:class:`mcdrop.MCDropout`).

    A model that holds one is refused: sampling around it would nest one sampling in every pass.
    """


def _check_not_nested(model: nn.Module) -> None:
    """An ``MCDropout`` inside the model would sample inside every sampled pass."""
    for name, module in model.named_modules():
        if isinstance(module, SamplingWrapper):
            where = f"`{name}` is" if name else "the model itself is"
            raise ValueError(
                f"Expected a model without an `mcdrop.MCDropout` inside, but {where} one: its "
                "forward already returns Monte Carlo samples, so sampling around it would nest "
                "one sampling in every pass. Pass the model it wraps (its `.model`), or call the "
                "MCDropout itself."
            )


def _check_patterns(model: nn.Module, include: ModuleFilter, exclude: ModuleFilter) -> None:
    """Every ``include=`` / ``exclude=`` pattern must match a module: a typo is an error."""
    names = [name for name, _ in model.named_modules()]
    for label, selector in (("include", include), ("exclude", exclude)):
        if selector is None or callable(selector):
            continue
        patterns = [selector] if isinstance(selector, str) else list(selector)
        unmatched = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
        if unmatched:
            raise ValueError(
                f"Expected every `{label}` pattern to match a module of `{type(model).__name__}`, "
                f"but {unmatched} match none (module names look like {names[1:4]})."
            )


def check_materialised(model: nn.Module) -> None:
    """Refuse a model on the meta device: shapes without data, nothing can be computed."""
    named = itertools.chain(model.named_parameters(), model.named_buffers())
    meta = next((name for name, t in named if t is not None and t.is_meta), None)
    if meta is not None:
        raise ValueError(
            f"Expected `model` with its weights on a real device (cpu, cuda, ...), but "
            f"`{type(model).__name__}` is on the meta device (`{meta}` is a meta tensor: shapes "
            "without data), so nothing can be computed. Materialise it first, e.g. "
            "model.to_empty(device='cpu') and model.load_state_dict(...), or load it with its "
            "weights."
        )


def check_scope(scope: Any) -> str:
    """``scope`` as the name of a :class:`Scope`, or a ``ValueError`` naming it."""
    return check_choice("scope", str(getattr(scope, "value", scope)), [s.value for s in Scope])


def check_filter(name: str, selector: Any) -> ModuleFilter:
    """``include=`` / ``exclude=``: a name pattern, a list of patterns (kept as a tuple: a list
    changed in place afterwards changes nothing already validated, a kept plan included) or a
    predicate."""
    _check_selector(name, selector)
    if selector is None or callable(selector) or isinstance(selector, str):
        return selector  # type: ignore[no-any-return]
    return tuple(selector)


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}."
        )


def _check_options(model: Any, scope: Any, include: ModuleFilter, exclude: ModuleFilter) -> str:
    _check_model(model)
    _check_selector("include", include)
    _check_selector("exclude", exclude)
    return check_scope(scope)


def _warn_if_training(model: nn.Module) -> None:
    if isinstance(model, torch.fx.GraphModule) and _overrides_train(model):
        return  # torch.export's graphs: always "training", and eval() is not supported
    if any(module.training for module in model.modules()):
        warnings.warn(
            f"`{type(model).__name__}` is in training mode; mcdrop samples a twin of it with only "
            "the dropout sites in training mode (normalisation layers in eval, their statistics "
            "untouched) and leaves the model as it is. Call model.eval() first to silence this "
            "warning.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )


# -- public API ---------------------------------------------------------------------------------
def dropout_sites(
    model: nn.Module,
    *,
    scope: str = "dropout",
    include: ModuleFilter = None,
    exclude: ModuleFilter = None,
    example_inputs: Any = None,
) -> list[DropoutSite]:
    """List the modules that sample under Monte Carlo dropout, and why.

    Parameters
    ----------
    model : nn.Module
        The trained model. It is never written to (the probe runs on a twin).
    scope : {"dropout", "train_except_norm"}, default="dropout"
        See :class:`Scope`.
    include : str, list of str or callable, optional
        Extra modules to put in training mode: ``fnmatch`` patterns on qualified module names
        (``"encoder.*.attn"``) or a predicate ``(name, module) -> bool``.
    exclude : str, list of str or callable, optional
        Modules to leave in eval mode, same forms as ``include``; wins over everything else.
    example_inputs : Tensor, tuple or dict, optional
        A small batch (positional tensor, tuple of positional arguments or dict of keyword
        arguments). When given, the sites are what training mode really runs (module docstring):
        two probe passes on a twin. Without it, the modules that are recognisably dropout
        (dropout modules, attention, transformer layers, RNNs with dropout) are listed.

    Returns
    -------
    list of DropoutSite
        In ``model.named_modules()`` order.
    """
    scope = _check_options(model, scope, include, exclude)
    probe = None if example_inputs is None else Probe(_as_call(example_inputs))
    with sampling_twin(model, scope, include, exclude, probe, warn=False) as sampling:
        return sampling.sites


@dataclass(frozen=True)
class Sampling:
    """The sampling twin: what :func:`sampling_twin` yields.

    The module to sample, its sites, the trace that plans the sampling, and, with
    ``defer=True``, its own check left to the first sampling chunk (``pending``): the chunk runs
    under :meth:`recording`, and :meth:`confirm` gives the twin that stands after it.
    """

    module: nn.Module
    sites: list[DropoutSite]
    trace: _probe.Trace
    pending: _Pending | None = None

    def recording(self) -> contextlib.AbstractContextManager[_probe.Recording]:
        """Hooks that record which dropout each pass of the first chunk makes (check pending)."""
        assert self.pending is not None
        return _probe.recording(self.pending.modules, flops=False)

    def confirm(self, recording: _probe.Recording | None) -> Sampling:
        """The twin once its first chunk has run (``recording`` of that chunk, or None when it
        raised): confirmed when every pass made the dropout calls the training probe made (no
        second probe pass), else after the full check, which may change the sites (gating
        parents, auxiliary branches) or raise naming what cannot be reproduced. The trace's
        ``layer_skips`` are then those the sampling twin makes."""
        pending = self.pending
        if pending is None:
            return self
        if recording is not None and pending.confirmed_by(recording.recorder.passes):
            skips = set(recording.recorder.layer_skips)
            trace = dataclasses.replace(self.trace, layer_skips=skips)
            return dataclasses.replace(self, trace=trace, pending=None)
        sites, trace = pending.settle()
        return dataclasses.replace(self, sites=sites, trace=trace, pending=None)


@contextlib.contextmanager
def sampling_twin(
    model: nn.Module,
    scope: str,
    include: ModuleFilter,
    exclude: ModuleFilter,
    probe: Probe | None,
    *,
    warn: bool = True,
    defer: bool = False,
) -> Iterator[Sampling]:
    """The module that samples and its sites: a twin, or for TorchScript the locked model."""
    inner, compiled = unwrap_compiled(model)
    if probe is not None:
        check_materialised(inner)
    _check_not_nested(inner)
    _check_patterns(inner, include, exclude)
    twin, untwinned = twin_of(inner)
    if twin is None:
        with _scripted(model, scope, include, exclude, warn=warn) as found:
            yield Sampling(model, found, _probe.Trace())
        return
    if warn:
        _warn_if_training(inner)
    # Checked up front instead: a compiled model's first chunk would trace the recording into its
    # graph; PyTorch's transformer layers take their fused eval fast path except under the
    # recording, and the first chunk must compute what the others do.
    defer = (
        defer
        and not compiled
        and not any(isinstance(m, _FAST_PATH_MODULES) for m in inner.modules())
    )
    sites, trace, pending = _plan(
        twin,
        scope,
        include,
        exclude,
        probe,
        inner,
        defer=defer,
        untwinned=untwinned,
        trained=_trained(inner),
    )
    if compiled:  # same dynamo context (backend, options): graphs compiled once are reused
        twin = type(model)(twin, model.dynamo_ctx)  # type: ignore[call-arg]
    yield Sampling(twin, sites, trace, pending)


@contextlib.contextmanager
def _scripted(
    model: nn.Module, scope: str, include: ModuleFilter, exclude: ModuleFilter, *, warn: bool
) -> Iterator[list[DropoutSite]]:
    """Fallback for TorchScript: switch the model's own flags under a per-model lock."""
    if warn:
        warnings.warn(
            f"`{type(model).__name__}` holds TorchScript modules, which mcdrop cannot twin: it "
            "switches the model's own dropout flags while sampling (under a lock, restored "
            "afterwards). Other threads calling this model meanwhile see dropout on; sample an "
            "eager (not scripted) model to avoid this.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    sites = _static_sites(model, scope, include, exclude)
    modules = dict(model.named_modules())
    order = {name: i for i, name in enumerate(modules)}
    with _model_lock(model):
        previous = {name: module.training for name, module in modules.items()}
        try:
            _set_flags(modules, set(sites))
            yield sorted(sites.values(), key=lambda site: order[site.name])
        finally:
            for name, module in modules.items():
                module.training = previous[name]


@contextlib.contextmanager
def dropout_enabled(
    model: nn.Module,
    scope: str = "dropout",
    *,
    include: ModuleFilter = None,
    exclude: ModuleFilter = None,
    example_inputs: Any = None,
) -> Iterator[nn.Module]:
    """A module that computes ``model`` with exactly its dropout sampling; ``model`` untouched.

    Yields a twin of ``model``: new module objects sharing its parameters, buffers and hooks, with
    the sites of :func:`dropout_sites` in training mode and everything else (normalisation layers
    always) in eval mode. The model itself is never written to, so other threads may keep calling
    it; but the passes you run on the twin are yours: a ``forward`` that writes one of the shared
    tensors in place writes the model's (mcdrop's own calls refuse it:
    ``mcdrop.dropout.ModelWriteError``). TorchScript models cannot be twinned: their own flags
    are switched inside the block, under a per-model lock, restored on exit (with a warning).

    Parameters
    ----------
    model : nn.Module
        The trained model.
    scope : {"dropout", "train_except_norm"}, default="dropout"
        See :class:`Scope`.
    include, exclude : str, list of str or callable, optional
        See :func:`dropout_sites`.
    example_inputs : Tensor, tuple or dict, optional
        See :func:`dropout_sites`: the sites are then what training mode runs.

    Yields
    ------
    nn.Module
        The module to sample (call it as you would call ``model``).

    Raises
    ------
    ValueError
        When the model has no dropout site or every rate is 0.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import mcdrop
    >>> model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    >>> _ = model.eval()
    >>> with mcdrop.dropout_enabled(model, example_inputs=torch.randn(2, 4)) as sampler:
    ...     sampler[1].training, sampler[2].training, model[2].training
    (False, True, False)
    """
    scope = _check_options(model, scope, include, exclude)
    probe = None if example_inputs is None else Probe(_as_call(example_inputs))
    with sampling_twin(model, scope, include, exclude, probe) as sampling:
        check_sites(model, sampling.sites)
        yield sampling.module


# -- what a kept plan must probe again ----------------------------------------------------------
def trained_modules(model: nn.Module) -> set[str] | None:
    """The modules ``model.train()`` puts in training mode (None: all); see :func:`_trained`."""
    return _trained(model)


def training_calls(
    twin: nn.Module, trained: set[str] | None, call: Call, seed: int
) -> dict[Any, float]:
    """The dropout calls ``twin`` (a sampling twin of a model whose ``train()`` switches on
    ``trained``, :func:`trained_modules`) makes in training mode, norm layers in eval, on
    ``call`` (the probe's examples), keyed as
    :meth:`MaskedDropout.counting` keys them: what the first call's training-mode probe found,
    found again, more cheaply (no hooks, no FLOP count). A gate that only training mode opens
    (``if self.training and use_dropout``) shows here and nowhere else. Masks and other random
    draws come from a :class:`MaskedDropout` seeded by ``seed`` (never from PyTorch's global
    generators); in-place dropout runs out of place (``call`` views the caller's inputs); the
    twin's flags and buffers are as they were afterwards."""
    modules = _TwinModules(twin, None, trained)
    flags = {name: m.training for name, m in modules.items()}
    buffers = {name: m._buffers for name, m in modules.items()}
    names = {id(module): name for name, module in modules.items()}
    args, kwargs = call
    masks = MaskedDropout(seed)
    try:
        _set_flags(modules, None)
        with SAMPLING_LOCK, torch.inference_mode(), masks, masks.counting(names, {}) as counted:
            with _probe.OutOfPlaceDropout():
                twin(*args, **kwargs)
    finally:
        for name, module in modules.items():
            set_flag(module, flags[name])
            module._buffers = buffers[name]
    assert counted.calls is not None
    return counted.calls


def training_flips(twin: nn.Module, trained: set[str] | None) -> list[nn.Module]:
    """The modules of ``twin`` whose training flag :func:`training_calls` changes: what training
    mode (as the model's ``train()`` sets it, norm layers in eval) does differently from the twin
    can only go through a read of one of their flags (:mod:`mcdrop.dropout._flags`)."""
    modules = _TwinModules(twin, None, trained)
    return [
        module
        for name, module in modules.items()
        if module.training != _training_flag(name, module, modules.trained)
    ]
