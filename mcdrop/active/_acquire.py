"""``acquire``: Monte Carlo dropout on a pool, then a batch of examples to label."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, SequentialSampler

from mcdrop._validation import check_choice, check_int
from mcdrop.active._batchbald import batchbald
from mcdrop.active._checks import REDUCTIONS, acquisition_size, generator
from mcdrop.active._epig import epig
from mcdrop.active._result import Acquisition
from mcdrop.active._scores import SCORES, reduce_positions
from mcdrop.active._stochastic import MODES, stochastic_batch
from mcdrop.results import ClassificationResult
from mcdrop.sampling import predict_with_uncertainty

__all__ = ["acquire"]

JOINT_METHODS = ("batchbald", "epig")
METHODS = (*SCORES, *JOINT_METHODS, "random")
_RESERVED = ("keep_samples", "task", "n_samples", "seed", "generator", "distributed")


def pool_size(pool: Any) -> int | None:
    """Number of examples of ``pool`` when it can be told without iterating it."""
    if isinstance(pool, torch.Tensor):
        return int(pool.shape[0]) if pool.ndim else None
    if isinstance(pool, DataLoader):
        return len(pool.dataset)  # type: ignore[arg-type]
    if isinstance(pool, (tuple, Mapping)):
        values = pool.values() if isinstance(pool, Mapping) else pool
        for value in values:
            if isinstance(value, torch.Tensor) and value.ndim:
                return int(value.shape[0])
        return None
    if isinstance(pool, Dataset):
        return len(pool)  # type: ignore[arg-type]
    return None


def as_inputs(pool: Any, batch_size: int | None) -> Any:
    """``pool`` as :func:`predict_with_uncertainty` takes it; a map-style dataset is batched in
    order, and a DataLoader must keep its order (the indices refer to it)."""
    if isinstance(pool, DataLoader):
        if not isinstance(pool.sampler, SequentialSampler) and pool.batch_sampler is not None:
            raise ValueError(
                "Expected `pool` to be a DataLoader that keeps the order of its dataset "
                "(shuffle=False, no sampler), since the chosen indices refer to that order, but "
                f"got one with a {type(pool.sampler).__name__}."
            )
        return pool
    if isinstance(pool, Dataset) and not isinstance(pool, torch.utils.data.IterableDataset):
        return DataLoader(pool, batch_size=batch_size or 256, shuffle=False)
    return pool


def split_seed(seed: int | None) -> tuple[int | None, int | None]:
    """Independent seeds for the Monte Carlo passes and for the selection."""
    if seed is None:
        return None, None
    check_int("seed", seed, minimum=0)
    first, second = np.random.SeedSequence(seed).generate_state(2, dtype=np.uint64)
    return int(first) >> 1, int(second) >> 1


def single_point_scores(result: ClassificationResult, method: str) -> torch.Tensor:
    """The score ``method`` per position ``(N, *S)`` from the streamed statistics."""
    if method == "bald":
        return result.mutual_information
    if method == "entropy":
        return result.predictive_entropy
    if method == "margin":
        return 1.0 - result.margin
    if method == "least_confidence":
        return 1.0 - result.confidence
    if method == "variation_ratio":
        return result.variation_ratio
    return result.std.mean(dim=result.class_dim)


def shared_samples(
    model: nn.Module, inputs: Any, name: str, batch_size: int | None, kwargs: dict[str, Any]
) -> torch.Tensor:
    """Sampled probabilities ``(T, N, C)`` of ``inputs`` under the ``T`` networks of the seed."""
    result = predict_with_uncertainty(
        model,
        as_inputs(inputs, batch_size),
        task="classification",
        keep_samples=True,
        masks="shared",
        **kwargs,
    )
    assert isinstance(result, ClassificationResult) and result.samples is not None
    if result.samples.ndim != 3:
        raise ValueError(
            f"Expected the model to give one class distribution per example of `{name}` "
            f"(outputs (N, C)) for BatchBALD and EPIG, but got samples of shape "
            f"{tuple(result.samples.shape)}; use a single-point method with `reduction=` for "
            "pixels or tokens."
        )
    return result.samples


def joint_acquisition(
    model: nn.Module,
    pool: Any,
    n: int,
    *,
    method: str,
    n_samples: int,
    target_inputs: Any,
    n_configurations: int,
    batch_size: int | None,
    seeds: tuple[int | None, int | None],
    options: dict[str, Any],
) -> Acquisition:
    """BatchBALD or EPIG on samples with one network per sample for pool and targets."""
    mc_seed, choice_seed = seeds
    if method == "epig" and target_inputs is None:
        raise ValueError(
            "Expected `target_inputs` with method='epig' (unlabelled inputs from where the model "
            "will be used; a random subset of the pool will do), but got None."
        )
    if mc_seed is None:  # pool and targets must still see the same T networks
        mc_seed = int(torch.Generator().seed()) >> 1
    kwargs = {"n_samples": n_samples, "seed": mc_seed, **options}
    probs = shared_samples(model, pool, "pool", batch_size, kwargs)
    n = acquisition_size(n, int(probs.shape[1]), pool="pool")
    if method == "batchbald":
        return batchbald(probs, n, n_configurations=n_configurations, seed=choice_seed)
    target_kwargs = {k: v for k, v in kwargs.items() if k != "batch_size"}
    if batch_size is not None and isinstance(target_inputs, (torch.Tensor, tuple, Mapping)):
        target_kwargs["batch_size"] = batch_size
    target = shared_samples(model, target_inputs, "target_inputs", batch_size, target_kwargs)
    scores = epig(probs, target)
    values, order = torch.sort(scores.cpu(), descending=True, stable=True)
    return Acquisition(order[:n], values[:n], "epig")


def acquire(
    model: nn.Module,
    pool: Any,
    n: int,
    *,
    method: str = "bald",
    n_samples: int = 100,
    stochastic: str | None = None,
    beta: float = 1.0,
    reduction: str = "mean",
    target_inputs: Any = None,
    n_configurations: int = 10_000,
    batch_size: int | None = None,
    seed: int | None = None,
    **options: Any,
) -> Acquisition:
    """Choose ``n`` examples of ``pool`` to label, from Monte Carlo dropout on ``model``.

    Single-point scores (``"bald"``, ``"entropy"``, ``"margin"``, ``"least_confidence"``,
    ``"variation_ratio"``, ``"mean_std"``) are computed from the statistics that
    :func:`mcdrop.predict_with_uncertainty` aggregates as a stream: memory ``O(N x C)``, never
    the ``(T, N, C)`` samples. The batch is their top ``n``, or drawn from them with
    ``stochastic=`` (PowerBALD and the like, :func:`stochastic_batch`).

    ``"batchbald"`` and ``"epig"`` need one network per sample, shared by every pool and target
    example: they sample with ``masks="shared"`` (the same seed for pool and targets) and keep
    the samples ``(T, N, C)`` in memory (``4 T N C`` bytes in float32, a float64 copy while
    choosing); see :func:`batchbald` and :func:`epig` for the memory of the choice itself.

    Parameters
    ----------
    model : nn.Module
        A classifier with dropout, as for :func:`mcdrop.predict_with_uncertainty`.
    pool : Tensor, tuple, dict, Dataset, DataLoader or iterable of batches
        The unlabelled examples. A map-style ``Dataset`` is batched in order
        (``batch_size``); a ``DataLoader`` must not shuffle. Items may be ``(inputs, targets)``
        pairs: targets are never passed to the model.
    n : int
        Examples to choose, ``1 <= n <= N``.
    method : str, default="bald"
        One of ``"bald"``, ``"entropy"``, ``"margin"``, ``"least_confidence"``,
        ``"variation_ratio"``, ``"mean_std"``, ``"batchbald"``, ``"epig"``, ``"random"``.
    n_samples : int, default=100
        Monte Carlo samples ``T``.
    stochastic : {"power", "softmax", "rank"} or None, default=None
        Draw the batch from a single-point score instead of taking its top ``n``.
    beta : float, default=1.0
        Inverse temperature of ``stochastic``.
    reduction : {"mean", "sum", "max"}, default="mean"
        How per-pixel or per-token scores of an example are combined (outputs ``(N, C, *S)``).
    target_inputs : optional
        EPIG's target inputs (same forms as ``pool``), required with ``method="epig"``: inputs
        from the distribution the model will be used on (a random subset of the pool will do).
    n_configurations : int, default=10_000
        BatchBALD's bound on the configurations of the joint entropy (:func:`batchbald`).
    batch_size : int, optional
        Examples per batch for tensors and datasets (see ``predict_with_uncertainty``).
    seed : int, optional
        Makes the whole acquisition reproducible: the Monte Carlo passes and the sampled
        choices use independent seeds derived from it. The global random streams are left
        alone either way.
    **options
        Further options of :func:`mcdrop.predict_with_uncertainty` (``outputs``,
        ``class_dim``, ``strategy``, ``device``, ``amp``, ``batch_budget``, ...).

    Returns
    -------
    Acquisition
        Positions in the pool (in its order), their scores and the method.
    """
    method = check_choice("method", method, METHODS)
    if stochastic is not None:
        stochastic = check_choice("stochastic", stochastic, MODES)
        if method not in SCORES:
            raise ValueError(
                f"Expected `stochastic=None` with method={method!r} (stochastic batches draw "
                f"from a single-point score: one of {sorted(SCORES)}), but got {stochastic!r}."
            )
    reduction = check_choice("reduction", reduction, REDUCTIONS)
    if target_inputs is not None and method != "epig":
        raise ValueError(
            f"Expected `target_inputs` only with method='epig', but got method={method!r}."
        )
    reserved = sorted(set(options) & set(_RESERVED))
    if reserved:
        raise TypeError(f"Expected no {reserved} among the options: acquire sets them itself.")
    size = pool_size(pool)
    if size == 0:
        raise ValueError("Expected `pool` to hold at least one example, but it holds none.")
    if size is not None:
        n = acquisition_size(n, size, pool="pool")
    else:
        n = check_int("n", n, minimum=1)
    mc_seed, choice_seed = split_seed(seed)
    if method == "random":
        if size is None:
            raise TypeError(
                "Expected a `pool` whose size is known without iterating it (a tensor, tuple, "
                f"dict, Dataset or DataLoader) for method='random', but got {type(pool).__name__}."
            )
        chosen = torch.randperm(size, generator=generator(choice_seed))[:n]
        return Acquisition(chosen, torch.zeros(n, dtype=torch.float64), "random")
    if batch_size is not None and isinstance(pool, (torch.Tensor, tuple, Mapping)):
        options["batch_size"] = batch_size
    if method in JOINT_METHODS:
        return joint_acquisition(
            model,
            pool,
            n,
            method=method,
            n_samples=n_samples,
            target_inputs=target_inputs,
            n_configurations=n_configurations,
            batch_size=batch_size,
            seeds=(mc_seed, choice_seed),
            options=options,
        )
    result = predict_with_uncertainty(
        model,
        as_inputs(pool, batch_size),
        n_samples=n_samples,
        task="classification",
        seed=mc_seed,
        **options,
    )
    assert isinstance(result, ClassificationResult)
    scores = reduce_positions(single_point_scores(result, method), reduction)
    scores = scores.to(torch.float64)
    if size is None:
        n = acquisition_size(n, int(scores.shape[0]), pool="pool")
    if stochastic is not None:
        drawn = stochastic_batch(scores, n, mode=stochastic, beta=beta, seed=choice_seed)
        return dataclasses.replace(drawn, method=f"{stochastic}-{method}")
    # A stable sort: ties go to the example that comes first in the pool.
    values, order = torch.sort(scores.cpu(), descending=True, stable=True)
    return Acquisition(order[:n], values[:n], method)
