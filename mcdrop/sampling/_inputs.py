"""Turning what users pass as ``inputs`` into batches, and model outputs into tensors.

The one place inputs are split: :func:`iter_batches` for one process, :func:`shard` for a rank's
share of the examples (:mod:`mcdrop.sampling._distributed`), :func:`batch_of` for one batch of
:meth:`mcdrop.MCDropout.forward`. NumPy arrays are taken as tensors (``torch.as_tensor``, their
dtype kept) wherever a tensor is.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
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

    def rows(self) -> int:
        """Rows the model actually receives: the leading size of the batched arguments.

        Equals ``size`` except for a replicated pass (``k x size`` rows) or a probe slice.
        """
        batched = self.batched or frozenset()
        for key, value in self._items():
            if key in batched and _leads(value):
                return int(value.shape[0])
        return self.size

    def slice(self, lo: int, hi: int) -> _Batch:
        """Examples ``lo`` to ``hi`` (exclusive) of the batched arguments; the targets stay as they
        are (passes never read them)."""
        part = self.map_batched(lambda t: t[lo:hi])
        part.size = hi - lo
        return part


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
        f"{_summary(args, kwargs)}; convert other arrays with `torch.as_tensor`."
    )


def _summary(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    def one(value: Any) -> str:
        if isinstance(value, torch.Tensor):
            return f"Tensor{tuple(value.shape)}"
        return type(value).__name__

    parts = [one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]
    return "(" + ", ".join(parts) + ")"


def _as_targets(value: Any, where: str = "`targets`") -> torch.Tensor | None:
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(value).cpu()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(
            f"Expected {where} to be a tensor or an array of numbers, but got "
            f"{type(value).__name__} ({error})."
        ) from None


def _tensor(value: Any) -> Any:
    """A NumPy array as a tensor (``torch.as_tensor``: same dtype, shared memory); else as is."""
    return torch.as_tensor(value) if isinstance(value, np.ndarray) else value


def _split_call(value: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(value, Mapping):
        return (), {k: _tensor(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(_tensor(v) for v in value), {}
    return (_tensor(value),), {}


def batch_of(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> _Batch:
    """One batch of model arguments (:meth:`mcdrop.MCDropout.forward`)."""
    args = tuple(_tensor(a) for a in args)
    kwargs = {k: _tensor(v) for k, v in kwargs.items()}
    return _Batch(args, kwargs, None, _leading_size(args, kwargs, "inputs"))


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


TargetKey = str | int | None
_HF_LABELS = "labels"


def check_target_key(target_key: Any) -> TargetKey:
    """``"auto"``, ``None``, an ``int`` (tuple position) or a ``str`` (dict key)."""
    if target_key is None or (isinstance(target_key, int) and not isinstance(target_key, bool)):
        return target_key
    if isinstance(target_key, str):
        return target_key
    raise TypeError(
        "Expected `target_key` to be 'auto', None, an int (position in a tuple batch) or a str "
        f"(key of a dict batch), but got {target_key!r} (type {type(target_key).__name__})."
    )


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).replace("torch.", "")
        return f"Tensor{tuple(value.shape)} {dtype}"
    if isinstance(value, np.ndarray):
        return f"ndarray{tuple(value.shape)} {value.dtype}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_describe(v) for v in value) + ")"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}"
    return type(value).__name__


def _split_batch(
    item: Any, target_key: TargetKey, *, where: str, pairs: bool
) -> tuple[tuple[Any, ...], dict[str, Any], Any]:
    """``(args, kwargs, targets or None)`` of one batch under the ``target_key`` rule.

    ``pairs``: whether a 2-element tuple may be an ``(inputs, targets)`` pair (items of an
    iterable); a tuple given directly as ``inputs`` is positional arguments.
    """
    if target_key is None:
        args, kwargs = _split_call(item)
        return args, kwargs, None
    if isinstance(target_key, int):
        if not isinstance(item, (tuple, list)) or not -len(item) <= target_key < len(item):
            raise ValueError(
                f"Expected {where} to be a tuple with an element at position {target_key} "
                f"(`target_key={target_key}`), but got {_describe(item)}."
            )
        position = target_key % len(item)
        rest = tuple(item[:position]) + tuple(item[position + 1 :])
        args, kwargs = _split_call(rest[0] if len(rest) == 1 else rest)
        return args, kwargs, item[position]
    if target_key != "auto":
        if not isinstance(item, Mapping) or target_key not in item:
            raise ValueError(
                f"Expected {where} to be a dict with the key {target_key!r} "
                f"(`target_key={target_key!r}`), but got {_describe(item)}."
            )
        rest_kwargs = {k: _tensor(v) for k, v in item.items() if k != target_key}
        return (), rest_kwargs, item[target_key]
    # target_key="auto"
    if isinstance(item, Mapping):
        if _HF_LABELS in item:  # the Hugging Face convention: labels are targets, not inputs
            kwargs = {k: _tensor(v) for k, v in item.items() if k != _HF_LABELS}
            return (), kwargs, item[_HF_LABELS]
        args, kwargs = _split_call(item)
        return args, kwargs, None
    if not (pairs and isinstance(item, (tuple, list)) and len(item) == 2):
        args, kwargs = _split_call(item)
        return args, kwargs, None
    first, second = item
    args, kwargs = _split_call(first)
    second = _tensor(second)
    if not _recognisable_targets(args, kwargs, second):
        raise ValueError(
            f"Expected {where}, a pair {_describe(item)}, to be (inputs, targets) with "
            "recognisable targets (integer class labels, one row per example, not shaped like "
            "an integer input), but its second element could be a second model input such as "
            "a mask. Pass `target_key=1` to take it as the targets (e.g. regression targets), "
            "or `target_key=None` to pass both elements to the model as positional arguments."
        )
    return args, kwargs, second


def _recognisable_targets(args: tuple[Any, ...], kwargs: Mapping[str, Any], value: Any) -> bool:
    """Integer (not bool) labels with one row per example, unlike any integer input tensor."""
    if not isinstance(value, torch.Tensor) or value.ndim == 0:
        return False
    if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
        return False
    tensors = [v for v in (*args, *kwargs.values()) if _leads(v)]
    if not tensors or int(value.shape[0]) != int(tensors[0].shape[0]):
        return False
    return not any(
        t.shape == value.shape
        and not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)
        for t in tensors
    )


def _loader_examples(inputs: Any) -> int | None:
    """Examples a ``DataLoader`` yields: its sampler's length, less what ``drop_last`` drops
    (None without automatic batching, ``batch_size=None`` or a custom ``batch_sampler``, or with
    an unsized sampler, an ``IterableDataset``'s). Another iterable with a sized ``dataset``
    (a loader's wrapper): that length; else None."""
    if not isinstance(inputs, torch.utils.data.DataLoader):
        try:
            return len(inputs.dataset)  # type: ignore[no-any-return]
        except (AttributeError, TypeError):
            return None
    if inputs.batch_size is None:
        return None
    try:
        n = len(inputs.sampler)  # type: ignore[arg-type]
    except (TypeError, NotImplementedError):
        return None
    return n - n % inputs.batch_size if inputs.drop_last else n


def iter_batches(
    inputs: Any, *, batch_size: int, targets: Any = None, target_key: Any = "auto"
) -> tuple[Iterator[_Batch], int | None, int | None]:
    """Normalise ``inputs`` into an iterator of batches.

    Returns ``(batches, n_batches, n_examples)``; the counts are ``None`` when unknown.

    * ``Tensor`` of shape (N, ...): one positional argument, sliced into ``batch_size`` rows.
    * ``tuple``: positional arguments; ``dict``: keyword arguments. Tensors whose leading
      dimension is N are sliced, everything else is passed unchanged.
    * Any other iterable, a ``list`` included (``DataLoader``, ``Dataset``, generator): each
      item is one batch, a Tensor, tuple (positional arguments) or dict (keyword arguments).

    ``target_key`` says which part of a batch holds the targets (kept on the result, never
    passed to the model):

    * ``"auto"`` (default): the ``"labels"`` entry of a dict (Hugging Face); for the items of
      an iterable, the second element of a pair ``(inputs, targets)`` when it is integer class
      labels with one row per example that are not shaped like an integer input (token ids
      with an attention mask are ambiguous). Any other pair raises a ``ValueError`` that says
      how to disambiguate. A tuple given directly as ``inputs`` is never split.
    * ``None``: nothing is targets; every part of a batch goes to the model.
    * an ``int``: position of the targets in a tuple batch (``1`` for ``(x, y)``, ``-1`` for
      ``(x, mask, y)``); the other elements are the inputs (one element: that batch; several:
      positional arguments).
    * a ``str``: key of the targets in a dict batch; the other entries are keyword arguments.
    """
    target_key = check_target_key(target_key)
    if isinstance(inputs, (torch.Tensor, np.ndarray, tuple, Mapping)):
        if isinstance(inputs, (torch.Tensor, np.ndarray)) and target_key not in ("auto", None):
            raise ValueError(
                f"Expected `target_key` only with tuple or dict `inputs`, but got "
                f"target_key={target_key!r} with a Tensor; pass the targets as `targets=`."
            )
        args, kwargs, found = _split_batch(inputs, target_key, where="`inputs`", pairs=False)
        if found is not None and targets is not None:
            raise ValueError(
                "Expected the targets either as `targets=` or inside `inputs` (picked by "
                f"`target_key={target_key!r}`), but got both."
            )
        n = _leading_size(args, kwargs, "inputs")
        if n == 0:
            raise ValueError(
                f"Expected `inputs` to hold at least one example, but got {_summary(args, kwargs)}."
            )
        where = "`targets`" if found is None else "the targets in `inputs`"
        target_tensor = _checked_targets(targets if found is None else found, n, where)
        return _slice_batches(args, kwargs, target_tensor, n, batch_size), -(-n // batch_size), n
    if isinstance(inputs, Iterable) and not isinstance(inputs, (str, bytes)):
        if targets is not None:
            raise TypeError(
                "Expected `targets` only with tensor, tuple or dict `inputs`; an iterable of "
                "batches carries its targets in each batch (see `target_key`)."
            )
        n_batches: int | None
        try:
            n_batches = len(inputs)  # type: ignore[arg-type]
        except TypeError:
            n_batches = None
        return _from_iterable(inputs, target_key), n_batches, _loader_examples(inputs)
    raise TypeError(
        "Expected `inputs` to be a Tensor or NumPy array, a tuple of tensors (positional "
        "arguments), a dict (keyword arguments) or an iterable of batches such as a DataLoader, "
        f"but got {type(inputs).__name__}."
    )


def _checked_targets(value: Any, n: int, where: str) -> torch.Tensor | None:
    """Targets as a CPU tensor with ``n`` rows like the inputs (None when not given)."""
    target_tensor = _as_targets(value, where)
    if target_tensor is not None and (target_tensor.ndim == 0 or target_tensor.shape[0] != n):
        raise ValueError(
            f"Expected {where} to have {n} rows like `inputs`, but got shape "
            f"{tuple(target_tensor.shape)}."
        )
    return target_tensor


def shard(inputs: Any, targets: Any, share: Callable[[int], range]) -> tuple[int, Any, Any]:
    """Tensor, array, tuple or dict ``inputs`` of ``N`` examples: ``(N, the examples in
    share(N), in the structure of inputs, or None when that share is empty, their targets)``.

    Every tensor whose leading dimension is ``N`` is sliced (a dict's ``labels`` included: the
    call on the share picks them as in one process); the rest is passed unchanged.
    """
    args, kwargs = _split_call(inputs)
    n = _leading_size(args, kwargs, "inputs")
    if n == 0:
        raise ValueError("Expected `inputs` to hold at least one example, but it was empty.")
    target_tensor = _checked_targets(targets, n, "`targets`")
    indices = share(n)
    if not len(indices):
        return n, None, None
    part = _Batch(args, kwargs, None, n).slice(indices.start, indices.stop)
    local: Any = part.args
    if isinstance(inputs, Mapping):
        local = part.kwargs
    elif not isinstance(inputs, tuple):
        local = part.args[0]
    return n, local, None if target_tensor is None else target_tensor[indices.start : indices.stop]


def _from_iterable(inputs: Iterable[Any], target_key: TargetKey) -> Iterator[_Batch]:
    batched: frozenset[int | str] | None = None
    for index, item in enumerate(inputs):
        where = f"batch {index} of `inputs`"
        try:
            args, kwargs, targets = _split_batch(item, target_key, where=where, pairs=True)
            n = _leading_size(args, kwargs, "inputs")
        except TypeError as error:
            raise TypeError(f"Batch {index} of `inputs`: {error}") from None
        if n == 0:
            continue
        target_tensor = _as_targets(targets, f"the targets of {where}")
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
    output: Any,
    *,
    n_outputs: int,
    transform: Callable[[Any], Any] | None,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """Pick the tensor(s) mcdrop aggregates out of whatever the model returns.

    ``n_outputs`` is 1 (logits, probabilities or a regression mean) or 2 (mean and log-variance
    of a heteroscedastic regression head). Every picked tensor must be floating point and, when
    ``batch_size`` is given (the rows the model received), lead with that many rows.
    """
    tensors = _pick_outputs(output, n_outputs=n_outputs, transform=transform)
    for tensor in tensors:
        check_output(tensor, batch_size)
    return tensors


def check_output(tensor: torch.Tensor, batch_size: int | None) -> None:
    """Refuse outputs mcdrop would misread: not floating point, scalar, or batch dim missing."""
    if not tensor.is_floating_point():
        raise TypeError(
            "Expected the model output to be a floating-point tensor (logits, probabilities or "
            f"a regression mean), but got dtype {tensor.dtype}: class indices or booleans carry "
            "no probabilities to average. Return the scores before argmax/thresholding, or pass "
            "`output_transform=` to convert them (e.g. `lambda y: y.float()` for a regression)."
        )
    if tensor.ndim == 0:
        raise ValueError(
            "Expected the model output to keep the batch dimension first, (N, ...), but got a "
            "scalar (0-d tensor): the model reduces over the batch (a loss or a `.mean()`?). "
            "Return per-example outputs, or pass `output_transform=` to pick them."
        )
    if batch_size is not None and tensor.shape[0] != batch_size:
        raise ValueError(
            f"Expected the model output to lead with the batch dimension ({batch_size} rows for "
            f"{batch_size} input rows), but got shape {tuple(tensor.shape)}. mcdrop reads dim 0 "
            "as the examples: return (N, ...) outputs, or pass `output_transform=` (e.g. "
            "`lambda y: y.transpose(0, 1)` for sequence-first outputs)."
        )


def _pick_outputs(
    output: Any, *, n_outputs: int, transform: Callable[[Any], Any] | None
) -> tuple[torch.Tensor, ...]:
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
