"""Recording which dropout a forward pass runs, and which module runs it.

A probe runs a model (a twin, never the user's model) under a ``TorchFunctionMode`` that sees every
dropout call — ``F.dropout`` and its variants, ``torch.dropout``, the ``dropout_p`` of
``F.scaled_dot_product_attention`` and ``F.multi_head_attention_forward``, and the dropout/train
arguments of the RNN kernels (``torch.lstm``, ``torch.gru``, ``torch.rnn_tanh``,
``torch.rnn_relu``) — and attributes each call to the innermost module whose ``forward`` is running
(forward pre/post hooks on the twin's own hook registries). A call counts when its *effective*
rate is above zero: ``F.dropout(x, 0.2, training=False)`` drops nothing and is not recorded.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from mcdrop.dropout._writes import _address, checked_call

__all__: list[str] = []

# (function, label, default of its ``training`` argument)
_FUNCTIONAL: dict[Callable[..., Any], tuple[str, bool]] = {
    F.dropout: ("F.dropout", True),
    F.dropout1d: ("F.dropout1d", True),
    F.dropout2d: ("F.dropout2d", True),
    F.dropout3d: ("F.dropout3d", True),
    F.alpha_dropout: ("F.alpha_dropout", False),
    F.feature_alpha_dropout: ("F.feature_alpha_dropout", False),
}
# ATen-level dropout, ``(input, p, train)``, called directly by some models.
_ATEN: dict[Callable[..., Any], str] = {
    getattr(torch, name): f"torch.{name}"
    for name in (
        "dropout",
        "dropout_",
        "feature_dropout",
        "feature_dropout_",
        "alpha_dropout",
        "alpha_dropout_",
        "feature_alpha_dropout",
        "feature_alpha_dropout_",
    )
    if hasattr(torch, name)
}
_RNN: dict[Callable[..., Any], str] = {
    torch.lstm: "torch.lstm",
    torch.gru: "torch.gru",
    torch.rnn_tanh: "torch.rnn_tanh",
    torch.rnn_relu: "torch.rnn_relu",
}

# The same kernels as they appear in fx graphs (``torch.export``): ``(input, p, train)``.
_ATEN_OPS: dict[Any, str] = {
    getattr(torch.ops.aten, name): f"aten.{name}"
    for name in (
        "dropout",
        "dropout_",
        "feature_dropout",
        "feature_dropout_",
        "alpha_dropout",
        "alpha_dropout_",
        "feature_alpha_dropout",
        "feature_alpha_dropout_",
        "native_dropout",
    )
    if hasattr(torch.ops.aten, name)
}
# Hand-written dropout draws a Bernoulli mask: ``x.new_empty(B, 1, H).bernoulli_(1 - p)``.
_MASKS: dict[Any, str] = {
    torch.bernoulli: "torch.bernoulli",
    torch.Tensor.bernoulli: "Tensor.bernoulli",
    torch.Tensor.bernoulli_: "Tensor.bernoulli_",
}
_MASK_OPS = {
    torch.ops.aten.bernoulli: "aten.bernoulli",
    torch.ops.aten.bernoulli_: "aten.bernoulli_",
}
# Other random draws: noise, sampling, randomized activations (``torch.rand([])``, layer drop, is
# handled apart).
_RANDOM: dict[Any, str] = {
    **{getattr(torch, n): f"torch.{n}" for n in ("rand", "rand_like", "randn", "randn_like")},
    **{getattr(torch, n): f"torch.{n}" for n in ("randint", "randint_like", "randperm")},
    **{getattr(torch, n): f"torch.{n}" for n in ("multinomial", "normal", "poisson")},
    **{getattr(torch, n): f"torch.{n}" for n in ("rrelu", "rrelu_") if hasattr(torch, n)},
    F.rrelu: "F.rrelu",
    F.gumbel_softmax: "F.gumbel_softmax",
    **{
        getattr(torch.Tensor, n): f"Tensor.{n}"
        for n in (
            "uniform_",
            "normal_",
            "random_",
            "exponential_",
            "geometric_",
            "cauchy_",
            "log_normal_",
            "multinomial",
        )
    },
}
_RRELU = {F.rrelu, *(getattr(torch, n) for n in ("rrelu", "rrelu_") if hasattr(torch, n))}
_RANDOM_OPS = {
    getattr(torch.ops.aten, n): f"aten.{n}"
    for n in ("rand", "rand_like", "randn", "randn_like", "uniform_", "normal_")
    if hasattr(torch.ops.aten, n)
}

# In-place dropout kernels and their out-of-place forms (``inplace=True`` of the functionals
# picks the in-place kernel).
_OUT_OF_PLACE: dict[Any, Any] = {
    getattr(torch, f"{name}_"): getattr(torch, name)
    for name in ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
    if hasattr(torch, f"{name}_") and hasattr(torch, name)
}
_OUT_OF_PLACE_OPS: dict[Any, Any] = {
    getattr(torch.ops.aten, f"{name}_"): getattr(torch.ops.aten, name)
    for name in ("dropout", "feature_dropout", "alpha_dropout", "feature_alpha_dropout")
    if hasattr(torch.ops.aten, f"{name}_") and hasattr(torch.ops.aten, name)
}
# Calls that read a tensor's metadata, not its values (``x.shape``, ``x.size(0)``, ``len(x)``).
_METADATA = frozenset(
    {
        "__get__",
        "__len__",
        "size",
        "dim",
        "ndimension",
        "numel",
        "nelement",
        "stride",
        "storage_offset",
        "element_size",
        "is_floating_point",
        "is_complex",
        "is_contiguous",
        "get_device",
        "data_ptr",
    }
)

Call = tuple[str, str, float]  # (module name, function label, effective rate)
UNKNOWN_RATE = -1.0  # the rate of a mask drawn from a tensor of probabilities


def _arg(args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _rnn_packed(args: tuple[Any, ...]) -> int:
    """1 for the packed-sequence overload of the RNN kernels, 0 for the padded one: (input, hx,
    params, has_biases, num_layers, dropout, train, ...) or (data, batch_sizes, hx, params, ...)."""
    return 0 if isinstance(args[3], bool) else 1


def _rnn_dropout_index(args: tuple[Any, ...]) -> int:
    return 5 + _rnn_packed(args)


def _rnn_rate(args: tuple[Any, ...]) -> float:
    i = _rnn_dropout_index(args)
    num_layers, p, train = args[i - 1], args[i], args[i + 1]
    return float(p) if train and int(num_layers) > 1 else 0.0


def dropout_call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, float]:
    """``(label, effective rate)`` of a dropout call; ``("", 0.0)`` for anything else."""
    label, p, training = _dropout(func, args, kwargs)
    return label, p if training else 0.0


def _dropout(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, float, bool]:
    """``(label, rate, training)`` of a dropout call; ``("", 0.0, False)`` for anything else."""
    if func in _FUNCTIONAL:
        label, training_default = _FUNCTIONAL[func]
        p = float(_arg(args, kwargs, 1, "p", 0.5))
        return label, p, bool(_arg(args, kwargs, 2, "training", training_default))
    if func in _ATEN:
        p = float(_arg(args, kwargs, 1, "p", 0.0))
        return _ATEN[func], p, bool(_arg(args, kwargs, 2, "train", False))
    if func is F.scaled_dot_product_attention:
        return (
            "F.scaled_dot_product_attention",
            float(_arg(args, kwargs, 4, "dropout_p", 0.0)),
            True,
        )
    if func is F.multi_head_attention_forward:
        p = float(_arg(args, kwargs, 10, "dropout_p", 0.0))
        return "F.multi_head_attention_forward", p, bool(_arg(args, kwargs, 13, "training", True))
    if func in _RNN:
        return _RNN[func], _rnn_rate(args), True
    packet = getattr(func, "_overloadpacket", None)
    if packet is not None and packet in _ATEN_OPS:
        p = float(_arg(args, kwargs, 1, "p", 0.0))
        train = _arg(args, kwargs, 2, "train", True)
        return _ATEN_OPS[packet], p, train is None or bool(train)
    return "", 0.0, False


def out_of_place(
    func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, tuple[Any, ...], dict[str, Any]] | None:
    """The out-of-place form ``(func, args, kwargs)`` of an in-place dropout call
    (``F.dropout(..., inplace=True)`` and the other functionals, ``torch.dropout_``,
    ``aten.dropout_``); None for any other call. Same mask, same values: only the input is left
    as it was."""
    if func in _FUNCTIONAL:
        if not _arg(args, kwargs, 3, "inplace", False):
            return None
        args, kwargs = _with_arg(args, kwargs, 3, "inplace", False)
        return func, args, kwargs
    plain = _OUT_OF_PLACE.get(func)
    if plain is not None:
        return plain, args, kwargs
    packet = getattr(func, "_overloadpacket", None)
    plain = _OUT_OF_PLACE_OPS.get(packet) if packet is not None else None
    if plain is not None:
        return getattr(plain, func._overloadname), args, kwargs
    return None


class OutOfPlaceDropout(TorchFunctionMode):
    """Every in-place dropout call runs out of place (:func:`out_of_place`): the same mask and
    values, but the input is not written. Under vmap an in-place dropout of a tensor computed
    before the first dropout (unbatched: the prefix shared by every sample) cannot hold a mask
    per sample; out of place it can. Equivalent to the in-place call only when the forward does
    not read the input again: the training-mode probe checks it (``Trace.aliased``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        call = out_of_place(func, args, kwargs)
        if call is not None:
            func, args, kwargs = call
        return func(*args, **kwargs)


_Span = tuple[int, int, int]  # (storage address, first byte, one past the last byte)


def _span(tensor: torch.Tensor) -> _Span | None:
    """The bytes of its storage that ``tensor`` views; None when mcdrop cannot read them (a
    tensor subclass without storage) or it views none (no elements)."""
    try:
        address = _address(tensor)
        if address == 0 or tensor.numel() == 0:
            return None
        size = tensor.element_size()
        last = sum((n - 1) * abs(s) for n, s in zip(tensor.shape, tensor.stride(), strict=True))
        first = tensor.storage_offset() - sum(
            (n - 1) * -s for n, s in zip(tensor.shape, tensor.stride(), strict=True) if s < 0
        )
    except (RuntimeError, NotImplementedError, TypeError):
        return None
    return address, int(first) * size, (int(first) + int(last) + 1) * size


def _overlap(a: _Span, b: _Span) -> bool:
    return a[0] == b[0] and a[1] < b[2] and b[1] < a[2]


def _func_name(func: Any) -> str:
    if getattr(func, "_overloadpacket", None) is not None:
        return str(func)
    return str(getattr(func, "__name__", func))


def mask_call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, float, int]:
    """``(label, dropout rate, mask size)`` of a Bernoulli mask draw (hand-written dropout:
    ``x.new_empty(B, 1, H).bernoulli_(1 - p)``); ``("", 0.0, 0)`` for anything else. The rate
    is ``1 - p``, or :data:`UNKNOWN_RATE` for a tensor of probabilities."""
    label = _MASKS.get(func)
    if label is None:
        packet = getattr(func, "_overloadpacket", None)
        label = _MASK_OPS.get(packet) if packet is not None else None
    if label is None:
        return "", 0.0, 0
    mask = _arg(args, kwargs, 0, "input", None)
    p = _arg(args, kwargs, 1, "p", None)
    if isinstance(p, (int, float)) and not isinstance(p, bool):
        rate = 1.0 - float(p)
    elif label.endswith("_") and p is None:
        rate = 0.5  # bernoulli_() draws with p=0.5
    else:
        rate = UNKNOWN_RATE
    size = mask.numel() if isinstance(mask, torch.Tensor) else 0
    return label, rate, size


def random_call(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The label of a random draw that is not a dropout mask; ``""`` for anything else (a
    randomized ReLU in eval mode, ``training=False``, draws nothing)."""
    if func in _RRELU:
        return _RANDOM[func] if _arg(args, kwargs, 3, "training", False) else ""
    label = _RANDOM.get(func)
    if label is None:
        packet = getattr(func, "_overloadpacket", None)
        label = _RANDOM_OPS.get(packet, "") if packet is not None else ""
    return label


def _linear_flops(args: tuple[Any, ...], out: Any) -> int:
    x, w = args[0], args[1]
    return 2 * (x.numel() // max(x.shape[-1], 1)) * w.shape[0] * w.shape[1]


def _conv_flops(args: tuple[Any, ...], out: Any) -> int:
    w = args[1]  # (out, in / groups, *kernel): each output element costs in/groups x kernel MACs
    return 2 * out.numel() * w[0].numel()


def _matmul_flops(args: tuple[Any, ...], out: Any) -> int:
    return 2 * out.numel() * args[0].shape[-1]


def _attention_flops(args: tuple[Any, ...], out: Any) -> int:
    q, k = args[0], args[1]  # scores q k^T and weighted values: 2 matmuls of (Lq x Lk x D)
    return 4 * q.numel() * k.shape[-2]


def _rows(x: torch.Tensor) -> int:
    return x.numel() // max(x.shape[-1], 1) if x.ndim else 0


def _rnn_flops(args: tuple[Any, ...], out: Any) -> int:
    """Every layer and direction runs its input and hidden weights over every token: 2 x tokens
    x the weight matrices' entries (the gates' elementwise work is not counted). Padded input
    ``(L, B, in)`` or ``(B, L, in)``, or a packed sequence's data ``(tokens, in)``."""
    params = args[2 + _rnn_packed(args)]
    return 2 * _rows(args[0]) * sum(w.numel() for w in params if w.ndim == 2)


def _cell_flops(args: tuple[Any, ...], out: Any) -> int:
    x, w_ih, w_hh = args[0], args[2], args[3]  # (input, hx, w_ih, w_hh, b_ih, b_hh)
    return 2 * _rows(x) * (w_ih.numel() + w_hh.numel())


# Composite ops reach a dispatch mode whole (aten.linear, not aten.addmm): their FLOPs from the
# shapes, as torch.utils.flop_counter counts the ops they decompose into (without decomposing:
# that would initialise dynamo, about a second, on the first call of a process).
_COMPOSITE = {
    getattr(torch.ops.aten, name): count
    for name, count in (
        ("linear", _linear_flops),
        ("matmul", _matmul_flops),
        ("conv1d", _conv_flops),
        ("conv2d", _conv_flops),
        ("conv3d", _conv_flops),
        ("scaled_dot_product_attention", _attention_flops),
        *((name, _rnn_flops) for name in ("lstm", "gru", "rnn_tanh", "rnn_relu")),
        *((f"{name}_cell", _cell_flops) for name in ("lstm", "gru", "rnn_tanh", "rnn_relu")),
    )
    if hasattr(torch.ops.aten, name)
}


# Heavy kernels without a FLOP formula, in case one reaches the mode itself rather than through
# the RNN ops above: a pass that runs one has an unknown FLOP count.
_UNCOUNTED = {
    getattr(torch.ops.aten, name)
    for name in ("_cudnn_rnn", "miopen_rnn", "mkldnn_rnn_layer", "_thnn_fused_lstm_cell")
    if hasattr(torch.ops.aten, name)
}


class _FlopCounter(TorchDispatchMode):
    """FLOPs of matmuls, convolutions and attention (``torch.utils.flop_counter``'s formulas).

    Unlike ``FlopCounterMode`` it installs no global module hooks (other threads are untouched).
    ``complete`` is False once a heavy kernel without a formula (the RNN kernels) has run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.total = 0
        self.bytes = 0  # of every op's outputs: the activation traffic of the pass
        self.complete = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        for leaf in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(leaf, torch.Tensor):
                self.bytes += leaf.numel() * leaf.element_size()
        packet = func._overloadpacket
        if packet in _UNCOUNTED:
            self.complete = False
        composite = _COMPOSITE.get(packet)
        if composite is not None:
            self.total += int(composite(args, out))
        else:
            count = flop_registry.get(packet)
            if count is not None:
                self.total += int(count(*args, **kwargs, out_val=out))
        return out


def _never_skip(out: torch.Tensor) -> torch.Tensor:
    """1 in place of a one-element ``torch.rand``; a new tensor, so unbatched under vmap too."""
    return torch.ones(out.shape, dtype=out.dtype, device=out.device)


def layer_skip_draw(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor | None:
    """For a ``torch.rand(*args, **kwargs)`` of one element (layer drop: ``if torch.rand([]) <
    p: skip``), the 1 that keeps the layer, drawn from no generator; ``None`` for any other."""
    try:
        shape = torch.empty(*args, **{k: v for k, v in kwargs.items() if k != "generator"})
    except (TypeError, RuntimeError):
        return None
    return _never_skip(shape) if shape.numel() == 1 else None


class NoLayerSkip(TorchFunctionMode):
    """A one-element ``torch.rand`` returns 1 while sampling: random layer skipping (layer drop,
    ``if torch.rand([]) < p: skip``) is training-only behaviour that is not dropout, and it stays
    off even in a module whose own dropout samples (Hugging Face's ``BartEncoder``)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is torch.rand:
            ones = layer_skip_draw(args, kwargs)
            if ones is not None:
                return ones
        return func(*args, **kwargs)


def _with_arg(
    args: tuple[Any, ...], kwargs: dict[str, Any], index: int, name: str, value: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if name not in kwargs and len(args) > index:
        return (*args[:index], value, *args[index + 1 :]), kwargs
    return args, {**kwargs, name: value}


class NoDropout(TorchFunctionMode):
    """Every dropout call a probe records runs with rate 0, a hand-written mask keeps everything,
    and layer drop never skips: the sampling twin as a deterministic function of its inputs (the
    examples-interact check)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func is torch.rand:
            ones = layer_skip_draw(args, kwargs)
            return func(*args, **kwargs) if ones is None else ones
        label, _, size = mask_call(func, args, kwargs)
        if label and size > 1:
            out = func(*args, **kwargs)
            return out.fill_(1) if label.endswith("_") else torch.ones_like(out)
        _, p = dropout_call(func, args, kwargs)
        if p <= 0.0:
            return func(*args, **kwargs)
        if func in _FUNCTIONAL or func in _ATEN:
            return _arg(args, kwargs, 0, "input", None)
        if getattr(func, "_overloadpacket", None) in _ATEN_OPS:
            args, kwargs = _with_arg(args, kwargs, 2, "train", False)
        elif func is F.scaled_dot_product_attention:
            args, kwargs = _with_arg(args, kwargs, 4, "dropout_p", 0.0)
        elif func is F.multi_head_attention_forward:
            args, kwargs = _with_arg(args, kwargs, 10, "dropout_p", 0.0)
        else:  # the RNN kernels, positional arguments only
            index = _rnn_dropout_index(args)
            args = (*args[:index], 0.0, *args[index + 1 :])
        return func(*args, **kwargs)


# Training-only randomness that is not dropout, by module class or attribute name: stochastic
# depth, layer drop, MoE router noise. Never sampled and never reported.
_NOT_DROPOUT = re.compile(
    r"drop_?path|stochastic_?depth|layer_?drop|drop_?layer|router|jitter", re.I
)


def not_dropout(name: str, module: nn.Module | None) -> bool:
    """Whether a module is known training-only randomness that is not dropout (stochastic depth,
    layer drop, router noise), by its class or attribute name."""
    cls = type(module).__name__ if module is not None else ""
    return bool(_NOT_DROPOUT.search(cls) or _NOT_DROPOUT.search(name.rsplit(".", 1)[-1]))


def _per_example(mask: Any) -> bool:
    """A mask of one value per example or per batch (``(B, 1, 1)``, ``(1,)``): it drops whole
    examples or layers (stochastic depth), not units."""
    if not isinstance(mask, torch.Tensor):
        return False
    return mask.numel() <= 1 or (mask.ndim >= 2 and all(d == 1 for d in mask.shape[1:]))


class _Recorder(TorchFunctionMode):
    """Counts the dropout calls with an effective rate above zero, per innermost module (in all,
    and per pass of the root module: ``passes``), and the FLOPs done before the first call of
    each. Hand-written dropout (a Bernoulli mask over units) counts as a dropout call; other
    random draws are counted apart (``random``), and with ``guard`` the modules of the user's
    model that run an operation (``intruders``)."""

    def __init__(
        self,
        stack: list[str],
        flops: _FlopCounter,
        modules: dict[str, nn.Module],
        guard: Any = None,
        out_of_place: bool = False,
    ) -> None:
        super().__init__()
        self.stack = stack
        self.flops = flops
        self.modules = modules
        self.calls: Counter[Call] = Counter()
        self.passes: list[Counter[Call]] = []  # one per call of the root module's forward
        self.first_flops: dict[Call, int] = {}  # FLOPs done before each call's first occurrence
        self.layer_skips: set[str] = set()
        self.on_weights: set[Call] = set()  # calls that drop out a parameter (DropConnect)
        self.random: Counter[tuple[str, str]] = Counter()  # other random draws per module
        self.dead: Counter[Call] = Counter()  # dropout calls with a rate but training=False
        self.shapes: list[tuple[Call, tuple[int, ...]]] = []  # each call's input shape, in order
        self.guard = guard  # mcdrop.dropout._twin.Untwinned, or None
        self.intruders: dict[int, str] = {}
        # With ``out_of_place``, in-place dropout runs out of place (as sampling runs it), and
        # every later call that reads the memory of such a call's input is noted (``aliased``):
        # the forward then relies on the input holding the dropped values.
        self.rewrite = out_of_place
        self.inplace: set[Call] = set()  # dropout calls made in place (run out of place here)
        self.aliased: dict[Call, str] = {}  # of those, the ones whose input was read again
        self._dropped: list[tuple[Call, torch.Tensor, _Span]] = []  # inputs kept alive, memory
        self._frame: Any = None  # the last frame found running a module, and that module's id
        self._owner = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if self.guard is not None:
            self._check_frames()
        if self._dropped:
            self._check_reads(func, args, kwargs)
        where = self.stack[-1] if self.stack else ""
        if func is torch.rand:
            ones = layer_skip_draw(args, kwargs)
            if ones is not None:  # layer drop draws one number: "if torch.rand([]) < p: skip"
                self.layer_skips.add(where)
                return ones
            self._random(where, "torch.rand")
            return checked_call(func, args, kwargs)
        label, p, training = _dropout(func, args, kwargs)
        if label and p > 0.0 and not training:
            self.dead[(where, label, p)] += 1
        mask = not (label and p > 0.0 and training)
        if mask:
            label, p, _ = mask_call(func, args, kwargs)
            if label and (p == 0.0 or not_dropout(where, self.modules.get(where))):
                label = ""
            elif label and _per_example(_arg(args, kwargs, 0, "input", None)):
                self._random(where, label)  # stochastic depth written by hand: reported
                label = ""
            elif not label:
                other = random_call(func, args, kwargs)
                if other:
                    self._random(where, other)
        if label:
            key = (where, label, p)
            self.calls[key] += 1
            if self.passes:
                self.passes[-1][key] += 1
            self.first_flops.setdefault(key, self.flops.total)
            x = args[0] if args else next(iter(kwargs.values()), None)
            self.shapes.append((key, tuple(x.shape) if isinstance(x, torch.Tensor) else ()))
            # A weight dropped out (DropConnect), or a mask of a shape mcdrop cannot relate to
            # the rows: one mask per pass, which the copies of a replicated batch could share.
            if mask or isinstance(_arg(args, kwargs, 0, "input", None), nn.Parameter):
                self.on_weights.add(key)
            if not mask and self.rewrite:
                call = out_of_place(func, args, kwargs)
                if call is not None:
                    return self._out_of_place(key, *call)
        return checked_call(func, args, kwargs)  # (nothing of the model is written: ._writes)

    def _out_of_place(
        self, key: Call, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Run an in-place dropout call out of place; keep its input to see it read again."""
        self.inplace.add(key)
        x = _arg(args, kwargs, 0, "input", None)
        out = func(*args, **kwargs)
        if isinstance(x, torch.Tensor):
            span = _span(x)
            if span is None and x.numel():  # memory mcdrop cannot compare: assume it is read
                self.aliased.setdefault(key, "an input whose memory mcdrop cannot see")
            elif span is not None:
                self._dropped.append((key, x, span))
        return out

    def _check_reads(self, func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Note the in-place dropout calls whose input memory ``func`` reads (or writes)."""
        if getattr(func, "__name__", "") in _METADATA:
            return
        for leaf in tree_flatten((args, kwargs))[0]:
            if isinstance(leaf, torch.Tensor):
                span = _span(leaf)
                for key, _, held in self._dropped:
                    if span is not None and _overlap(span, held) and key not in self.aliased:
                        self.aliased[key] = _func_name(func)

    def _random(self, where: str, label: str) -> None:
        if not not_dropout(where, self.modules.get(where)):
            self.random[(where, label)] += 1

    def _check_frames(self) -> None:
        """Note a module of the user's model (not of the twin) whose code runs this operation:
        the innermost frame whose ``self`` is a module of either tree decides."""
        guard = self.guard
        frame: Any = sys._getframe(2)
        for _ in range(64):
            if frame is None:
                return
            if frame is self._frame:
                owner = self._owner
                break
            code = frame.f_code
            if code.co_argcount and code.co_varnames[0] == "self":
                owner = id(frame.f_locals.get("self"))
                if owner in guard.twins or owner in guard.originals:
                    self._frame, self._owner = frame, owner
                    break
            frame = frame.f_back
        else:
            return
        if owner in guard.originals:
            self.intruders.setdefault(owner, guard.originals[owner])


@dataclass
class Trace:
    """What one probe pass ran: dropout calls per module, and the modules whose forward ran."""

    calls: Counter[Call] = field(default_factory=Counter)
    called: set[str] = field(default_factory=set)
    first_flops: dict[Call, int] = field(default_factory=dict)  # FLOPs before each call's first
    total_flops: int = 0
    flops_complete: bool = True  # False: a kernel without a FLOP formula ran (an RNN)
    output: Any = None  # structure and shapes of what the pass returned (see ``signature``)
    output_bytes: int = 0  # bytes of all op outputs (with ``flops``)
    layer_skips: set[str] = field(default_factory=set)  # modules that drew torch.rand([])
    on_weights: set[Call] = field(default_factory=set)  # dropout calls on a parameter
    random: Counter[tuple[str, str]] = field(default_factory=Counter)  # other random draws
    dead: Counter[Call] = field(default_factory=Counter)  # dropout with training=False
    intruders: dict[int, str] = field(default_factory=dict)  # user modules that ran (guard)
    shapes: tuple[tuple[Call, tuple[int, ...]], ...] = ()  # each dropout call's input shape
    inplace: set[Call] = field(default_factory=set)  # dropout calls made in place
    aliased: dict[Call, str] = field(default_factory=dict)  # ... whose input is read again: by

    @property
    def out_of_place(self) -> bool:
        """Whether sampling may run this model's in-place dropout out of place
        (:class:`OutOfPlaceDropout`): it makes some, and none of their inputs is read again."""
        return bool(self.inplace) and not self.aliased

    def prefix_flops(self, calls: Any = None) -> int:
        """FLOPs done before the first of ``calls`` (default: any dropout call); all of them
        when none ran."""
        keys = self.first_flops if calls is None else [k for k in calls if k in self.first_flops]
        return min((self.first_flops[k] for k in keys), default=self.total_flops)


def signature(output: Any) -> Any:
    """The pytree structure of ``output`` and the shapes (or types) of its leaves."""
    leaves, spec = tree_flatten(output)
    shapes = tuple(
        tuple(leaf.shape) if isinstance(leaf, torch.Tensor) else type(leaf).__name__
        for leaf in leaves
    )
    return str(spec), shapes


class Recording:
    """Hooks on every module of a twin (see :func:`recording`) and the modes that record.

    ``modes()`` must be entered innermost, around the model call itself: a mode entered later
    (mcdrop's CPU dropout) would otherwise answer the dropout calls before the recorder sees them.
    """

    def __init__(
        self,
        stack: list[str],
        called: set[str],
        flops: bool,
        modules: dict[str, nn.Module],
        guard: Any = None,
        out_of_place: bool = False,
    ) -> None:
        self.called = called
        self.counting = flops
        self.counter = _FlopCounter()
        self.recorder = _Recorder(stack, self.counter, modules, guard, out_of_place)

    def new_pass(self) -> None:
        self.recorder.passes.append(Counter())

    @contextlib.contextmanager
    def modes(self) -> Iterator[None]:
        with self.counter if self.counting else contextlib.nullcontext(), self.recorder:
            yield

    def trace(self, output: Any = None) -> Trace:
        return Trace(
            calls=self.recorder.calls,
            called=self.called,
            first_flops=self.recorder.first_flops,
            total_flops=self.counter.total,
            flops_complete=self.counter.complete,
            output=signature(output),
            output_bytes=self.counter.bytes,
            layer_skips=self.recorder.layer_skips,
            on_weights=self.recorder.on_weights,
            random=self.recorder.random,
            dead=self.recorder.dead,
            intruders=self.recorder.intruders,
            shapes=tuple(self.recorder.shapes),
            inplace=self.recorder.inplace,
            aliased=self.recorder.aliased,
        )


@contextlib.contextmanager
def recording(
    modules: dict[str, nn.Module], *, flops: bool, guard: Any = None, out_of_place: bool = False
) -> Iterator[Recording]:
    """Forward hooks on every module of ``modules`` (of a twin) naming the innermost module that
    runs; the :class:`Recording` attributes each dropout call to it. Hooks are removed
    afterwards; the caller owns the modules, so nobody else sees them. With ``guard`` (what the
    twin could not redirect, :class:`mcdrop.dropout._twin.Untwinned`), every operation run by
    code of a module of the user's model rather than the twin is noted (``Trace.intruders``).
    With ``out_of_place``, in-place dropout runs out of place and the calls whose input is read
    again are noted (``Trace.aliased``)."""
    names = {id(m): name for name, m in modules.items()}
    stack: list[str] = []
    called: set[str] = set()
    rec = Recording(stack, called, flops, modules, guard, out_of_place)

    def pre_hook(mod: nn.Module, _args: Any) -> None:
        if not stack:  # the root's forward: a new pass
            rec.new_pass()
        stack.append(names[id(mod)])

    def post_hook(mod: nn.Module, _args: Any, _output: Any) -> None:
        called.add(names[id(mod)])
        if stack:
            stack.pop()

    handles = []
    for mod in modules.values():
        handles.append(mod.register_forward_pre_hook(pre_hook))
        handles.append(mod.register_forward_hook(post_hook, always_call=True))
    try:
        yield rec
    finally:
        for handle in handles:
            handle.remove()


class Culprit(TorchFunctionMode):
    """Notes the innermost module running, and the function, of the first call that raises
    (``found``): entered innermost around a pass, inside :func:`culprit`'s hooks."""

    def __init__(self, stack: list[str]) -> None:
        super().__init__()
        self.stack = stack
        self.found: tuple[str, str] | None = None

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        try:
            return func(*args, **(kwargs or {}))
        except Exception:
            if self.found is None:
                self.found = (self.stack[-1] if self.stack else "", _func_name(func))
            raise


@contextlib.contextmanager
def culprit(modules: dict[str, nn.Module]) -> Iterator[Culprit]:
    """Hooks on ``modules`` (of a twin) naming the innermost module that runs, and the mode to
    enter innermost around a pass: its ``found`` is ``(module name, function)`` of the first
    torch call that raised (None if none did), which site or operation a strategy cannot run."""
    with recording(modules, flops=False) as rec:
        yield Culprit(rec.recorder.stack)


def trace(
    modules: dict[str, nn.Module],
    run: Callable[[], Any],
    *,
    flops: bool,
    guard: Any = None,
    out_of_place: bool = True,
) -> Trace:
    """Run ``run()`` once with hooks on every module of ``modules`` (of a twin) and record.

    A ``TorchFunctionMode`` and hooks disable PyTorch's fused transformer fast path: the probe
    sees the slow path's dropout calls (:mod:`mcdrop.dropout` switches on the layers whose fast
    path would skip them). With ``flops``, the FLOPs before each dropout call and in all are
    counted too. With ``out_of_place`` (the default), in-place dropout runs out of place, as
    sampling runs it, and the calls whose input the forward reads again are noted
    (``Trace.aliased``; sampling then keeps them in place): the probe never writes into the
    examples it was given.
    """
    with recording(modules, flops=flops, guard=guard, out_of_place=out_of_place) as rec:
        with rec.modes():
            output = run()
        return rec.trace(output)
