"""Every sampling option, validated once, in one frozen object."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from mcdrop._validation import check_bool, check_choice, check_float, check_int
from mcdrop.dropout import MASK_KINDS, ModuleFilter, Scope, check_scope
from mcdrop.sampling._inputs import TargetKey, check_target_key
from mcdrop.stats import OUTPUT_KINDS

__all__: list[str] = []

STRATEGIES = ("auto", "replicate", "vmap", "loop")
_AMP_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_amp(amp: Any) -> torch.dtype | None:
    if amp is None or amp is False:
        return None
    if amp is True:
        return torch.bfloat16
    if isinstance(amp, torch.dtype) and amp in (torch.bfloat16, torch.float16):
        return amp
    if isinstance(amp, str) and amp in _AMP_DTYPES:
        return _AMP_DTYPES[amp]
    raise ValueError(
        f"Expected `amp` to be None, True, 'bf16', 'fp16', torch.bfloat16 or torch.float16, but "
        f"got {amp!r}."
    )


def resolve_compile(compile: Any) -> dict[str, Any] | None:
    """``compile=``: False/None (eager), True (``torch.compile`` defaults) or its kwargs."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return {}
    if isinstance(compile, dict) and all(isinstance(key, str) for key in compile):
        return dict(compile)
    raise TypeError(
        f"Expected `compile` to be a bool or a dict of torch.compile options, but got {compile!r}."
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


@dataclass(frozen=True)
class SamplingOptions:
    """The options of :func:`mcdrop.predict_with_uncertainty` that decide how to sample.

    Built by :meth:`create`, which validates every value once; see
    :func:`mcdrop.predict_with_uncertainty` for their meaning.
    """

    n_samples: int = 100
    adaptive: bool = False
    task: str = "classification"
    outputs: str = "logits"
    class_dim: int = 1
    tau: float | None = None
    heteroscedastic: bool = False
    output_transform: Callable[[Any], Any] | None = None
    scope: str = "dropout"
    include: ModuleFilter = None
    exclude: ModuleFilter = None
    detect_silent: bool = True
    strategy: str = "auto"
    batch_size: int | None = None
    batch_budget: int | None = None
    amp: torch.dtype | None = None
    compile: dict[str, Any] | None = None
    keep_samples: bool = False
    tolerance: float = 1e-2
    device: torch.device | None = None
    target_key: TargetKey = "auto"
    masks: str = "independent"

    @property
    def n_outputs(self) -> int:
        return 2 if self.heteroscedastic else 1

    @classmethod
    def create(
        cls,
        *,
        n_samples: int | str = 100,
        task: str = "classification",
        outputs: str = "logits",
        class_dim: int = 1,
        tau: float | None = None,
        heteroscedastic: bool = False,
        output_transform: Callable[[Any], Any] | None = None,
        scope: str | Scope = "dropout",
        include: ModuleFilter = None,
        exclude: ModuleFilter = None,
        detect_silent: bool = True,
        strategy: str = "auto",
        batch_size: int | None = None,
        batch_budget: int | None = None,
        amp: Any = None,
        compile: bool | dict[str, Any] = False,
        keep_samples: bool = False,
        tolerance: float = 1e-2,
        max_samples: int = 1000,
        device: torch.device | str | None = None,
        target_key: TargetKey = "auto",
        masks: str = "independent",
    ) -> SamplingOptions:
        """Validate every option (names, types, ranges) and freeze them."""
        task = check_choice("task", task, ["classification", "regression"])
        adaptive = isinstance(n_samples, str)
        if adaptive and n_samples != "auto":
            raise ValueError(
                f"Expected `n_samples` to be an integer >= 1 or 'auto', but got {n_samples!r}."
            )
        count = (
            check_int("max_samples", max_samples, minimum=2)
            if adaptive
            else check_int("n_samples", n_samples, minimum=1)
        )
        heteroscedastic = check_bool("heteroscedastic", heteroscedastic)
        if tau is not None:
            tau = check_float("tau", tau, low=0.0, low_inclusive=False)
        if task == "classification" and (tau is not None or heteroscedastic):
            raise ValueError("Expected `tau` and `heteroscedastic` only with task='regression'.")
        if tau is not None and heteroscedastic:
            raise ValueError(
                "Expected either `tau` (a fixed model precision) or `heteroscedastic=True` (a "
                "learned noise head), but got both."
            )
        if output_transform is not None and not callable(output_transform):
            raise TypeError(
                f"Expected `output_transform` to be callable, but got {output_transform!r}."
            )
        return cls(
            n_samples=count,
            adaptive=adaptive,
            task=task,
            outputs=check_choice("outputs", outputs, OUTPUT_KINDS),
            class_dim=check_int("class_dim", class_dim),
            tau=tau,
            heteroscedastic=heteroscedastic,
            output_transform=output_transform,
            scope=check_scope(torch.nn.Module(), scope, include, exclude),
            include=include,
            exclude=exclude,
            detect_silent=check_bool("detect_silent", detect_silent),
            strategy=check_choice("strategy", strategy, STRATEGIES),
            batch_size=None
            if batch_size is None
            else check_int("batch_size", batch_size, minimum=1),
            batch_budget=(
                None if batch_budget is None else check_int("batch_budget", batch_budget, minimum=1)
            ),
            amp=resolve_amp(amp),
            compile=resolve_compile(compile),
            keep_samples=check_bool("keep_samples", keep_samples),
            tolerance=check_float("tolerance", tolerance, low=0.0, low_inclusive=False),
            device=resolve_device("device", device),
            target_key=check_target_key(target_key),
            masks=check_choice("masks", masks, MASK_KINDS),
        )


# Keyword options of predict_with_uncertainty that are not sampling options.
CALL_OPTIONS = (
    "seed",
    "generator",
    "progress",
    "result_device",
    "targets",
    "distributed",
    "rank0_only",
)
