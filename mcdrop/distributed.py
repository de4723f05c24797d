"""Sharded Monte Carlo dropout inference on ``torch.distributed`` (launched with ``torchrun``).

``predict_with_uncertainty(model, inputs, ..., distributed=True)`` inside an initialised process
group splits the examples over the ranks, runs the usual single-process sampling on each rank's
share, and gathers the per-example statistics back in the original order.

How it works
------------
Sharding
    Rank ``r`` of ``W`` gets the contiguous block :func:`shard_indices` ``(N, r, W)`` of the
    example indices ``0 .. N-1``; blocks differ in size by at most one and cover every example
    exactly once (no padding, unlike ``DistributedSampler``). Tensors, tuples and dicts are
    sliced along their leading dimension (the tensors whose leading dimension is ``N``, as in
    the single-process batching); a map-style ``Dataset`` is wrapped in a ``Subset`` and a
    ``DataLoader`` (``batch_size`` option, default 64); a ``DataLoader`` over a map-style
    dataset is rebuilt over the rank's ``Subset`` with the same ``batch_size``, ``collate_fn``,
    ``num_workers`` and worker options. Its sampler's order (``shuffle=True``, a
    ``DistributedSampler``) is ignored: results always come back in dataset order, and
    ``drop_last`` is ignored too, so no example is lost.
Seeds
    Each rank samples with its own seed, a hash of ``(seed, rank)``; with ``seed=None`` the base
    comes from each rank's operating-system entropy (PyTorch's global generators are never
    read: pass ``seed=`` for a reproducible run). No two ranks draw the same masks; the result agrees with a single-process
    run within Monte Carlo error, but is not bitwise identical to it, nor across world sizes.
Gathering
    Each rank keeps only its ``O(N_rank x C)`` aggregates. After the local work every rank joins
    one small ``all_gather_object`` of its status and result shapes, then one ``all_gather``
    (or ``gather`` to rank 0 with ``rank0_only=True``) of padded tensors per statistic: the
    aggregates are sent, never the samples (except with ``keep_samples=True``, ``O(T x N)``).
    With NCCL the tensors travel on ``torch.cuda.current_device()``; set it per rank
    (``torch.cuda.set_device(local_rank)``) before the call. With gloo they travel on the CPU.
Failures
    A rank whose local work raises still joins the status exchange, then re-raises its own
    error; every other rank raises ``RuntimeError("mcdrop: rank r failed: ...")``, so no rank
    waits in a collective. A rank that dies outright (killed, segfault) cannot report: the
    others get an error from the backend (gloo notices the closed connection at once) or, at
    the latest, when the process group's ``timeout`` (``init_process_group(timeout=...)``)
    expires.
"""

from __future__ import annotations

from mcdrop.sampling import shard_indices

__all__ = ["shard_indices"]
