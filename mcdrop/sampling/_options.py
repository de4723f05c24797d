"""Every keyword option of the sampling entry points, declared once.

:class:`SamplingOptions` is the one declaration: each field carries its default, the check that
validates (and normalises) a value, and its documentation. :func:`mcdrop.predict_with_uncertainty`
takes its keyword options, signature and parameter docs from it, :class:`mcdrop.MCDropout`
validates its ``**options`` with it, the distributed path receives it, and the integrations take
their defaults from it (:func:`default_of`).
"""

# ruff: noqa: RUF009  (every field's default is `option(...)`: a dataclasses.field with metadata)
from __future__ import annotations

import dataclasses
import inspect
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mcdrop._validation import check_bool, check_choice, check_float, check_int
from mcdrop.dropout import MASK_KINDS, ModuleFilter, check_filter, check_scope
from mcdrop.sampling._inputs import TargetKey, check_target_key
from mcdrop.sampling._rng import check_generator, check_seed, seed_from
from mcdrop.stats import OUTPUT_KINDS

__all__: list[str] = []

STRATEGIES = ("auto", "replicate", "vmap", "loop")
_AMP_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}

Check = Callable[[str, Any], Any]


# -- the checks of single values (name, value) -> normalised value -----------------------------
def resolve_amp(name: str, amp: Any) -> torch.dtype | None:
    if amp is None or amp is False:
        return None
    if amp is True:
        return torch.bfloat16
    if isinstance(amp, torch.dtype) and amp in (torch.bfloat16, torch.float16):
        return amp
    if isinstance(amp, str) and amp in _AMP_DTYPES:
        return _AMP_DTYPES[amp]
    raise ValueError(
        f"Expected `{name}` to be None, True, 'bf16', 'fp16', torch.bfloat16 or torch.float16, "
        f"but got {amp!r}."
    )


def resolve_compile(name: str, compile: Any) -> dict[str, Any] | None:
    """``compile=``: False/None (eager), True (``torch.compile`` defaults) or its kwargs."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return {}
    if isinstance(compile, dict) and all(isinstance(key, str) for key in compile):
        return dict(compile)
    raise TypeError(
        f"Expected `{name}` to be a bool or a dict of torch.compile options, but got {compile!r}."
    )


def resolve_device(name: str, device: Any) -> torch.device | None:
    """A ``torch.device`` that exists on this machine, or a ``ValueError`` naming ``name``."""
    if device is None:
        return None
    if not isinstance(device, (str, torch.device, int)) or isinstance(device, bool):
        raise TypeError(
            f"Expected `{name}` to be a torch.device or a string such as 'cpu' or 'cuda:0', but "
            f"got {device!r}."
        )
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise ValueError(
            f"Expected `{name}` to name a device such as 'cpu', 'cuda' or 'cuda:1', but got "
            f"{device!r}."
        ) from error
    available = {"cpu": True, "meta": False}.get(resolved.type)
    if resolved.type == "cuda":
        index = resolved.index or 0
        available = torch.cuda.is_available() and index < torch.cuda.device_count()
    elif available is None:
        module = getattr(torch, resolved.type, None)
        available = bool(getattr(module, "is_available", lambda: False)())
    if not available:
        raise ValueError(f"Expected `{name}` to be a device available here, but got {device!r}.")
    return resolved


def _n_samples(name: str, value: Any) -> int | str:
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(
                f"Expected `{name}` to be an integer >= 1 or 'auto', but got {value!r}."
            )
        return value
    return check_int(name, value, minimum=1)


def _choice(*choices: str) -> Check:
    return lambda name, value: check_choice(name, value, choices)


def _integer(minimum: int | None = None, *, optional: bool = False) -> Check:
    def check(name: str, value: Any) -> int | None:
        if optional and value is None:
            return None
        return check_int(name, value, minimum=minimum)

    return check


def _positive(*, optional: bool = False) -> Check:
    def check(name: str, value: Any) -> float | None:
        if optional and value is None:
            return None
        return check_float(name, value, low=0.0, low_inclusive=False)

    return check


def _flag(*, optional: bool = False) -> Check:
    return lambda name, value: check_bool(name, value, allow_none=optional)


def _callable(name: str, value: Any) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"Expected `{name}` to be callable, but got {value!r}.")
    return value


def _result_device(name: str, value: Any) -> torch.device:
    device = resolve_device(name, value)
    if device is None:
        raise TypeError(f"Expected `{name}` to be a torch.device or a string, but got None.")
    return device


def _target_key(name: str, value: Any) -> TargetKey:
    return check_target_key(value)


def option(default: Any, check: Check, doc: str) -> Any:
    """A field of :class:`SamplingOptions`: its default (as a caller writes it), the check that
    validates and normalises a value, and its numpydoc entry (type line, then the text)."""
    return dataclasses.field(default=default, metadata={"check": check, "doc": doc})


@dataclass(frozen=True)
class SamplingOptions:
    """The keyword options of :func:`mcdrop.predict_with_uncertainty`, validated once.

    Construction checks every value (name, type, range) and stores it normalised (``amp`` as a
    dtype, ``compile`` as a dict of ``torch.compile`` options or None, devices as
    ``torch.device``); see the ``doc`` metadata of each field for its meaning.
    """

    n_samples: int | str = option(
        100,
        _n_samples,
        """n_samples : int or "auto", default=100
        Number of stochastic passes ``T``. ``"auto"`` samples until the largest Monte Carlo
        standard error of the predictive mean in each batch is at most ``tolerance`` (at least
        16 passes, at most ``max_samples``).""",
    )
    task: str = option(
        "classification",
        _choice("classification", "regression"),
        """task : {"classification", "regression"}, default="classification"
        Decides the result type: :class:`ClassificationResult` or :class:`RegressionResult`.""",
    )
    outputs: str = option(
        "logits",
        _choice(*OUTPUT_KINDS),
        """outputs : {"logits", "probs", "log_probs", "binary_logits"}, default="logits"
        What a classifier returns; never guessed from the values. ``"binary_logits"``: one logit
        per example (``BCEWithLogitsLoss``), giving the classes ``[1 - sigmoid, sigmoid]``.""",
    )
    class_dim: int = option(
        1,
        _integer(),
        """class_dim : int, default=1
        Class dimension of the model output (N, C, ...): ``1`` for ``(N, C)`` and segmentation
        ``(N, C, H, W)`` (per-pixel uncertainty maps), ``-1`` for ``(N, L, C)`` token outputs.""",
    )
    target_key: TargetKey = option(
        "auto",
        _target_key,
        """target_key : "auto", None, int or str, default="auto"
        Which part of a batch holds the targets. ``"auto"``: the ``"labels"`` entry of a dict
        (Hugging Face), or the second element of an ``(inputs, targets)`` pair from an iterable
        when it is integer class labels with one row per example; any other pair is refused
        with the way to disambiguate. ``None``: nothing is targets. An ``int``: position in a
        tuple batch (``1`` for ``(x, y)``, ``-1`` for ``(x, mask, y)``). A ``str``: key of a
        dict batch.""",
    )
    tau: float | None = option(
        None,
        _positive(optional=True),
        """tau : float, optional
        Regression model precision (Gal 2016): aleatoric variance ``1 / tau``.""",
    )
    heteroscedastic: bool = option(
        False,
        _flag(),
        """heteroscedastic : bool, default=False
        Regression model returns ``(mean, log_variance)`` (Kendall & Gal 2017).""",
    )
    output_transform: Callable[[Any], Any] | None = option(
        None,
        _callable,
        """output_transform : callable, optional
        Applied to the raw model output first, e.g. ``lambda out: out["scores"]``.""",
    )
    scope: str = option(
        "dropout",
        lambda name, value: check_scope(value),
        """scope : {"dropout", "train_except_norm"}, default="dropout"
        Which modules sample, see :class:`mcdrop.Scope`.""",
    )
    include: ModuleFilter = option(
        None,
        check_filter,
        """include : str, list of str or callable, optional
        Extra modules to switch on, by name pattern or predicate ``(name, module) -> bool``.""",
    )
    exclude: ModuleFilter = option(
        None,
        check_filter,
        """exclude : str, list of str or callable, optional
        Modules to keep off, same forms as ``include``; wins over everything else.""",
    )
    detect_silent: bool = option(
        True,
        _flag(),
        """detect_silent : bool, default=True
        Probe the first batch for dropout that is registered but never called (fused attention)
        or called functionally with ``training=False``, and switch on its gating module.""",
    )
    strategy: str = option(
        "auto",
        _choice(*STRATEGIES),
        """strategy : {"auto", "replicate", "vmap", "loop"}, default="auto"
        How the ``T`` passes are batched (see :mod:`mcdrop.sampling`). All give the same
        distribution; ``"auto"`` decides from the probe pass, never from a clock.""",
    )
    batch_size: int | None = option(
        None,
        _integer(1, optional=True),
        """batch_size : int, optional
        Examples per batch when ``inputs`` is a tensor, array, tuple or dict (default:
        ``batch_budget``).""",
    )
    batch_budget: int | None = option(
        None,
        _integer(1, optional=True),
        """batch_budget : int, optional
        Rows per forward pass, samples x examples. Default: 1024 on CPU; on CUDA at most 1 GiB of
        activations and 70 % of the card's capacity, from one measured pass (never from the free
        memory other processes change, so the same seed gives the same numbers). On CUDA
        out-of-memory the samples per pass are halved and retried (then the examples per pass);
        the size used is logged on the ``"mcdrop"`` logger. Other errors are not retried.""",
    )
    amp: torch.dtype | None = option(
        None,
        resolve_amp,
        """amp : {None, "bf16", "fp16"} or torch.dtype, default=None
        Autocast precision for the passes; statistics are still accumulated in float64.""",
    )
    compile: dict[str, Any] | None = option(
        False,
        resolve_compile,
        """compile : bool or dict, default=False
        Run the model through ``torch.compile`` (``True``) or ``torch.compile(model, **compile)``
        (a dict of its options, e.g. ``{"mode": "max-autotune"}``). The first call compiles
        (seconds to minutes); pays for large ``T`` x ``N`` on GPU, see the performance page.""",
    )
    keep_samples: bool = option(
        False,
        _flag(),
        """keep_samples : bool, default=False
        Also return every sample (``result.samples``, shape (T, N, ...)); memory grows with T.""",
    )
    tolerance: float = option(
        1e-2,
        _positive(),
        """tolerance : float, default=0.01
        Target standard error for ``n_samples="auto"`` (probability units for classification,
        output units for regression).""",
    )
    max_samples: int = option(
        1000,
        _integer(2),
        """max_samples : int, default=1000
        Upper bound on ``T`` for ``n_samples="auto"``.""",
    )
    seed: int | None = option(
        None,
        check_seed,
        """seed : int, optional
        Seed for reproducible results (same inputs, options and seed: the same numbers, however
        busy the machine, whatever other threads draw). Masks come from mcdrop's own generators:
        PyTorch's global ones are never seeded, read or advanced, so ``torch.manual_seed`` does
        not make a call reproducible (``None``: a fresh seed from the operating system).
        ``compile=`` and TorchScript modules are the exception (their dropout draws from the
        global generator, which a seeded call then seeds for its duration; a warning says so).""",
    )
    generator: torch.Generator | None = option(
        None,
        check_generator,
        """generator : torch.Generator, optional
        Alternative to ``seed``: one seed is drawn from it.""",
    )
    masks: str = option(
        "independent",
        _choice(*MASK_KINDS),
        """masks : {"independent", "shared"}, default="independent"
        ``"independent"``: every sample draws its dropout masks afresh for every example (the
        marginal predictive of each example). ``"shared"``: sample ``t`` is one network
        ``f_t``, the same for every example, batch, chunk, strategy and call with the same
        ``seed`` — what joint quantities need (BatchBALD, EPIG, the joint predictive of a set of
        inputs, sample functions). Each example's distribution is the same in both; masks are
        then drawn from mcdrop's own counter-based generator, never from PyTorch's global one.
        See the user guide's *Shared masks* page for what a mask is indexed by.""",
    )
    device: torch.device | None = option(
        None,
        resolve_device,
        """device : torch.device or str, optional
        Where to run; defaults to the device of the model's parameters. Inputs are moved there.""",
    )
    result_device: torch.device = option(
        "cpu",
        _result_device,
        """result_device : torch.device or str, default="cpu"
        Where the result's tensors are returned.""",
    )
    progress: bool | None = option(
        None,
        _flag(optional=True),
        """progress : bool, optional
        tqdm progress bar over batches x samples. Default: shown when stderr is a terminal (or in
        a notebook); otherwise a run expected to take over a minute logs one line saying how long,
        estimated from its first chunk. No bar is created when none is shown.""",
    )
    distributed: bool = option(
        False,
        _flag(),
        """distributed : bool, default=False
        Inside an initialised ``torch.distributed`` process group (``torchrun``): each rank
        samples its share of the examples and every rank gets the full result, in the original
        order (see :mod:`mcdrop.distributed`). ``inputs`` may then also be a map-style
        ``Dataset`` (batched by ``batch_size``, default 64); an iterable that is not a
        ``DataLoader`` over a map-style dataset cannot be sharded.""",
    )
    rank0_only: bool = option(
        False,
        _flag(),
        """rank0_only : bool, default=False
        With ``distributed=True``: gather the result on rank 0 only; other ranks get ``None``.""",
    )

    def __post_init__(self) -> None:
        for name, check in _CHECKS:
            object.__setattr__(self, name, check(name, getattr(self, name)))
        if self.task == "classification" and (self.tau is not None or self.heteroscedastic):
            raise ValueError("Expected `tau` and `heteroscedastic` only with task='regression'.")
        if self.tau is not None and self.heteroscedastic:
            raise ValueError(
                "Expected either `tau` (a fixed model precision) or `heteroscedastic=True` (a "
                "learned noise head), but got both."
            )
        if self.seed is not None and self.generator is not None:
            raise ValueError("Expected at most one of `seed` and `generator`, but got both.")
        if self.rank0_only and not self.distributed:
            raise ValueError("Expected `rank0_only=True` only with `distributed=True`.")

    @classmethod
    def create(cls, **options: Any) -> SamplingOptions:
        """Validate keyword options by name: an unknown name is a ``TypeError`` listing it."""
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise TypeError(
                f"Expected options of predict_with_uncertainty, but got unknown {unknown} "
                f"(known: {', '.join(cls.__dataclass_fields__)})."
            )
        return cls(**options)

    @property
    def adaptive(self) -> bool:
        """``n_samples="auto"``: sample until the standard error reaches ``tolerance``."""
        return self.n_samples == "auto"

    @property
    def sample_limit(self) -> int:
        """``T``: ``n_samples``, or at most ``max_samples`` when adaptive."""
        return self.max_samples if isinstance(self.n_samples, str) else self.n_samples

    @property
    def n_outputs(self) -> int:
        return 2 if self.heteroscedastic else 1

    @property
    def plan_fields(self) -> tuple[Any, ...]:
        """The options that can change a plan: every one but ``seed``, ``generator`` and
        ``progress`` (compared by value; callables by identity)."""
        return tuple(getattr(self, name) for name in _PLAN_FIELDS)

    def draw_seed(self) -> int | None:
        """The seed of a call: ``seed``, one draw of ``generator``, or None."""
        return seed_from(self.seed, self.generator)


_CHECKS: tuple[tuple[str, Check], ...] = tuple(
    (field.name, field.metadata["check"]) for field in dataclasses.fields(SamplingOptions)
)


_PLAN_FIELDS = tuple(
    field.name
    for field in dataclasses.fields(SamplingOptions)
    if field.name not in ("seed", "generator", "progress")
)


def default_of(name: str) -> Any:
    """The default of option ``name``, as a caller writes it (``default_of("n_samples") == 100``)."""
    return SamplingOptions.__dataclass_fields__[name].default


def parameters_doc() -> str:
    """The numpydoc entries of every option, in declaration order (not indented: for a
    docstring cleaned by :func:`inspect.cleandoc`)."""
    entries = []
    for field in dataclasses.fields(SamplingOptions):
        head, _, body = field.metadata["doc"].partition("\n")
        entries.append(head + "\n" + textwrap.indent(textwrap.dedent(body), "    "))
    return "\n".join(entries)


def keyword_parameters() -> list[inspect.Parameter]:
    """Keyword-only parameters with the defaults of every option, for ``__signature__``."""
    return [
        inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=field.default)
        for field in dataclasses.fields(SamplingOptions)
    ]
