"""Dropout sites found by a training-mode probe, and the sampling twin that samples them."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
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
from mcdrop.dropout._masks import private_randomness
from mcdrop.dropout._twin import SAMPLING_LOCK, _model_lock, _twin, unwrap_compiled

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
    model: nn.Module, scope: str, include: ModuleFilter, exclude: ModuleFilter
) -> dict[str, DropoutSite]:
    """Sites recognisable without running the model: dropout modules, attention, RNNs."""
    sites: dict[str, DropoutSite] = {}
    for name, module in model.named_modules():
        if _matches(exclude, name, module) or _is_norm(module):
            continue
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

    def __init__(self, twin: nn.Module) -> None:
        super().__init__(twin.named_modules())
        self.shared = {name: dict(module._buffers) for name, module in self.items()}


def _set_flags(modules: dict[str, nn.Module], on: set[str] | None) -> None:
    """Training flag of every twin module: on for ``on`` (all when None), never for norms."""
    shared = getattr(modules, "shared", None)
    for name, module in modules.items():
        module.training = (on is None or name in on) and not _is_norm(module)
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
    try:
        with SAMPLING_LOCK, probe.randomness(), torch.inference_mode():
            return _probe.trace(modules, lambda: twin(*args, **kwargs), flops=flops)
    except Exception as error:
        # The user's own error (a wrong input width, ...), as the whole batch in eval mode gives
        # it; the twin is discarded after this error, so its flags need no restoring.
        _set_flags(modules, set())
        full_args, full_kwargs = probe.batch or probe.call
        with probe.randomness(), torch.inference_mode():
            twin(*full_args, **full_kwargs)
        raise ValueError(
            f"Running `{type(model).__name__}` {what} on 2 examples of the first batch raised "
            f"{type(error).__name__}: {error}; in eval mode it runs. mcdrop runs this probe to "
            "find the dropout that training applies. If the model needs other inputs in "
            "training mode (e.g. targets), pass `detect_silent=False` to sample the modules that "
            "are recognisably dropout (nn.Dropout, attention, RNNs), or `include=` naming the "
            "modules to sample."
        ) from error


def _reason(label: str, module: nn.Module) -> str:
    if isinstance(module, _DROPOUT_TYPES):
        return "dropout module"
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
    expected: Counter[_probe.Call] = Counter()
    sites: dict[str, DropoutSite] = {}
    for (name, label, p), count in reference.calls.items():
        if _matches(exclude, name, modules[name]):
            continue
        expected[(name, label, p)] = count
        site = sites.get(name)
        if site is None:
            site = DropoutSite(name, _class_name(modules[name]), p, _reason(label, modules[name]))
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
    for name in sorted(missing):
        parent = _parent(name)
        while parent is not None and parent in sites:
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
    """The sampling twin's check, left to the first sampling chunk (``_plan(defer=True)``).

    The chunk runs under :func:`mcdrop.dropout._probe.recording` on ``modules``; when it makes every
    ``expected`` call, the twin samples exactly what training does and no second probe pass is
    needed. Otherwise ``settle()`` runs the full check of :func:`_reproduce` (gating parents,
    auxiliary branches, the error naming what cannot be reproduced) and returns the new sites and
    the sampling probe's trace; the twin's flags are then set for them.
    """

    modules: dict[str, nn.Module]
    expected: Counter[_probe.Call]
    settle: Callable[[], tuple[list[DropoutSite], _probe.Trace]]

    def confirmed_by(self, passes: list[Counter[_probe.Call]]) -> bool:
        """Whether every pass (call of the root module) made every expected call exactly as
        often as the training probe. A count that depends on the rows (a loop over examples or
        to a length in the inputs) is not confirmed: more calls there could hide a missing one."""
        return bool(passes) and all(
            calls[key] == count for calls in passes for key, count in self.expected.items()
        )


def _plan(
    twin: nn.Module,
    scope: str,
    include: ModuleFilter,
    exclude: ModuleFilter,
    probe: Probe | None,
    model: nn.Module,
    *,
    defer: bool = False,
) -> tuple[list[DropoutSite], _probe.Trace, _Pending | None]:
    """Find the sites on ``twin`` and leave its flags set for sampling; also return the trace
    whose FLOPs plan the sampling (empty without a probe). With ``defer``, the second probe pass
    is left to the caller's first sampling chunk (:class:`_Pending`) and the FLOPs are counted in
    the training-mode probe."""
    modules = _TwinModules(twin)
    order = {name: i for i, name in enumerate(modules)}

    def finish(sites: dict[str, DropoutSite]) -> list[DropoutSite]:
        _set_flags(modules, set(sites))
        return sorted(sites.values(), key=lambda site: order[site.name])

    if probe is None or scope == Scope.TRAIN_EXCEPT_NORM.value:
        return finish(_static_sites(twin, scope, include, exclude)), _probe.Trace(), None
    devices = sorted({t.device for t in twin.parameters() if t.device.type == "cuda"}, key=str)
    probe = dataclasses.replace(probe, devices=devices)
    sites, expected, reference = _probed_sites(
        twin, modules, probe, include, exclude, model, flops=defer
    )
    if not expected:
        return finish(sites), _probe.Trace(), None
    if not defer:
        trace = _reproduce(twin, modules, probe, sites, expected, exclude, model)
        return finish(sites), trace, None

    def settle() -> tuple[list[DropoutSite], _probe.Trace]:
        made = _reproduce(twin, modules, probe, sites, expected, exclude, model)
        return finish(sites), made

    _fast_path_gates(sites, modules)
    return finish(sites), reference, _Pending(modules, expected, settle)


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


def check_scope(model: Any, scope: Any, include: ModuleFilter, exclude: ModuleFilter) -> str:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}."
        )
    _check_selector("include", include)
    _check_selector("exclude", exclude)
    return check_choice("scope", str(getattr(scope, "value", scope)), [s.value for s in Scope])


def _warn_if_training(model: nn.Module) -> None:
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
    scope = check_scope(model, scope, include, exclude)
    probe = None if example_inputs is None else Probe(_as_call(example_inputs))
    with sampling_twin(model, scope, include, exclude, probe, warn=False) as sampling:
        return sampling.sites


@dataclass(frozen=True)
class Sampling:
    """What :func:`sampling_twin` yields: the module to sample, its sites, the trace that plans
    the sampling, and the check left to the first chunk (``defer=True``)."""

    module: nn.Module
    sites: list[DropoutSite]
    trace: _probe.Trace
    pending: _Pending | None = None


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
    _check_not_nested(inner)
    _check_patterns(inner, include, exclude)
    twin = _twin(inner)
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
    sites, trace, pending = _plan(twin, scope, include, exclude, probe, inner, defer=defer)
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
    it. TorchScript models cannot be twinned: their own flags are switched inside the block,
    under a per-model lock, restored on exit (with a warning).

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
    scope = check_scope(model, scope, include, exclude)
    probe = None if example_inputs is None else Probe(_as_call(example_inputs))
    with sampling_twin(model, scope, include, exclude, probe) as sampling:
        check_sites(model, sampling.sites)
        yield sampling.module
