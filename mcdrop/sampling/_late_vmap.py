"""vmap entered at the first random call: the prefix before it runs outside vmap.

Under ``torch.func.vmap`` every operation goes through functorch's dispatch, even on tensors
that are not batched, such as the trunk of a conv net whose only dropout is in its head (on the
CPU its chunk of 100 samples took 1.27x one pass entered from the start, 1.215x entered late:
``benchmarks/profile_fixed_costs.py``, docs/performance.rst). Nothing before the first random
call can differ between samples, so :class:`LateVmap` runs the forward outside vmap and enters
it (at the same level, with the same ``randomness="different"``) when
:class:`mcdrop.dropout.MaskedDropout` is about to answer its first call (not one that another
of mcdrop's modes makes while answering its own: a sampler called inside the forward): the
operations before it are the same kernels on the same tensors, and everything from that call on
is exactly what ``vmap`` runs. The outputs leave vmap as ``vmap``'s own do.

It is entered only where that is the same: on the thread that started the pass, at the
functorch level it started at (a dropout inside the model's own ``vmap`` or ``grad`` is not),
outside code compiled by dynamo (traced, its graph would not enter vmap when it runs from its
cache), and when PyTorch's global generators were not drawn from before it (a random op the
mode never sees, ``torch.ops.aten.randn`` in an exported graph, would draw once for all the
samples instead of once per sample). Otherwise :class:`Late` is raised there, at every further
call the mode answers, and after the pass, and the caller runs the pass under ``vmap`` from the
start, as it does after a pass that entered nothing (no answered call seen to run). Compiled
twins (``compile=``, a model compiled by the user) always run under ``vmap`` from the start.

Not seen: a random op with its own generator that the mode never sees
(``torch.ops.aten.randn(..., generator=g)``) before the first random call it does see, a draw
from the global generators there that another thread undoes (``set_rng_state``) before that
call, and code that asks functorch whether it runs under vmap (``maybe_current_level()``)
there: these run once, outside vmap. The caller stops trying after a few refusals in a row
(``Runner.misses``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch
from torch._C._dynamo.eval_frame import get_eval_frame_callback
from torch._C._functorch import (
    _add_batch_dim,
    _remove_batch_dim,
    _vmap_decrement_nesting,
    _vmap_increment_nesting,
    maybe_current_level,
)
from torch._functorch.vmap import lazy_load_decompositions

__all__: list[str] = []


def _global_state(device: torch.device) -> tuple[torch.Tensor, ...]:
    """The states of PyTorch's global generators on the CPU and on ``device``."""
    states = [torch.default_generator.get_state()]
    if device.type == "cuda" and torch.cuda.is_initialized():
        index = device.index if device.index is not None else torch.cuda.current_device()
        states.append(torch.cuda.default_generators[index].get_state())
    return tuple(states)


class Late(BaseException):
    """vmap cannot be entered where the first random call is made (another thread, inside a
    transform of the model's own): the pass runs again under ``vmap`` from the start. A
    ``BaseException``, so that the model's own ``except Exception`` does not swallow it."""


class LateVmap:
    """One pass of ``k`` samples whose vmap is entered at its first random call.

    Parameters
    ----------
    samples : torch.Tensor
        Shape ``(k,)``: the sample index of each of the pass's samples, batched by vmap once it
        is entered.
    start : callable
        Called with the batched sample index, shape ``(1,)`` under vmap, when vmap is entered
        (:meth:`mcdrop.dropout.MaskedDropout.start_pass`).
    """

    def __init__(
        self, samples: torch.Tensor, start: Callable[[torch.Tensor], None], device: torch.device
    ) -> None:
        self.samples = samples
        self.start = start
        self.device = device
        self.thread = threading.get_ident()
        self.outer = maybe_current_level()
        self.drawn = _global_state(device)
        self.level: int | None = None
        self.refused = False

    def enter(self) -> None:
        """Enter vmap here, before the pass's first random call is answered; raises
        :class:`Late` where it cannot (see the module docstring), and again at every later call
        once it has refused."""
        if self.refused or not self._enterable():
            self.refused = True
            raise Late
        lazy_load_decompositions()
        self.level = _vmap_increment_nesting(len(self.samples), "different")
        self.start(_add_batch_dim(self.samples, 0, self.level).reshape(1))

    def _enterable(self) -> bool:
        if (
            threading.get_ident() != self.thread
            or maybe_current_level() != self.outer
            or torch.compiler.is_compiling()
            or get_eval_frame_callback() is not None  # running code compiled by dynamo
        ):
            return False
        now = _global_state(self.device)
        return len(now) == len(self.drawn) and all(map(torch.equal, now, self.drawn))

    def outputs(self, outs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """The pass's outputs with the samples first, shape ``(k, ...)``, as ``vmap`` returns
        them; then vmap is left. Raises :class:`Late` if entering was refused (and the model
        caught it)."""
        if self.refused or self.level is None:  # (None: no random call seen to run, which
            raise Late  # compiled code may hide; vmap from the start decides what the pass is)
        k = len(self.samples)
        try:
            return tuple(_remove_batch_dim(out, self.level, k, 0) for out in outs)
        finally:
            self.leave()

    def leave(self) -> None:
        """Leave vmap, if entered and not left (after an error in the pass)."""
        if self.level is not None:
            self.level = None
            _vmap_decrement_nesting()
