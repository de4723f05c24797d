"""Which modules sample at test time, and a context manager that switches exactly those.

Monte Carlo dropout needs every dropout site that training uses to sample, and nothing else to
change. Putting the whole model in ``train()`` mode is wrong (BatchNorm would use and update batch
statistics) and ``model.eval()`` plus re-enabling ``nn.Dropout`` modules is not enough either:

* ``nn.MultiheadAttention`` passes ``dropout if self.training else 0.0`` to its fused kernel, and
  ``nn.TransformerEncoderLayer`` / ``nn.TransformerDecoderLayer`` take an eval fast path that skips
  dropout entirely. Their own ``training`` flag must be on.
* Many attention blocks keep an ``nn.Dropout`` child only to read its rate:
  ``F.scaled_dot_product_attention(..., dropout_p=self.drop.p if self.training else 0.0)``.
  The child is registered but never called, so enabling it changes nothing.
* Functional ``F.dropout(x, p, self.training)`` inside a user module is invisible to a module scan.

:func:`dropout_sites` lists what :func:`dropout_enabled` switches on, with the reason for each
site. Given example inputs it also runs one probe pass that observes which dropout modules really
run and which functional dropout calls happen with ``training=False``, and adds the gating parent
of each silent site. Normalisation layers (BatchNorm, SyncBatchNorm, InstanceNorm) always stay in
eval mode, and every flag is restored on exit, also when the body raises.
"""

from __future__ import annotations

import contextlib
import fnmatch
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from mcdrop._validation import check_choice

__all__ = ["DropoutSite", "Scope", "dropout_enabled", "dropout_sites"]


class Scope(str, Enum):
    """Which modules :func:`dropout_enabled` puts in training mode.

    ``"dropout"``
        Dropout modules and the modules that gate dropout on their own ``training`` flag
        (multi-head attention, transformer layers, parents of silent dropout children, modules
        calling functional dropout): the default.
    ``"train_except_norm"``
        Every module except normalisation layers with running statistics: for models whose
        stochasticity mcdrop cannot see (custom ``if self.training`` logic).
    """

    DROPOUT = "dropout"
    TRAIN_EXCEPT_NORM = "train_except_norm"


_DROPOUT_TYPES: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
# Modules that read their dropout rate into a fused kernel only when ``self.training`` is set.
_GATING_TYPES: tuple[type[nn.Module], ...] = (
    nn.MultiheadAttention,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
)
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm1d/2d/3d, SyncBatchNorm, InstanceNorm*, lazy ones
)
_FUNCTIONAL_DROPOUT = {
    F.dropout: "F.dropout",
    F.dropout1d: "F.dropout1d",
    F.dropout2d: "F.dropout2d",
    F.dropout3d: "F.dropout3d",
    F.alpha_dropout: "F.alpha_dropout",
    F.feature_alpha_dropout: "F.feature_alpha_dropout",
}

ModuleFilter = str | Sequence[str] | Callable[[str, nn.Module], bool] | None


@dataclass(frozen=True)
class DropoutSite:
    """One module that samples under :func:`dropout_enabled`.

    Parameters
    ----------
    name : str
        Qualified name in ``model.named_modules()`` (``""`` for the model itself).
    type : str
        Class name of the module.
    rate : float or None
        Dropout probability the site uses when sampling, when mcdrop can read it.
    reason : str
        Why the site is switched on.
    """

    name: str
    type: str
    rate: float | None
    reason: str

    def __str__(self) -> str:
        rate = "?" if self.rate is None else f"{self.rate:g}"
        return f"{self.name or '<model>'} ({self.type}, p={rate}): {self.reason}"


def _rate(module: nn.Module) -> float | None:
    if isinstance(module, nn.MultiheadAttention):
        return float(module.dropout)
    if isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
        return float(module.dropout.p)
    p = getattr(module, "p", None)
    return float(p) if isinstance(p, (int, float)) else None


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


def _static_sites(
    model: nn.Module, scope: str, include: ModuleFilter, exclude: ModuleFilter
) -> dict[str, DropoutSite]:
    sites: dict[str, DropoutSite] = {}
    for name, module in model.named_modules():
        if _matches(exclude, name, module) or isinstance(module, _NORM_TYPES):
            continue
        if isinstance(module, _DROPOUT_TYPES):
            reason = "dropout module"
        elif isinstance(module, nn.MultiheadAttention):
            reason = "attention dropout gated on its training flag (dropout_p = 0 in eval)"
        elif isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)):
            reason = "eval fast path skips dropout; training flag disables the fast path"
        elif _matches(include, name, module):
            reason = "selected by include="
        elif scope == Scope.TRAIN_EXCEPT_NORM.value:
            reason = "scope='train_except_norm'"
        else:
            continue
        sites[name] = DropoutSite(name, type(module).__name__, _rate(module), reason)
    return sites


class _FunctionalDropoutSpy(TorchFunctionMode):
    """Records functional dropout calls that run with ``training=False`` and which module made them."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.silent: dict[str, tuple[str, float]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        label = _FUNCTIONAL_DROPOUT.get(func)
        if label is not None and self.stack:
            p = kwargs.get("p", args[1] if len(args) > 1 else 0.5)
            training = kwargs.get("training", args[2] if len(args) > 2 else True)
            if not training and float(p) > 0.0:
                self.silent.setdefault(self.stack[-1], (label, float(p)))
        return func(*args, **kwargs)


def _probe_silent_sites(
    model: nn.Module, run: Callable[[], Any], enabled: dict[str, DropoutSite]
) -> dict[str, DropoutSite]:
    """Run one pass with ``enabled`` switched on; return the gating modules of silent sites."""
    names = {module: name for name, module in model.named_modules()}
    called: set[str] = set()
    stack: list[str] = []
    handles = []

    def pre_hook(module: nn.Module, _args: Any) -> None:
        stack.append(names[module])

    def post_hook(module: nn.Module, _args: Any, _output: Any) -> None:
        called.add(names[module])
        if stack:
            stack.pop()

    for module in names:
        handles.append(module.register_forward_pre_hook(pre_hook))
        handles.append(module.register_forward_hook(post_hook, always_call=True))
    spy = _FunctionalDropoutSpy(stack)
    try:
        # fork_rng: the probe must not shift the random stream that the sampling then draws.
        with (
            torch.random.fork_rng(devices=_cuda_devices(model)),
            _switched(model, enabled),
            torch.inference_mode(),
            spy,
        ):
            run()
    finally:
        for handle in handles:
            handle.remove()

    modules = dict(model.named_modules())
    found: dict[str, DropoutSite] = {}
    for name, module in modules.items():
        rate = _rate(module)
        if isinstance(module, _DROPOUT_TYPES) and name and name not in called and rate:
            parent = name.rsplit(".", 1)[0] if "." in name else ""
            if parent not in enabled:
                found[parent] = DropoutSite(
                    parent,
                    type(modules[parent]).__name__,
                    rate,
                    f"its dropout child {name!r} is registered but never called: the rate is "
                    "read into a fused kernel only when this module is training",
                )
    for name, (label, p) in spy.silent.items():
        found.setdefault(
            name,
            DropoutSite(
                name,
                type(modules[name]).__name__,
                p,
                f"calls {label}(..., training=False): functional dropout gated on its training flag",
            ),
        )
    return {name: site for name, site in found.items() if name not in enabled}


def dropout_sites(
    model: nn.Module,
    *,
    scope: str = "dropout",
    include: ModuleFilter = None,
    exclude: ModuleFilter = None,
    example_inputs: Any = None,
) -> list[DropoutSite]:
    """List the modules that :func:`dropout_enabled` would switch to sampling, and why.

    Parameters
    ----------
    model : nn.Module
        The trained model. It is not changed.
    scope : {"dropout", "train_except_norm"}, default="dropout"
        See :class:`Scope`.
    include : str, list of str or callable, optional
        Extra modules to put in training mode: ``fnmatch`` patterns on qualified module names
        (``"encoder.*.attn"``) or a predicate ``(name, module) -> bool``.
    exclude : str, list of str or callable, optional
        Modules to leave in eval mode, same forms as ``include``; wins over everything else.
    example_inputs : Tensor, tuple or dict, optional
        A small batch (positional tensor, tuple of positional arguments or dict of keyword
        arguments). When given, one probe pass finds dropout modules that are registered but
        never called (their parent feeds the rate to a fused kernel) and functional dropout
        called with ``training=False``; the gating modules are added to the list.

    Returns
    -------
    list of DropoutSite
        In ``model.named_modules()`` order.
    """
    call = None if example_inputs is None else _as_call(example_inputs)
    return _find_sites(model, scope, include, exclude, call)


def _find_sites(
    model: nn.Module,
    scope: str,
    include: ModuleFilter,
    exclude: ModuleFilter,
    call: tuple[tuple[Any, ...], dict[str, Any]] | None,
) -> list[DropoutSite]:
    """:func:`dropout_sites` with the probe inputs given as ``(args, kwargs)``."""
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}."
        )
    scope = check_choice("scope", scope, [s.value for s in Scope])
    _check_selector("include", include)
    _check_selector("exclude", exclude)
    sites = _static_sites(model, scope, include, exclude)
    if call is not None and scope == Scope.DROPOUT.value:
        args, kwargs = call
        for _ in range(4):  # a gating module found in one round can hide another behind it
            extra = _probe_silent_sites(model, lambda: model(*args, **kwargs), sites)
            extra = {n: s for n, s in extra.items() if not _matches(exclude, n, _get(model, n))}
            if not extra:
                break
            sites.update(extra)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    return sorted(sites.values(), key=lambda site: order[site.name])


def _cuda_devices(model: nn.Module) -> list[torch.device]:
    return sorted({t.device for t in model.parameters() if t.device.type == "cuda"}, key=str)


def _get(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name) if name else model


def _as_call(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


@contextlib.contextmanager
def _switched(model: nn.Module, sites: dict[str, DropoutSite]) -> Iterator[None]:
    """Set ``training`` of every module: on for ``sites``, off otherwise; restore on exit."""
    previous = [(module, module.training) for module in model.modules()]
    try:
        for name, module in model.named_modules():
            module.training = name in sites and not isinstance(module, _NORM_TYPES)
        yield
    finally:
        for module, flag in previous:
            module.training = flag


def _check_sites(model: nn.Module, sites: list[DropoutSite], scope: str) -> None:
    if not sites:
        raise ValueError(
            f"Found no dropout in the model `{type(model).__name__}`: Monte Carlo dropout needs "
            "dropout modules (nn.Dropout, attention dropout, ...). If the model uses functional "
            "dropout or custom stochastic layers, pass `scope='train_except_norm'` or "
            "`include=` naming the modules to put in training mode."
        )
    if scope == Scope.DROPOUT.value and all(
        site.rate is not None and site.rate == 0 for site in sites
    ):
        listing = ", ".join(site.name or "<model>" for site in sites)
        raise ValueError(
            f"Expected a dropout rate > 0, but every dropout site of `{type(model).__name__}` has "
            f"rate 0 ({listing}); Monte Carlo dropout would return zero uncertainty."
        )


def _warn_if_training(model: nn.Module) -> None:
    if any(module.training for module in model.modules()):
        warnings.warn(
            f"`{type(model).__name__}` was in training mode on entry; mcdrop samples with only the "
            "dropout sites in training mode (normalisation layers in eval, their statistics "
            "untouched) and restores the flags afterwards. Call model.eval() first to silence "
            "this warning.",
            UserWarning,
            stacklevel=4,
        )


@contextlib.contextmanager
def dropout_enabled(
    model: nn.Module,
    scope: str = "dropout",
    *,
    include: ModuleFilter = None,
    exclude: ModuleFilter = None,
    example_inputs: Any = None,
    sites: Sequence[DropoutSite] | None = None,
) -> Iterator[list[DropoutSite]]:
    """Switch exactly the dropout sites of ``model`` to sampling for the ``with`` block.

    Every module's ``training`` flag is set explicitly: on for the sites listed by
    :func:`dropout_sites`, off for everything else (normalisation layers always off, so their
    running statistics are neither used nor updated). On exit every flag is restored to what it
    was, also when the block raises. Parameters and buffers are never touched.

    Parameters
    ----------
    model : nn.Module
        The trained model.
    scope : {"dropout", "train_except_norm"}, default="dropout"
        See :class:`Scope`.
    include, exclude : str, list of str or callable, optional
        See :func:`dropout_sites`.
    example_inputs : Tensor, tuple or dict, optional
        See :func:`dropout_sites`: enables the probe for silent (fused or functional) sites.
    sites : list of DropoutSite, optional
        Use this list (from :func:`dropout_sites`) instead of computing it.

    Yields
    ------
    list of DropoutSite
        The sites switched on.

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
    >>> with mcdrop.dropout_enabled(model) as sites:
    ...     [site.name for site in sites], model[1].training, model[2].training
    (['2'], False, True)
    >>> model[2].training
    False
    """
    if sites is None:
        found = dropout_sites(
            model, scope=scope, include=include, exclude=exclude, example_inputs=example_inputs
        )
    else:
        found = list(sites)
    scope_value = scope.value if isinstance(scope, Scope) else str(scope)
    _check_sites(model, found, scope_value)
    _warn_if_training(model)
    with _switched(model, {site.name: site for site in found}):
        yield found
