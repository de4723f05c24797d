"""One call's sampling: the plan in use, and the loop that runs chunks of passes.

A :class:`Run` lives for one call (:meth:`mcdrop.sampling._engine.Engine.run` yields it) and is
never kept. It starts from the first plan (:func:`~mcdrop.sampling._planner.make_plan`) and runs
chunks with :meth:`Run.chunk`. The first chunk settles what the probe could not: the sampling
twin confirms itself against a recording of that chunk
(:meth:`mcdrop.dropout.Sampling.confirm`), and an ``auto`` candidate must run and vary where the
loop varies. When either fails, the loop asks for the next plan (the twin's new sites, or one
more :class:`~mcdrop.sampling._planner.Fallback`) and runs the chunk again, from the same random
state with a seed: ``auto`` then gives the numbers of the strategy it settles on.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import torch
from torch import nn

from mcdrop.dropout import (
    AMBIGUOUS,
    GATING_TYPES,
    DropoutSite,
    FlagReads,
    MaskedDropout,
    ModelWriteError,
    Recording,
    Sampling,
    culprit,
    modules_of,
    retwin,
    set_flag,
    trained_modules,
    training_calls,
    training_flips,
    unwrap_compiled,
    watch_flags,
)
from mcdrop.sampling import _planner as planner
from mcdrop.sampling._checks import INTERACT, rows_interact, varies
from mcdrop.sampling._fingerprint import Fingerprint
from mcdrop.sampling._inputs import _Batch
from mcdrop.sampling._options import SamplingOptions
from mcdrop.sampling._planner import Plan, Planner
from mcdrop.sampling._rng import rng_state
from mcdrop.sampling._shared import (
    SHARED_VMAP_SAFE,
    attribution,
    eager_for_shared_masks,
    layouts_key,
    learn_layouts,
)
from mcdrop.sampling._strategies import Outputs, Recorded, Runner

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
        # Hand-written dropout fills a new tensor in place (``x.new_empty(B, 1, H).bernoulli_``):
        # under vmap the new tensor is not batched, and vmap refuses a different draw per sample.
        "Tensor.bernoulli_",
        "aten.bernoulli_",
    }
)
# PyTorch layers whose dropout runs inside a fused kernel (attention, RNNs); containers such as
# nn.Transformer hold them as submodules.
_FUSED_TYPES = (*GATING_TYPES, nn.RNNBase)


class EngineState(Protocol):
    """What a run reads from the engine that outlives it (:class:`~._engine.Engine`)."""

    model: nn.Module
    options: SamplingOptions
    device: torch.device
    planner: Planner
    memory_sized: bool

    def cuda_rows(self, runner: Runner, first: _Batch) -> int: ...


class StalePlan(Exception):
    """A kept plan's first chunk did not make the dropout calls its first call made, or raised:
    the call runs again with a new plan (:meth:`~._engine.Engine.run` with ``fresh``)."""


_PROBE_SEED = 0  # the training-mode probe of a kept plan draws the same numbers every call

# What the first chunk of a plan made, per pass (:meth:`mcdrop.dropout.MaskedDropout.counting`):
# the dropout calls by function and effective rate, the other random draws by function. A kept
# plan's first chunk must make the same (:meth:`Run.chunk`).
Calls = dict[Any, float]


@dataclasses.dataclass(frozen=True)
class Kept:
    """A plan kept between calls (:class:`~._engine.Plans`): everything a
    :class:`Run` decided, with the fingerprint taken before it decided (:mod:`._fingerprint`),
    and what its first chunk's passes made (``calls``; None: nothing is counted again, the
    masks are PyTorch's: ``compile=``, TorchScript)."""

    fingerprint: Fingerprint
    twin: Sampling
    plan: Plan
    profile: planner.Profile
    measured_rows: int | None
    runner: Runner
    eager: Runner
    calls: Calls | None
    modules: dict[str, nn.Module]
    # The dropout calls of training mode on the probe's examples (mcdrop.dropout.training_calls),
    # found again at every call; None when the plan was made without a probe.
    trained: dict[Any, float] | None
    # The twin's and the model's modules by id (ids only): who makes each counted call. The
    # fingerprint holds these very modules, so the ids stay theirs while the plan is used.
    names: tuple[dict[int, str], dict[int, str]]
    # What the model's train() switches on (mcdrop.dropout.trained_modules), for that probe.
    train_set: set[str] | None
    # The twin's training flags as the plan set them (a forward may assign some: every first
    # chunk, and every kept call, starts from these), by module.
    planned: tuple[bool, ...] = ()
    # The flags training mode flips, watched (mcdrop.dropout.watch_flags): training mode is
    # probed again only after a first chunk that read one of them. None: at every call.
    flags: FlagReads | None = None
    # the attributes of the twin's modules that are copies (mcdrop.dropout.retwin), once known
    rebound: dict[str, Any] = dataclasses.field(default_factory=dict)

    def still_trains_alike(self, model: nn.Module, probe_batch: _Batch) -> bool:
        """Whether training mode makes the dropout calls it made when the plan was made: a gate
        only training mode opens (a module global, a class attribute, a helper's state), opened
        since, is seen here and nowhere else; any error means no. (No probe, no check: a plan
        made without one, ``detect_silent=False`` or ``scope='train_except_norm'``.)"""
        if self.trained is None:
            return True
        try:
            return _training_calls(self.twin, self.train_set, probe_batch) == self.trained
        except Exception:
            return False

    def refresh(self, model: nn.Module) -> bool:
        """The twin as a new twin of ``model`` would be now (:func:`mcdrop.dropout.retwin`: what
        the fingerprint cannot see, and what the twin's own ``forward`` changed on an earlier
        call, taken again from the model), its modules that sample with copies of the model's
        buffers (never written to the model), its watched flags watched; False when a new plan
        is needed, as when the model's own ``train()`` now switches on other modules (it may
        read a global: ``if FREEZE: self.encoder.eval()``)."""
        inner = unwrap_compiled(model)[0]
        originals = modules_of(inner)
        rebound = retwin(model, self.modules, self.rebound.get("attributes"), originals)
        if rebound is None:
            return False
        # (None: no class overrides train(), and the fingerprint holds the classes and their
        # train(): still none does)
        if self.trained is not None and self.train_set is not None:
            try:  # a new throwaway twin: one kept between calls holds what train() wrote
                if trained_modules(inner) != self.train_set:
                    return False
            except Exception:
                return False
        if self.flags is not None:
            self.flags.arm()
        _set_flags_of(self.modules.values(), self.planned)
        self.rebound["attributes"] = rebound
        _copy_buffers(originals, list(self.modules.values()), self.planned)
        return True


def _copy_buffers(
    originals: list[nn.Module], modules: list[nn.Module], planned: tuple[bool, ...]
) -> None:
    """The twin's ``modules`` that sample (their ``planned`` flags) with copies of the buffers of
    their ``originals`` (the model's, as many, in the same order): never written to the model."""
    # (the flags as planned, not read through the modules: a watched flag read is noted)
    flags = planned if len(planned) == len(modules) else [m.training for m in modules]
    for original, module, flag in zip(originals, modules, flags, strict=True):
        if flag and original._buffers:
            module._buffers = OrderedDict(
                (k, None if v is None else v.clone()) for k, v in original._buffers.items()
            )


def _twin_root(twin: Sampling) -> nn.Module:
    return getattr(twin.module, "_orig_mod", twin.module)  # (torch.compile's wrapper)


def _training_calls(twin: Sampling, train_set: set[str] | None, batch: _Batch) -> Calls:
    """The dropout calls of the twin in training mode on ``batch`` (the probe's examples), as a
    kept plan compares them (:func:`mcdrop.dropout.training_calls`, always the same seed)."""
    return training_calls(_twin_root(twin), train_set, (batch.args, batch.kwargs), _PROBE_SEED)


def _flags_of(twin: Sampling) -> tuple[bool, ...]:
    """The training flags of the twin's modules, in ``named_modules`` order."""
    return tuple(m.training for m in _twin_root(twin).modules())


def _set_flags_of(modules: Iterable[nn.Module], flags: tuple[bool, ...]) -> None:
    """Set the flags of ``modules`` (a twin's, in ``named_modules`` order) to ``flags`` where
    they differ (a watched flag is set by :meth:`mcdrop.dropout.FlagReads.arm`)."""
    for module, flag in zip(modules, flags, strict=True):
        if module.__dict__.get("training", flag) is not flag:
            set_flag(module, flag)


class Run:
    """Sampling of one call's batches (see the module docstring).

    Parameters
    ----------
    engine : Engine
        What outlives the call: model, options, device, pass sizing.
    twin : mcdrop.dropout.Sampling
        The sampling twin, its check possibly pending until the first chunk.
    first : _Batch
        The first batch, on the device.
    probe_batch : _Batch
        Its first (up to) two examples, which the probe ran.
    seeded : bool
        A seed was given: a first chunk that runs again rewinds PyTorch's generators (when the
        masks come from them: ``masks_seed`` None).
    call_rows : int or None
        Samples x examples of the whole call, None when unknown.
    masks_seed : int or None, default=None
        The seed of mcdrop's own generators: every dropout call is then answered by
        :class:`mcdrop.dropout.MaskedDropout` and every random op draws from it (a first chunk
        that runs again rewinds them). None: PyTorch's dropout and global generators (compiled
        graphs, TorchScript).
    shared : bool, default=False
        Shared masks (``masks="shared"``, with ``masks_seed``): sample ``t`` is one network.
    """

    def __init__(
        self,
        engine: EngineState,
        twin: Sampling,
        first: _Batch,
        probe_batch: _Batch,
        *,
        seeded: bool,
        call_rows: int | None,
        masks_seed: int | None = None,
        shared: bool = False,
    ) -> None:
        o = engine.options
        self.engine = engine
        self.twin = twin
        self.planned = _flags_of(twin)  # the twin's flags as the plan set them
        self.first = first
        self.probe_batch = probe_batch
        self.seeded = seeded
        self.call_rows = call_rows
        self.compiled = o.compile is not None or unwrap_compiled(engine.model)[1]
        self.runner, self.eager = _runners(engine, twin, masks_seed, shared)
        self.masks = self.runner.masks if shared else None  # shared masks' own steps
        self.layouts_keepable = True  # shared masks: layouts that may be kept with the plan
        if self.masks is not None:
            self.layouts_keepable = learn_layouts(self.eager, first, self._layouts_key())
        self.validated = False  # the first chunk checks the auto candidate
        self.samples_per_pass: int | None = None  # the most samples per pass since a back-off
        self.first_chunk_seconds: float | None = None  # the first chunk that stood, timed
        if twin.pending is None:
            _log_layer_skips(twin.trace.layer_skips)
        self.profile = profile_of(twin, probe_batch.size, self.runner.masks, shared=shared)
        self.measured_rows: int | None = None
        self.calls: Calls | None = None  # the calls of the first chunk that stood
        self.checking: Calls | None = None  # a kept plan: its first chunk must make these
        self.kept_modules: dict[str, nn.Module] | None = None  # a kept plan's, by name
        self.kept_trained: dict[Any, float] | None = None  # ... and its training-mode calls
        self.kept_names: tuple[dict[int, str], dict[int, str]] | None = None  # (_module_names)
        self.kept_train_set: set[str] | None = None  # ... and what the model's train() sets
        self.rechecking: Kept | None = None  # a kept plan, probed again if its flags are read
        self.flags_read: list[Any] = []  # ... the code that read them in its first chunk
        plan = self._checked(self._make_plan(()))
        if engine.memory_sized:
            self.measured_rows = engine.cuda_rows(self.eager, first)
            plan = self._make_plan(plan.fallbacks)
        self.plan = plan
        engine.planner.adopt(plan)

    @classmethod
    def resumed(
        cls,
        engine: EngineState,
        kept: Kept,
        first: _Batch,
        probe_batch: _Batch,
        *,
        seeded: bool,
        call_rows: int | None,
        masks_seed: int | None = None,
    ) -> Run:
        """A run on a kept plan (no probe, no examples-interact check, nothing measured): its
        first chunk is counted and must make the calls ``kept.calls`` (when known), else it
        raises :class:`StalePlan`. ``masks_seed``: this call's seed of mcdrop's generators (the
        kept runners then draw from new ones; None: PyTorch's, as when the plan was made)."""
        run = cls.__new__(cls)
        run.engine, run.twin, run.first, run.probe_batch = engine, kept.twin, first, probe_batch
        run.seeded, run.call_rows = seeded, call_rows
        run.compiled = engine.options.compile is not None or unwrap_compiled(engine.model)[1]
        run.runner, run.eager = copy.copy(kept.runner), copy.copy(kept.eager)
        if (masks_seed is None) != (kept.runner.masks is None):
            raise StalePlan("the source of the random numbers changed")
        run.masks = None
        run.layouts_keepable = True
        layouts = None if kept.runner.masks is None else kept.runner.masks.layouts
        if masks_seed is not None:
            masks = MaskedDropout(masks_seed, None if layouts is None else dict(layouts))
            run.runner.masks = run.eager.masks = masks
            if layouts is not None:  # shared masks: the kept layouts, hooks on the kept twin
                run.masks = masks
                run.runner.attributed = run.eager.attributed = attribution(masks, kept.twin)
        # What the fingerprint cannot see (a module-level flag, a patched function) may make the
        # examples of a pass interact: a kept 'replicate' checks again (three small passes).
        if kept.plan.strategy == "replicate" and rows_interact(run.eager, first) == INTERACT:
            raise StalePlan("the examples of a pass interact")
        run.validated = True
        run.samples_per_pass = None
        run.first_chunk_seconds = None
        run.profile, run.measured_rows, run.plan = kept.profile, kept.measured_rows, kept.plan
        run.calls = kept.calls
        run.checking = kept.calls
        run.kept_modules = kept.modules
        run.kept_trained = kept.trained
        run.kept_names = kept.names
        run.kept_train_set = kept.train_set
        run.rechecking = kept if kept.flags is not None and kept.trained is not None else None
        run.planned = kept.planned
        run.flags_read = []
        engine.planner.adopt(kept.plan)
        return run

    def kept(self, mark: Fingerprint) -> Kept | None:
        """What a later call with the fingerprint ``mark`` may use again; None when nothing is
        to be kept (the twin's check still pending, the candidate not checked, shared masks
        whose layouts are ambiguous)."""
        if not self.layouts_keepable or self.twin.pending is not None or not self.validated:
            return None
        if self.calls is not None and AMBIGUOUS in self.calls:
            return None  # see mcdrop.dropout.MaskedDropout.counting
        modules = self.kept_modules
        root = _twin_root(self.twin)
        if modules is None:
            modules = dict(root.named_modules())
        _set_flags_of(modules.values(), self.planned)  # what the call's forward assigned, undone
        trained = self.kept_trained
        model = unwrap_compiled(self.engine.model)[0]
        o = self.engine.options
        probed = o.detect_silent and o.scope != "train_except_norm"  # as a new plan would be
        if trained is None and probed:
            try:
                self.kept_train_set = trained_modules(model)
                trained = _training_calls(self.twin, self.kept_train_set, self.probe_batch)
            except Exception:  # training mode does not run: nothing to compare later calls to
                return None
        masks = self.runner.masks
        if masks is not None:
            masks.release()  # its caches are this call's; a kept call makes its own
        flags = None
        if trained is not None and masks is not None and not self.compiled:
            flags = watch_flags(training_flips(root, self.kept_train_set))
        return Kept(
            mark,
            self.twin,
            self.plan,
            self.profile,
            self.measured_rows,
            self.runner,
            self.eager,
            self.calls,
            modules,
            trained,
            self._module_names(),
            self.kept_train_set,
            self.planned,
            flags,
        )

    @property
    def sites(self) -> list[DropoutSite]:
        return self.twin.sites

    def samples_for(self, batch: _Batch, remaining: int) -> int:
        """Samples of the next chunk of ``batch`` (at most ``remaining``)."""
        return self.engine.planner.samples_per_pass(batch.size, remaining)

    # -- the loop ----------------------------------------------------------------------------
    def chunk(
        self, batch: _Batch, k: int, *, first: int = 0, timed: bool = False
    ) -> tuple[int, Outputs]:
        """Up to ``k`` samples of ``batch``, backing off on out-of-memory; ``(k used, outputs)``.

        Only ``torch.OutOfMemoryError`` is retried (fewer samples, then fewer examples per pass);
        any other error propagates. The first chunk also settles the twin's check and the
        ``auto`` candidate: while either fails, the next plan is adopted and the chunk runs
        again, sized as if it had come first. ``first``: the index of the chunk's first sample
        (shared masks: sample ``t`` is network ``f_t``). ``timed``: time the passes of the chunk
        that stands (kept for the first one only), synchronising a CUDA device.
        """
        plans = self.engine.planner
        # A first chunk that is run again (another candidate, a new plan) starts from the same
        # random state: auto then gives the numbers of the strategy it settles on. PyTorch's
        # process-wide generators are rewound only with a seed (else nothing is to be
        # reproduced, and rewinding would hand other threads the same numbers again).
        rewind = self._rewind() if not self.validated else _unchanged
        requested = k
        while True:
            k = min(k, plans.sample_cap or k)
            examples = plans.examples_per_pass(batch.size)
            started = time.perf_counter()
            try:
                outs, recording, counted = self._sample(batch, k, examples, first)
                took = self._seconds_since(started) if timed else 0.0
            except torch.OutOfMemoryError:
                self._back_off(k, batch)
                continue
            except ModelWriteError:  # (no other plan or strategy writes less)
                raise
            except Exception as error:
                if self.checking is not None:
                    raise StalePlan(f"{type(error).__name__}: {error}") from error
                if self.validated:
                    raise
                self._adopt(self._after_error(error, batch))
            else:
                plan = self._after_chunk(outs, recording, counted)
                if plan is None:
                    break
                self._adopt(plan)
            k = plans.samples_per_pass(batch.size, requested)
            rewind()
        if timed and self.first_chunk_seconds is None:
            self.first_chunk_seconds = took
        if self.samples_per_pass is None or k > self.samples_per_pass:
            self.samples_per_pass = k
            logger.info(
                "mcdrop: strategy %r, %d samples per pass of %d examples.",
                self.plan.strategy,
                k,
                examples,
            )
        return k, outs

    def _rewind(self) -> Callable[[], None]:
        """What puts the generators of the passes back in their present state."""
        if self.runner.masks is not None:
            return self.runner.masks.state()
        return rng_state(self.engine.device) if self.seeded else _unchanged

    def _seconds_since(self, started: float) -> float:
        """Seconds the passes took since ``started`` (the device synchronised)."""
        if self.engine.device.type == "cuda":
            torch.cuda.synchronize(self.engine.device)
        return time.perf_counter() - started

    def _sample(
        self, batch: _Batch, k: int, examples: int, first: int = 0
    ) -> tuple[Outputs, Recording | None, Calls | None]:
        """One chunk, recorded while the sampling twin's check is pending, and its calls
        counted while the plan is not settled (the first chunk; None when not counted)."""
        masks = self.runner.masks
        counting = masks is not None and (not self.validated or self.checking is not None)
        counter = masks.counting(*self._module_names()) if counting and masks is not None else None
        kept = self.rechecking if self.checking is not None else None
        if not self.validated or self.checking is not None:  # a first chunk starts from the
            # plan's flags, whatever the passes before it (layouts, checks) assigned
            if kept is not None and kept.flags is not None:
                kept.flags.arm()
            _set_flags_of(_twin_root(self.twin).modules(), self.planned)
        with (
            counter or contextlib.nullcontext() as counted,
            kept.flags.noting() if kept and kept.flags else contextlib.nullcontext() as read,
        ):
            if self.twin.pending is None:
                outs, rec = self._run_split(batch, k, examples, first=first), None
            else:
                with self.twin.recording() as rec:
                    outs = self._run_split(batch, k, examples, rec.modes, first)
        if read is not None:
            self.flags_read = read
        return outs, rec, None if counted is None else counted.calls

    def _module_names(self) -> tuple[dict[int, str], dict[int, str]]:
        """The sampling twin's modules by id (who makes each counted call), and the model's;
        a kept plan's, as it kept them."""
        if self.kept_names is not None:
            return self.kept_names
        modules = self.kept_modules
        if modules is None:
            modules = dict(_twin_root(self.twin).named_modules())
        model = unwrap_compiled(self.engine.model)[0]
        self.kept_names = (
            {id(module): name for name, module in modules.items()},
            {id(module): name for name, module in model.named_modules()},
        )
        return self.kept_names

    def _run_split(
        self,
        batch: _Batch,
        k: int,
        examples: int,
        record: Recorded | None = None,
        first: int = 0,
    ) -> Outputs:
        strategy = self.plan.strategy
        if batch.size <= examples:
            return self.runner.run(strategy, batch, k, record=record, first=first)
        parts = [
            self.runner.run(
                strategy,
                batch.slice(lo, min(lo + examples, batch.size)),
                k,
                record=record,
                first=first,
            )
            for lo in range(0, batch.size, examples)
        ]
        return tuple(torch.cat(outs, 1) for outs in zip(*parts, strict=True))

    def _back_off(self, k: int, batch: _Batch) -> None:
        change = self.engine.planner.back_off(k, batch.size)
        if self.engine.device.type == "cuda":
            torch.cuda.empty_cache()
        self.samples_per_pass = None
        logger.warning("mcdrop: %s", change)

    # -- after the first chunk: the plan that stands -------------------------------------------
    def _after_chunk(
        self, outs: Outputs, recording: Recording | None, counted: Calls | None
    ) -> Plan | None:
        """None when the chunk stands: the twin confirmed by its recording (or the full check
        kept the sites) and, the first time, the candidate valid; else the next plan. A kept
        plan's first chunk that does not make its first call's calls raises :class:`StalePlan`."""
        if self.checking is not None:
            if counted != self.checking:
                raise StalePlan("the first chunk made other dropout calls than the kept plan's")
            kept = self.rechecking
            if kept is not None and self.flags_read:
                if not kept.still_trains_alike(self.engine.model, self.probe_batch):
                    raise StalePlan("training mode makes other dropout calls than the kept plan's")
            self.checking = None
            return None
        if recording is not None and self._confirm_twin(recording):
            return self._replanned()
        if self.validated:
            return None
        reason = self._invalid(outs)
        if reason is None:
            self.validated = True
            self.calls = counted
            return None
        return self._fall_back(reason)

    def _after_error(self, error: Exception, batch: _Batch) -> Plan:
        """The next plan after the first chunk raised ``error``, or the error, explained: by the
        full check of the sampling twin while it is pending (its own error, or new sites), or
        as a ``strategy='vmap'`` that cannot run a model that runs without vmap."""
        if self.plan.can_fall_back:
            return self._fall_back(f"{type(error).__name__}: {error}")
        if self.twin.pending is not None and self._confirm_twin(None):
            return self._replanned()
        if self.plan.strategy == "vmap" and self._loop_runs(batch):
            raise ValueError(
                "Expected a `strategy` that can run this model, but 'vmap' cannot: "
                f"{self._where_vmap_fails()}raised {type(error).__name__}: {error}; without vmap "
                "the model runs. Use strategy='auto', 'replicate' or 'loop'."
            ) from error
        raise error

    def _where_vmap_fails(self) -> str:
        """``"`module` (function) "``: the innermost module and the torch call that raised in a
        vmap pass of the probe's examples (random state forked, nothing kept); ``""`` when that
        pass runs or nothing names it."""
        root = _twin_root(self.twin)
        with culprit(dict(root.named_modules())) as mode:
            try:
                with self.eager.forked():
                    self.eager.run("vmap", self.probe_batch, 2, record=lambda: mode)
            except Exception:
                pass
        if mode.found is None:
            return ""
        name, func = mode.found
        return f"`{name or '<model>'}` ({func}) "

    def _confirm_twin(self, recording: Recording | None) -> bool:
        """Settle the sampling twin's check (:meth:`mcdrop.dropout.Sampling.confirm`); whether
        it changed the sites (then the plan is made again). Outside the chunk's error handling:
        an error of the check is never taken for a strategy that cannot run the model."""
        before = self.twin.sites
        self.twin = self.twin.confirm(recording)
        if self.twin.sites is not before:  # the full check ran: it set every flag again
            self.planned = _flags_of(self.twin)
        skips = self.twin.trace.layer_skips
        self.runner.no_layer_skip = self.eager.no_layer_skip = bool(skips)
        self.runner.out_of_place = self.eager.out_of_place = self.twin.trace.out_of_place
        self.runner.copy_inputs = self.eager.copy_inputs = _copy_inputs(self.twin)
        _log_layer_skips(skips)
        return self.twin.sites != before

    def _invalid(self, outs: Outputs) -> str | None:
        """Why an ``auto`` candidate is invalid on its first chunk: it drew identical samples
        where the loop does not (None when valid, or when nothing could replace it)."""
        if not self.plan.can_fall_back:
            return None
        if outs[0].shape[0] > 1 and not varies(outs):
            with self.runner.forked():
                if not varies(self.runner.run("loop", self.probe_batch, 2)):
                    return None  # the loop does not vary either: the checks will say why
            return "it drew identical samples where the loop did not"
        return None

    def _fall_back(self, reason: str) -> Plan:
        """The plan without this candidate, for the rest of the call: a new plan (the twin's
        check changed the sites) does not bring it back."""
        logger.info(
            "mcdrop: strategy %r does not work for %s (%s); falling back.",
            self.plan.strategy,
            type(self.engine.model).__name__,
            reason,
        )
        plan = self._checked(self._make_plan(self.plan.falling_back(reason)))
        # An out-of-memory cap of the dropped candidate (vmap may hold more rows) is not the
        # next one's: it starts as it would have, had it been chosen first.
        self.engine.planner.adopt(plan, fresh=True)
        return plan

    def _replanned(self) -> Plan:
        """The plan for the sites the twin's full check settled on."""
        if self.masks is not None:  # shared masks: the new sites' calls, and where the rows are
            self.runner.attributed = self.eager.attributed = attribution(self.masks, self.twin)
            self.layouts_keepable = learn_layouts(self.eager, self.first, self._layouts_key())
        self.profile = profile_of(
            self.twin, self.probe_batch.size, self.runner.masks, shared=self.masks is not None
        )
        return self._checked(self._make_plan(self.plan.fallbacks))

    def _layouts_key(self) -> object:
        e = self.engine
        return layouts_key(e.model, self.twin, self.first, e.options, e.device, self.eager)

    def _adopt(self, plan: Plan) -> None:
        self.plan = plan
        self.engine.planner.adopt(plan)

    # -- making plans ------------------------------------------------------------------------
    def _make_plan(self, fallbacks: tuple[planner.Fallback, ...]) -> Plan:
        return planner.make_plan(
            self.profile,
            self.engine.options,
            self.engine.device,
            compiled=self.compiled,
            call_rows=self.call_rows,
            first_rows=self.first.size,
            measured_rows=self.measured_rows,
            fallbacks=fallbacks,
        )

    def _checked(self, plan: Plan) -> Plan:
        """``plan``, or while its strategy is replicate and the examples of a pass interact, the
        next one (a replicated batch must not mix its samples); logged."""
        while plan.strategy == "replicate":
            # from the plan's flags, whatever the passes before (shared masks' layouts) assigned
            _set_flags_of(_twin_root(self.twin).modules(), self.planned)
            reason = rows_interact(self.eager, self.first)
            if not reason:
                break
            if plan.can_fall_back:  # auto: the next candidate
                logger.info("mcdrop: strategy 'replicate' does not fit this model (%s).", reason)
                plan = self._make_plan(plan.falling_back(reason))
                continue
            if reason == INTERACT:
                raise ValueError(
                    "Expected a `strategy` other than 'replicate' for this model: "
                    f"{INTERACT} (with its dropout off), so a replicated batch would mix the "
                    "samples of its copies. Use strategy='auto', 'vmap' or 'loop' (each sample "
                    "then sees the batch as it is)."
                )
            logger.warning(  # random beyond its dropout, or the check's passes raised
                "mcdrop: strategy 'replicate': whether the examples of a pass interact "
                "cannot be checked (%s); a replicated batch would mix samples if they do "
                "('auto', 'vmap' or 'loop' avoid it).",
                reason,
            )
            break
        logger.info(
            "mcdrop: strategy %r (%.0f%% of the FLOPs before the first dropout).",
            plan.strategy,
            100 * self.profile.prefix_share,
        )
        return plan

    def _loop_runs(self, batch: _Batch) -> bool:
        """Whether one plain sample of the same batch runs (so an error was vmap's, not the
        model's); random state forked, nothing kept."""
        try:
            with self.runner.forked():
                self.runner.run("loop", batch, 1)
        except Exception:
            return False
        return True


def _runners(
    engine: EngineState, twin: Sampling, masks_seed: int | None = None, shared: bool = False
) -> tuple[Runner, Runner]:
    """The runner of the passes (compiled with ``compile=``) and an eager one on the same twin:
    the examples-interact check and the memory measurement run eagerly (compiling them, with
    eval flags and other shapes, would not pay). With ``masks_seed`` both answer every dropout
    call with the same :class:`mcdrop.dropout.MaskedDropout` (shared masks, or independent
    masks from mcdrop's generators), eagerly."""
    o = engine.options
    module: Any = twin.module
    masks = None
    if masks_seed is not None:
        masks = MaskedDropout(masks_seed, layouts={} if shared else None)
    if shared:
        module = eager_for_shared_masks(module, o.compile is not None)
    elif o.compile is not None:
        # Cheap: dynamo caches graphs on the forward's code object, guarded on the module's
        # structure and flags, so a new twin per call reuses them.
        module = torch.compile(module, **o.compile)
    runner = Runner(
        module,
        device=engine.device,
        amp=o.amp,
        n_outputs=o.n_outputs,
        output_transform=o.output_transform,
        no_layer_skip=bool(twin.trace.layer_skips),
        out_of_place=twin.trace.out_of_place,
        copy_inputs=_copy_inputs(twin),
        masks=masks,
        attributed=attribution(masks, twin) if masks is not None and shared else None,
    )
    eager = copy.copy(runner)
    eager.module = getattr(twin.module, "_orig_mod", twin.module)
    return runner, eager


def _copy_inputs(twin: Sampling) -> bool:
    """Whether a ``loop`` pass runs on a copy of its inputs: an in-place dropout stays in place
    (its input read again), or the sites were not probed (what runs in place is unknown)."""
    trace = twin.trace
    return bool(trace.aliased) or (not trace.calls and bool(twin.sites))


def _unchanged() -> None:
    """What rewinds the generators when nothing is to be rewound (no seed, a later chunk)."""


def _log_layer_skips(skips: set[str]) -> None:
    if skips:
        logger.info("mcdrop: layer drop of %s kept off while sampling.", sorted(skips))


# -- what the probe measured, for the plan -------------------------------------------------------
def _unprobed(twin: Sampling) -> set[str]:
    """Modules that may hide a dropout kernel vmap cannot give a mask per sample, when the sites
    were found without a probe (``detect_silent=False``, ``scope='train_except_norm'``): then
    mcdrop cannot see which kernels run (a parent may read a child ``nn.Dropout``'s rate into
    fused attention), so any module that is a fused PyTorch layer or not one of PyTorch's own
    layers counts."""
    if twin.trace.calls or not twin.sites:  # probed: the calls name the kernels
        return set()
    root = getattr(twin.module, "_orig_mod", twin.module)  # torch.compile's wrapper
    unsafe = set()
    for module in root.modules():
        if isinstance(module, _FUSED_TYPES) or not type(module).__module__.startswith("torch.nn."):
            unsafe.add(f"{type(module).__name__} (not probed)")
    return unsafe


def profile_of(
    twin: Sampling, probe_rows: int, masks: MaskedDropout | None = None, *, shared: bool = False
) -> planner.Profile:
    """What the probe measured on ``probe_rows`` examples, as the plan reads it; ``masks``:
    mcdrop's own masks, which write out the fused attention kernels (vmap batches them);
    ``shared``: they are shared masks, which give a tensor without a batch dimension one mask
    per pass (replicate would share it)."""
    functions = {f for site in twin.sites for f in site.functions}
    if masks is not None:
        functions -= SHARED_VMAP_SAFE
    trace = twin.trace
    # With the check pending the trace is the training probe's: only the calls that sample.
    sampled = trace.calls if twin.pending is None else twin.pending.expected
    on_weights = {key[0] or "<model>" for key in trace.on_weights if key in sampled}
    if masks is not None and shared:
        unbatched = masks.layouts or {}
        on_weights |= {key[0] or "<model>" for key, lay in unbatched.items() if lay.dim is None}
    counted = trace.flops_complete  # else the FLOPs, the prefix share and the call's size unknown
    # In-place dropout whose input the forward reads again stays in place: under vmap the
    # prefix it writes is shared by every sample, so it cannot hold a mask per sample.
    in_place = {
        f"an in-place {label} in `{name or '<model>'}` whose input the forward reads again "
        f"({reader})"
        for (name, label, p), reader in trace.aliased.items()
        if (name, label, p) in sampled
    }
    return planner.Profile(
        prefix_flops=trace.prefix_flops(sampled) if counted else 0,
        total_flops=trace.total_flops if counted else 0,
        vmap_unsafe=tuple(sorted((functions & _VMAP_UNSAFE) | _unprobed(twin) | in_place)),
        replicate_unsafe=tuple(sorted(on_weights)),
        bytes_per_row=trace.output_bytes / max(probe_rows, 1),
        flops_per_row=trace.total_flops / max(probe_rows, 1) if counted else 0.0,
    )
