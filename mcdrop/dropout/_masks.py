"""Shared dropout masks: sample ``t`` is one network ``f_t``, the same for every example.

With ``masks="shared"`` every dropout call of the sampling twin is answered here, by a
``TorchFunctionMode`` (:class:`MaskedDropout`), with a mask that is a deterministic function of

* the seed of the call,
* the sample index ``t`` (``0 <= t < T``),
* the site: the innermost sampled module that makes the call, the dropout function, and how many
  times that module made that call before in the same forward pass,
* the coordinates of the element *within its example*: every dimension of the dropout's input
  except the batch dimension, and within a batch dimension that folds several units per example
  (``(B * heads, L, S)`` attention weights, ``(B * L, H)`` flattened tokens) the unit's position
  inside its example.

It never depends on the example's position in the batch, on the batch size, on the padded length
of a sequence (a coordinate is a position, not a flat index), on the chunk or strategy that runs
the sample, or on PyTorch's global random generator, which it never draws from.

The masks come from a counter-based generator: a 32-bit integer hash (Chris Wellons'
``lowbias32``) chained over the call's key and the element's coordinates, one coordinate at a
time (kept per call and shape), then mixed once more with the hash of the sample index; computed
with vectorised ``int64`` tensor operations whose values stay below ``2**32`` and whose products
stay below ``2**63`` (no overflow: the result is the same on every device). An element is kept when its hash is at least
``p * 2**32``: a Bernoulli(1 - p) draw, exact to ``2**-32``. The mask has no batch dimension, so it
costs ``T`` times the size of one example, not ``T`` times the batch. A ``loop`` chunk (one sample
per pass) computes each call's masks for all its samples at its first pass (the same masks, a few
tensor operations per call and chunk instead of per pass; at most 64 MiB held).

What is masked, per kind of site (the per-example distribution is training mode's):

``F.dropout``, ``nn.Dropout``, ``torch.dropout``, ``alpha_dropout``
    one draw per element of the input, indexed by its coordinates within the example.
``dropout1d/2d/3d``, ``feature_alpha_dropout``, ``torch.feature_dropout``
    one draw per channel (the first two dimensions of the input the kernel sees, the batch
    dimension excepted), as ATen's feature noise.
Eager attention (softmax then ``F.dropout``)
    one draw per (head, query position, key position).
``F.scaled_dot_product_attention(dropout_p > 0)``
    the fused kernel draws its own masks: replaced by the same attention written out (scores,
    mask, softmax, shared mask per (head, query, key), weighted values).
``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``
    ``F.multi_head_attention_forward`` is run with its inner softmax dropout or attention kernel
    answered as above; the transformer layers run their Python path (the sampling twin keeps
    their fused fast path off).
``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh``, ``torch.rnn_relu`` with inter-layer dropout
    run one layer at a time with an explicit mask per (layer, time step, unit) between layers.
Dropout on a tensor that has no batch dimension (a weight: DropConnect)
    one draw per element of the tensor, per sample.

Which dimension of a call's input holds the examples is established by a probe
(:meth:`MaskedDropout.probing`, :func:`infer_layouts`): the sampling twin runs on one example and
on two, with every dropout the identity, and the dimension that doubles is the batch dimension;
where it folds several units per example, the values tell whether the example's units are
contiguous (``b * f + j``) or strided (``j * B + b``). A call whose layout cannot be told is
refused up front, naming the site.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import threading
import types
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from mcdrop.dropout._probe import _ATEN, _FUNCTIONAL, _RNN, _arg, _rnn_packed, dropout_call
from mcdrop.dropout._writes import check_write

__all__: list[str] = []

MASK_KINDS = ("independent", "shared")

_M32 = 0xFFFFFFFF
_C1 = 0x7FEB352D
_C2 = 0x846CA68B
_C2_SIGNED = _C2 - (1 << 32)  # same product mod 2**32, and |x * c| < 2**63 for x < 2**32
_ALPHA = 1.7580993408473766  # ATen's alpha dropout constant (SELU's -lambda * alpha)

Key = tuple[str, str, int]  # (innermost sampled module, dropout function, call index in the pass)


# -- the counter-based generator ----------------------------------------------------------------
def mix(x: torch.Tensor) -> torch.Tensor:
    """``lowbias32`` of every element of an ``int64`` tensor holding values in ``[0, 2**32)``."""
    x = x ^ (x >> 16)
    x = (x * _C1) & _M32
    x = x ^ (x >> 15)
    x = (x * _C2_SIGNED) & _M32
    return x ^ (x >> 16)


def mix_int(x: int) -> int:
    """:func:`mix` of one Python integer in ``[0, 2**32)`` (the same function)."""
    x ^= x >> 16
    x = (x * _C1) & _M32
    x ^= x >> 15
    x = (x * _C2) & _M32
    return x ^ (x >> 16)


def chain(*parts: int) -> int:
    """A 32-bit key from integers of any size (each folded in 32 bits at a time)."""
    h = 0x6A09E667
    for part in parts:
        part &= (1 << 64) - 1
        h = mix_int(h ^ (part & _M32))
        h = mix_int(h ^ (part >> 32))
    return h


def _text_id(text: str) -> int:
    return zlib.crc32(text.encode("utf-8"))


_COORDINATES = 0x3C6EF372  # separates the coordinates' chain from the samples' keys
_GRID_BYTES = 128 * 2**20  # coordinates' hashes kept per sampling call, at most
_CHUNK_BYTES = 64 * 2**20  # a loop chunk's keep masks (one byte each), at most
_CHUNK_ELEMENTS = 2**22  # per call: its int64 hashes (32 MiB) are made at once


def coordinates(
    base: int, sizes: list[int] | tuple[int, ...], device: torch.device
) -> torch.Tensor:
    """Hashes of shape ``sizes``: element ``[c1, ..., cn]`` a function of ``(base, c1, ..., cn)``
    only (chained one coordinate at a time), so it does not change when another size does."""
    h = torch.tensor(mix_int(base ^ _COORDINATES), dtype=torch.int64, device=device)
    for n in sizes:
        h = mix(h.unsqueeze(-1) ^ torch.arange(n, dtype=torch.int64, device=device))
    return h


def combine(
    grid: torch.Tensor, base: int, t: torch.Tensor, samples: list[int] | None = None
) -> torch.Tensor:
    """``(len(t), *grid.shape)`` hashes of the coordinates' hashes and the samples'.
    ``samples``: the values of ``t`` when known on the host (not under vmap): on the CPU their
    hashes are then computed in Python (fewer tensor ops for small masks)."""
    if samples is not None and grid.device.type == "cpu":
        keys = [mix_int((s & _M32) ^ base) for s in samples]
        g = torch.tensor(keys, dtype=torch.int64)
    else:
        g = mix((t.to(torch.int64) & _M32) ^ base)
    return mix(grid.unsqueeze(0) ^ g.reshape(-1, *[1] * grid.ndim))


def hashes(base: int, t: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Hashes of shape ``(len(t), *sizes)``: element ``[i, c1, ..., cn]`` is a function of
    ``(base, t[i], c1, ..., cn)`` only, so it does not change when another size does."""
    return combine(coordinates(base, sizes, t.device), base, t)


def threshold(p: float) -> int:
    """Hashes at or above this are kept: P(keep) = 1 - p, to 2**-32."""
    return min(round(p * 2**32), 2**32)


# -- where the examples are ---------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Where the examples are in one dropout call's input.

    ``dim`` is the batch dimension (``None``: the input has none, e.g. a weight); ``major``
    whether an example's units are contiguous along it (``b * f + j``) or strided (``j * B + b``)
    when it holds ``f > 1`` units per example.
    """

    dim: int | None
    major: bool = True


def _agree(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to the rounding of kernels that differ by batch size."""
    if a.shape != b.shape:
        return False
    tol = 3e-2 if a.dtype in (torch.float16, torch.bfloat16) else 1e-4
    a, b = a.detach().double(), b.detach().double()
    finite = torch.isfinite(a)
    scale = float(a[finite].abs().max()) if bool(finite.any()) else 0.0
    return bool(torch.allclose(a, b, rtol=tol, atol=tol * scale + 1e-30, equal_nan=True))


def infer_layout(one: torch.Tensor, two: torch.Tensor) -> Layout | str:
    """The layout of a call from its input with one example and with two, or why it is unclear.

    ``two`` holds the example of ``one`` and another one. The dimension that doubles is the batch
    dimension; an input whose shape does not change has none.
    """
    if one.ndim != two.ndim:
        return f"its input has {one.ndim} dimensions for one example and {two.ndim} for two"
    if one.shape == two.shape:
        return Layout(None)
    changed = [d for d in range(one.ndim) if one.shape[d] != two.shape[d]]
    d = changed[0]
    if len(changed) != 1 or two.shape[d] != 2 * one.shape[d]:
        return (
            f"its input has shape {tuple(one.shape)} for one example and {tuple(two.shape)} for "
            "two: no single dimension holds the examples"
        )
    f = one.shape[d]
    if f == 1:
        return Layout(d)
    contiguous = _agree(one, two.narrow(d, 0, f))
    strided = _agree(one, two.index_select(d, torch.arange(0, 2 * f, 2, device=two.device)))
    if contiguous != strided:
        return Layout(d, major=contiguous)
    return (
        f"its dimension {d} holds {f} units per example, and the values do not tell whether an "
        "example's units are contiguous or strided"
    )


def infer_layouts(
    one: Mapping[Key, Any], two: Mapping[Key, Any]
) -> tuple[dict[Key, Layout], dict[Key, str]]:
    """Layouts of the calls seen with one example and with two, and the calls that are unclear.

    Values are the recorded inputs, or a :class:`Layout` the call's own arguments give (RNN
    kernels).
    """
    layouts: dict[Key, Layout] = {}
    unclear: dict[Key, str] = {}
    for key in one.keys() & two.keys():
        a, b = one[key], two[key]
        found = b if isinstance(b, Layout) else infer_layout(a, b)
        if isinstance(found, Layout):
            layouts[key] = found
        else:
            unclear[key] = found
    return layouts, unclear


# -- running Python functionals under the mode --------------------------------------------------
@functools.cache
def _unchecked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a ``torch.nn.functional`` function) without its ``__torch_function__`` dispatch
    check, so that it can run under the mode that intercepts it: the mode then sees the calls
    inside it (``torch.dropout``, the attention kernel)."""
    namespace = dict(fn.__globals__)
    for name in ("has_torch_function", "has_torch_function_unary", "has_torch_function_variadic"):
        namespace[name] = _never
    copy = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__, fn.__closure__)
    copy.__kwdefaults__ = fn.__kwdefaults__
    return copy


def _never(*_: Any) -> bool:
    return False


# ATen dropout kernels: (feature noise, alpha dropout, in place)
_KINDS: dict[Callable[..., Any], tuple[bool, bool, bool]] = {
    func: (label.startswith("torch.feature"), "alpha" in label, label.endswith("_"))
    for func, label in _ATEN.items()
}
# Functionals that are one ATen kernel (``inplace`` picks the ``_`` variant): answered directly.
_DIRECT: dict[Callable[..., Any], tuple[Callable[..., Any], Callable[..., Any]]] = {
    F.dropout: (torch.dropout, torch.dropout_),
    F.alpha_dropout: (torch.alpha_dropout, torch.alpha_dropout_),
    F.feature_alpha_dropout: (torch.feature_alpha_dropout, torch.feature_alpha_dropout_),
}
# Python functionals that reduce to those kernels (or to attention): run unchecked, under the mode.
_PYTHON = frozenset([*_FUNCTIONAL, F.multi_head_attention_forward])

_RANDOM = frozenset(
    f
    for f in (
        torch.rand,
        torch.randn,
        torch.randint,
        torch.randperm,
        torch.bernoulli,
        torch.normal,
        torch.multinomial,
        torch.poisson,
        torch.rand_like,
        torch.randn_like,
        torch.randint_like,
        torch.Tensor.bernoulli,
        torch.Tensor.bernoulli_,
        torch.Tensor.uniform_,
        torch.Tensor.normal_,
        torch.Tensor.random_,
        torch.Tensor.exponential_,
        torch.Tensor.geometric_,
        torch.Tensor.cauchy_,
        torch.Tensor.log_normal_,
        torch.Tensor.multinomial,
        # torch.distributions (Gamma, Beta, Dirichlet, Binomial) and RReLU's kernel
        torch._standard_gamma,
        torch._sample_dirichlet,
        torch.binomial,
        torch.rrelu,
        torch.rrelu_,
    )
)
# Python functions that draw inside (their inner random ops must reach the mode too): run under
# it without their own ``__torch_function__`` check (:func:`_unchecked`).
_PY_RANDOM = frozenset(
    getattr(F, name)
    for name in (
        "rrelu",
        "gumbel_softmax",
    )
    if hasattr(F, name)
)
# Fractional max pooling draws its random offsets with ``torch.rand`` when not given them (in
# eval mode too), in the ``*_with_indices`` function that the others reach through dispatch
# (which hands the mode the public function again): each runs as that one, under the mode.
_FRACTIONAL: dict[Any, Callable[..., Any]] = {
    func: getattr(F, f"fractional_max_pool{d}d_with_indices")
    for d in (2, 3)
    for func in (
        getattr(F, f"fractional_max_pool{d}d", None),
        getattr(F, f"_fractional_max_pool{d}d", None),
        getattr(F, f"fractional_max_pool{d}d_with_indices", None),
    )
    if func is not None
}


# ``*_like`` ops given a generator have no vmap batching rule: vmap's fallback runs them once for
# an input that is not batched, so every sample of a pass would get the same numbers (torch
# 2.13-2.15, silently). They are drawn from the shape instead (the same numbers outside vmap).
_LIKE: dict[Any, Callable[..., torch.Tensor]] = {
    torch.rand_like: torch.rand,
    torch.randn_like: torch.randn,
    torch.randint_like: torch.randint,
}


def _from_shape(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    """``torch.rand_like(x, ...)`` as ``torch.rand(x.shape, ...)`` (and randn, randint)."""
    x, *rest = args if args else (kwargs.pop("input"),)
    kwargs = {k: v for k, v in kwargs.items() if k not in ("input", "memory_format")}
    kwargs.setdefault("dtype", x.dtype)
    kwargs.setdefault("device", x.device)
    make = _LIKE[func]
    bounds = list(rest)
    if "low" in kwargs:  # randint_like's bounds
        bounds.insert(0, kwargs.pop("low"))
    if "high" in kwargs:
        bounds.append(kwargs.pop("high"))
    return make(*bounds, tuple(x.shape), **kwargs)


# Everything the mode answers; any other function runs as it is after one set lookup.
_INTERCEPTED = frozenset(
    [*_KINDS, *_PYTHON, F.scaled_dot_product_attention, *_RNN, *_RANDOM, *_PY_RANDOM, *_FRACTIONAL]
)


def _device_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value.device
    device = kwargs.get("device")
    return torch.device(device) if device is not None else torch.get_default_device()


def _draws(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether the call draws random numbers that a mode of mcdrop's answers: a random op, a
    Python function that draws inside, fractional max pooling not given its offsets."""
    if func in _FRACTIONAL:
        return _arg(args, kwargs, 5, "_random_samples", None) is None
    return func in _RANDOM or func in _PY_RANDOM


class _Answering(threading.local):
    depth = 0  # how many of mcdrop's modes are answering a call on this thread


_ANSWERING = _Answering()


class PrivateRandom(TorchFunctionMode):
    """Every random op without a ``generator=`` draws from mcdrop's own generators (one per
    device, seeded from ``seed``), never from PyTorch's global ones: the caller's stream is
    neither read nor advanced, and another thread drawing from it changes nothing here."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.seed = seed
        self.generators: dict[torch.device, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        gen = self.generators.get(device)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(chain(self.seed, _text_id(str(device))))
            self.generators[device] = gen
        return gen

    def with_generator(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """``func`` (a random op) called with this mode's generator unless it was given one."""
        if kwargs.get("generator") is not None:
            return func(*args, **kwargs)
        kwargs = {**kwargs, "generator": self.generator(_device_of(args, kwargs))}
        if func in _LIKE:
            return _from_shape(func, args, kwargs)
        return func(*args, **kwargs)

    def state(self) -> Callable[[], None]:
        """A function that puts the generators back in their present state (generators made
        since are dropped). They are this call's own: no other thread's draws are handed back."""
        states = {device: gen.get_state() for device, gen in self.generators.items()}

        def restore() -> None:
            for device in list(self.generators):
                if device in states:
                    self.generators[device].set_state(states[device])
                else:
                    del self.generators[device]

        return restore

    @contextlib.contextmanager
    def forked(self) -> Iterator[None]:
        """Inside, draws do not count: the generators are put back as they were on exit."""
        restore = self.state()
        try:
            yield
        finally:
            restore()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if not _draws(func, args, kwargs):
            return func(*args, **kwargs)
        _ANSWERING.depth += 1
        try:
            return self._draw(func, args, kwargs)
        finally:
            _ANSWERING.depth -= 1

    def _draw(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A random op (:func:`_draws`) answered from this mode's generators: given them, or
        run under this mode (Python functions that draw inside)."""
        if func in _RANDOM:
            return self.with_generator(func, args, kwargs)
        if func in _FRACTIONAL:
            return self._fractional(func, args, kwargs)
        with self:
            return _unchecked(func)(*args, **kwargs)

    def _fractional(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Fractional max pooling with its offsets drawn under this mode (:data:`_FRACTIONAL`)."""
        with self:
            out, indices = _unchecked(_FRACTIONAL[func])(*args, **kwargs)
        if func is _FRACTIONAL[func] or (
            func.__name__.startswith("fractional")
            and _arg(args, kwargs, 4, "return_indices", False)
        ):
            return out, indices
        return out


@functools.cache
def bytes_under_vmap() -> bool:
    """Whether vmap can view 64-bit words as bytes (no batching rule for ``view.dtype`` before
    torch 2.13): decided once per process, without random numbers, so that every call draws its
    masks the same way."""
    try:
        torch.func.vmap(lambda w: w.view(torch.uint8))(torch.zeros(2, 1, dtype=torch.int64))
    except RuntimeError:
        return False
    return True


def keep_mask(
    shape: tuple[int, ...] | torch.Size,
    p: float,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Bernoulli(1 - p) keep mask, drawn from ``generator`` (PyTorch's global one when None).
    For rates that are multiples of 1/256 (0.5, 0.25, ...) one random byte per unit decides
    exactly (eight from each 64-bit draw: about 3x cheaper than a float per unit), at 0.5 one
    random bit (:func:`_one_bit`); otherwise ``rand >= p`` in float32, as PyTorch's own masks
    resolve rates."""
    # ``generator=`` only when given: dynamo cannot trace an explicit ``generator=None``
    drawn: dict[str, Any] = (
        {"device": device}
        if generator is None
        else {
            "device": device,
            "generator": generator,
        }
    )
    threshold = p * 256
    if len(shape) == 0 or threshold != int(threshold) or not bytes_under_vmap():
        return torch.rand(shape, dtype=torch.float32, **drawn).ge(p)
    if _one_bit(shape, p):
        return _random_bits(shape, drawn).bool()
    return _random_bytes(shape, drawn).ge(int(threshold))


def keep_units(
    shape: tuple[int, ...] | torch.Size, p: float, device: torch.device, generator: torch.Generator
) -> torch.Tensor:
    """:func:`keep_mask` as 0/1 values (the same draws, the same mask): ``uint8`` where one
    random byte or bit per unit decides, else ``bool``. Multiplying by the bytes is the cheaper way to
    apply the mask: on the CPU, comparing bytes to a threshold and converting a boolean mask to
    floats each cost 4 to 10x the clamp used here."""
    threshold = p * 256
    c = int(threshold)
    if len(shape) == 0 or threshold != c or not 1 <= c <= 255 or not bytes_under_vmap():
        return keep_mask(shape, p, device, generator)
    drawn = {"device": device, "generator": generator}
    if _one_bit(shape, p):
        return _random_bits(shape, drawn)
    units = _random_bytes(shape, drawn)
    return units.clamp(c - 1, c).sub_(c - 1)  # byte >= c: 1, else 0


def _random_bytes(shape: tuple[int, ...] | torch.Size, drawn: dict[str, Any]) -> torch.Tensor:
    """Uniform random bytes of ``shape``, eight from each 64-bit draw along the last dimension."""
    *lead, last = shape
    words = torch.randint(-(2**63), 2**63 - 1, (*lead, (last + 7) // 8), **drawn)
    return words.view(torch.uint8)[..., :last]


_LOW_BITS = 0x0101010101010101  # the lowest bit of each byte of a 64-bit word


def _one_bit(shape: tuple[int, ...] | torch.Size, p: float) -> bool:
    """Whether one random bit per unit decides (:func:`_random_bits`): ``p = 0.5``, in rows of
    at least a word (shorter rows would draw as many words as bytes take, and hold 8 bytes a
    unit). The caller has ruled out what bytes cannot do (a scalar, vmap without byte views)."""
    return p == 0.5 and shape[-1] >= 64


def _random_bits(shape: tuple[int, ...] | torch.Size, drawn: dict[str, Any]) -> torch.Tensor:
    """Uniform random bits of ``shape`` as 0/1 bytes, 64 from each 64-bit draw along the last
    dimension (unit ``64 w + 8 s + k`` of a row is bit ``s`` of byte ``k`` of its word ``w``):
    a keep mask for ``p = 0.5`` from an eighth of the draws of :func:`_random_bytes` (on the
    CPU, where drawing dominates, 1.4x faster for 64 units a row, 2.9x for 512:
    ``benchmarks/bench_masks.py``). Rows of fewer than 64 units are left to bytes: as many
    words, and 8 bytes a unit here."""
    *lead, last = shape
    words = torch.randint(-(2**63), 2**63 - 1, (*lead, (last + 63) // 64, 1), **drawn)
    shifts = torch.arange(8, dtype=torch.int64, device=drawn["device"])
    bits = words.bitwise_right_shift(shifts).bitwise_and_(_LOW_BITS)  # (*lead, words, 8)
    return bits.flatten(-2).view(torch.uint8)[..., :last]


@functools.cache
def in_dtype(value: float, dtype: torch.dtype) -> float:
    """``value`` rounded to ``dtype`` (a Python float): ``x * in_dtype(s, x.dtype)`` rounds as
    ``x * (mask.to(x.dtype) * s)`` does, for a 0/1 mask."""
    return float(torch.tensor(value, dtype=torch.float64).to(dtype))


# -- the mode -----------------------------------------------------------------------------------
AMBIGUOUS = "a dropout input whose batch dimension has the size of another of its dimensions"


@dataclass
class Counted:
    """What :meth:`MaskedDropout.counting` counted, per pass (set when counting ends): dropout
    calls keyed ``(function label, effective rate)``, other random draws keyed by function."""

    calls: dict[Any, float] | None = None


class MaskedDropout(PrivateRandom):
    """Answers every dropout call with an explicit mask (see the module docstring).

    Parameters
    ----------
    seed : int
        The call's seed.
    layouts : dict or None
        Per call (:data:`Key`), where its input holds the examples: shared masks. ``None``:
        independent masks (``masks="independent"``, and the training-mode probe), drawn per
        element from this mode's own generators (:class:`PrivateRandom`, seeded from ``seed``),
        as is every other random op of the model: PyTorch's global generators are never used.
    """

    def __init__(self, seed: int, layouts: dict[Key, Layout] | None = None) -> None:
        super().__init__(seed)
        self.base = chain(seed)
        self.layouts = layouts
        self.stack: list[str] = []
        self.counts: Counter[tuple[str, str]] = Counter()
        self.t: torch.Tensor | None = None  # sample index of each group of rows in the pass
        self.rows: int | None = None  # rows per sample in the pass
        self.samples: list[int] | None = None  # the values of ``t`` (not under vmap)
        self.records: dict[Key, Any] | None = None  # while probing
        self.bases: dict[tuple[Key, tuple[int, ...]], int] = {}  # key of each call, cached
        # the coordinates' hashes of each call and shape: computed once per sampling call
        self.grids: dict[tuple[int, tuple[int, ...], torch.device], torch.Tensor] = {}
        self.grid_bytes = 0
        # a loop's chunk of samples, one per pass: every call's keep masks for all of them at
        # once (a few tensor operations per call and chunk rather than per pass)
        self.chunk: range | None = None
        self.chunk_keeps: dict[Any, torch.Tensor] = {}  # (call, sizes, cut, device, scaled)
        self.chunk_bytes = 0
        self.tally: Counter[Any] | None = None  # while counting(): the calls answered
        self.passes = 0  # ... and the passes they came from
        self.names: Mapping[int, Any] = {}  # ... the modules that may make them
        self.originals: Mapping[int, str] = {}  # ... and those that never should
        # while set, called before each call this mode answers (a late vmap enters vmap there,
        # and unsets it; it raises where it cannot)
        self.before_first: Callable[[], None] | None = None

    # -- passes and attribution ------------------------------------------------------------------
    def start_pass(
        self,
        t: torch.Tensor,
        rows: int,
        samples: list[int] | None = None,
        chunk: range | None = None,
    ) -> None:
        """The next forward pass holds ``len(t)`` samples of ``rows`` rows each (sample-major:
        row ``r`` is sample ``t[r // rows]``); ``samples``: the values of ``t``, when known on
        the host (not under vmap); ``chunk``: the samples of the loop this one-sample pass is
        part of, whose masks are then computed together (the same masks)."""
        self.t = t
        self.rows = rows
        self.samples = samples
        self.passes += 1
        if chunk != self.chunk:
            self.chunk = chunk
            self.chunk_keeps.clear()
            self.chunk_bytes = 0
        self.counts.clear()

    @contextlib.contextmanager
    def attributed(self, modules: Mapping[str, nn.Module]) -> Iterator[None]:
        """Forward hooks on ``modules`` (of the sampling twin, never the model) that name the
        innermost one running: each dropout call is keyed by it."""
        stack = self.stack

        def pre(module: nn.Module, _args: Any) -> None:
            stack.append(names[id(module)])

        def post(module: nn.Module, _args: Any, _out: Any) -> None:
            if stack:
                stack.pop()

        names = {id(m): name for name, m in modules.items()}
        handles = []
        for module in modules.values():
            handles.append(module.register_forward_pre_hook(pre))
            handles.append(module.register_forward_hook(post, always_call=True))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            stack.clear()

    def release(self) -> None:
        """Drop what one call's passes cached (the coordinates' hashes, a loop chunk's masks,
        up to ``_GRID_BYTES`` and ``_CHUNK_BYTES`` on the device): a plan kept between calls
        keeps this mode for its layouts only, and every call draws with a new one."""
        self.grids.clear()
        self.grid_bytes = 0
        self.chunk_keeps.clear()
        self.chunk_bytes = 0
        self.chunk = None
        self.t = None
        self.samples = None

    @contextlib.contextmanager
    def counting(
        self, names: Mapping[int, nn.Module | str], originals: Mapping[int, str]
    ) -> Iterator[Counted]:
        """Inside, every call this mode answers is counted, keyed by the innermost module of
        ``names`` (id -> name: the sampling twin's) whose code makes it: dropout calls by
        function and effective rate (0 for ``training=False``), other random draws by function;
        a call made by code of a module of the user's model (``originals``, id -> name), which
        the twin should never run, by that module; with shared masks each dropout input's shape
        is counted too, and :data:`AMBIGUOUS` where its batch dimension has the size of another of its
        dimensions (a transposition would then go unseen). On leaving, the yielded
        :class:`Counted` holds the counts per pass (the calls one pass makes, on average): what a
        kept plan's first chunk must make again. Costs a dictionary update and a walk up the
        Python stack per dropout call or random draw, nothing per other operation."""
        counted = Counted()
        self.tally, self.passes = Counter(), 0
        self.names, self.originals = names, originals
        try:
            yield counted
        finally:
            n = max(self.passes, 1)
            counted.calls = {key: count / n for key, count in self.tally.items()}
            self.tally = None

    def _caller(self) -> str:
        """The name of the innermost module whose code is running (a frame whose ``self`` is a
        module of the twin, or of the user's model: then its name is marked); ``""`` when none
        is."""
        names, originals = self.names, self.originals
        frame: Any = sys._getframe(3)  # (_answer, __torch_function__, its caller)
        for _ in range(48):
            if frame is None:
                break
            code = frame.f_code
            if code.co_argcount and code.co_varnames[0] == "self":
                owner = frame.f_locals.get("self")
                name = names.get(id(owner))
                if name is not None:
                    return str(name)
                name = originals.get(id(owner))
                if name is not None:
                    return f"<the model's own {name or '<model>'}>"
            frame = frame.f_back
        return ""

    @contextlib.contextmanager
    def probing(self) -> Iterator[dict[Key, Any]]:
        """Inside, every dropout is the identity and each call's input (or layout) is recorded
        into the yielded dict (see :func:`infer_layouts`)."""
        self.records = {}
        try:
            yield self.records
        finally:
            self.records = None

    def _key(self, label: str) -> Key:
        site = self.stack[-1] if self.stack else ""
        index = self.counts[(site, label)]
        self.counts[(site, label)] += 1
        return site, label, index

    def _layout(self, key: Key) -> Layout:
        assert self.layouts is not None
        layout = self.layouts.get(key)
        if layout is not None:
            return layout
        same = {v for k, v in self.layouts.items() if k[:2] == key[:2]}
        if len(same) == 1:  # called more often than in the probe, always with one layout
            return same.pop()
        site, label, index = key
        raise ValueError(
            f"Expected every dropout call of the sampling twin to have been seen by the probe "
            f"that finds where each call's input holds the examples (masks='shared'), but "
            f"`{site or '<model>'}` made call {index + 1} of {label}, which the probe did not "
            "see (the calls depend on the inputs). Use masks='independent' for this model."
        )

    # -- dispatch --------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        after = check_write(func, args, kwargs)  # (nothing of the model is written: ._writes)
        if after is not None:
            return after(func(*args, **kwargs))
        if func not in _INTERCEPTED:
            return func(*args, **kwargs)
        if self.before_first is not None and not _ANSWERING.depth:  # (not a call made by
            self.before_first()  # another of mcdrop's modes answering one: a nested sampler)
        _ANSWERING.depth += 1
        try:
            return self._answer(func, args, kwargs)
        finally:
            _ANSWERING.depth -= 1

    def _answer(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        tally = self.tally
        if _draws(func, args, kwargs):
            if tally is not None:
                tally[(self._caller(), func)] += 1
            if self.layouts is not None:
                self._refuse_random(func)
            return self._draw(func, args, kwargs)
        if func in _FRACTIONAL:
            return func(*args, **kwargs)  # given its offsets: no draw, the pooling is the caller's
        label, p = dropout_call(func, args, kwargs)
        if tally is not None:
            tally[(self._caller(), label, p)] += 1
        if p <= 0.0:
            return func(*args, **kwargs)
        direct = _DIRECT.get(func)
        if direct is not None:  # the functional is its ATen kernel: no need to run its body
            inplace = bool(_arg(args, kwargs, 3, "inplace", False))
            aten = direct[1] if inplace else direct[0]
            x = _arg(args, kwargs, 0, "input", None)
            return self._dropout(aten, _ATEN[aten], p, (x,), {})
        if func in _PYTHON:
            with self:
                return _unchecked(func)(*args, **kwargs)
        if func in _KINDS:
            return self._dropout(func, label, p, args, kwargs)
        if func is F.scaled_dot_product_attention:
            return self._attention(label, p, args, kwargs)
        if func in _RNN:
            return self._rnn(func, label, p, args)
        return func(*args, **kwargs)

    def _refuse_random(self, func: Any) -> None:
        site = self.stack[-1] if self.stack else ""
        name = getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))
        if "<locals>" in name:  # (a boolean dispatch: fractional max pooling)
            name = getattr(func, "__name__", name)
        raise ValueError(
            f"Expected the sampling twin to draw random numbers only in recognised dropout with "
            f"masks='shared', but `{site or '<model>'}` (or a module inside it) calls {name}: "
            "its randomness could not be one network per sample. Use masks='independent', or "
            "`exclude=` to keep that module in eval mode."
        )

    # -- the mask --------------------------------------------------------------------------------
    def _keep(
        self,
        key: Key,
        shape: torch.Size,
        masked: set[int],
        layout: Layout | None,
        device: torch.device,
        p: float,
        extra: tuple[int, ...] = (),
        scaled: tuple[torch.dtype, float] | None = None,
    ) -> tuple[tuple[int, ...], torch.Tensor]:
        """``(view shape, keep mask)``: the input viewed with its batch dimension split into
        ``(samples, rows, units)`` (or ``(units, samples, rows)``), and a boolean mask that
        broadcasts against that view. ``masked``: the dimensions along which the mask varies.
        ``scaled=(dtype, scale)``: the mask as that dtype times ``scale``."""
        ndim = len(shape)
        dims = [shape[i] if i in masked else 1 for i in range(ndim)]
        if self.layouts is None:  # independent draws, from this mode's own generator
            keep = keep_units(tuple(dims), p, device, self.generator(device))
            return tuple(shape), keep if scaled is None else keep.to(scaled[0]) * scaled[1]
        base = self._base(key, extra)
        assert self.t is not None and self.rows is not None
        t = self.t if self.t.device == device else self.t.to(device)
        k = t.shape[0]
        if layout is None or layout.dim is None:
            if k != 1:
                self._refuse_replicate(key)
            sizes = [shape[i] for i in range(ndim) if i in masked]
            return tuple(shape), self._keeps(base, t, sizes, p, scaled).reshape(dims)
        d = layout.dim
        rows = k * self.rows
        if self.tally is not None:  # a kept plan's first chunk: the same shapes, unambiguous
            self.tally[("shape", key, tuple(shape))] += 1
            if d < ndim and list(shape).count(shape[d]) > 1:
                self.tally[AMBIGUOUS] += 1
        if d >= ndim or shape[d] % rows:
            raise ValueError(
                f"Expected dimension {d} of the input of {key[1]} in "
                f"`{key[0] or '<model>'}` to hold {rows} rows per pass (or a multiple), as the "
                f"probe found, but the input has shape {tuple(shape)}. Use masks='independent' "
                "for this model."
            )
        f = shape[d] // rows
        others = [i for i in range(ndim) if i != d]
        units = f if d in masked else 1
        sizes = ([f] if d in masked else []) + [shape[i] for i in others if i in masked]
        h = self._keeps(base, t, sizes, p, scaled).reshape(k, units, *[dims[i] for i in others])
        before = list(range(2, 2 + d))
        after = list(range(2 + d, 1 + ndim))
        if layout.major:
            h = h.permute(*before, 0, 1, *after).unsqueeze(d + 1)
            view = (*shape[:d], k, self.rows, f, *shape[d + 1 :])
        else:
            h = h.permute(*before, 1, 0, *after).unsqueeze(d + 2)
            view = (*shape[:d], f, k, self.rows, *shape[d + 1 :])
        return view, h

    def _base(self, key: Key, extra: tuple[int, ...] = ()) -> int:
        """The key of one call: seed, module, function, call index (and the RNN layer)."""
        base = self.bases.get((key, extra))
        if base is None:
            base = chain(self.base, _text_id(key[0]), _text_id(key[1]), key[2], *extra)
            self.bases[(key, extra)] = base
        return base

    def _keeps(
        self,
        base: int,
        t: torch.Tensor,
        sizes: list[int],
        p: float,
        scaled: tuple[torch.dtype, float] | None = None,
    ) -> torch.Tensor:
        """``(len(t), *sizes)`` keep masks: :func:`hashes` at or above :func:`threshold` (with
        ``scaled``, as that dtype times the scale). In a loop's one-sample pass, the rows of the
        chunk's masks, computed at its first pass: the same masks, with fewer operations."""
        chunk, samples, cut = self.chunk, self.samples, threshold(p)
        if chunk is None or samples is None or len(samples) != 1:
            return _as(self._hashes(base, t, sizes, samples).ge(cut), scaled)
        index = (base, tuple(sizes), cut, t.device, scaled)
        keeps = self.chunk_keeps.get(index)
        if keeps is None:
            size = len(chunk) * math.prod(sizes)
            width = 1 if scaled is None else scaled[0].itemsize
            if size > _CHUNK_ELEMENTS or self.chunk_bytes + size * width > _CHUNK_BYTES:
                return _as(self._hashes(base, t, sizes, samples).ge(cut), scaled)
            ts = torch.arange(chunk.start, chunk.stop, device=t.device)
            keeps = _as(self._hashes(base, ts, sizes, list(chunk)).ge(cut), scaled)
            self.chunk_keeps[index] = keeps
            self.chunk_bytes += size * width
        i = samples[0] - chunk.start
        return keeps[i : i + 1]

    def _hashes(
        self, base: int, t: torch.Tensor, sizes: list[int], samples: list[int] | None
    ) -> torch.Tensor:
        """:func:`hashes`, the coordinates' part kept for the next pass of the same shape."""
        index = (base, tuple(sizes), t.device)
        grid = self.grids.get(index)
        if grid is None:
            grid = coordinates(base, sizes, t.device)
            if self.grid_bytes + 8 * grid.numel() <= _GRID_BYTES:  # else computed every pass
                self.grids[index] = grid
                self.grid_bytes += 8 * grid.numel()
        return combine(grid, base, t, samples)

    def _refuse_replicate(self, key: Key) -> None:
        raise ValueError(
            f"Expected a `strategy` other than 'replicate' with masks='shared' for this model: "
            f"{key[1]} in `{key[0] or '<model>'}` drops out a tensor without a batch dimension "
            "(a weight, or a tensor shared by every example), which cannot take a different mask "
            "per sample within one replicated pass. Use strategy='auto', 'vmap' or 'loop'."
        )

    def _apply(
        self,
        x: torch.Tensor,
        key: Key,
        p: float,
        masked: set[int],
        layout: Layout | None,
        *,
        alpha: bool = False,
        inplace: bool = False,
        extra: tuple[int, ...] = (),
    ) -> torch.Tensor:
        if alpha:  # ATen: x * noise * a + (noise - 1) * alpha * a + alpha * a * p
            view, keep = self._keep(key, x.shape, masked, layout, x.device, p, extra)
            noise = keep.to(x.dtype)
            a = 1.0 / math.sqrt((_ALPHA * _ALPHA * p + 1) * (1 - p))
            out = x.reshape(view) * (noise * a) + (noise - 1 + p) * (_ALPHA * a)
        elif self.layouts is None:  # 0/1 units: the input scaled, then masked
            scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
            view, keep = self._keep(key, x.shape, masked, layout, x.device, p, extra)
            out = x.reshape(view) * in_dtype(scale, x.dtype) * keep
        else:
            scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
            view, noise = self._keep(
                key, x.shape, masked, layout, x.device, p, extra, (x.dtype, scale)
            )
            out = x.reshape(view) * noise
        out = out.reshape(x.shape)
        return x.copy_(out) if inplace else out

    # -- the kinds of calls ------------------------------------------------------------------------
    def _dropout(
        self, func: Any, label: str, p: float, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> torch.Tensor:
        x = _arg(args, kwargs, 0, "input", None)
        feature, alpha, inplace = _KINDS[func]
        key = self._key(label)
        if self.records is not None:
            self.records[key] = x.detach().clone()
            return x
        layout = None if self.layouts is None else self._layout(key)
        masked = {0, 1} if feature else set(range(x.ndim))
        return self._apply(x, key, p, masked, layout, alpha=alpha, inplace=inplace)

    def _attention(
        self, label: str, p: float, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> torch.Tensor:
        names = (
            "query",
            "key",
            "value",
            "attn_mask",
            "dropout_p",
            "is_causal",
            "scale",
            "enable_gqa",
        )
        bound = dict(zip(names, args, strict=False), **kwargs)
        q, k, v = bound["query"], bound["key"], bound["value"]
        key = self._key(label)
        if self.records is not None:
            self.records[key] = q.detach().clone()
            return F.scaled_dot_product_attention(**{**bound, "dropout_p": 0.0})
        layout = None if self.layouts is None else self._layout(key)
        weights = attention_weights(
            q,
            k,
            bound.get("attn_mask"),
            bool(bound.get("is_causal", False)),
            bound.get("scale"),
            bool(bound.get("enable_gqa", False)),
        )
        if weights.ndim != q.ndim:
            raise ValueError(
                f"Expected the query of {label} in `{key[0] or '<model>'}` to have as many "
                f"dimensions as the attention weights with masks='shared', but got query "
                f"{tuple(q.shape)} and weights {tuple(weights.shape)}. Use masks='independent'."
            )
        weights = self._apply(weights, key, p, set(range(weights.ndim)), layout)
        if bool(bound.get("enable_gqa", False)) and v.size(-3) != q.size(-3):
            v = v.repeat_interleave(q.size(-3) // v.size(-3), -3)
        return weights @ v

    def _rnn(self, func: Any, label: str, p: float, args: tuple[Any, ...]) -> Any:
        """The RNN kernel one layer at a time, an explicit mask between layers."""
        packed = _rnn_packed(args)
        key = self._key(label)
        if packed:
            data, sizes, hx, params, biases, layers, _, train, bidirectional = args
            layout = Layout(None)
        else:
            data, hx, params, biases, layers, _, train, bidirectional, batch_first = args
            layout = Layout(0 if batch_first else 1)
        if self.records is not None:
            self.records[key] = layout
            i = 5 + packed
            return func(*args[:i], 0.0, *args[i + 1 :])
        dirs = 2 if bidirectional else 1
        per = len(params) // layers
        lstm = func is torch.lstm
        out, hs, cs = data, [], []
        for layer in range(layers):
            weights = params[layer * per : (layer + 1) * per]
            part = slice(layer * dirs, (layer + 1) * dirs)
            h0 = (hx[0][part], hx[1][part]) if lstm else hx[part]
            if packed:
                res = func(out, sizes, h0, weights, biases, 1, 0.0, train, bidirectional)
            else:
                res = func(out, h0, weights, biases, 1, 0.0, train, bidirectional, batch_first)
            out = res[0]
            hs.append(res[1])
            if lstm:
                cs.append(res[2])
            if layer < layers - 1:
                if packed:
                    out = self._packed(out, sizes, key, p, layer)
                else:
                    out = self._apply(out, key, p, set(range(out.ndim)), layout, extra=(layer,))
        if lstm:
            return out, torch.cat(hs), torch.cat(cs)
        return out, torch.cat(hs)

    def _packed(
        self, data: torch.Tensor, sizes: torch.Tensor, key: Key, p: float, layer: int
    ) -> torch.Tensor:
        """Inter-layer dropout of a packed sequence: one draw per (time step, unit); the rows of
        a time step are the examples still running."""
        if self.layouts is None:
            return self._apply(data, key, p, {0, 1}, None)
        assert self.t is not None
        t = self.t.to(data.device)
        if t.shape[0] != 1:
            self._refuse_replicate(key)
        steps = torch.repeat_interleave(torch.arange(len(sizes)), sizes.cpu()).to(data.device)
        # the keys of a padded batch's (time step, unit), one unit per example along the batch
        keep = self._keeps(self._base(key, (layer,)), t, [1, len(sizes), data.shape[1]], p)
        keep = keep.reshape(len(sizes), data.shape[1])
        scale = 0.0 if p >= 1.0 else 1.0 / (1.0 - p)
        return data * (keep[steps].to(data.dtype) * scale)


def _as(keep: torch.Tensor, scaled: tuple[torch.dtype, float] | None) -> torch.Tensor:
    """A boolean mask, or with ``scaled=(dtype, scale)`` that dtype times ``scale``."""
    return keep if scaled is None else keep.to(scaled[0]) * scaled[1]


def attention_weights(
    q: torch.Tensor,
    k: torch.Tensor,
    attn_mask: torch.Tensor | None,
    is_causal: bool,
    scale: float | None,
    enable_gqa: bool,
) -> torch.Tensor:
    """``softmax(q k^T * scale + mask)`` as ``F.scaled_dot_product_attention`` defines it (fully
    masked rows give zeros, as its math kernel)."""
    length, source = q.size(-2), k.size(-2)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    if enable_gqa and k.size(-3) != q.size(-3):
        k = k.repeat_interleave(q.size(-3) // k.size(-3), -3)
    scores = (q * scale) @ k.transpose(-2, -1)
    if is_causal:
        causal = torch.ones(length, source, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, -math.inf)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, -math.inf)
        else:
            scores = scores + attn_mask
    safe = getattr(torch.ops.aten, "_safe_softmax", None)
    if safe is not None:
        return safe(scores, -1)
    return torch.softmax(scores, -1).nan_to_num(0.0)


@contextlib.contextmanager
def private_randomness(seed: int) -> Iterator[None]:
    """Run a probe without PyTorch's global generators: dropout masks and every other random op
    draw from mcdrop's own generators seeded from ``seed``."""
    with MaskedDropout(seed):
        yield
