"""The plan of a call as a value: the ``auto`` rule, rows per pass and the out-of-memory back-off.

Plain arithmetic, no model: :func:`make_plan` is a pure function of what the probe measured
(:class:`Profile`), the options and the device, and gives a frozen :class:`Plan`. The run loop
(:mod:`mcdrop.sampling._run`) asks for the next plan, with one more :class:`Fallback`, when a
candidate proves invalid on the first chunk.

The ``auto`` rule
-----------------
``strategy="auto"`` never times anything: the same model, inputs, options and seed give the same
strategy, so the same numbers, on a busy machine as on an idle one. It decides from the
training-mode probe pass that finds the dropout sites (:mod:`mcdrop.dropout`), which also counts
the FLOPs done before the first dropout call that samples (``torch.utils.flop_counter``'s
formulas, closed forms for the RNN kernels; a kernel without one leaves the FLOPs unknown):

1. ``vmap`` when no site runs a fused kernel that vmap cannot batch (RNNs, fused attention) and
   either at least ``PREFIX_SHARE_FOR_VMAP`` of the FLOPs come before the first dropout (prefix
   sharing then saves most of the work: a conv net with a dropout head costs about one pass), or
   on CUDA without ``torch.compile`` the whole call (samples x examples x the probe's FLOPs per
   example) is at most ``CUDA_SMALL_CALL_FLOPS``: vmap needs no examples-interact check (1.3 ms
   of launches per call for a small model on an H200), which outweighs its slower passes (1 to
   4 ms more per TFLOP sampled than replicate's, measured) on calls that small;
2. else ``replicate`` (one wide pass: the fastest way to run ``k`` full passes);
3. ``loop`` when neither runs this model.

The first chunk checks the candidate (it must run and vary where the loop varies); one that fails
is dropped and the chunk runs again with the next, sized as if it had come first and, with a
seed, from the same random state. ``replicate`` is not a candidate when an example's output
depends on the other examples of its pass (checked on the first examples of the first batch,
the sampling twin with its dropout at rate 0). On the CPU, without an explicit
``batch_budget``, a replicate or loop pass holds at most ``CPU_PASS_BYTES`` of activations (the
probe measures the bytes per example). On CUDA a pass holds at most ``GPU_PASS_BYTES`` and
``MEMORY_FRACTION`` of the card (:mod:`mcdrop.sampling._memory`: measured on one pass, never from
the memory that other processes happen to hold, so the same seed gives the same numbers). The
measurements behind the thresholds are on the performance page of the docs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__: list[str] = []

PREFIX_SHARE_FOR_VMAP = 0.5
MAX_VMAP_SCALE = 16  # a vmap pass may hold up to this many times the budget's rows
DEFAULT_CPU_BUDGET = 1024
DEFAULT_CUDA_BUDGET = 8192
MEMORY_FRACTION = 0.7  # of the card's capacity, for rows per pass without a batch_budget
GPU_PASS_BYTES = 2**30  # a CUDA pass holds at most this much (sweep in docs/performance.rst)
MAX_MEMORY_ROWS = 1 << 16  # larger passes gain nothing and stall the streaming statistics
CPU_PASS_BYTES = 128 * 2**20  # CPU passes past this much activation traffic get slower
CUDA_SMALL_CALL_FLOPS = 3e11  # vmap's slower passes cost the interact check at 0.35-1.2 TFLOP


@dataclass(frozen=True)
class Profile:
    """What the probe pass measured: FLOPs before the first dropout and in all, vmap safety."""

    prefix_flops: int = 0
    total_flops: int = 0
    vmap_unsafe: tuple[str, ...] = ()
    replicate_unsafe: tuple[str, ...] = ()  # sites whose dropout masks a weight (DropConnect)
    bytes_per_row: float = 0.0  # bytes of all op outputs of one example's pass
    flops_per_row: float = 0.0  # FLOPs of one example's pass; 0 when unknown (RNN kernels)

    @property
    def prefix_share(self) -> float:
        return self.prefix_flops / self.total_flops if self.total_flops > 0 else 0.0


@dataclass(frozen=True)
class Fallback:
    """An ``auto`` candidate dropped for the rest of a call, and why."""

    strategy: str
    reason: str


@dataclass(frozen=True)
class Plan:
    """How a call samples, until a candidate proves invalid (then :func:`make_plan` again).

    Attributes
    ----------
    strategy : str
        The strategy the passes run with (``candidates[0]``).
    candidates : tuple of str
        The strategies still allowed, best first: ``(strategy,)`` for an explicit strategy; for
        ``auto`` the rule's order less the fallbacks (never empty: the last one stays).
    rows : int
        Rows (samples x examples) per pass.
    scale : int
        How many times more rows a vmap pass may hold (1 for the others).
    reason : str
        Why this strategy.
    fallbacks : tuple of Fallback
        The candidates dropped so far in this call, in order, with their reasons.
    """

    strategy: str
    candidates: tuple[str, ...]
    rows: int
    scale: int
    reason: str
    fallbacks: tuple[Fallback, ...] = ()

    @property
    def can_fall_back(self) -> bool:
        """Whether a candidate that proves invalid gives way to the next one (``auto``)."""
        return len(self.candidates) > 1

    def falling_back(self, reason: str) -> tuple[Fallback, ...]:
        """The fallbacks of the next plan: these and this plan's strategy, dropped for ``reason``."""
        return (*self.fallbacks, Fallback(self.strategy, reason))


def make_plan(
    profile: Profile,
    options: Any,
    device: torch.device,
    *,
    compiled: bool = False,
    call_rows: int | None = None,
    first_rows: int = 1,
    measured_rows: int | None = None,
    fallbacks: Sequence[Fallback] = (),
) -> Plan:
    """The plan for these inputs: pure, no model, no clock (the same inputs give the same plan).

    Parameters
    ----------
    profile : Profile
        What the probe pass measured.
    options : SamplingOptions
        Reads ``strategy`` and ``batch_budget``.
    device : torch.device
        Where the passes run.
    compiled : bool, default=False
        The passes run through ``torch.compile`` (vmap then only for a prefix).
    call_rows : int, optional
        Samples x examples of the whole call; None when the number of examples is unknown.
    first_rows : int, default=1
        Examples in the first batch (the smallest pass a CPU plan allows).
    measured_rows : int, optional
        CUDA rows per pass measured on one pass (:mod:`mcdrop.sampling._memory`).
    fallbacks : sequence of Fallback, default=()
        Candidates already dropped in this call; they do not come back.

    Raises
    ------
    ValueError
        For an explicit ``strategy`` that cannot sample this model (vmap with a fused kernel
        that draws one mask for all samples, replicate with DropConnect).
    """
    _refuse(options.strategy, profile)
    ranked = candidates(options.strategy, profile, device, compiled=compiled, rows=call_rows)
    dropped = {fallback.strategy for fallback in fallbacks}
    remaining = tuple(c for c in ranked if c not in dropped) or tuple(ranked[-1:])
    strategy = remaining[0]
    return Plan(
        strategy=strategy,
        candidates=remaining,
        rows=rows_per_pass(
            strategy, profile, device, options.batch_budget, first_rows, measured_rows
        ),
        scale=vmap_scale(profile) if strategy == "vmap" else 1,
        reason=_why(strategy, options.strategy, profile, fallbacks),
        fallbacks=tuple(fallbacks),
    )


def _refuse(strategy: str, profile: Profile) -> None:
    if profile.vmap_unsafe and strategy == "vmap":
        raise ValueError(
            "Expected a `strategy` other than 'vmap' for this model: vmap cannot draw a "
            f"dropout mask per sample in {', '.join(profile.vmap_unsafe)} (a fused kernel "
            "that draws one mask for every sample; a site whose kernels were not probed, with "
            "detect_silent=False or scope='train_except_norm', or whose randomness is not a "
            "dropout call mcdrop recognises, such as a hand-written mask named by include=; or "
            "an in-place dropout whose input is read again, which mcdrop keeps in place). Use "
            "strategy='auto', "
            "'replicate' or 'loop'."
        )
    if profile.replicate_unsafe and strategy == "replicate":
        raise ValueError(
            "Expected a `strategy` other than 'replicate' for this model: "
            f"{', '.join(profile.replicate_unsafe)} drops out a weight (DropConnect) or draws "
            "its own mask (hand-written dropout): one mask per pass, which every copy of a "
            "replicated batch could share. Use strategy='auto', 'vmap' or 'loop'."
        )


def _why(strategy: str, option: str, profile: Profile, dropped: Sequence[Fallback]) -> str:
    """Why a plan samples with ``strategy``, in words."""
    if option != "auto":
        return f"strategy={option!r} as given"
    if dropped:
        return f"auto, after {' and '.join(f.strategy for f in dropped)} fell back"
    share = f"{100 * profile.prefix_share:.0f}% of the FLOPs come before the first dropout"
    if profile.replicate_unsafe:
        weights = ", ".join(profile.replicate_unsafe)
        return f"auto: {weights} drops out a weight (DropConnect), which replicate cannot sample"
    if strategy == "vmap":
        if profile.prefix_share >= PREFIX_SHARE_FOR_VMAP:
            return f"auto: {share}, computed once for all samples of a vmap pass"
        return "auto: a small call on CUDA, where vmap needs no examples-interact check"
    if profile.vmap_unsafe:
        return f"auto: vmap cannot draw a mask per sample in {', '.join(profile.vmap_unsafe)}"
    return f"auto: {share}, too few to share: one wide replicated pass"


def rows_per_pass(
    strategy: str,
    profile: Profile,
    device: torch.device,
    batch_budget: int | None,
    first_rows: int,
    measured_rows: int | None,
) -> int:
    """Rows per pass: ``batch_budget`` when given, else the rows measured on one pass (CUDA),
    else on the CPU ``DEFAULT_CPU_BUDGET`` for vmap and :func:`cpu_rows` for the others, else
    the device's default."""
    if batch_budget is not None:
        return batch_budget
    if measured_rows is not None:
        return measured_rows
    if device.type == "cpu":
        return DEFAULT_CPU_BUDGET if strategy == "vmap" else cpu_rows(profile, first_rows)
    return default_budget(device)


def candidates(
    strategy: str,
    profile: Profile,
    device: torch.device,
    *,
    compiled: bool = False,
    rows: int | None = None,
) -> list[str]:
    """Strategies to try, best first (only ``strategy`` itself unless it is ``"auto"``).

    ``rows``: samples x examples of the whole call, None when the number of examples is unknown
    (an iterable without a length). ``compiled``: the passes run through ``torch.compile``, which
    does not compile inside vmap (the pass would run eagerly): then vmap only for a prefix.
    """
    if strategy != "auto":
        return [strategy]
    order = ["replicate", "loop"]
    small_cuda_call = (
        device.type == "cuda"
        and not compiled
        and rows is not None
        and profile.flops_per_row > 0
        and rows * profile.flops_per_row <= CUDA_SMALL_CALL_FLOPS
    )
    if profile.replicate_unsafe:  # one weight mask per pass: every copy would share it
        order = ["loop"] if profile.vmap_unsafe else ["vmap", "loop"]
    elif not profile.vmap_unsafe and (
        profile.prefix_share >= PREFIX_SHARE_FOR_VMAP or small_cuda_call
    ):
        order.insert(0, "vmap")
    return order


def vmap_scale(profile: Profile) -> int:
    """How many more rows a vmap pass may hold than the budget: only the suffix after the first
    dropout is computed per sample, so a sample costs about ``1 - prefix_share`` of a row."""
    suffix = max(1.0 - profile.prefix_share, 1.0 / MAX_VMAP_SCALE)
    return int(min(MAX_VMAP_SCALE, max(1.0, 1.0 / suffix)))


def default_budget(device: torch.device) -> int:
    return DEFAULT_CUDA_BUDGET if device.type == "cuda" else DEFAULT_CPU_BUDGET


def cpu_rows(profile: Profile, batch_size: int) -> int:
    """Rows per replicate/loop pass on the CPU: at most ``CPU_PASS_BYTES`` of activations (wide
    passes of a large model leave the caches and run slower than a plain loop), at least one
    batch, at most ``DEFAULT_CPU_BUDGET``."""
    if profile.bytes_per_row <= 0:
        return DEFAULT_CPU_BUDGET
    rows = int(CPU_PASS_BYTES // max(profile.bytes_per_row, 1.0))  # a row holds a byte at least
    return max(batch_size, min(DEFAULT_CPU_BUDGET, rows))


def rows_that_fit(capacity_bytes: float, bytes_per_row: float) -> int:
    """Rows per CUDA pass: at most ``GPU_PASS_BYTES`` and ``MEMORY_FRACTION`` of
    ``capacity_bytes``, at most ``MAX_MEMORY_ROWS``, at least 1."""
    allowed = min(MEMORY_FRACTION * capacity_bytes, GPU_PASS_BYTES)
    rows = int(allowed / max(bytes_per_row, 1.0))
    return max(1, min(rows, MAX_MEMORY_ROWS))


@dataclass
class Planner:
    """Rows per pass and the out-of-memory back-off, kept between calls of one engine.

    ``budget`` rows (samples x examples) per pass, ``scale`` times more for vmap: those of the
    plan in use (:meth:`adopt`). After an out-of-memory error the samples per pass are capped
    (``sample_cap``), and at one sample per pass the examples per pass (``example_cap``); the
    caps carry over to later calls. Only :meth:`back_off` lowers them, and only a candidate
    that falls back clears them (:meth:`adopt` with ``fresh``): the next starts as it would
    have, had it been chosen first.
    """

    budget: int
    scale: int = 1
    sample_cap: int | None = None
    example_cap: int | None = None

    def adopt(self, plan: Plan, *, fresh: bool = False) -> None:
        """Size the passes for ``plan``; ``fresh`` also clears the out-of-memory caps."""
        self.budget = plan.rows
        self.scale = plan.scale
        if fresh:
            self.sample_cap = self.example_cap = None

    def examples_per_pass(self, batch_size: int) -> int:
        rows = self.budget * self.scale
        cap = self.example_cap if self.example_cap is not None else batch_size
        return max(1, min(batch_size, cap, rows))

    def samples_per_pass(self, batch_size: int, remaining: int) -> int:
        k = max(1, (self.budget * self.scale) // max(self.examples_per_pass(batch_size), 1))
        if self.sample_cap is not None:
            k = min(k, self.sample_cap)
        return max(1, min(k, remaining))

    def back_off(self, k: int, batch_size: int) -> str:
        """Lower the caps after an out-of-memory error with ``k`` samples; return what changed.

        Raises ``torch.OutOfMemoryError`` when one sample of one example does not fit.
        """
        examples = self.examples_per_pass(batch_size)
        if k > 1:
            self.sample_cap = max(1, k // 2)
            return (
                f"out of memory with {k} samples per pass of {examples} examples; retrying with "
                f"{self.sample_cap} samples per pass ({self.sample_cap * examples} rows)."
            )
        if examples == 1:
            raise torch.OutOfMemoryError(
                "mcdrop: out of memory with one sample of one example per pass"
            )
        self.example_cap = examples // 2
        return (
            f"out of memory with 1 sample per pass of {examples} examples; retrying with "
            f"{self.example_cap} examples per pass."
        )
