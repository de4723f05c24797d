"""Distributed inference: each process samples its shard, results are gathered on every rank."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import (
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
)
from torch.utils.data.distributed import DistributedSampler

from mcdrop.results import ClassificationResult, RegressionResult
from mcdrop.sampling._driver import predict
from mcdrop.sampling._inputs import shard
from mcdrop.sampling._options import SamplingOptions
from mcdrop.sampling._rng import fresh_seed
from mcdrop.stats import result_from_state

__all__ = ["shard_indices"]

_DEFAULT_DATASET_BATCH = 64
_Result = ClassificationResult | RegressionResult


def shard_indices(n: int, rank: int, world_size: int) -> range:
    """Contiguous block of example indices that rank ``rank`` of ``world_size`` processes.

    The blocks of ranks ``0 .. world_size-1`` cover ``0 .. n-1`` exactly once, in order; the first
    ``n % world_size`` ranks get one example more than the others (a rank gets none when
    ``n < world_size``). Nothing is padded or repeated.

    Parameters
    ----------
    n : int
        Number of examples, ``>= 0``.
    rank : int
        Rank of this process, ``0 <= rank < world_size``.
    world_size : int
        Number of processes, ``>= 1``.

    Returns
    -------
    range

    Examples
    --------
    >>> from mcdrop.distributed import shard_indices
    >>> [shard_indices(5, r, 2) for r in range(2)]
    [range(0, 3), range(3, 5)]
    """
    for name, value in (("n", n), ("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"Expected `{name}` to be an int, but got {value!r}.")
    if n < 0:
        raise ValueError(f"Expected `n` >= 0, but got {n}.")
    if world_size < 1:
        raise ValueError(f"Expected `world_size` >= 1, but got {world_size}.")
    if not 0 <= rank < world_size:
        raise ValueError(f"Expected 0 <= `rank` < world_size={world_size}, but got {rank}.")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def _rank_seed(seed: int | None, rank: int) -> int:
    """A seed for ``rank`` that no other rank shares (hash of the base seed and the rank)."""
    if seed is None:
        seed = fresh_seed()
    digest = hashlib.blake2b(f"mcdrop/rank/{seed}/{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 2


def _shared_seed(seed: int | None, rank: int) -> int:
    """The one seed of every rank with shared masks: ``seed``, or rank 0's fresh one."""
    if seed is not None:
        return seed
    box: list[Any] = [fresh_seed() if rank == 0 else None]
    _collective("seed broadcast", dist.broadcast_object_list, box, src=0)
    return int(box[0])


def _process_group() -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise ValueError(
            "Expected an initialised torch.distributed process group with `distributed=True`, "
            "but there is none: launch with `torchrun` and call "
            "`torch.distributed.init_process_group()` first, or pass `distributed=False`."
        )
    return dist.get_rank(), dist.get_world_size()


def _comm_device() -> torch.device:
    """Where collective tensors live: the current CUDA device for NCCL, else the CPU."""
    backend = str(dist.get_backend()).lower()
    if "nccl" in backend and "gloo" not in backend:
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


# -- sharding the inputs ---------------------------------------------------------------------------


def _check_loader_sampler(loader: DataLoader[Any], n: int) -> None:
    sampler = loader.sampler
    if isinstance(sampler, (SequentialSampler, DistributedSampler)):
        return
    if isinstance(sampler, RandomSampler) and not sampler.replacement:
        if sampler.num_samples == n:
            return
    raise ValueError(
        "Expected a DataLoader whose sampler visits every example of its dataset once "
        "(sequential, shuffle=True or a DistributedSampler) with `distributed=True`, but got "
        f"{type(sampler).__name__}; mcdrop shards the dataset by index itself, so pass a "
        "`torch.utils.data.Subset` of the examples you want instead."
    )


def _subset_loader(loader: DataLoader[Any], indices: range) -> DataLoader[Any]:
    workers = loader.num_workers
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {
            "prefetch_factor": loader.prefetch_factor,
            "persistent_workers": loader.persistent_workers,
            "multiprocessing_context": loader.multiprocessing_context,
            "worker_init_fn": loader.worker_init_fn,
            "timeout": loader.timeout,
        }
    return DataLoader(
        Subset(loader.dataset, list(indices)),
        batch_size=loader.batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        pin_memory_device=loader.pin_memory_device,
        drop_last=False,
        **extra,
    )


def _shard(
    inputs: Any, targets: Any, batch_size: int | None, rank: int, world: int
) -> tuple[int, Any, Any]:
    """``(N, this rank's inputs or None when its share is empty, its targets)``."""
    if isinstance(inputs, DataLoader):
        dataset = inputs.dataset
        if isinstance(dataset, IterableDataset):
            raise TypeError(
                "Expected a DataLoader over a map-style dataset with `distributed=True`, but it "
                "wraps an IterableDataset, which cannot be sharded by index; shard the stream "
                "yourself and call with `distributed=False` on each rank."
            )
        if inputs.batch_size is None:
            raise ValueError(
                "Expected a DataLoader with a `batch_size` with `distributed=True`, but it uses a "
                "custom `batch_sampler` or `batch_size=None`; pass its Dataset with `batch_size=` "
                "instead."
            )
        if targets is not None:
            raise TypeError(
                "Expected `targets` only with tensor, tuple or dict `inputs`; a DataLoader "
                "carries its targets as (inputs, targets) pairs."
            )
        n = _dataset_len(dataset)
        _check_loader_sampler(inputs, n)
        indices = shard_indices(n, rank, world)
        return n, (_subset_loader(inputs, indices) if len(indices) else None), None
    if isinstance(inputs, IterableDataset):
        raise TypeError(
            "Expected a map-style Dataset with `distributed=True`, but got an IterableDataset, "
            "which cannot be sharded by index; shard the stream yourself and call with "
            "`distributed=False` on each rank."
        )
    if isinstance(inputs, Dataset):
        if targets is not None:
            raise TypeError(
                "Expected `targets` only with tensor, tuple or dict `inputs`; a Dataset carries "
                "its targets as (inputs, targets) items."
            )
        n = _dataset_len(inputs)
        indices = shard_indices(n, rank, world)
        if not len(indices):
            return n, None, None
        loader = DataLoader(
            Subset(inputs, list(indices)),
            batch_size=batch_size or _DEFAULT_DATASET_BATCH,
            shuffle=False,
        )
        return n, loader, None
    if isinstance(inputs, list):
        raise TypeError(
            "Expected a tensor, tuple, dict, map-style Dataset or DataLoader with "
            "`distributed=True`, but got a list, which mcdrop reads as an iterable of batches and "
            "cannot shard by index; stack it into a tensor or wrap it in a Dataset."
        )
    if isinstance(inputs, (torch.Tensor, np.ndarray, tuple, Mapping)):
        return shard(inputs, targets, lambda n: shard_indices(n, rank, world))
    raise TypeError(
        "Expected `inputs` to be a Tensor or array, a tuple or dict of tensors, a map-style "
        "Dataset or a "
        "DataLoader over one with `distributed=True`, but got "
        f"{type(inputs).__name__}; other iterables cannot be sharded by index."
    )


def _dataset_len(dataset: Any) -> int:
    try:
        n = len(dataset)
    except TypeError:
        raise TypeError(
            f"Expected a Dataset with `__len__` with `distributed=True`, but "
            f"{type(dataset).__name__} has none."
        ) from None
    if n == 0:
        raise ValueError("Expected `inputs` to hold at least one example, but it was empty.")
    return int(n)


# -- gathering -------------------------------------------------------------------------------------


def _describe(result: _Result | None, rows: int) -> dict[str, Any] | None:
    """Shapes and scalars of a rank's result: what the others need to receive its tensors."""
    if result is None:
        return None
    tensors: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    scalars: dict[str, Any] = {}
    for field in dataclasses.fields(result):
        value = getattr(result, field.name)
        if isinstance(value, torch.Tensor):
            tensors[field.name] = (tuple(value.shape), value.dtype)
        elif field.name not in ("targets", "samples"):
            scalars[field.name] = value
    return {"task": result.task, "rows": rows, "tensors": tensors, "scalars": scalars}


def _row_dim(name: str) -> int:
    return 1 if name == "samples" else 0


def _check_metas(metas: list[dict[str, Any] | None], counts: list[int]) -> list[str]:
    """Check that the ranks' results fit together; returns the tensor fields to gather."""
    present = [(r, m) for r, m in enumerate(metas) if m is not None]
    ref_rank, ref = present[0]
    for r, meta in enumerate(metas):
        rows = 0 if meta is None else meta["rows"]
        if rows != counts[r]:
            raise RuntimeError(f"mcdrop: rank {r} returned {rows} examples, expected {counts[r]}.")
    names = [name for name in ref["tensors"] if all(name in m["tensors"] for _, m in present)]
    for r, meta in present:
        if meta["task"] != ref["task"]:
            raise ValueError(f"Ranks {ref_rank} and {r} returned different tasks.")
        for name in names:
            dim = _row_dim(name)
            shape, dtype = meta["tensors"][name]
            ref_shape, ref_dtype = ref["tensors"][name]
            other = shape[:dim] + shape[dim + 1 :]
            expected = ref_shape[:dim] + ref_shape[dim + 1 :]
            if other != expected or dtype != ref_dtype:
                raise ValueError(
                    f"Expected every rank to give `{name}` of the same shape and dtype apart from "
                    f"the examples, but rank {ref_rank} gave {ref_shape} {ref_dtype} and rank {r} "
                    f"gave {shape} {dtype} (models or `n_samples='auto'` with `keep_samples` "
                    "differ across ranks?)."
                )
    return names


def _collective(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as error:
        raise RuntimeError(
            f"mcdrop: the distributed {what} failed ({type(error).__name__}: {error}); another "
            "rank has probably crashed, or the process group timed out."
        ) from error


def _gather_field(
    local: torch.Tensor | None,
    dim: int,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    counts: list[int],
    rank: int,
    device: torch.device,
    rank0_only: bool,
) -> torch.Tensor | None:
    """All ranks' rows of one statistic, concatenated in rank order (None off rank 0 if asked)."""
    wire = torch.uint8 if dtype == torch.bool else dtype
    padded_shape = list(shape)
    padded_shape[dim] = max(counts)
    buffer = torch.zeros(padded_shape, dtype=wire, device=device)
    if local is not None:
        buffer.narrow(dim, 0, counts[rank]).copy_(local.to(device=device, dtype=wire))
    parts: list[torch.Tensor] | None
    if rank0_only:
        parts = [torch.empty_like(buffer) for _ in counts] if rank == 0 else None
        _collective("gather", dist.gather, buffer, parts, dst=0)
    else:
        parts = [torch.empty_like(buffer) for _ in counts]
        _collective("all_gather", dist.all_gather, parts, buffer)
    if parts is None:
        return None
    joined = torch.cat([p.narrow(dim, 0, c) for p, c in zip(parts, counts, strict=True)], dim)
    return joined.to(dtype)


def _merge_scalars(metas: list[dict[str, Any] | None]) -> dict[str, Any]:
    present = [m["scalars"] for m in metas if m is not None]
    merged = dict(present[0])
    merged["n_samples"] = max(s["n_samples"] for s in present)
    reached = [s["standard_error_reached"] for s in present]
    reached = [r for r in reached if r is not None]
    merged["standard_error_reached"] = max(reached) if reached else None
    return merged


# -- entry point -----------------------------------------------------------------------------------


def predict_distributed(
    model: nn.Module, inputs: Any, targets: Any, options: SamplingOptions, seed: int | None
) -> _Result | None:
    """``predict_with_uncertainty(..., distributed=True)``: see the module docstring."""
    rank, world = _process_group()
    device = _comm_device()
    rank0_only = options.rank0_only
    local: _Result | None = None
    failure: BaseException | None = None
    status: dict[str, Any]
    # Shared masks: every rank samples the same T networks (one seed for all); independent
    # masks: each rank its own stream.
    call_seed = _shared_seed(seed, rank) if options.masks == "shared" else _rank_seed(seed, rank)
    try:
        n, local_inputs, local_targets = _shard(inputs, targets, options.batch_size, rank, world)
        if local_inputs is not None:
            if options.progress is None and rank != 0:  # one bar, on rank 0
                options = dataclasses.replace(options, progress=False)
            local = predict(model, local_inputs, local_targets, options, call_seed)
        rows = len(shard_indices(n, rank, world))
        status = {"ok": True, "n": n, "meta": _describe(local, rows)}
    except Exception as error:
        failure = error
        status = {"ok": False, "error": f"{type(error).__name__}: {error}"}
    statuses: list[Any] = [None] * world
    _collective("status exchange", dist.all_gather_object, statuses, status)
    if failure is not None:
        raise failure
    failed = [(r, s["error"]) for r, s in enumerate(statuses) if not s["ok"]]
    if failed:
        detail = "; ".join(f"rank {r} failed: {message}" for r, message in failed)
        raise RuntimeError(f"mcdrop: {detail}")
    sizes = [s["n"] for s in statuses]
    if len(set(sizes)) != 1:
        raise ValueError(
            "Expected every rank to pass the same inputs with `distributed=True`, but the ranks "
            f"hold {sizes} examples."
        )
    n = sizes[0]
    counts = [len(shard_indices(n, r, world)) for r in range(world)]
    metas = [s["meta"] for s in statuses]
    names = _check_metas(metas, counts)
    ref = next(m for m in metas if m is not None)
    gathered: dict[str, torch.Tensor] = {}
    for name in names:
        shape, dtype = ref["tensors"][name]
        dim = _row_dim(name)
        value = None if local is None else getattr(local, name)
        joined = _gather_field(value, dim, shape, dtype, counts, rank, device, rank0_only)
        if joined is not None:
            gathered[name] = joined.to(options.result_device)
    if rank0_only and rank != 0:
        return None
    targets_joined = gathered.pop("targets", None)
    return result_from_state(ref["task"], gathered, targets=targets_joined, **_merge_scalars(metas))
