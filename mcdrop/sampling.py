"""Monte Carlo dropout inference: :func:`predict_with_uncertainty` and :class:`MCDropout`.

The ``T`` stochastic passes run as a few large batched passes on the model's device:

``"replicate"``
    Repeat each batch ``k`` times along the batch dimension and run one pass of ``k * B`` rows.
``"vmap"``
    ``torch.func.vmap(..., randomness="different")`` over a dummy sample axis of size ``k``.
    Everything computed before the first dropout is not batched by vmap, so it runs once for all
    ``k`` samples (prefix sharing): a network with dropout only in its head costs about one pass.
    When ``"auto"`` picks vmap because it is ``g`` times faster than replicate, a vmap pass may
    hold up to ``min(g, 16)`` times the ``batch_budget`` rows (fewer passes, fewer prefixes).
    Some models cannot be vmapped (in-place randomness on an unbatched tensor, data-dependent
    control flow); ``"auto"`` then falls back.
``"loop"``
    ``k`` separate passes: the reference, and the lowest memory.
``"auto"`` (default)
    Probes the candidates once per model, input signature and pass size on the first batch
    (under ``fork_rng``: the caller's random stream is not consumed): each must run, give the
    loop's shapes and vary like the loop on two samples, else it is dropped with the reason logged
    on the ``"mcdrop"`` logger; the valid ones are timed (best of up to three runs) and the
    fastest is cached. With fewer than four samples per pass nothing is timed (replicate when
    valid). Every strategy draws independent masks for every sample and every example, so the
    choice never changes the distribution of the results.

Python-level randomness (``random.random()`` in ``forward``) is drawn once per pass, so it is
shared by the samples of a replicate or vmap pass: use ``strategy="loop"`` for such models.

Statistics are aggregated as a stream (see :mod:`mcdrop.uncertainty`): memory stays
``O(N x C)`` whatever ``T`` unless ``keep_samples=True``.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm

from mcdrop._inputs import _Batch, _leading_size, extract_outputs, iter_batches
from mcdrop._validation import check_choice, check_float, check_int
from mcdrop.dropout import (
    DropoutSite,
    ModuleFilter,
    _check_sites,
    _find_sites,
    dropout_enabled,
    dropout_sites,
)
from mcdrop.results import ClassificationResult, RegressionResult
from mcdrop.uncertainty import (
    _OUTPUT_KINDS,
    _ClassificationAccumulator,
    _concat_states,
    _normalise_class_dim,
    _RegressionAccumulator,
)

__all__ = ["MCDropout", "predict_with_uncertainty"]

logger = logging.getLogger("mcdrop")

STRATEGIES = ("auto", "replicate", "vmap", "loop")
_DEFAULT_CPU_BUDGET = 1024
_DEFAULT_CUDA_BUDGET = 8192
_MEMORY_FRACTION = 0.7  # of free CUDA memory, for rows per pass without a batch_budget
_MAX_MEMORY_ROWS = 1 << 16  # larger passes gain nothing and stall the streaming statistics
_PROBE_MIN_SAMPLES = 4  # below this many samples per pass "auto" does not time strategies
_MAX_VMAP_SCALE = 16  # vmap passes may hold up to this many times the budget's rows
_AMP_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}

# model -> {(signature, sites, options, device, amp, compile, pass size) -> strategy}: the auto
# decision, probed once.
# The value is (strategy, vmap_scale): how many more rows a vmap pass may hold than the budget.
_STRATEGY_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[Any, tuple[str, int]]] = (
    weakref.WeakKeyDictionary()
)


class _FastCPUDropout(TorchFunctionMode):
    """``F.dropout`` with a cheaper mask on the CPU: same distribution, about 5x faster.

    PyTorch's CPU dropout draws its mask with ``bernoulli_``, which dominates the cost of Monte
    Carlo dropout when little is computed after the dropout (a head-dropout network). Comparing
    ``torch.rand`` against ``p`` gives the same Bernoulli(1 - p) mask, scaled by ``1 / (1 - p)``.
    Only standard ``F.dropout`` in training mode is replaced; everything else runs as it is.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is F.dropout:
            bound = dict(zip(("input", "p", "training", "inplace"), args, strict=False), **kwargs)
            x, p = bound["input"], float(bound.get("p", 0.5))
            if bound.get("training", True) and 0.0 < p < 1.0 and x.is_floating_point():
                noise = torch.rand(x.shape, dtype=torch.float32, device=x.device)
                mask = noise.ge(p).to(x.dtype).mul_(1.0 / (1.0 - p))
                return x.mul_(mask) if bound.get("inplace", False) else x * mask
        return func(*args, **kwargs)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


class _Engine:
    """Runs chunks of stochastic passes of one model on one batch; shared by every entry point.

    Chunk size: ``batch_budget`` rows (samples x examples) per pass; on CUDA without a budget it
    is sized from free device memory (one small measured pass). On ``torch.OutOfMemoryError`` the
    samples per pass are halved, then the examples per pass, and the smaller size is kept for
    the rest of the call (``last_samples_per_pass``).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        n_outputs: int,
        output_transform: Callable[[Any], Any] | None,
        strategy: str,
        batch_budget: int | None,
        amp: Any,
        device: torch.device,
        compile: bool | dict[str, Any] = False,
    ) -> None:
        self.model = model
        self.n_outputs = n_outputs
        self.output_transform = output_transform
        self.strategy = strategy
        self.device = device
        # On CUDA without an explicit budget the rows per pass come from free memory.
        self.memory_sized = batch_budget is None and device.type == "cuda"
        if batch_budget is None:
            batch_budget = _DEFAULT_CUDA_BUDGET if device.type == "cuda" else _DEFAULT_CPU_BUDGET
        self.batch_budget = batch_budget
        self.amp_dtype = _resolve_amp(amp)
        self.compile_options = _resolve_compile(compile)
        self.module: Callable[..., Any] = model
        if self.compile_options is not None:
            # Cheap: compiled graphs live in dynamo's cache on the forward's code object, guarded
            # on this model and its training flags, so a new wrapper per call reuses them.
            self.module = torch.compile(model, **self.compile_options)
        self.row_cap: int | None = None  # rows per pass that fit in memory (CUDA, measured)
        self.sample_cap: int | None = None  # lowered after an out-of-memory error
        self.example_cap: int | None = None  # examples per pass, lowered when k = 1 runs out
        self.chosen: str | None = None if strategy == "auto" else strategy
        # auto + vmap: the probe measured that a vmap sample costs 1/gain of a replicated one (the
        # prefix is shared), so its pass may hold more samples: fewer passes, fewer prefixes.
        self.vmap_scale = 1
        self.last_samples_per_pass: int | None = None
        # (cache, entry, key) when the strategy came from an earlier call's probe: re-probed if
        # it fails now (the model may have changed, e.g. a dropout switched to inplace).
        self.cached_choice: tuple[dict[Any, tuple[str, int]], Any, Any] | None = None

    # -- one forward ---------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _call(self, batch: _Batch) -> tuple[torch.Tensor, ...]:
        output = self.module(*batch.args, **batch.kwargs)
        return extract_outputs(
            output,
            n_outputs=self.n_outputs,
            transform=self.output_transform,
            batch_size=batch.rows(),
        )

    # -- strategies ----------------------------------------------------------------------------
    def _loop(self, batch: _Batch, k: int) -> tuple[torch.Tensor, ...]:
        outs = [self._call(batch) for _ in range(k)]
        return tuple(torch.stack(parts) for parts in zip(*outs, strict=True))

    def _replicate(self, batch: _Batch, k: int) -> tuple[torch.Tensor, ...]:
        if k == 1:
            return tuple(o.unsqueeze(0) for o in self._call(batch))
        big = batch.map_batched(lambda t: t.repeat(k, *([1] * (t.ndim - 1))))
        outs = self._call(big)
        result = []
        for out in outs:
            if out.ndim == 0 or out.shape[0] != k * batch.size:
                raise RuntimeError(
                    f"replicated a batch of {batch.size} examples {k} times but the model "
                    f"returned leading dimension {tuple(out.shape)[:1]}; the output must keep the "
                    "batch dimension first"
                )
            result.append(out.reshape(k, batch.size, *out.shape[1:]))
        return tuple(result)

    def _vmap(self, batch: _Batch, k: int) -> tuple[torch.Tensor, ...]:
        def one(_: torch.Tensor) -> tuple[torch.Tensor, ...]:
            return self._call(batch)

        dummy = torch.empty(k, device=self.device)
        outs = torch.func.vmap(one, randomness="different")(dummy)
        return tuple(outs)

    def _run(self, name: str, batch: _Batch, k: int) -> tuple[torch.Tensor, ...]:
        fast = _FastCPUDropout() if self.device.type == "cpu" else contextlib.nullcontext()
        with self._autocast(), fast:
            if name == "vmap":
                return self._vmap(batch, k)
            if name == "loop":
                return self._loop(batch, k)
            return self._replicate(batch, k)

    def _run_split(self, name: str, batch: _Batch, k: int) -> tuple[torch.Tensor, ...]:
        """``_run``, in slices of at most ``example_cap`` examples (joined along dim 1)."""
        cap = self.example_cap
        if cap is None or batch.size <= cap:
            return self._run(name, batch, k)
        parts = [
            self._run(name, _slice(batch, lo, min(lo + cap, batch.size)), k)
            for lo in range(0, batch.size, cap)
        ]
        return tuple(torch.cat(outs, 1) for outs in zip(*parts, strict=True))

    # -- chunking ------------------------------------------------------------------------------
    def plan(self, batch: _Batch, remaining: int, key: Any) -> int:
        """Samples for the next pass; picks the strategy first if it is not chosen yet."""
        k = self.samples_per_pass(batch.size, remaining, batch)
        if self.chosen is None:
            self.choose(batch, k, key)
            k = self.samples_per_pass(batch.size, remaining, batch)  # vmap may hold more
        return k

    def samples_per_pass(self, batch_size: int, remaining: int, batch: _Batch | None = None) -> int:
        """Samples ``k`` of the next pass: ``k x batch_size`` rows fit the budget (or memory)."""
        rows = self.batch_budget
        if self.memory_sized and batch is not None:
            if self.row_cap is None:
                self.row_cap = self._rows_that_fit(batch)
            rows = self.row_cap
            if rows < batch_size:
                self.example_cap = max(1, rows) if self.example_cap is None else self.example_cap
        if self.chosen == "vmap":
            rows *= self.vmap_scale
        k = max(1, rows // max(batch_size, 1))
        if self.sample_cap is not None:
            k = min(k, self.sample_cap)
        return max(1, min(k, remaining))

    def _rows_that_fit(self, batch: _Batch) -> int:
        """Rows per pass that fit ``_MEMORY_FRACTION`` of free CUDA memory (one measured pass)."""
        dev = self.device
        torch.cuda.synchronize(dev)
        free, _ = torch.cuda.mem_get_info(dev)
        free += torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        k = 2
        try:
            # replicate needs the most memory per sample (vmap shares the prefix): a safe bound.
            with torch.random.fork_rng(devices=[dev]):
                outs = self._run("replicate", batch, k)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            return max(1, batch.size // 2)
        except Exception:  # replicate does not work for this model: measure one plain pass
            k = 1
            with torch.random.fork_rng(devices=[dev]):
                outs = self._run("loop", batch, k)
        torch.cuda.synchronize(dev)
        peak = max(1, torch.cuda.max_memory_allocated(dev) - base)
        # float64 statistics of the outputs: about four temporaries of 8 bytes per element.
        out_bytes = sum(int(o[0, :1].numel()) for o in outs) * 8 * 4
        per_row = peak / (k * batch.size) + out_bytes
        rows = int(_MEMORY_FRACTION * free / per_row)
        rows = max(1, min(rows, _MAX_MEMORY_ROWS))
        logger.info(
            "mcdrop: %.1f MiB per row measured, %.0f MiB free: up to %d rows per pass.",
            per_row / 2**20,
            free / 2**20,
            rows,
        )
        return rows

    def choose(self, batch: _Batch, k: int, key: Any) -> str:
        """Pick the strategy for ``batch`` (cached per model, input signature and pass size)."""
        if self.chosen is not None:
            return self.chosen
        if self.sample_cap is not None:
            k = min(k, self.sample_cap)
        full_key = (
            key,
            self.device.type,
            self.amp_dtype,
            None if self.compile_options is None else tuple(sorted(self.compile_options.items())),
            (k * batch.size).bit_length(),  # pass size, in powers of two
        )
        cache = _STRATEGY_CACHE.setdefault(self.model, {})
        if full_key in cache:
            self.chosen, self.vmap_scale = cache[full_key]
            self.cached_choice = (cache, full_key, key)
            return self.chosen
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the probe must not shift the caller's draws
            while True:
                try:
                    self.chosen = _probe_strategies(self, batch, k)
                    break
                except torch.OutOfMemoryError:
                    if k == 1:
                        raise
                    k = self._halve(batch, k)
        cache[full_key] = (self.chosen, self.vmap_scale)
        return self.chosen

    def _halve(self, batch: _Batch, k: int) -> int:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        new = max(1, k // 2)
        self.sample_cap = new
        self.last_samples_per_pass = None
        logger.warning(
            "mcdrop: out of memory with %d samples per pass of %d examples; retrying with %d "
            "samples per pass (%d rows).",
            k,
            batch.size,
            new,
            new * batch.size,
        )
        return new

    def run_chunk(self, batch: _Batch, k: int) -> tuple[int, tuple[torch.Tensor, ...]]:
        """Run up to ``k`` samples, halving on CUDA out-of-memory; returns (k used, outputs).

        Only ``torch.OutOfMemoryError`` is retried: first with fewer samples per pass, then, at
        one sample per pass, with fewer examples per pass. Any other error propagates.
        """
        assert self.chosen is not None
        if self.sample_cap is not None:
            k = min(k, self.sample_cap)
        while True:
            assert self.chosen is not None
            try:
                outs = self._run_split(self.chosen, batch, k)
            except torch.OutOfMemoryError:
                if k > 1:
                    k = self._halve(batch, k)
                    continue
                examples = min(self.example_cap or batch.size, batch.size)
                if examples == 1:
                    raise
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.example_cap = examples // 2
                logger.warning(
                    "mcdrop: out of memory with 1 sample per pass of %d examples; retrying with "
                    "%d examples per pass.",
                    examples,
                    self.example_cap,
                )
                continue
            except Exception as error:
                if self.cached_choice is None:
                    raise
                cache, entry, key = self.cached_choice
                logger.info(
                    "mcdrop: cached strategy %r failed (%s); probing again.", self.chosen, error
                )
                cache.pop(entry, None)
                self.cached_choice = None
                self.chosen = None
                self.choose(batch, k, key)
                continue
            if self.last_samples_per_pass is None or k > self.last_samples_per_pass:
                self.last_samples_per_pass = k  # the largest pass since the last back-off
                logger.info(
                    "mcdrop: strategy %r, %d samples per pass of %d examples.",
                    self.chosen,
                    k,
                    min(batch.size, self.example_cap or batch.size),
                )
            return k, outs


def _slice(batch: _Batch, lo: int, hi: int) -> _Batch:
    part = batch.map_batched(lambda t: t[lo:hi])
    part.size = hi - lo
    return part


def _resolve_amp(amp: Any) -> torch.dtype | None:
    if amp is None or amp is False:
        return None
    if isinstance(amp, torch.dtype) and amp in (torch.bfloat16, torch.float16):
        return amp
    if isinstance(amp, str) and amp in _AMP_DTYPES:
        return _AMP_DTYPES[amp]
    if amp is True:
        return torch.bfloat16
    raise ValueError(
        f"Expected `amp` to be None, True, 'bf16', 'fp16', torch.bfloat16 or torch.float16, but "
        f"got {amp!r}."
    )


def _resolve_compile(compile: Any) -> dict[str, Any] | None:
    """``compile=`` option: False/None (eager), True (``torch.compile`` defaults) or its kwargs."""
    if compile is None or compile is False:
        return None
    if compile is True:
        return {}
    if isinstance(compile, dict) and all(isinstance(key, str) for key in compile):
        return dict(compile)
    raise TypeError(
        f"Expected `compile` to be a bool or a dict of torch.compile options, but got {compile!r}."
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _varies(outputs: tuple[torch.Tensor, ...]) -> bool:
    first = outputs[0]
    return first.shape[0] > 1 and bool((first != first[:1]).any())


def _time(engine: _Engine, name: str, batch: _Batch, k: int) -> float:
    _sync(engine.device)
    start = time.perf_counter()
    engine._run(name, batch, k)
    _sync(engine.device)
    return time.perf_counter() - start


def _probe_strategies(engine: _Engine, batch: _Batch, k: int) -> str:
    """Check and time the candidates on ``batch`` and return the fastest (the ``auto`` decision).

    Every candidate first runs two samples: it must not raise, must give the loop's output shapes
    and must draw different samples when the loop does (else it is dropped, with the reason
    logged). Below ``_PROBE_MIN_SAMPLES`` samples per pass nothing is timed: replicate is taken
    when valid. Otherwise each candidate is timed at ``k`` samples (the loop on a few passes,
    scaled: its cost is linear in ``k``), best of up to three rounds, stopping early once one is
    clearly fastest.
    """
    if k == 1:
        return "replicate"  # one plain pass: every strategy is the same call
    name_of = type(engine.model).__name__
    small = 2
    reference = engine._run("loop", batch, small)  # the reference: always valid
    shapes = [tuple(o.shape) for o in reference]
    reference_varies = _varies(reference)
    candidates = ["loop", "replicate", "vmap"][: 2 if k < _PROBE_MIN_SAMPLES else 3]
    valid = ["loop"]
    for name in candidates[1:]:
        try:
            outs = engine._run(name, batch, small)
        except torch.OutOfMemoryError:
            raise
        except Exception as error:  # vmap refuses many models; that is what the probe is for
            reason = f"{type(error).__name__}: {error}"
        else:
            if [tuple(o.shape) for o in outs] != shapes:
                reason = f"output shapes {[tuple(o.shape) for o in outs]} instead of {shapes}"
            elif reference_varies and not _varies(outs):
                reason = "it drew identical samples where the loop did not"
            else:
                valid.append(name)
                continue
        logger.info(
            "mcdrop: strategy %r does not work for %s (%s); falling back.", name, name_of, reason
        )
    if k < _PROBE_MIN_SAMPLES or len(valid) == 1:
        best = "replicate" if "replicate" in valid else valid[0]
        logger.info("mcdrop: %d samples per pass, not timed; using %r.", k, best)
        return best
    loop_k = min(k, 4)
    if engine.compile_options is not None:  # compile for the timed shapes first
        for name in valid:
            engine._run(name, batch, loop_k if name == "loop" else k)
    timings: dict[str, float] = {}
    for _ in range(3):
        for name in valid:
            if name == "loop":
                elapsed = _time(engine, name, batch, loop_k) * (k / loop_k)
            else:
                elapsed = _time(engine, name, batch, k)
            timings[name] = min(elapsed, timings.get(name, math.inf))
        ranked = sorted(valid, key=timings.__getitem__)
        if timings[ranked[0]] < 0.7 * timings[ranked[1]]:
            break
        valid = [n for n in valid if timings[n] < 2.0 * timings[ranked[0]]]
        if len(valid) == 1:
            break
    best = min(timings, key=timings.__getitem__)
    if best == "vmap" and "replicate" in timings:
        gain = timings["replicate"] / timings["vmap"]
        engine.vmap_scale = int(min(_MAX_VMAP_SCALE, max(1.0, gain)))
    logger.info(
        "mcdrop: strategy timings for %d samples x %d examples %s; using %r.",
        k,
        batch.size,
        {n: f"{t * 1e3:.2f} ms" for n, t in timings.items()},
        best,
    )
    return best


class _Progress:
    def __init__(self, enabled: bool | None, total: int | None) -> None:
        disable = (not sys.stderr.isatty()) if enabled is None else not enabled
        self.bar = tqdm(total=total, unit="pass", desc="MC dropout", disable=disable, leave=False)

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        self.bar.close()


def _finite_flag(outputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
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


def _seed_from(seed: int | None, generator: torch.Generator | None) -> int | None:
    if seed is not None and generator is not None:
        raise ValueError("Expected at most one of `seed` and `generator`, but got both.")
    if generator is not None:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"Expected `generator` to be a torch.Generator, but got {generator!r}.")
        return int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    if seed is not None:
        return check_int("seed", seed, minimum=0)
    return None


@contextlib.contextmanager
def _rng(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seeded randomness that leaves the caller's global RNG state exactly as it was."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        # Seed only the generators in play: torch.manual_seed also queues lazy seeding of every
        # accelerator backend, which formats a stack trace each time (~0.5 ms a call).
        torch.default_generator.manual_seed(seed)
        if devices:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


class _Options:
    """Validated options shared by :func:`predict_with_uncertainty` and :class:`MCDropout`."""

    def __init__(
        self,
        *,
        n_samples: int | str,
        task: str,
        outputs: str,
        class_dim: int,
        tau: float | None,
        heteroscedastic: bool,
        output_transform: Callable[[Any], Any] | None,
        scope: str,
        include: ModuleFilter,
        exclude: ModuleFilter,
        detect_silent: bool,
        strategy: str,
        batch_size: int | None,
        batch_budget: int | None,
        amp: Any,
        keep_samples: bool,
        tolerance: float,
        max_samples: int,
        device: torch.device | str | None,
        compile: bool | dict[str, Any] = False,
    ) -> None:
        self.task = check_choice("task", task, ["classification", "regression"])
        self.adaptive = isinstance(n_samples, str)
        if self.adaptive:
            if n_samples != "auto":
                raise ValueError(
                    f"Expected `n_samples` to be an integer >= 1 or 'auto', but got {n_samples!r}."
                )
            self.n_samples = check_int("max_samples", max_samples, minimum=2)
        else:
            self.n_samples = check_int("n_samples", n_samples, minimum=1)
        self.tolerance = check_float("tolerance", tolerance, low=0.0, low_inclusive=False)
        self.outputs = check_choice("outputs", outputs, _OUTPUT_KINDS)
        self.class_dim = check_int("class_dim", class_dim)
        if tau is not None:
            tau = check_float("tau", tau, low=0.0, low_inclusive=False)
        if self.task == "classification" and (tau is not None or heteroscedastic):
            raise ValueError("Expected `tau` and `heteroscedastic` only with task='regression'.")
        if tau is not None and heteroscedastic:
            raise ValueError(
                "Expected either `tau` (a fixed model precision) or `heteroscedastic=True` (a "
                "learned noise head), but got both."
            )
        self.tau = tau
        self.heteroscedastic = bool(heteroscedastic)
        if output_transform is not None and not callable(output_transform):
            raise TypeError(
                f"Expected `output_transform` to be callable, but got {output_transform!r}."
            )
        self.output_transform = output_transform
        self.scope = scope
        self.include = include
        self.exclude = exclude
        self.detect_silent = bool(detect_silent)
        self.strategy = check_choice("strategy", strategy, STRATEGIES)
        self.batch_budget = (
            None if batch_budget is None else check_int("batch_budget", batch_budget, minimum=1)
        )
        self.batch_size = (
            None if batch_size is None else check_int("batch_size", batch_size, minimum=1)
        )
        _resolve_amp(amp)
        self.amp = amp
        self.keep_samples = bool(keep_samples)
        _resolve_compile(compile)
        self.compile = compile
        self.device = None if device is None else torch.device(device)

    def engine(self, model: nn.Module) -> _Engine:
        return _Engine(
            model,
            n_outputs=2 if self.heteroscedastic else 1,
            output_transform=self.output_transform,
            strategy=self.strategy,
            batch_budget=self.batch_budget,
            amp=self.amp,
            device=self.device or _model_device(model),
            compile=self.compile,
        )

    def accumulator(self, out_ndim: int) -> _ClassificationAccumulator | _RegressionAccumulator:
        if self.task == "classification":
            cd = _normalise_class_dim(self.class_dim, out_ndim)
            return _ClassificationAccumulator(
                outputs=self.outputs, class_dim=cd, keep_samples=self.keep_samples
            )
        return _RegressionAccumulator(
            tau=self.tau, heteroscedastic=self.heteroscedastic, keep_samples=self.keep_samples
        )

    def strategy_key(self, batch: _Batch, sites: list[DropoutSite]) -> Any:
        """What the ``auto`` decision depends on beyond the engine's own settings."""
        return (batch.signature(), self.amp, tuple(site.name for site in sites), self.strategy)

    def sites(self, model: nn.Module, batch: _Batch | None) -> list[DropoutSite]:
        """The sites to switch on, probed on two examples of ``batch`` at every call.

        Not cached across calls: which dropout runs can change without any change to the
        module tree (e.g. an attention implementation switched from eager to SDPA).
        """
        call = None
        if batch is not None and self.detect_silent:
            small = batch.map_batched(lambda t: t[:2])
            call = (small.args, small.kwargs)
        scope = str(getattr(self.scope, "value", self.scope))
        found = _find_sites(model, scope, self.include, self.exclude, call)
        _check_sites(model, found, scope)
        return found


def _sample_batch(
    engine: _Engine,
    options: _Options,
    batch: _Batch,
    index: int,
    start: int,
    key: Any,
    progress: _Progress,
) -> _ClassificationAccumulator | _RegressionAccumulator:
    """All samples of one batch, aggregated as a stream.

    The hot path does not wait for the device: the NaN/Inf and "dropout changed something" checks
    are kept as device-side flags and read once per batch (per chunk when the statistics are read
    anyway: adaptive ``n_samples``, or probabilities that are validated on the host).
    """
    acc: _ClassificationAccumulator | _RegressionAccumulator | None = None
    done = 0
    first: torch.Tensor | None = None
    varied: torch.Tensor | None = None
    finite: torch.Tensor | None = None
    check_variation = index == 0
    eager_checks = options.adaptive or (
        options.task == "classification" and options.outputs != "logits"
    )
    minimum = min(options.n_samples, 16) if options.adaptive else options.n_samples
    target = minimum  # adaptive: samples expected to reach the tolerance, updated per chunk
    while done < options.n_samples:
        k = engine.plan(batch, options.n_samples - done, key)
        if options.adaptive:
            k = min(k, max(target - done, 1))
        k, outs = engine.run_chunk(batch, k)
        flag = _finite_flag(outs)
        finite = flag if finite is None else finite & flag
        if eager_checks:
            _check_finite(finite, index, batch, start)
        if acc is None:
            acc = options.accumulator(outs[0].ndim - 1)
        if isinstance(acc, _RegressionAccumulator):
            acc.update(outs[0], outs[1] if len(outs) > 1 else None)
        else:
            acc.update(outs[0])
        if check_variation:
            if first is None:
                first = outs[0][:1]
            changed = (outs[0] != first).any()
            varied = changed if varied is None else varied | changed
        done += k
        progress.update(k)
        if options.adaptive and done >= minimum:
            error = acc.max_standard_error()
            if error <= options.tolerance:
                break
            # MC error falls as 1 / sqrt(T): aim for the T that reaches the tolerance (+10 %).
            needed = (
                done * (error / options.tolerance) ** 2 * 1.1 if math.isfinite(error) else 2 * done
            )
            target = min(options.n_samples, max(done + 1, math.ceil(needed)))
    assert finite is not None and acc is not None
    _check_finite(finite, index, batch, start)
    if check_variation and done > 1 and not (varied is not None and bool(varied)):
        raise ValueError(
            f"The dropout sites of `{type(engine.model).__name__}` did not change the output: all "
            f"{done} passes of the first batch are identical, so Monte Carlo dropout would report "
            "zero uncertainty. The model may apply dropout where mcdrop cannot switch it (e.g. "
            "custom `if self.training` code): try `scope='train_except_norm'` or `include=`."
        )
    return acc


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


def _predict(
    model: nn.Module,
    inputs: Any,
    targets: Any,
    options: _Options,
    seed: int | None,
    progress: bool | None,
    result_device: torch.device,
) -> ClassificationResult | RegressionResult:
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}."
        )
    engine = options.engine(model)
    budget = options.batch_size or engine.batch_budget
    batches, n_batches, _ = iter_batches(inputs, batch_size=budget, targets=targets)
    total = None if n_batches is None else n_batches * options.n_samples
    bar = _Progress(progress, total)
    states: list[dict[str, torch.Tensor]] = []
    target_parts: list[torch.Tensor] = []
    missing_targets = False
    out_shape: tuple[int, ...] | None = None
    max_count = 0
    worst_se = 0.0
    start = 0
    with _rng(seed, engine.device), torch.inference_mode():
        iterator = iter(batches)
        first = next(iterator, None)
        if first is None:
            raise ValueError("Expected `inputs` to hold at least one example, but it was empty.")
        first = first.to(engine.device)
        sites = options.sites(model, first)
        key = options.strategy_key(first, sites)
        try:
            with dropout_enabled(model, sites=sites):
                batch: _Batch | None = first
                index = 0
                while batch is not None:
                    if index > 0:
                        batch = batch.to(engine.device)
                    acc = _sample_batch(engine, options, batch, index, start, key, bar)
                    state = acc.state()
                    probe = state.get("samples")
                    if probe is not None:
                        out_shape = _check_consistent(out_shape, probe, index)
                    else:
                        mean = state["mean"]
                        out_shape = _check_consistent(out_shape, mean.unsqueeze(0), index)
                    states.append({k: v.to(result_device) for k, v in state.items()})
                    if options.keep_samples and index > 0 and acc.count != max_count:
                        raise ValueError(
                            "Expected every batch to stop at the same number of samples with "
                            "`keep_samples=True`, but adaptive `n_samples='auto'` stopped batch 0 "
                            f"at {max_count} and batch {index} at {acc.count}; pass a fixed "
                            "`n_samples`, or a `batch_size` that puts all inputs in one batch."
                        )
                    max_count = max(max_count, acc.count)
                    worst_se = max(worst_se, acc.max_standard_error())
                    if batch.targets is None:
                        missing_targets = True
                    else:
                        target_parts.append(batch.targets)
                    start += batch.size
                    index += 1
                    nxt = next(iterator, None)
                    batch = nxt
        finally:
            bar.close()
    merged = _concat_states(states, result_device)
    target_tensor = None if missing_targets or not target_parts else torch.cat(target_parts)
    extra: dict[str, Any] = {
        "n_samples": max_count,
        "targets": target_tensor,
        "standard_error_reached": worst_se if options.adaptive else None,
    }
    if options.task == "classification":
        cd = _normalise_class_dim(options.class_dim, merged["mean"].ndim)
        return ClassificationResult(class_dim=cd, **merged, **extra)
    return RegressionResult(tau=options.tau, **merged, **extra)


def predict_with_uncertainty(
    model: nn.Module,
    inputs: Any,
    *,
    n_samples: int | str = 100,
    task: str = "classification",
    outputs: str = "logits",
    class_dim: int = 1,
    targets: Any = None,
    tau: float | None = None,
    heteroscedastic: bool = False,
    output_transform: Callable[[Any], Any] | None = None,
    scope: str = "dropout",
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
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    result_device: torch.device | str = "cpu",
    progress: bool | None = None,
    distributed: bool = False,
    rank0_only: bool = False,
) -> ClassificationResult | RegressionResult:
    """Monte Carlo dropout predictive distribution of ``model`` on ``inputs``.

    Only the dropout sites sample (see :func:`mcdrop.dropout_sites`); normalisation layers stay in
    eval mode, no parameter or buffer changes, and every module's ``training`` flag is restored on
    return, also when the model raises.

    Parameters
    ----------
    model : nn.Module
        A trained model containing dropout.
    inputs : Tensor, tuple, dict or iterable of batches
        ``Tensor`` of shape (N, ...); ``tuple`` of positional arguments; ``dict`` of keyword
        arguments (e.g. ``input_ids`` and ``attention_mask``); or a ``DataLoader`` / any iterable
        whose items are such batches or ``(inputs, targets)`` pairs (targets are kept on the
        result). Tensors whose leading dimension is not the batch size are passed unchanged;
        which arguments are batched is decided once (from ``N``, or from the first batch of an
        iterable) and kept for every batch. An unbatched tensor argument whose leading dimension
        equals ``N`` cannot be told apart from a batched one: bind it to the model instead
        (a wrapper module or ``functools.partial``).
    n_samples : int or "auto", default=100
        Number of stochastic passes ``T``. ``"auto"`` samples until the largest Monte Carlo
        standard error of the predictive mean in each batch is at most ``tolerance`` (at least
        16 passes, at most ``max_samples``).
    task : {"classification", "regression"}, default="classification"
        Decides the result type: :class:`ClassificationResult` or :class:`RegressionResult`.
    outputs : {"logits", "probs", "log_probs", "binary_logits"}, default="logits"
        What a classifier returns; never guessed from the values. ``"binary_logits"``: one logit
        per example (``BCEWithLogitsLoss``), giving the classes ``[1 - sigmoid, sigmoid]``.
    class_dim : int, default=1
        Class dimension of the model output (N, C, ...): ``1`` for ``(N, C)`` and segmentation
        ``(N, C, H, W)`` (per-pixel uncertainty maps), ``-1`` for ``(N, L, C)`` token outputs.
    targets : array-like of shape (N, ...), optional
        Targets for tensor inputs, stored on the result.
    tau : float, optional
        Regression model precision (Gal 2016): aleatoric variance ``1 / tau``.
    heteroscedastic : bool, default=False
        Regression model returns ``(mean, log_variance)`` (Kendall & Gal 2017).
    output_transform : callable, optional
        Applied to the raw model output first, e.g. ``lambda out: out["scores"]``.
    scope : {"dropout", "train_except_norm"}, default="dropout"
        Which modules sample, see :class:`mcdrop.Scope`.
    include, exclude : str, list of str or callable, optional
        Extra modules to switch on / modules to keep off, by name pattern or predicate.
    detect_silent : bool, default=True
        Probe the first batch for dropout that is registered but never called (fused attention)
        or called functionally with ``training=False``, and switch on its gating module.
    strategy : {"auto", "replicate", "vmap", "loop"}, default="auto"
        How the ``T`` passes are batched (module docstring). All give the same distribution.
    batch_size : int, optional
        Examples per batch when ``inputs`` is a tensor, tuple or dict (default: ``batch_budget``).
    batch_budget : int, optional
        Rows per forward pass, samples x examples. Default: 1024 on CPU; on CUDA sized from free
        memory (one measured pass, about 70 % of what is free). On CUDA out-of-memory the samples
        per pass are halved and retried (then the examples per pass); the size used is logged on
        the ``"mcdrop"`` logger. Other errors are not retried.
    amp : {None, "bf16", "fp16"} or torch.dtype, default=None
        Autocast precision for the passes; statistics are still accumulated in float64.
    compile : bool or dict, default=False
        Run the model through ``torch.compile`` (``True``) or ``torch.compile(model, **compile)``
        (a dict of its options, e.g. ``{"mode": "max-autotune"}``). The first call compiles
        (seconds to minutes); pays for large ``T`` x ``N`` on GPU, see the performance page.
    keep_samples : bool, default=False
        Also return every sample (``result.samples``, shape (T, N, ...)); memory grows with T.
    tolerance : float, default=0.01
        Target standard error for ``n_samples="auto"`` (probability units for classification,
        output units for regression).
    max_samples : int, default=1000
        Upper bound on ``T`` for ``n_samples="auto"``.
    seed : int, optional
        Seed for reproducible results; the caller's global RNG state is left as it was.
    generator : torch.Generator, optional
        Alternative to ``seed``: one seed is drawn from it.
    device : torch.device or str, optional
        Where to run; defaults to the device of the model's parameters. Inputs are moved there.
    result_device : torch.device or str, default="cpu"
        Where the result's tensors are returned.
    progress : bool, optional
        tqdm progress bar over batches x samples. Default: shown when stderr is a terminal.
    distributed : bool, default=False
        Inside an initialised ``torch.distributed`` process group (``torchrun``): each rank
        samples its share of the examples and every rank gets the full result, in the original
        order (see :mod:`mcdrop.distributed`). ``inputs`` may then also be a map-style
        ``Dataset`` (batched by ``batch_size``, default 64); an iterable that is not a
        ``DataLoader`` over a map-style dataset cannot be sharded.
    rank0_only : bool, default=False
        With ``distributed=True``: gather the result on rank 0 only; other ranks get ``None``.

    Returns
    -------
    ClassificationResult or RegressionResult
        Statistics of the ``T`` samples, see :mod:`mcdrop.results` for the shapes (``None`` on
        ranks other than 0 with ``rank0_only=True``).

    Raises
    ------
    ValueError
        No dropout in the model, every rate 0, dropout that does not change the output, NaN/Inf
        outputs, empty inputs, invalid options; ``TypeError`` for wrong types.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import mcdrop
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    >>> _ = model.eval()
    >>> result = mcdrop.predict_with_uncertainty(model, torch.randn(8, 4), n_samples=50, seed=0)
    >>> result.mean.shape, result.mutual_information.shape
    (torch.Size([8, 3]), torch.Size([8]))
    """
    options = _Options(
        n_samples=n_samples,
        task=task,
        outputs=outputs,
        class_dim=class_dim,
        tau=tau,
        heteroscedastic=heteroscedastic,
        output_transform=output_transform,
        scope=scope,
        include=include,
        exclude=exclude,
        detect_silent=detect_silent,
        strategy=strategy,
        batch_size=batch_size,
        batch_budget=batch_budget,
        amp=amp,
        keep_samples=keep_samples,
        tolerance=tolerance,
        max_samples=max_samples,
        device=device,
        compile=compile,
    )
    if not isinstance(distributed, bool) or not isinstance(rank0_only, bool):
        raise TypeError("Expected `distributed` and `rank0_only` to be bools.")
    if rank0_only and not distributed:
        raise ValueError("Expected `rank0_only=True` only with `distributed=True`.")
    call = (
        model,
        inputs,
        targets,
        options,
        _seed_from(seed, generator),
        progress,
        torch.device(result_device),
    )
    if distributed:
        from mcdrop.distributed import _predict_distributed

        # None off rank 0 with rank0_only
        return _predict_distributed(*call, rank0_only=rank0_only)  # type: ignore[return-value]
    return _predict(*call)


class MCDropout(nn.Module):
    """``nn.Module`` wrapper whose forward returns ``T`` stacked Monte Carlo dropout samples.

    Parameters
    ----------
    model : nn.Module
        The trained model; registered as the submodule ``model`` (its ``state_dict`` keys gain
        the prefix ``model.``).
    n_samples : int, default=100
        Samples per call ``T``.
    **options
        Any keyword option of :func:`predict_with_uncertainty` (``task``, ``outputs``,
        ``strategy``, ``scope``, ``batch_budget``, ``amp``, ``seed``, ...).

    Attributes
    ----------
    last_strategy : str or None
        Strategy the last :meth:`forward` used (what ``strategy="auto"`` chose).
    last_samples_per_pass : int or None
        Samples per forward pass in the last :meth:`forward` (lower after out-of-memory).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import mcdrop
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)).eval()
    >>> mc = mcdrop.MCDropout(net, n_samples=20)
    >>> mc(torch.randn(5, 4)).shape
    torch.Size([20, 5, 3])
    >>> mc.predict_with_uncertainty(torch.randn(5, 4)).mean.shape
    torch.Size([5, 3])
    """

    def __init__(self, model: nn.Module, n_samples: int = 100, **options: Any) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}."
            )
        self.model = model
        self.n_samples = check_int("n_samples", n_samples, minimum=1)
        unknown = set(options) - set(_OPTION_DEFAULTS)
        if unknown:
            raise TypeError(
                f"Expected options of predict_with_uncertainty, but got unknown {sorted(unknown)}."
            )
        self.options = options
        self._options(self.options)  # validate now, not at the first call
        self.last_strategy: str | None = None  # what the last forward used (auto decision)
        self.last_samples_per_pass: int | None = None  # after out-of-memory back-off

    def _options(self, overrides: dict[str, Any]) -> _Options:
        kwargs = {**_OPTION_DEFAULTS, "n_samples": self.n_samples, **self.options, **overrides}
        for name in (
            "seed",
            "generator",
            "progress",
            "result_device",
            "targets",
            "distributed",
            "rank0_only",
        ):
            kwargs.pop(name, None)
        return _Options(**kwargs)

    def forward(
        self, *args: Any, **kwargs: Any
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Stacked samples of the model output, shape (T, B, ...), for one batch.

        Returns the extracted output (logits, probabilities or regression means as the model
        gives them); a heteroscedastic regressor gives ``(means, log_variances)``.
        """
        options = self._options({})
        engine = options.engine(self.model)
        size = _leading_size(args, kwargs, "inputs")
        batch = _Batch(args, dict(kwargs), None, size).to(engine.device)
        seed = _seed_from(self.options.get("seed"), self.options.get("generator"))
        chunks: list[tuple[torch.Tensor, ...]] = []
        with _rng(seed, engine.device), torch.inference_mode():
            sites = options.sites(self.model, batch)
            key = options.strategy_key(batch, sites)
            with dropout_enabled(self.model, sites=sites):
                done = 0
                while done < self.n_samples:
                    k = engine.plan(batch, self.n_samples - done, key)
                    k, outs = engine.run_chunk(batch, k)
                    chunks.append(outs)
                    done += k
        self.last_strategy = engine.chosen
        self.last_samples_per_pass = engine.last_samples_per_pass
        stacked = tuple(torch.cat(parts) for parts in zip(*chunks, strict=True))
        return stacked[0] if len(stacked) == 1 else (stacked[0], stacked[1])

    def predict_with_uncertainty(
        self, inputs: Any, **overrides: Any
    ) -> ClassificationResult | RegressionResult:
        """Aggregated result over ``inputs``, as :func:`mcdrop.predict_with_uncertainty`."""
        kwargs = {**self.options, **overrides}
        kwargs.setdefault("n_samples", self.n_samples)
        return predict_with_uncertainty(self.model, inputs, **kwargs)

    def sites(self, example_inputs: Any = None) -> list[DropoutSite]:
        """The dropout sites this wrapper switches on (see :func:`mcdrop.dropout_sites`)."""
        o = self._options({})
        return dropout_sites(
            self.model,
            scope=o.scope,
            include=o.include,
            exclude=o.exclude,
            example_inputs=example_inputs,
        )


_OPTION_DEFAULTS: dict[str, Any] = {
    "n_samples": 100,
    "task": "classification",
    "outputs": "logits",
    "class_dim": 1,
    "tau": None,
    "heteroscedastic": False,
    "output_transform": None,
    "scope": "dropout",
    "include": None,
    "exclude": None,
    "detect_silent": True,
    "strategy": "auto",
    "batch_size": None,
    "batch_budget": None,
    "amp": None,
    "keep_samples": False,
    "tolerance": 1e-2,
    "max_samples": 1000,
    "device": None,
    "compile": False,
    # accepted by MCDropout but not by _Options:
    "seed": None,
    "generator": None,
    "progress": None,
    "result_device": "cpu",
    "targets": None,
    "distributed": False,
    "rank0_only": False,
}
