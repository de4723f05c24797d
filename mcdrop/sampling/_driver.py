"""Batches -> chunks of stochastic passes -> streaming statistics, for every entry point.

:class:`Engine` is what :func:`mcdrop.predict_with_uncertainty` creates per call and
:class:`mcdrop.MCDropout` keeps between calls (its out-of-memory back-off and CUDA sizing are
remembered). :meth:`Engine.session` builds the sampling twin on the first batch, picks the
strategy (:mod:`mcdrop.sampling._planner`) and yields a :class:`Session` that samples batches with
the NaN/Inf and "dropout changed nothing" checks.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten
from tqdm.auto import tqdm

from mcdrop.dropout import (
    GATING_TYPES,
    DropoutSite,
    MaskedDropout,
    NoDropout,
    Probe,
    Recording,
    Sampling,
    check_sites,
    infer_layouts,
    recording,
    sampling_twin,
    unwrap_compiled,
    user_stacklevel,
)
from mcdrop.results import ClassificationResult, RegressionResult
from mcdrop.sampling import _memory as memory
from mcdrop.sampling import _planner as planner
from mcdrop.sampling._inputs import _Batch, iter_batches
from mcdrop.sampling._options import SamplingOptions
from mcdrop.sampling._rng import forked_rng, fresh_seed, rng_state, sampling_rng
from mcdrop.sampling._strategies import Outputs, Recorded, Runner, varies
from mcdrop.stats import (
    ClassificationAccumulator,
    RegressionAccumulator,
    concat_states,
    normalise_class_dim,
)

__all__: list[str] = []

logger = logging.getLogger("mcdrop")

# Fused kernels with internal dropout that vmap cannot give a mask per sample: the RNN kernels
# and CUDA's fused attention draw one mask for every sample of a vmap pass (SDPA measured on an
# H200, docs/performance.rst); on the CPU fused attention raises under vmap.
_VMAP_UNSAFE = frozenset(
    {
        "torch.lstm",
        "torch.gru",
        "torch.rnn_tanh",
        "torch.rnn_relu",
        "F.scaled_dot_product_attention",
        "F.multi_head_attention_forward",
    }
)
_ANNOUNCE_AFTER_S = 60.0  # without a progress bar, log the size of runs expected to take longer

Accumulator = ClassificationAccumulator | RegressionAccumulator


def model_device(model: nn.Module) -> torch.device:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


# PyTorch layers whose dropout runs inside a fused kernel (attention, RNNs); containers such as
# nn.Transformer hold them as submodules.
_FUSED_TYPES = (*GATING_TYPES, nn.RNNBase)


def _unprobed(sampling: Sampling) -> set[str]:
    """Modules that may hide a dropout kernel vmap cannot give a mask per sample, when the sites
    were found without a probe (``detect_silent=False``, ``scope='train_except_norm'``): then
    mcdrop cannot see which kernels run (a parent may read a child ``nn.Dropout``'s rate into
    fused attention), so any module that is a fused PyTorch layer or not one of PyTorch's own
    layers counts."""
    if sampling.trace.calls or not sampling.sites:  # probed: the calls name the kernels
        return set()
    root = getattr(sampling.module, "_orig_mod", sampling.module)  # torch.compile's wrapper
    unsafe = set()
    for module in root.modules():
        if isinstance(module, _FUSED_TYPES) or not type(module).__module__.startswith("torch.nn."):
            unsafe.add(f"{type(module).__name__} (not probed)")
    return unsafe


# Kernels that shared masks replace by explicit math, which vmap batches (the RNN kernels stay).
_SHARED_VMAP_SAFE = frozenset({"F.scaled_dot_product_attention", "F.multi_head_attention_forward"})


def _profile(
    sampling: Sampling, probe_rows: int, masks: MaskedDropout | None = None
) -> planner.Profile:
    functions = {f for site in sampling.sites for f in site.functions}
    if masks is not None:
        functions -= _SHARED_VMAP_SAFE
    trace = sampling.trace
    # With the check pending the trace is the training probe's: only the calls that sample.
    sampled = trace.calls if sampling.pending is None else sampling.pending.expected
    on_weights = {key[0] or "<model>" for key in trace.on_weights if key in sampled}
    if masks is not None:  # a tensor without a batch dimension takes one mask per pass
        unbatched = masks.layouts or {}
        on_weights |= {key[0] or "<model>" for key, lay in unbatched.items() if lay.dim is None}
    counted = trace.flops_complete  # else the FLOPs, the prefix share and the call's size unknown
    return planner.Profile(
        prefix_flops=trace.prefix_flops(sampled) if counted else 0,
        total_flops=trace.total_flops if counted else 0,
        vmap_unsafe=tuple(sorted((functions & _VMAP_UNSAFE) | _unprobed(sampling))),
        replicate_unsafe=tuple(sorted(on_weights)),
        bytes_per_row=trace.output_bytes / max(probe_rows, 1),
        flops_per_row=trace.total_flops / max(probe_rows, 1) if counted else 0.0,
    )


class Engine:
    """Sampling state of one model and one set of options (see the module docstring)."""

    def __init__(self, model: nn.Module, options: SamplingOptions) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}."
            )
        self.model = model
        self.options = options
        self.device = options.device or model_device(model)
        self.planner = planner.Planner(options.batch_budget or planner.default_budget(self.device))
        # On CUDA without an explicit budget the rows per pass come from one measured pass (see
        # measure_memory), per model structure and input signature (_BUDGETS): an engine that
        # saw other inputs first sizes the passes as a new one would.
        self.memory_sized = options.batch_budget is None and self.device.type == "cuda"
        self.strategy: str | None = None
        self.candidates: list[str] = []  # auto: the rule's order, the one in use first
        self.profile = planner.Profile()
        self.probe_batch: _Batch | None = None
        self.first: _Batch | None = None  # the first batch of the current session
        self.runner: Runner | None = None
        self.last_samples_per_pass: int | None = None
        self.call_rows: int | None = None  # samples x examples of the current call
        self.dropped: set[str] = set()  # auto candidates that failed in the current call

    @contextlib.contextmanager
    def session(self, first: _Batch, seed: int | None, n_examples: int | None) -> Iterator[Session]:
        """Seeded sampling of the batches of one call (``n_examples`` in all, None when
        unknown); ``first`` is probed for the sites."""
        o = self.options
        self.call_rows = None if n_examples is None else n_examples * o.n_samples
        self.dropped = set()
        shared = o.masks == "shared"
        if shared:
            _check_shareable(self.model)
            seed = fresh_seed() if seed is None else seed
        # Shared masks draw from no global generator: it is neither seeded nor forked.
        with sampling_rng(None if shared else seed, self.device), torch.inference_mode():
            first = first.to(self.device)
            small = _slice(first, 0, min(2, first.size))
            probe = Probe(
                (small.args, small.kwargs),
                (first.args, first.kwargs),
                private=seed if shared else None,
            )
            # Without compile (shared masks run eagerly), the sampling twin's check runs on the
            # first chunk (Session).
            with sampling_twin(
                self.model,
                o.scope,
                o.include,
                o.exclude,
                probe if o.detect_silent else None,
                defer=o.compile is None or shared,
            ) as sampling:
                check_sites(self.model, sampling.sites)
                module: Any = sampling.module
                if shared:
                    module = _eager_for_shared_masks(module, o.compile is not None)
                elif o.compile is not None:
                    # Cheap: dynamo caches graphs on the forward's code object, guarded on the
                    # module's structure and flags, so a new twin per call reuses them.
                    module = torch.compile(module, **o.compile)
                masks = None if seed is None or not shared else MaskedDropout(seed, layouts={})
                runner = Runner(
                    module,
                    device=self.device,
                    amp=o.amp,
                    n_outputs=o.n_outputs,
                    output_transform=o.output_transform,
                    no_layer_skip=bool(sampling.trace.layer_skips),
                    masks=masks,
                    attributed=None if masks is None else _attribution(masks, sampling),
                )
                if sampling.pending is None:
                    _log_layer_skips(sampling.trace.layer_skips)
                # The examples-interact check and the memory measurement run eagerly: compiling
                # them (eval flags, other shapes) would not pay.
                eager = copy.copy(runner)
                eager.module = getattr(sampling.module, "_orig_mod", sampling.module)
                if masks is not None:
                    _learn_layouts(eager, first)
                self._choose(eager, small, first, _profile(sampling, small.size, masks))
                if self.memory_sized:
                    self.planner.budget = self._cuda_budget(eager, first)
                try:
                    yield Session(self, runner, sampling, seeded=seed is not None and not shared)
                finally:  # the engine outlives the call (MCDropout): keep no batch or twin
                    self.first = self.runner = self.probe_batch = None

    def settle(self, runner: Runner, sampling: Sampling) -> tuple[Sampling, bool]:
        """The full check of the sampling twin, when the first chunk did not confirm the
        deferred one (:class:`mcdrop.dropout._Pending`); whether it changed the sites, and then
        the plan is made again."""
        assert sampling.pending is not None and self.probe_batch is not None
        assert self.first is not None and self.runner is not None
        sites, trace = sampling.pending.settle()
        check_sites(self.model, sites)  # an auxiliary branch may have held the only dropout
        changed = sites != sampling.sites
        sampling = dataclasses.replace(sampling, sites=sites, trace=trace, pending=None)
        runner.no_layer_skip = bool(trace.layer_skips)
        _log_layer_skips(trace.layer_skips)
        if changed:
            masks = runner.masks
            if masks is not None:  # shared masks: the new sites' calls, and where the rows are
                runner.attributed = self.runner.attributed = _attribution(masks, sampling)
                _learn_layouts(self.runner, self.first)
            profile = _profile(sampling, self.probe_batch.size, masks)
            self._choose(self.runner, self.probe_batch, self.first, profile)
        return sampling, changed

    def _choose(
        self, runner: Runner, small: _Batch, first: _Batch, profile: planner.Profile
    ) -> None:
        """The ``auto`` rule's candidates; the first is used until it proves invalid.

        Validity is checked on the first chunk itself (:meth:`Session.chunk`), not by extra
        passes: a candidate that raises, or draws identical samples where the loop does not, is
        dropped with the reason logged and the chunk is run again with the next one.
        """
        o = self.options
        if profile.vmap_unsafe and o.strategy == "vmap":
            raise ValueError(
                "Expected a `strategy` other than 'vmap' for this model: its dropout runs inside "
                f"{', '.join(profile.vmap_unsafe)}: a fused kernel that cannot draw a dropout "
                "mask per sample under vmap, or a site whose kernels were not probed "
                "(detect_silent=False or scope='train_except_norm'). Use strategy='auto', "
                "'replicate' or 'loop'."
            )
        if profile.replicate_unsafe and o.strategy == "replicate":
            raise ValueError(
                "Expected a `strategy` other than 'replicate' for this model: "
                f"{', '.join(profile.replicate_unsafe)} drops out a weight (DropConnect), which "
                "draws one mask per pass that every copy of a replicated batch would share. Use "
                "strategy='auto', 'vmap' or 'loop'."
            )
        compiled = o.compile is not None or unwrap_compiled(self.model)[1]
        ranked = planner.candidates(
            o.strategy, profile, self.device, compiled=compiled, rows=self.call_rows
        )
        self.candidates = [c for c in ranked if c not in self.dropped] or ranked[-1:]
        self.probe_batch = small
        self.first = first
        self.runner = runner  # eager: for the examples-interact check
        self.profile = profile
        self._use(self.candidates[0])

    def _use(self, strategy: str) -> None:
        if strategy == "replicate":  # a replicated batch must not mix its samples
            assert self.first is not None and self.runner is not None
            reason = _rows_interact(self.runner, self.first)
            if reason and len(self.candidates) > 1:  # auto: the next candidate
                logger.info("mcdrop: strategy 'replicate' does not fit this model (%s).", reason)
                self._drop("replicate")
                self._use(self.candidates[0])
                return
            if reason == _INTERACT:
                raise ValueError(
                    "Expected a `strategy` other than 'replicate' for this model: "
                    f"{_INTERACT} (with its dropout off), so a replicated batch would mix the "
                    "samples of its copies. Use strategy='auto', 'vmap' or 'loop' (each sample "
                    "then sees the batch as it is)."
                )
            if reason:  # random beyond its dropout, or the check's passes raised
                logger.warning(
                    "mcdrop: strategy 'replicate': whether the examples of a pass interact "
                    "cannot be checked (%s); a replicated batch would mix samples if they do "
                    "('auto', 'vmap' or 'loop' avoid it).",
                    reason,
                )
        self.strategy = strategy
        self.planner.scale = planner.vmap_scale(self.profile) if strategy == "vmap" else 1
        if self.device.type == "cpu" and self.options.batch_budget is None:
            if strategy == "vmap":
                self.planner.budget = planner.DEFAULT_CPU_BUDGET
            else:
                size = 1 if self.first is None else self.first.size
                self.planner.budget = planner.cpu_rows(self.profile, size)
        logger.info(
            "mcdrop: strategy %r (%.0f%% of the FLOPs before the first dropout).",
            strategy,
            100 * self.profile.prefix_share,
        )

    def _drop(self, strategy: str) -> str:
        """Take an ``auto`` candidate out for the rest of the call: a new plan (the sampling
        twin's check changed the sites) does not bring it back."""
        self.candidates.remove(strategy)
        self.dropped.add(strategy)
        return strategy

    def reject(self, runner: Runner, outs: Outputs | None, error: Exception | None) -> bool:
        """After the first chunk with an ``auto`` candidate: drop it (True) if it is invalid."""
        if len(self.candidates) < 2:
            return False
        if error is not None:
            reason = f"{type(error).__name__}: {error}"
        elif outs is not None and outs[0].shape[0] > 1 and not varies(outs):
            assert self.probe_batch is not None
            with forked_rng(self.device, private=runner.masks is not None):
                if not varies(runner.run("loop", self.probe_batch, 2)):
                    return False  # the loop does not vary either: the checks will say why
            reason = "it drew identical samples where the loop did not"
        else:
            return False
        dropped = self._drop(self.candidates[0])
        logger.info(
            "mcdrop: strategy %r does not work for %s (%s); falling back.",
            dropped,
            type(self.model).__name__,
            reason,
        )
        # An out-of-memory cap of the dropped candidate (vmap may hold more rows) is not the
        # next one's: it starts as it would have, had it been chosen first.
        self.planner.sample_cap = self.planner.example_cap = None
        self._use(self.candidates[0])
        return True

    def _cuda_budget(self, runner: Runner, first: _Batch) -> int:
        """Rows per pass for this model and input signature: kept (``_BUDGETS``) or measured."""
        key = _budget_key(self.model, first, self.options, self.device)
        if key in _BUDGETS:
            return _BUDGETS[key]
        measured = self.measure_memory(runner, first)
        if measured is None:  # out of memory: this engine samples row-wise, nothing kept
            return max(1, first.size // 2)
        if len(_BUDGETS) >= _MAX_BUDGETS:
            _BUDGETS.pop(next(iter(_BUDGETS)))
        _BUDGETS[key] = measured
        return measured

    def measure_memory(self, runner: Runner, batch: _Batch) -> int | None:
        """Rows per pass on CUDA from a 2-sample replicate pass (see :mod:`.memory`); None when
        that pass does not fit.

        Deterministic: the card's capacity, not its free memory, and the pass's own peak read
        after each op, not the allocator's peak counter (the user's, never reset). The pass runs
        once unmeasured first, so that one-time allocations (library workspaces on a process's
        first matrix product) do not count, whatever ran before.
        """
        dev = self.device
        k = 2
        try:
            with forked_rng(dev, private=runner.masks is not None):
                runner.run("replicate", batch, k)
                peak, outs = memory.pass_bytes(lambda: runner.run("replicate", batch, k), dev)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            logger.warning("mcdrop: out of memory measuring a 2-sample pass; sampling row-wise.")
            return None
        # float64 statistics of the outputs: about five temporaries of 8 bytes per element.
        out_bytes = sum(int(o[0, :1].numel()) for o in outs) * 8 * 5
        capacity = memory.capacity(dev)
        budget = planner.rows_that_fit(capacity, peak / (k * batch.size) + out_bytes)
        logger.info(
            "mcdrop: up to %d rows per pass (%.2f MiB per row measured, %.0f MiB capacity).",
            budget,
            peak / (k * batch.size) / 2**20,
            capacity / 2**20,
        )
        return budget


# CUDA rows per pass, measured once per model structure and input signature. A stale entry can
# only change the pass size (speed, memory), never which dropout is sampled; the key holds ids,
# types and strings, no reference to the model or its inputs.
_BUDGETS: dict[Any, int] = {}
_MAX_BUDGETS = 256


def _budget_key(model: nn.Module, first: _Batch, o: SamplingOptions, device: torch.device) -> Any:
    """Everything the measured bytes per row depend on: inputs, structure, and the options that
    change what runs (callables by id: no reference is kept)."""
    return (
        _input_signature((first.args, first.kwargs)),
        tuple((id(m), type(m).__qualname__) for m in model.modules()),
        tuple(
            (tuple(t.shape), t.dtype) for t in itertools.chain(model.parameters(), model.buffers())
        ),
        str(device),
        o.amp,
        o.scope,
        o.detect_silent,
        o.n_outputs,
        *(id(f) for f in (o.include, o.exclude, o.output_transform)),
    )


def _input_signature(inputs: Any) -> Any:
    """Pytree structure, tensor shapes, dtypes and devices, and the other values (shortened):
    what the memory of a pass depends on besides the model."""
    leaves, spec = tree_flatten(inputs)
    return str(spec), tuple(
        (tuple(leaf.shape), leaf.dtype, leaf.device)
        if isinstance(leaf, torch.Tensor)
        else repr(leaf)[:64]
        for leaf in leaves
    )


def _rows_interact(runner: Runner, first: _Batch) -> str | None:
    """Why one example's output depends on the other examples of its pass (batch statistics,
    graphs over the batch): replicating the batch would then mix the samples of its copies.

    Runs the sampling twin as it samples, with every dropout call at rate 0
    (:class:`mcdrop.dropout.NoDropout`): the first two examples alone, then beside two others
    (the next examples of the batch, or for a smaller batch the first ones reversed along their
    last dimension: the same values in another example). ``None`` when their
    outputs agree; :data:`_INTERACT` when they differ and the first pass is repeatable;
    :data:`_RANDOM` when it is not (other randomness in the model: the check cannot tell); the
    error, when the passes raise.
    """
    alone, beside = _interaction_batches(first)
    try:
        # other randomness of the model: not the caller's
        with forked_rng(runner.device, private=runner.masks is not None):
            a = runner.run("loop", alone, 1, record=NoDropout)
            b = runner.run("loop", beside, 1, record=NoDropout)
            if _outputs_agree(a, b, runner):
                return None
            again = runner.run("loop", alone, 1, record=NoDropout)
    except torch.OutOfMemoryError:
        raise
    except Exception as error:
        return f"{type(error).__name__}: {error}"
    return _INTERACT if _outputs_agree(a, again, runner) else _RANDOM


_INTERACT = "an example's output depends on the other examples of its batch"
_RANDOM = "the model is random with its dropout off"


def _interaction_batches(first: _Batch) -> tuple[_Batch, _Batch]:
    """The first (up to) two examples, and the same beside two companions: the next examples,
    or where the batch has fewer, the first ones reversed along their last dimension (token ids
    and masks keep their values; zero rows would leave a sum over the batch unchanged)."""
    n = min(2, first.size)
    alone = _slice(first, 0, n)
    extra = min(2, first.size - n)
    pad = 2 - extra

    def companions(t: torch.Tensor) -> torch.Tensor:
        mirrored = t[:n].flip(-1) if t.ndim > 1 else t[:n]
        return torch.cat([t[: n + extra], mirrored.repeat(2, *[1] * (t.ndim - 1))[:pad]])

    beside = first.map_batched(companions)
    beside.size = n + 2
    return alone, beside


def _outputs_agree(a: Outputs, b: Outputs, runner: Runner) -> bool:
    """Whether ``a`` equals the first rows of ``b``. Kernels differ by batch size: a tolerance
    relative to the largest output (small outputs are compared at their own scale), wider in
    low precision."""
    for x, y in zip(a, b, strict=True):
        low = runner.amp is not None or x.dtype in (torch.float16, torch.bfloat16)
        tol = 3e-2 if low else 1e-4
        rows = x.shape[1]
        if x.shape[2:] != y.shape[2:]:
            return False
        x, y = x.double(), y[:, :rows].double()
        finite = torch.isfinite(x)
        scale = float(x[finite].abs().max()) if bool(finite.any()) else 0.0
        if not torch.allclose(x, y, rtol=tol, atol=tol * scale + 1e-30, equal_nan=True):
            return False
    return True


class Session:
    """Sampling of one call's batches with a chosen strategy (see :meth:`Engine.session`)."""

    def __init__(
        self, engine: Engine, runner: Runner, sampling: Sampling, *, seeded: bool = False
    ) -> None:
        self.engine = engine
        self.runner = runner
        self.sampling = sampling
        self.validated = False  # the first chunk checks the auto candidate
        self.seeded = seeded  # a seed was given: a rerun first chunk rewinds the generators

    @property
    def sites(self) -> list[DropoutSite]:
        return self.sampling.sites

    def chunk(self, batch: _Batch, k: int, first: int = 0) -> tuple[int, Outputs]:
        """Up to ``k`` samples of ``batch``, backing off on out-of-memory; ``(k used, outputs)``.
        ``first``: the index of the first sample (shared masks: sample ``t`` is network ``f_t``).

        Only ``torch.OutOfMemoryError`` is retried (fewer samples, then fewer examples per pass);
        any other error propagates. The first chunk also checks the ``auto`` candidate and the
        sampling twin (:meth:`_confirmed`).
        """
        engine = self.engine
        plan = engine.planner
        assert engine.strategy is not None
        # With a seed, a first chunk that is run again (another candidate, a new plan) starts
        # from the same random state: auto then gives the numbers of the strategy it settles on.
        # Without one nothing is to be reproduced, and rewinding the process-wide generators
        # would hand other threads the same numbers again.
        rewind = rng_state(engine.device) if self.seeded and not self.validated else _unchanged
        requested = k
        while True:
            k = min(k, plan.sample_cap or k)
            examples = plan.examples_per_pass(batch.size)
            try:
                outs, recording = self._sample(batch, k, examples, first)
            except torch.OutOfMemoryError:
                self._back_off(k, batch)
                continue
            except Exception as error:
                if self.validated or not engine.reject(self.runner, None, error):
                    self._raise(error, batch)  # returns when the twin's check changed the plan
            else:
                if self._stands(outs, recording):
                    break
            # Another candidate or a new plan: the chunk again, sized as if it had come first.
            k = plan.samples_per_pass(batch.size, requested)
            rewind()
        if engine.last_samples_per_pass is None or k > engine.last_samples_per_pass:
            engine.last_samples_per_pass = k
            logger.info(
                "mcdrop: strategy %r, %d samples per pass of %d examples.",
                engine.strategy,
                k,
                examples,
            )
        return k, outs

    def _stands(self, outs: Outputs, recording: Recording | None) -> bool:
        """Whether a chunk is kept: the sampling twin's check confirmed it (:meth:`_confirmed`)
        and, the first time, the ``auto`` candidate proved valid (:meth:`Engine.reject`)."""
        if recording is not None and not self._confirmed(recording):
            return False
        if self.validated:
            return True
        self.validated = not self.engine.reject(self.runner, outs, None)
        return self.validated

    def _back_off(self, k: int, batch: _Batch) -> None:
        change = self.engine.planner.back_off(k, batch.size)
        if self.engine.device.type == "cuda":
            torch.cuda.empty_cache()
        self.engine.last_samples_per_pass = None
        logger.warning("mcdrop: %s", change)

    def _raise(self, error: Exception, batch: _Batch) -> None:
        """Raise ``error`` from the first chunk, explained: by the full check of the sampling twin
        while it is pending (its own error, or a new plan: then return, to run the chunk again),
        or as a ``strategy='vmap'`` that cannot run a model that runs without vmap."""
        engine = self.engine
        if self.sampling.pending is not None:
            self.sampling, changed = engine.settle(self.runner, self.sampling)
            if changed:
                return
        if engine.strategy == "vmap" and not self.validated and self._loop_runs(batch):
            raise ValueError(
                "Expected a `strategy` that can run this model, but 'vmap' cannot "
                f"({type(error).__name__}: {error}); without vmap the model runs. "
                "Use strategy='auto', 'replicate' or 'loop'."
            ) from error
        raise error

    def _sample(
        self, batch: _Batch, k: int, examples: int, first: int = 0
    ) -> tuple[Outputs, Recording | None]:
        """One chunk, recorded while the sampling twin's check is pending."""
        pending = self.sampling.pending
        if pending is None:
            return self._run_split(batch, k, examples, first=first), None
        with recording(pending.modules, flops=False) as rec:
            return self._run_split(batch, k, examples, rec.modes, first), rec

    def _confirmed(self, rec: Recording) -> bool:
        """Whether the recorded chunk stands: every pass made the dropout calls the training
        probe made, or else the full check (gating parents, auxiliary branches, the error naming
        what cannot be reproduced) kept the same sites. False when it changed them: the chunk
        must run again with the new plan. Outside the chunk's error handling: an error of the
        check is never taken for a strategy that cannot run the model."""
        assert self.sampling.pending is not None
        if not self.sampling.pending.confirmed_by(rec.recorder.passes):
            self.sampling, changed = self.engine.settle(self.runner, self.sampling)
            return not changed
        self.sampling = dataclasses.replace(self.sampling, pending=None)
        # The recording kept layer drop off in this chunk; the runner does from now on.
        self.runner.no_layer_skip = bool(rec.recorder.layer_skips)
        _log_layer_skips(rec.recorder.layer_skips)
        return True

    def _run_split(
        self,
        batch: _Batch,
        k: int,
        examples: int,
        record: Recorded | None = None,
        first: int = 0,
    ) -> Outputs:
        strategy = self.engine.strategy
        assert strategy is not None
        if batch.size <= examples:
            return self.runner.run(strategy, batch, k, record=record, first=first)
        parts = [
            self.runner.run(
                strategy,
                _slice(batch, lo, min(lo + examples, batch.size)),
                k,
                record=record,
                first=first,
            )
            for lo in range(0, batch.size, examples)
        ]
        return tuple(torch.cat(outs, 1) for outs in zip(*parts, strict=True))

    def _loop_runs(self, batch: _Batch) -> bool:
        """Whether one plain sample of the same batch runs (so an error was vmap's, not the
        model's); random state forked, nothing kept."""
        dev = self.engine.device
        try:
            with forked_rng(dev, private=self.runner.masks is not None):
                self.runner.run("loop", batch, 1)
        except Exception:
            return False
        return True

    def samples_per_pass(self, batch: _Batch, remaining: int) -> int:
        return self.engine.planner.samples_per_pass(batch.size, remaining)


def _unchanged() -> None:
    """What rewinds the generators when nothing is to be rewound (no seed, a later chunk)."""


def _log_layer_skips(skips: set[str]) -> None:
    if skips:
        logger.info("mcdrop: layer drop of %s kept off while sampling.", sorted(skips))


def _slice(batch: _Batch, lo: int, hi: int) -> _Batch:
    part = batch.map_batched(lambda t: t[lo:hi])
    part.size = hi - lo
    return part


# -- shared masks ---------------------------------------------------------------------------------
def _check_shareable(model: nn.Module) -> None:
    """TorchScript runs its dropout in C++, where no mask can be given: refuse shared masks."""
    scripted = [
        n or "<model>" for n, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)
    ]
    if scripted:
        raise ValueError(
            f"Expected a model without TorchScript modules with masks='shared', but "
            f"{', '.join(scripted[:3])} are scripted: their dropout runs inside TorchScript, "
            "whose masks mcdrop cannot give. Sample the eager model, or use masks='independent'."
        )


def _eager_for_shared_masks(module: Any, compile_option: bool) -> Any:
    """Shared masks answer each dropout call from a ``TorchFunctionMode`` that dynamo cannot
    trace: the twin of a compiled model (or ``compile=``) runs eagerly, with a warning."""
    eager = getattr(module, "_orig_mod", module)
    if compile_option or eager is not module:
        warnings.warn(
            "masks='shared' runs the model eagerly: torch.compile cannot trace the mode that "
            "gives each dropout call its shared mask, so `compile=` (or the model's own "
            "torch.compile wrapper) is not used for this call.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return eager


def _attribution(masks: MaskedDropout, sampling: Sampling) -> Any:
    """The hooks that name the module of each dropout call: on the sampled modules of the twin
    (the probe attributes every call to one of them) and its root."""
    twin = getattr(sampling.module, "_orig_mod", sampling.module)
    names = {site.name for site in sampling.sites} | {""}
    modules = {name: m for name, m in twin.named_modules() if name in names}
    return lambda: masks.attributed(modules)


def _learn_layouts(runner: Runner, first: _Batch) -> None:
    """Where each dropout call's input holds the examples: the sampling twin on one example and
    on two, every dropout the identity (:func:`mcdrop.dropout.infer_layouts`). The second example
    is the batch's next one; where the values cannot tell contiguous from strided units (equal
    examples), the first example reversed along its last dimension."""
    masks = runner.masks
    assert masks is not None
    alone = _slice(first, 0, 1)
    one = _probe_layout(runner, alone, "one example")
    pairs = [_slice(first, 0, 2)] if first.size >= 2 else []
    reversed_pair = first.map_batched(
        lambda t: torch.cat([t[:1], t[:1].flip(-1) if t.ndim > 1 else t[:1]])
    )
    reversed_pair.size = 2
    for pair in [*pairs, reversed_pair]:
        layouts, unclear = infer_layouts(one, _probe_layout(runner, pair, "two examples"))
        if not unclear:
            masks.layouts = layouts
            return
    (site, label, index), reason = sorted(unclear.items())[0]
    raise ValueError(
        f"Expected to find which dimension of each dropout input holds the examples "
        f"(masks='shared' gives every example the same mask), but for call {index + 1} of "
        f"{label} in `{site or '<model>'}` {reason}. Use masks='independent' for this model."
    )


def _probe_layout(runner: Runner, batch: _Batch, what: str) -> dict[Any, Any]:
    """The inputs of the sampling twin's dropout calls on ``batch``, every dropout the identity."""
    masks = runner.masks
    assert masks is not None
    try:
        with masks.probing() as records:
            runner.run("loop", batch, 1)
    except torch.OutOfMemoryError:
        raise
    except (ValueError, TypeError, RuntimeError, IndexError) as error:
        if "masks=" in str(error):  # a refusal of shared masks: already explained
            raise
        raise ValueError(
            f"Running the sampling twin on {what} (masks='shared' finds where each dropout "
            f"input holds the examples this way) raised {type(error).__name__}: {error}. Use "
            "masks='independent' for a model that cannot run on so few examples."
        ) from error
    return records


# -- checks -----------------------------------------------------------------------------------------
def _finite_flag(outputs: Outputs) -> torch.Tensor:
    """Device-side "all outputs finite" flag: no host sync until it is read."""
    flag = torch.isfinite(outputs[0]).all()
    for out in outputs[1:]:
        flag = flag & torch.isfinite(out).all()
    return flag


def _check_finite(flag: torch.Tensor, index: int, batch: _Batch, start: int) -> None:
    if not bool(flag):
        raise ValueError(
            f"The model returned NaN or Inf in batch {index} (examples {start} to "
            f"{start + batch.size - 1}) while sampling with dropout on; check the inputs of "
            "that batch, or use a lower `amp` precision."
        )


class _Checks:
    """NaN/Inf (every batch) and "dropout changed nothing" (the first batch) as device flags."""

    def __init__(self, check_variation: bool) -> None:
        self.finite: torch.Tensor | None = None
        self.first: torch.Tensor | None = None
        self.varied: torch.Tensor | None = None
        self.check_variation = check_variation

    def update(self, outs: Outputs) -> None:
        flag = _finite_flag(outs)
        self.finite = flag if self.finite is None else self.finite & flag
        if self.check_variation:
            if self.first is None:
                self.first = outs[0][:1]
            changed = (outs[0] != self.first).any()
            self.varied = changed if self.varied is None else self.varied | changed

    def raise_if_bad(
        self, index: int, batch: _Batch, start: int, count: int, session: Session
    ) -> None:
        assert self.finite is not None
        _check_finite(self.finite, index, batch, start)
        if (
            self.check_variation
            and count > 1
            and not (self.varied is not None and bool(self.varied))
        ):
            raise ValueError(
                _unchanged_message(session.engine.model, self.first, session.sites, count)
            )


def _unchanged_message(
    model: nn.Module, first: torch.Tensor | None, sites: list[DropoutSite], count: int
) -> str:
    """Why all passes were identical, with the hint that fits."""
    head = (
        f"Expected Monte Carlo dropout to change the output of `{type(model).__name__}`, but all "
        f"{count} passes of the first batch are identical: the uncertainty would be zero. "
    )
    full = [s.name or "<model>" for s in sites if s.rate is not None and s.rate >= 1.0]
    if full:
        return head + (
            f"Dropout sites with p = 1 drop every unit: {', '.join(full)}; a trained model "
            "never uses p = 1."
        )
    if first is not None and first.shape[1] > 1 and bool((first == first[:, :1]).all()):
        return head + (
            "The output is the same for every example too: the layers after the dropout may be "
            "zero or untrained (e.g. a zero-initialised head)."
        )
    names = ", ".join(s.name or "<model>" for s in sites[:5])
    if any(s.functions for s in sites):  # the probe saw the dropout run
        return head + (
            f"Dropout runs ({names}) but the output does not depend on what it drops (its result "
            "discarded, or zero weights after it)."
        )
    return head + (
        f"The sites ({names}) may not be what the model's randomness depends on: `include=` names "
        "modules to put in training mode, `scope='train_except_norm'` puts all but the norm "
        "layers in training mode."
    )


# -- one batch, all batches ---------------------------------------------------------------------
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
    session: Session,
    batch: _Batch,
    index: int,
    start: int,
    progress: _Progress,
    n_examples: int | None = None,
) -> Accumulator:
    """All samples of one batch, aggregated as a stream.

    The hot path does not wait for the device: the checks are device-side flags read once per
    batch (per chunk when the statistics are read anyway: adaptive ``n_samples``, or
    probabilities that are validated on the host).
    """
    o = session.engine.options
    acc: Accumulator | None = None
    checks = _Checks(check_variation=index == 0)
    eager = o.adaptive or (o.task == "classification" and o.outputs != "logits")
    minimum = min(o.n_samples, 16) if o.adaptive else o.n_samples
    target = minimum  # adaptive: samples expected to reach the tolerance, updated per chunk
    done = 0
    while done < o.n_samples:
        k = session.samples_per_pass(batch, o.n_samples - done)
        if o.adaptive:
            k = min(k, max(target - done, 1))
        k, outs = session.chunk(batch, k, done)
        checks.update(outs)
        if eager:
            assert checks.finite is not None
            _check_finite(checks.finite, index, batch, start)
        if acc is None:
            if index == 0:
                _check_samples_fit(o, n_examples, outs)
            acc = _accumulator(o, outs[0].ndim - 1)
        if isinstance(acc, RegressionAccumulator):
            acc.update(outs[0], outs[1] if len(outs) > 1 else None)
        else:
            acc.update(outs[0])
        done += k
        progress.update(k)
        if o.adaptive and done >= minimum:
            error = acc.max_standard_error()
            if error <= o.tolerance:
                break
            # MC error falls as 1 / sqrt(T): aim for the T that reaches the tolerance (+10 %).
            needed = done * (error / o.tolerance) ** 2 * 1.1 if math.isfinite(error) else 2 * done
            target = min(o.n_samples, max(done + 1, math.ceil(needed)))
    assert acc is not None
    checks.raise_if_bad(index, batch, start, done, session)
    return acc


class _Progress:
    """tqdm bar (terminal or notebook); without one, a single log line for long runs."""

    def __init__(self, enabled: bool | None, total: int | None) -> None:
        shown = _interactive() if enabled is None else enabled
        self.bar = tqdm(total=total, unit="pass", desc="MC dropout", disable=not shown, leave=False)
        self.total = total
        self.announce = enabled is None and not shown
        self.started = time.perf_counter()

    def update(self, n: int) -> None:
        self.bar.update(n)
        if self.announce and self.total:
            self.announce = False  # once, after the first chunk
            elapsed = time.perf_counter() - self.started
            estimate = elapsed * self.total / max(n, 1)
            if estimate > _ANNOUNCE_AFTER_S:
                logger.warning(
                    "mcdrop: %d samples in all; about %.0f s at the speed of the first chunk "
                    "(progress=True shows a bar).",
                    self.total,
                    estimate,
                )

    def close(self) -> None:
        self.bar.close()


def _interactive() -> bool:
    if sys.stderr is not None and sys.stderr.isatty():
        return True
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return bool(get is not None and get() is not None and "ipykernel" in sys.modules)


def _check_consistent(
    shape: tuple[int, ...] | None, out: torch.Tensor, index: int
) -> tuple[int, ...]:
    current = tuple(out.shape[2:])
    if shape is not None and current != shape:
        raise ValueError(
            f"Expected every batch to give outputs of shape (N, {', '.join(map(str, shape))}), but "
            f"batch {index} gave (N, {', '.join(map(str, current))})."
        )
    return current


def _check_samples_fit(options: SamplingOptions, n_examples: int | None, first: Outputs) -> None:
    """With ``keep_samples=True``: refuse up front what cannot fit in memory."""
    if not options.keep_samples or n_examples is None:
        return
    per_sample = sum(int(o[0, :1].numel()) * o.element_size() for o in first)
    need = options.n_samples * n_examples * per_sample
    total = (
        os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") if hasattr(os, "sysconf") else None
    )
    if total and need > total:
        raise ValueError(
            f"Expected `keep_samples=True` to fit in memory, but {options.n_samples} samples of "
            f"{n_examples} examples need {need / 2**30:.1f} GiB (this machine has "
            f"{total / 2**30:.1f} GiB): lower `n_samples` or use keep_samples=False (the "
            "statistics stream in O(N x C) memory)."
        )


def predict(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    options: SamplingOptions,
    seed: int | None,
    progress: bool | None,
    result_device: torch.device,
) -> ClassificationResult | RegressionResult:
    """:func:`mcdrop.predict_with_uncertainty` on one process."""
    engine = Engine(model, options)
    budget = options.batch_size or engine.planner.budget
    batches, n_batches, n_examples = iter_batches(
        inputs, batch_size=budget, targets=targets, target_key=options.target_key
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
    total = None if n_batches is None else n_batches * options.n_samples
    bar = _Progress(progress, total)
    states: list[dict[str, torch.Tensor]] = []
    target_parts: list[torch.Tensor] = []
    missing_targets = False
    out_shape: tuple[int, ...] | None = None
    counts: list[int] = []
    worst_se = 0.0
    start = 0
    try:
        with engine.session(first, seed, n_examples) as session:
            batch: _Batch | None = first
            index = 0
            while batch is not None:
                batch = batch.to(engine.device)
                acc = sample_batch(session, batch, index, start, bar, n_examples)
                state = acc.state()
                shaped = state["samples"] if "samples" in state else state["mean"].unsqueeze(0)
                out_shape = _check_consistent(out_shape, shaped, index)
                states.append({k: v.to(result_device) for k, v in state.items()})
                counts.append(acc.count)
                if options.keep_samples and len(set(counts)) > 1:
                    raise ValueError(
                        "Expected every batch to stop at the same number of samples with "
                        "`keep_samples=True`, but adaptive `n_samples='auto'` stopped batch 0 "
                        f"at {counts[0]} and batch {index} at {acc.count}; pass a fixed "
                        "`n_samples`, or a `batch_size` that puts all inputs in one batch."
                    )
                worst_se = max(worst_se, acc.max_standard_error())
                if batch.targets is None:
                    missing_targets = True
                else:
                    target_parts.append(batch.targets)
                start += batch.size
                index += 1
                batch = next(iterator, None)
    finally:
        bar.close()
    merged = concat_states(states, result_device)
    extra: dict[str, Any] = {
        "n_samples": max(counts),
        "targets": None if missing_targets or not target_parts else torch.cat(target_parts),
        "standard_error_reached": worst_se if options.adaptive else None,
        "masks": options.masks,
    }
    if options.task == "classification":
        cd = normalise_class_dim(options.class_dim, merged["mean"].ndim)
        return ClassificationResult(class_dim=cd, **merged, **extra)
    return RegressionResult(tau=options.tau, **merged, **extra)


def sample_stack(engine: Engine, batch: _Batch, seed: int | None) -> Outputs:
    """``T`` stacked samples of one batch (:meth:`mcdrop.MCDropout.forward`), with the checks."""
    n = engine.options.n_samples
    chunks: list[Outputs] = []
    with engine.session(batch, seed, batch.size) as session:
        batch = batch.to(engine.device)
        checks = _Checks(check_variation=True)
        done = 0
        while done < n:
            k, outs = session.chunk(batch, session.samples_per_pass(batch, n - done), done)
            checks.update(outs)
            chunks.append(outs)
            done += k
        checks.raise_if_bad(0, batch, 0, done, session)
    return tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))
