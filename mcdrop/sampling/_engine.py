"""What one model and one set of options keep between calls, and the start of every call.

:class:`Engine` is what :func:`mcdrop.predict_with_uncertainty` creates per call and
:class:`mcdrop.MCDropout` keeps between calls. It holds only what stays valid across calls: the
model, the options, the device, and the pass sizing (:class:`~mcdrop.sampling._planner.Planner`:
rows per pass, out-of-memory caps, and the CUDA rows measured per model and input signature).
Everything a call decides (the twin, its sites, the plan, the first batch) lives in the
:class:`~mcdrop.sampling._run.Run` that :meth:`Engine.run` yields, and goes with it; what of it
may serve a later call goes into :class:`Plans` (``MCDropout``'s own, or the ones
:func:`function_plans` keeps per model for the function), guarded by a fingerprint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import logging
import threading
import warnings
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from mcdrop.dropout import Probe, check_sites, guarding, sampling_twin, user_stacklevel
from mcdrop.sampling import _memory as memory
from mcdrop.sampling import _planner as planner
from mcdrop.sampling._fingerprint import Fingerprint, fingerprint
from mcdrop.sampling._inputs import _Batch
from mcdrop.sampling._options import SamplingOptions
from mcdrop.sampling._refusals import refuse_up_front
from mcdrop.sampling._rng import fresh_seed, sampling_rng
from mcdrop.sampling._run import Kept, Run
from mcdrop.sampling._shared import check_shareable, scripted_modules
from mcdrop.sampling._strategies import Runner

__all__: list[str] = []

logger = logging.getLogger("mcdrop")


def global_stream(model: nn.Module, options: SamplingOptions) -> str | None:
    """What makes a call draw its masks from PyTorch's global generators (None: nothing, the
    usual case): dropout that runs where mcdrop cannot give it a generator, inside a compiled
    graph or TorchScript."""
    scripted = scripted_modules(model)
    if scripted:
        return (
            f"the TorchScript module(s) {', '.join(scripted[:3])} (their dropout runs in C++); "
            "sample the eager model instead"
        )
    if options.compile is not None:  # a compiled model's twin runs eagerly: not this case
        return "compile= (the compiled graph draws its own dropout masks); use compile=None instead"
    return None


_WARNED: set[str] = set()


def warn_global_stream(reason: str) -> None:
    """Say once per process (per reason) that a call draws from PyTorch's global generators."""
    if reason in _WARNED:
        return
    _WARNED.add(reason)
    warnings.warn(
        f"mcdrop: this model's dropout draws from PyTorch's global random generator because of "
        f"{reason}. A call with `seed=` then seeds that generator for its duration: another "
        "thread drawing from it meanwhile repeats numbers and changes this call's samples. "
        "Everywhere else mcdrop draws from its own generator and leaves the global one alone.",
        UserWarning,
        stacklevel=user_stacklevel(),
    )


def model_device(model: nn.Module) -> torch.device:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


class Engine:
    """Sampling state of one model and one set of options (see the module docstring)."""

    def __init__(
        self, model: nn.Module, options: SamplingOptions, *, plans: Plans | None = None
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}."
            )
        self.model = model
        self.options = options
        self.device = options.device or model_device(model)
        self.planner = planner.Planner(options.batch_budget or planner.default_budget(self.device))
        # On CUDA without an explicit budget the rows per pass come from one measured pass (see
        # measure_rows), per model structure and input signature (_BUDGETS): an engine that
        # saw other inputs first sizes the passes as a new one would.
        self.memory_sized = options.batch_budget is None and self.device.type == "cuda"
        # With ``plans`` (MCDropout's own, or the function's per model: function_plans), the
        # plans of the last calls, used again while the fingerprint of the model, inputs and
        # torch's modes is the same (see run); ``plans_made`` counts the calls that built and
        # probed a twin.
        self.plans = plans
        self.plans_made = 0

    @property
    def kept(self) -> list[Kept]:
        """The plans kept, most recent first (none without ``plans``)."""
        return [] if self.plans is None else self.plans.kept

    @contextlib.contextmanager
    def run(
        self, first: _Batch, seed: int | None, n_examples: int | None, *, fresh: bool = False
    ) -> Iterator[Run]:
        """Seeded sampling of the batches of one call (``n_examples`` in all, None when
        unknown): the sampling twin, built and probed on ``first``, and the call's plan; or,
        with ``plans`` and unless ``fresh``, the plan kept from an earlier call whose fingerprint
        (:mod:`._fingerprint`) is the same as this call's. A kept plan's first chunk may find it
        stale (:class:`~._run.StalePlan`): the caller then runs the call again with ``fresh``.

        Every mask is drawn from mcdrop's own generators, keyed by ``seed`` (a fresh one from
        the operating system when None): PyTorch's global generators are neither drawn from,
        seeded nor forked. Only where the dropout runs inside code mcdrop cannot reach (a compiled
        graph, TorchScript: :func:`global_stream`) does a seeded call seed them, as before.
        """
        o = self.options
        shared = o.masks == "shared"
        call_rows = None if n_examples is None else n_examples * o.sample_limit
        # Taken before the twin is built: a model changed meanwhile leaves a kept plan whose
        # fingerprint is not the model's, so the next call plans again.
        plans = self.plans
        mark = None if plans is None else self._fingerprint(first, call_rows)
        kept = None if plans is None or mark is None or fresh else plans.take(mark)
        if kept is None:  # (a kept plan's fingerprint holds what these refuse: devices, classes)
            self._refuse(first)
        # (a kept plan's modules and options are those it was made with: its masks say)
        if shared or (kept is not None and kept.runner.masks is not None):
            unreachable = None
        else:
            unreachable = global_stream(self.model, o)
        if unreachable is None:
            seed = fresh_seed() if seed is None else seed
        else:
            warn_global_stream(unreachable)
        private = seed if unreachable is None else None
        # (no pass of the call writes into the model's tensors: mcdrop.dropout._writes)
        tensors = None if mark is None else mark.tensors()  # (else the guard walks the model)
        with sampling_rng(None if private is not None else seed, self.device):
            with guarding(self.model, tensors):
                with torch.inference_mode():
                    first = first.to(self.device)
                    small = first.slice(0, min(2, first.size))
                    if kept is not None and not (
                        kept.refresh(self.model)
                        and (kept.flags is not None or kept.still_trains_alike(self.model, small))
                    ):
                        kept = None  # the twin is not what a new plan would make: plan afresh
                        self._refuse(first)
                    if kept is not None:
                        yield Run.resumed(
                            self,
                            kept,
                            first,
                            small,
                            seeded=seed is not None,
                            call_rows=call_rows,
                            masks_seed=private,
                        )
                        assert plans is not None
                        plans.give_back(kept)
                        return
                    self.plans_made += 1
                    probe = Probe(
                        (small.args, small.kwargs), (first.args, first.kwargs), private=private
                    )
                    # Without compile (mcdrop's masks run eagerly), the sampling twin's check runs on
                    # the first chunk (Run).
                    with sampling_twin(
                        self.model,
                        o.scope,
                        o.include,
                        o.exclude,
                        probe if o.detect_silent else None,
                        defer=o.compile is None or shared,
                    ) as twin:
                        check_sites(self.model, twin.sites)
                        run = Run(
                            self,
                            twin,
                            first,
                            small,
                            seeded=seed is not None,
                            call_rows=call_rows,
                            masks_seed=private,
                            shared=shared,
                        )
                        yield run
                    kept = None if mark is None else run.kept(mark)
                    if plans is not None and kept is not None:
                        plans.give_back(kept)

    def _refuse(self, first: _Batch) -> None:
        """Refuse what cannot be sampled at all (a meta model or input, an empty batch,
        TorchScript with shared masks) before planning."""
        refuse_up_front(self.model, first, self.device)
        if self.options.masks == "shared":
            check_shareable(self.model)

    def _fingerprint(self, first: _Batch, call_rows: int | None) -> Fingerprint | None:
        """None when the model's attributes cannot all be read (a TorchScript module's,
        uninitialised lazy parameters): then no plan is kept, and the call plans (and refuses
        what it refuses) as a first call does."""
        try:
            return fingerprint(
                self.model, (first.args, first.kwargs), (call_rows, str(self.device))
            )
        except Exception:
            return None

    # -- CUDA rows per pass ---------------------------------------------------------------------
    def cuda_rows(self, runner: Runner, first: _Batch) -> int:
        """Rows per pass for this model and input signature: kept (``_BUDGETS``) or measured."""
        key = _budget_key(self.model, first, self.options, self.device)
        if key in _BUDGETS:
            return _BUDGETS[key]
        measured = measure_rows(runner, first, self.device)
        if measured is None:  # out of memory: this call samples row-wise, nothing kept
            return max(1, first.size // 2)
        if len(_BUDGETS) >= _MAX_BUDGETS:
            _BUDGETS.pop(next(iter(_BUDGETS)))
        _BUDGETS[key] = measured
        return measured


class Plans:
    """Plans kept between calls for one model and one set of options: most recent first, one per
    fingerprint (input signature), at most ``_MAX_KEPT``, all of the model as the latest saw it.
    A plan is taken by one call at a time (another thread meanwhile plans afresh). ``weak``:
    their fingerprints hold the model weakly (:func:`function_plans`)."""

    def __init__(self, *, weak: bool = False) -> None:
        self.kept: list[Kept] = []
        self.weak = weak
        self._lock = threading.Lock()

    def take(self, mark: Fingerprint) -> Kept | None:
        """The kept plan whose fingerprint is ``mark``, or None; it is the caller's until it
        gives it back."""
        with self._lock:
            for i, kept in enumerate(self.kept):
                if kept.fingerprint == mark:
                    return self.kept.pop(i)
        return None

    def give_back(self, kept: Kept) -> None:
        """Keep ``kept`` first; the plans of a changed model go (they hold its old parts)."""
        if self.weak and not kept.fingerprint.weak:
            kept = dataclasses.replace(kept, fingerprint=kept.fingerprint.weakened())
        mark = kept.fingerprint
        with self._lock:
            self.kept = [
                k for k in self.kept if k.fingerprint.same_model(mark) and k.fingerprint != mark
            ]
            self.kept.insert(0, kept)
            del self.kept[_MAX_KEPT:]


def function_plans(model: nn.Module, options: SamplingOptions) -> Plans | None:
    """The plans :func:`mcdrop.predict_with_uncertainty` keeps for ``model`` and ``options``
    (seed, generator and progress aside), for as long as the model lives: nothing here holds
    the model (weak references; its entry goes when it is freed). At most ``_MAX_MODELS`` models
    (the least recently used go first) and ``_MAX_OPTIONS`` sets of options per model. None (no
    plan kept) when an option is a function (``output_transform``, ``include``/``exclude``
    predicates): a kept plan holds it, and through it whatever it refers to, the model maybe;
    and a function written in the call is a new object every call, which no kept plan matches."""
    key, wanted = id(model), options.plan_fields
    if any(callable(value) and not isinstance(value, type) for value in wanted):
        return None
    with _FUNCTION_LOCK:
        entry = _FUNCTION_PLANS.pop(key, None)
        if entry is None or entry[0]() is not model:
            entry = (weakref.ref(model, functools.partial(_forget, key)), [])
        _FUNCTION_PLANS[key] = entry  # most recently used last
        while len(_FUNCTION_PLANS) > _MAX_MODELS:
            del _FUNCTION_PLANS[next(iter(_FUNCTION_PLANS))]
        stores = entry[1]
        for i, (fields, plans) in enumerate(stores):
            if fields == wanted:
                stores.insert(0, stores.pop(i))
                return plans
        plans = Plans(weak=True)
        stores.insert(0, (wanted, plans))
        del stores[_MAX_OPTIONS:]
        return plans


def _forget(key: int, ref: weakref.ref[nn.Module]) -> None:
    """The model of ``_FUNCTION_PLANS[key]`` was freed: its plans go. Runs from the garbage
    collector, possibly inside :func:`function_plans` on this thread: takes no lock (a dict
    operation is atomic; at worst a new model's entry under a reused id goes too)."""
    entry = _FUNCTION_PLANS.get(key)
    if entry is not None and entry[0] is ref:
        _FUNCTION_PLANS.pop(key, None)


_FUNCTION_PLANS: dict[int, tuple[weakref.ref[nn.Module], list[tuple[Any, Plans]]]] = {}
_FUNCTION_LOCK = threading.Lock()
_MAX_MODELS = 16
_MAX_OPTIONS = 4


def measure_rows(runner: Runner, batch: _Batch, device: torch.device) -> int | None:
    """Rows per pass on CUDA from a 2-sample replicate pass (see :mod:`._memory`); None when
    that pass does not fit.

    Deterministic: the card's capacity, not its free memory, and the pass's own peak read after
    each op, not the allocator's peak counter (the user's, never reset). The pass runs once
    unmeasured first, so that one-time allocations (library workspaces on a process's first
    matrix product) do not count, whatever ran before.
    """
    k = 2
    try:
        with runner.forked():
            runner.run("replicate", batch, k)
            peak, outs = memory.pass_bytes(lambda: runner.run("replicate", batch, k), device)
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        logger.warning("mcdrop: out of memory measuring a 2-sample pass; sampling row-wise.")
        return None
    # float64 statistics of the outputs: about five temporaries of 8 bytes per element.
    out_bytes = sum(int(o[0, :1].numel()) for o in outs) * 8 * 5
    capacity = memory.capacity(device)
    budget = planner.rows_that_fit(capacity, peak / (k * batch.size) + out_bytes)
    logger.info(
        "mcdrop: up to %d rows per pass (%.2f MiB per row measured, %.0f MiB capacity).",
        budget,
        peak / (k * batch.size) / 2**20,
        capacity / 2**20,
    )
    return budget


_MAX_KEPT = 8  # plans an engine keeps: one per input signature a server sees (batch sizes)

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
