"""Turning what users pass as ``inputs`` into batches, and model outputs into tensors."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

__all__: list[str] = []


@dataclass
class _Batch:
    """One batch of examples: positional and keyword arguments of the model, and targets.

    ``batched`` names the arguments (positions of ``args``, keys of ``kwargs``) that carry the
    batch dimension first. It is decided once per call (from the whole input, or from the first
    batch of an iterable) and kept for every later batch, so an unbatched argument whose leading
    dimension happens to equal a batch's size is never sliced or replicated.
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    targets: torch.Tensor | None
    size: int
    batched: frozenset[int | str] | None = None

    def __post_init__(self) -> None:
        if self.batched is None:
            self.batched = frozenset(
                key for key, value in self._items() if _leads_with(value, self.size)
            )

    def _items(self) -> Iterator[tuple[int | str, Any]]:
        yield from enumerate(self.args)
        yield from self.kwargs.items()

    def _rebuild(self, fn: Callable[[int | str, Any], Any]) -> _Batch:
        return _Batch(
            tuple(fn(i, a) for i, a in enumerate(self.args)),
            {k: fn(k, v) for k, v in self.kwargs.items()},
            self.targets,
            self.size,
            self.batched,
        )

    def map_batched(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> _Batch:
        """Apply ``fn`` to every argument that carries the batch dimension."""
        batched = self.batched or frozenset()
        return self._rebuild(lambda key, value: fn(value) if key in batched else value)

    def to(self, device: torch.device) -> _Batch:
        """Move every tensor argument to ``device``."""
        return self._rebuild(
            lambda _, value: (
                value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            )
        )

    def signature(self) -> tuple[Any, ...]:
        """Shapes (without the batch dimension) and dtypes: the key of cached decisions."""
        batched = self.batched or frozenset()

        def sig(key: int | str, value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                shape = tuple(value.shape[1:]) if key in batched else ("whole", *value.shape)
                return (key, shape, value.dtype, value.device.type)
            return (key, type(value).__name__)

        return tuple(sig(key, value) for key, value in self._items())


def _leads(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim > 0


def _leads_with(value: Any, size: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == size


def _leading_size(args: tuple[Any, ...], kwargs: Mapping[str, Any], name: str) -> int:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            if value.ndim == 0:
                continue
            return int(value.shape[0])
    raise TypeError(
        f"Expected `{name}` to hold at least one tensor with a batch dimension, but got "
        f"{_summary(args, kwargs)}."
    )


def _summary(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    def one(value: Any) -> str:
        if isinstance(value, torch.Tensor):
            return f"Tensor{tuple(value.shape)}"
        return type(value).__name__

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return "(" + ", ".join(parts) + ")"


def _as_targets(value: Any) -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    return torch.as_tensor(value).cpu()


def _split_call(value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(value, Mapping):
        return (), dict(value)
    if isinstance(value, (tuple, list)):
        return tuple(value), {}
    return (value,), {}


def _slicer(start: int, stop: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda t: t[start:stop]


def _slice_batches(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    targets: torch.Tensor | None,
    n: int,
    batch_size: int,
) -> Iterator[_Batch]:
    whole = _Batch(args, kwargs, targets, n)
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        part = whole.map_batched(_slicer(start, stop))
        part.targets = None if targets is None else targets[start:stop]
        part.size = stop - start
        yield part


def _is_pair(item: Any) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 2


def iter_batches(
    inputs: Any, *, batch_size: int, targets: Any = None
) -> tuple[Iterator[_Batch], int | None, int | None]:
    """Normalise ``inputs`` into an iterator of batches.

    Returns ``(batches, n_batches, n_examples)``; the counts are ``None`` when unknown.

    * ``Tensor`` of shape (N, ...): one positional argument, sliced into ``batch_size`` rows.
    * ``tuple``/``list``: positional arguments; ``dict``: keyword arguments. Tensors whose
      leading dimension is N are sliced, everything else is passed unchanged.
    * Any other iterable (``DataLoader``, generator, list of batches is *not* accepted: a list is
      positional arguments): each item is one batch, a Tensor, tuple (positional), dict
      (keyword), or a pair ``(inputs, targets)`` where inputs is any of those.
    """
    if isinstance(inputs, (torch.Tensor, tuple, list, Mapping)):
        args, kwargs = _split_call(inputs)
        n = _leading_size(args, kwargs, "inputs")
        if n == 0:
            raise ValueError(
                f"Expected `inputs` to hold at least one example, but got {_summary(args, kwargs)}."
            )
        target_tensor = _as_targets(targets)
        if target_tensor is not None and (target_tensor.ndim == 0 or target_tensor.shape[0] != n):
            raise ValueError(
                f"Expected `targets` to have {n} rows like `inputs`, but got shape "
                f"{tuple(target_tensor.shape)}."
            )
        return _slice_batches(args, kwargs, target_tensor, n, batch_size), -(-n // batch_size), n
    if isinstance(inputs, Iterable) and not isinstance(inputs, (str, bytes)):
        if targets is not None:
            raise TypeError(
                "Expected `targets` only with tensor, tuple or dict `inputs`; an iterable of "
                "batches carries its targets as (inputs, targets) pairs."
            )
        n_batches: int | None
        try:
            n_batches = len(inputs)  # type: ignore[arg-type]
        except TypeError:
            n_batches = None
        dataset = getattr(inputs, "dataset", None)
        try:
            n_examples: int | None = len(dataset) if dataset is not None else None  # type: ignore[arg-type]
        except TypeError:
            n_examples = None
        return _from_iterable(inputs), n_batches, n_examples
    raise TypeError(
        "Expected `inputs` to be a Tensor, a tuple of tensors (positional arguments), a dict "
        f"(keyword arguments) or an iterable of batches such as a DataLoader, but got "
        f"{type(inputs).__name__}."
    )


def _from_iterable(inputs: Iterable[Any]) -> Iterator[_Batch]:
    batched: frozenset[int | str] | None = None
    for index, item in enumerate(inputs):
        targets = None
        if _is_pair(item) and not isinstance(item, Mapping):
            item, targets = item[0], item[1]
        args, kwargs = _split_call(item)
        try:
            n = _leading_size(args, kwargs, "inputs")
        except TypeError as error:
            raise TypeError(f"Batch {index} of `inputs`: {error}") from None
        if n == 0:
            continue
        target_tensor = _as_targets(targets)
        if target_tensor is not None and (target_tensor.ndim == 0 or target_tensor.shape[0] != n):
            raise ValueError(
                f"Batch {index} of `inputs`: expected targets with {n} rows, but got shape "
                f"{tuple(target_tensor.shape)}."
            )
        batch = _Batch(args, kwargs, target_tensor, n, batched)
        if batched is None:
            batched = batch.batched
        else:  # the arguments batched in the first batch; check they still lead with one size
            sizes = {int(v.shape[0]) for k, v in batch._items() if k in batched and _leads(v)}
            if len(sizes) != 1:
                raise ValueError(
                    f"Batch {index} of `inputs`: expected the batched arguments "
                    f"{sorted(map(str, batched))} (decided on batch 0) to share one batch size, "
                    f"but got sizes {sorted(sizes)}."
                )
            batch.size = sizes.pop()
        yield batch


def extract_outputs(
    output: Any, *, n_outputs: int, transform: Callable[[Any], Any] | None
) -> tuple[torch.Tensor, ...]:
    """Pick the tensor(s) mcdrop aggregates out of whatever the model returns.

    ``n_outputs`` is 1 (logits, probabilities or a regression mean) or 2 (mean and log-variance
    of a heteroscedastic regression head).
    """
    if transform is not None:
        output = transform(output)
    if n_outputs == 2:
        if isinstance(output, Mapping):
            mean = output.get("mean")
            log_var = output.get("log_variance", output.get("log_var"))
            if isinstance(mean, torch.Tensor) and isinstance(log_var, torch.Tensor):
                return mean, log_var
        elif isinstance(output, (tuple, list)) and len(output) >= 2:
            if isinstance(output[0], torch.Tensor) and isinstance(output[1], torch.Tensor):
                return output[0], output[1]
        raise TypeError(
            "Expected a heteroscedastic model to return (mean, log_variance) or a dict with "
            f"'mean' and 'log_variance', but got {type(output).__name__}; pass "
            "`output_transform=` to pick them."
        )
    if isinstance(output, torch.Tensor):
        return (output,)
    if isinstance(output, Mapping) and isinstance(output.get("logits"), torch.Tensor):
        return (output["logits"],)
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return (logits,)
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return (output[0],)
    raise TypeError(
        f"Expected the model to return a Tensor, a tuple whose first element is a Tensor, or an "
        f"object with `logits`, but got {type(output).__name__}; pass `output_transform=` to "
        "turn it into a Tensor."
    )
