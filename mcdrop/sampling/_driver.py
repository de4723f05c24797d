"""Batches -> chunks of stochastic passes -> streaming statistics -> one result.

:func:`predict` is :func:`mcdrop.predict_with_uncertainty` on one process: it batches the inputs,
opens a :class:`~mcdrop.sampling._run.Run` on the first batch (:meth:`Engine.run
<mcdrop.sampling._engine.Engine.run>`), samples every batch in chunks (:func:`sample_batch`) into
accumulators (:mod:`mcdrop.stats`), and assembles the result from their states
(:func:`mcdrop.stats.result_from_state`) with the plan it sampled with (:func:`record_of`).
:func:`sample_stack` is :meth:`mcdrop.MCDropout.forward`: the stacked samples of one batch.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from mcdrop.dropout import user_stacklevel
from mcdrop.results import ClassificationResult, RegressionResult, SamplingRecord
from mcdrop.sampling._checks import OutputChecks, check_consistent, check_samples_fit
from mcdrop.sampling._engine import Engine, function_plans
from mcdrop.sampling._inputs import _Batch, iter_batches
from mcdrop.sampling._options import SamplingOptions
from mcdrop.sampling._planner import PREFIX_SHARE_FOR_VMAP
from mcdrop.sampling._progress import Progress
from mcdrop.sampling._run import Run, StalePlan
from mcdrop.sampling._strategies import Outputs
from mcdrop.stats import (
    ClassificationAccumulator,
    RegressionAccumulator,
    concat_states,
    normalise_class_dim,
    result_from_state,
)

__all__: list[str] = []

Accumulator = ClassificationAccumulator | RegressionAccumulator


def _accumulator(options: SamplingOptions, out_ndim: int) -> Accumulator:
    if options.task == "classification":
        cd = normalise_class_dim(options.class_dim, out_ndim)
        return ClassificationAccumulator(
            outputs=options.outputs, class_dim=cd, keep_samples=options.keep_samples
        )
    return RegressionAccumulator(
        tau=options.tau, heteroscedastic=options.heteroscedastic, keep_samples=options.keep_samples
    )


def sample_batch(
    run: Run,
    batch: _Batch,
    index: int,
    start: int,
    progress: Progress,
    n_examples: int | None = None,
) -> Accumulator:
    """All samples of one batch, aggregated as a stream.

    The hot path does not wait for the device: the checks are device-side flags read once per
    batch (per chunk when the statistics are read anyway: adaptive ``n_samples``, or
    probabilities that are validated on the host).
    """
    o = run.engine.options
    limit = o.sample_limit
    acc: Accumulator | None = None
    checks = OutputChecks(check_variation=index == 0)
    eager = o.adaptive or (o.task == "classification" and o.outputs != "logits")
    minimum = min(limit, 16) if o.adaptive else limit
    target = minimum  # adaptive: samples expected to reach the tolerance, updated per chunk
    done = 0
    while done < limit:
        k = run.samples_for(batch, limit - done)
        if o.adaptive:
            k = min(k, max(target - done, 1))
        k, outs = run.chunk(batch, k, first=done, timed=progress.timing)
        checks.update(outs)
        if eager:
            checks.check_finite(index, batch, start)
        if acc is None:
            if index == 0:
                check_samples_fit(o.keep_samples, limit, n_examples, outs)
            acc = _accumulator(o, outs[0].ndim - 1)
        if isinstance(acc, RegressionAccumulator):
            acc.update(outs[0], outs[1] if len(outs) > 1 else None)
        else:
            acc.update(outs[0])
        done += k
        progress.update(k, run.first_chunk_seconds)
        if o.adaptive and done >= minimum:
            error = acc.max_standard_error()
            if error <= o.tolerance:
                break
            # MC error falls as 1 / sqrt(T): aim for the T that reaches the tolerance (+10 %).
            needed = done * (error / o.tolerance) ** 2 * 1.1 if math.isfinite(error) else 2 * done
            target = min(limit, max(done + 1, math.ceil(needed)))
    assert acc is not None
    checks.raise_if_bad(index, batch, start, done, run.engine.model, run.sites)
    return acc


def record_of(run: Run) -> SamplingRecord:
    """The plan ``run`` sampled with, for the result; warns when ``auto`` fell back or did
    without prefix sharing, saying what it costs."""
    plan = run.plan
    fallbacks = tuple((f.strategy, f.reason) for f in plan.fallbacks)
    name = type(run.engine.model).__name__
    cost = _lost_sharing(run)
    if fallbacks:
        tried = ", then ".join(f"{s!r} ({_first_line(reason)})" for s, reason in fallbacks)
        warnings.warn(
            f"mcdrop: strategy='auto' fell back to {plan.strategy!r} for `{name}`: {tried} did "
            f"not fit this model. The numbers are those of {plan.strategy!r}; pass "
            f"strategy={plan.strategy!r} to skip the attempt (result.sampling records it).{cost}",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    elif cost:
        warnings.warn(
            f"mcdrop: strategy='auto' samples `{name}` with {plan.strategy!r}, not 'vmap' "
            f"({plan.reason}; result.sampling records it).{cost}",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return SamplingRecord(
        strategy=plan.strategy,
        samples_per_pass=run.samples_per_pass,
        reason=plan.reason,
        fallbacks=fallbacks,
    )


def _lost_sharing(run: Run) -> str:
    """What ``auto`` doing without prefix sharing costs, in words (``""`` when it did not: it
    samples with vmap, the strategy was given, or too little comes before the first dropout)."""
    share = run.profile.prefix_share
    options = run.engine.options
    if options.strategy != "auto" or run.plan.strategy == "vmap" or share < PREFIX_SHARE_FOR_VMAP:
        return ""
    n = options.sample_limit
    ratio = n / (share + n * (1.0 - share))
    return (
        f" Without prefix sharing every sample runs the whole network: {100 * share:.0f}% of "
        "its FLOPs come before the first dropout, which vmap would compute once for all "
        f"samples, so {n} samples cost about {ratio:.0f}x the FLOPs they would with vmap."
    )


def _first_line(text: str, limit: int = 120) -> str:
    line = text.splitlines()[0] if text else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def predict(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    options: SamplingOptions,
    seed: int | None,
    engine: Engine | None = None,
) -> ClassificationResult | RegressionResult:
    """:func:`mcdrop.predict_with_uncertainty` on one process; ``engine``: one that outlives the
    call (:class:`mcdrop.MCDropout`'s, which keeps its plans), else a new one on the plans the
    function keeps for ``model`` (:func:`~._engine.function_plans`)."""
    engine = engine or Engine(model, options, plans=function_plans(model, options))
    batches, n_batches, n_examples = iter_batches(
        inputs,
        batch_size=options.batch_size or engine.planner.budget,
        targets=targets,
        target_key=options.target_key,
    )
    iterator = iter(batches)
    first = next(iterator, None)
    if first is None:
        raise ValueError("Expected `inputs` to hold at least one example, but it was empty.")
    if options.n_samples == 1:
        warnings.warn(
            "n_samples=1: one pass has no spread, so mutual information and variances are 0 by "
            "construction and standard errors are unknown (inf); use n_samples >= 2 (100 is "
            "typical).",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    total = None if n_batches is None else n_batches * options.sample_limit
    progress = Progress(options.progress, total)
    try:
        try:
            with engine.run(first, seed, n_examples) as run:
                sampled = _sample_all(run, first, iterator, progress, n_examples)
        except StalePlan:  # raised by a kept plan's first chunk, before any batch was sampled
            with engine.run(first, seed, n_examples, fresh=True) as run:
                sampled = _sample_all(run, first, iterator, progress, n_examples)
    finally:
        progress.close()
    states, counts, target_parts, worst_se = sampled
    merged = concat_states(states, options.result_device)
    classification = options.task == "classification"
    return result_from_state(
        options.task,
        merged,
        n_samples=max(counts),
        class_dim=normalise_class_dim(options.class_dim, merged["mean"].ndim)
        if classification
        else 1,
        tau=options.tau,
        targets=None if target_parts is None else torch.cat(target_parts),
        standard_error_reached=worst_se if options.adaptive else None,
        sampling=record_of(run),
        masks=options.masks,
    )


def _sample_all(
    run: Run, first: _Batch, rest: Any, progress: Progress, n_examples: int | None
) -> tuple[list[dict[str, torch.Tensor]], list[int], list[torch.Tensor] | None, float]:
    """Every batch's statistics (on ``result_device``), sample counts and targets (None when a
    batch has none), and the largest standard error reached."""
    options = run.engine.options
    states: list[dict[str, torch.Tensor]] = []
    target_parts: list[torch.Tensor] | None = []
    out_shape: tuple[int, ...] | None = None
    counts: list[int] = []
    worst_se = 0.0
    start = 0
    batch: _Batch | None = first
    index = 0
    while batch is not None:
        batch = batch.to(run.engine.device)
        acc = sample_batch(run, batch, index, start, progress, n_examples)
        state = acc.state()
        shaped = state["samples"] if "samples" in state else state["mean"].unsqueeze(0)
        out_shape = check_consistent(out_shape, shaped, index)
        states.append({k: v.to(options.result_device) for k, v in state.items()})
        counts.append(acc.count)
        if options.keep_samples and len(set(counts)) > 1:
            raise ValueError(
                "Expected every batch to stop at the same number of samples with "
                "`keep_samples=True`, but adaptive `n_samples='auto'` stopped batch 0 "
                f"at {counts[0]} and batch {index} at {acc.count}; pass a fixed "
                "`n_samples`, or a `batch_size` that puts all inputs in one batch."
            )
        if options.adaptive:  # (a reduction and a read of its value)
            worst_se = max(worst_se, acc.max_standard_error())
        if batch.targets is None:
            target_parts = None
        elif target_parts is not None:
            target_parts.append(batch.targets)
        start += batch.size
        index += 1
        batch = next(rest, None)
    return states, counts, target_parts or None, worst_se


def sample_stack(engine: Engine, batch: _Batch, seed: int | None) -> tuple[Outputs, Run]:
    """``T`` stacked samples of one batch (:meth:`mcdrop.MCDropout.forward`), with the checks,
    and the run that drew them."""
    try:
        return _stack(engine, batch, seed, fresh=False)
    except StalePlan:  # raised by a kept plan's first chunk
        return _stack(engine, batch, seed, fresh=True)


def _stack(engine: Engine, batch: _Batch, seed: int | None, *, fresh: bool) -> tuple[Outputs, Run]:
    n = engine.options.sample_limit
    chunks: list[Outputs] = []
    with engine.run(batch, seed, batch.size, fresh=fresh) as run:
        batch = batch.to(engine.device)
        checks = OutputChecks(check_variation=True)
        done = 0
        while done < n:
            k, outs = run.chunk(batch, run.samples_for(batch, n - done), first=done)
            checks.update(outs)
            chunks.append(outs)
            done += k
        checks.raise_if_bad(0, batch, 0, done, engine.model, run.sites)
    return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True)), run
