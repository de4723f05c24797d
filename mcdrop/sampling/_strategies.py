"""How ``k`` stochastic passes of one batch run: ``loop``, ``replicate`` or ``vmap``.

Every strategy draws independent dropout masks for every sample and every example, so the choice
never changes the distribution of the results, only the speed and the memory:

``"replicate"``
    Repeat each batch ``k`` times along the batch dimension: one pass of ``k * B`` rows.
``"vmap"``
    ``torch.func.vmap(..., randomness="different")`` over a dummy sample axis of size ``k``:
    everything computed before the first dropout is not batched by vmap, so it runs once for all
    ``k`` samples (prefix sharing). With mcdrop's masks and no recording, vmap is entered only
    at the first random call (:mod:`._late_vmap`): the prefix runs outside it, cheaper.
``"loop"``
    ``k`` separate passes: the reference, and the lowest memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from mcdrop.dropout import MaskedDropout, NoLayerSkip, OutOfPlaceDropout, keep_mask, out_of_place
from mcdrop.sampling._inputs import _Batch, extract_outputs
from mcdrop.sampling._late_vmap import Late, LateVmap

__all__: list[str] = []

Outputs = tuple[torch.Tensor, ...]
# Late vmap passes refused in a row before a runner stops trying (the prefix then runs once
# again): another thread drawing from PyTorch's generators, a pipeline compiled around the call,
# a model whose dropout runs inside a transform of its own.
_MISSES = 3
Recorded = Callable[[], contextlib.AbstractContextManager[Any]]  # modes entered innermost


def _modules(module: Callable[..., Any]) -> Iterable[Any]:
    """``module`` and, if it is a module, all of its submodules."""
    return module.modules() if isinstance(module, torch.nn.Module) else [module]


class FastCPUDropout(TorchFunctionMode):
    """``F.dropout`` with a cheaper mask on the CPU: same distribution, about 5x faster.

    PyTorch's CPU dropout draws its mask with ``bernoulli_``, which dominates the cost of Monte
    Carlo dropout when little is computed after the dropout (a head-dropout network). Comparing
    random numbers against ``p`` gives the same Bernoulli(1 - p) mask (:func:`mcdrop.dropout.keep_mask`),
    scaled by ``1 / (1 - p)``.
    Only standard ``F.dropout`` in training mode is replaced; everything else runs as it is, but
    with ``out_of_place`` every in-place dropout call runs out of place
    (:class:`mcdrop.dropout.OutOfPlaceDropout`, in the same mode: one Python call per operation).
    """

    def __init__(self, *, out_of_place: bool = False) -> None:
        super().__init__()
        self.out_of_place = out_of_place

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if self.out_of_place:
            call = out_of_place(func, args, kwargs)
            if call is not None:
                func, args, kwargs = call
        if func is F.dropout:
            bound = dict(zip(("input", "p", "training", "inplace"), args, strict=False), **kwargs)
            x, p = bound["input"], float(bound.get("p", 0.5))
            if bound.get("training", True) and 0.0 < p < 1.0 and x.is_floating_point():
                mask = keep_mask(x.shape, p, x.device).to(x.dtype).mul_(1.0 / (1.0 - p))
                return x.mul_(mask) if bound.get("inplace", False) else x * mask
        return func(*args, **kwargs)


class Runner:
    """Runs one module (the sampling twin) on a batch with any strategy.

    Parameters
    ----------
    module : callable
        The twin (or its compiled wrapper).
    device : torch.device
    amp : torch.dtype or None
        Autocast precision.
    n_outputs : int
        1, or 2 for ``(mean, log_variance)`` regression heads.
    output_transform : callable or None
        Applied to the raw output first.
    no_layer_skip : bool, default=False
        Keep random layer skipping off (a site also does layer drop: see ``NoLayerSkip``).
    out_of_place : bool, default=False
        Run in-place dropout out of place (:class:`mcdrop.dropout.OutOfPlaceDropout`): the
        probe found no in-place dropout whose input the forward reads again.
    copy_inputs : bool, default=False
        Each ``loop`` pass runs on a copy of the batch: in-place dropout that stays in place
        (its input read again, or not probed) must not write into the caller's inputs.
    masks : MaskedDropout, optional
        Every dropout call is answered by it, and every random op draws from its generators:
        shared masks keyed by the sample index of each pass's rows (``attributed`` gives the
        hooks that name the module of each call), or independent masks. None: PyTorch's own
        dropout and global generators (a compiled graph, TorchScript; cheaper masks on the CPU,
        :class:`FastCPUDropout`).
    """

    def __init__(
        self,
        module: Callable[..., Any],
        *,
        device: torch.device,
        amp: torch.dtype | None,
        n_outputs: int,
        output_transform: Callable[[Any], Any] | None,
        no_layer_skip: bool = False,
        out_of_place: bool = False,
        copy_inputs: bool = False,
        masks: MaskedDropout | None = None,
        attributed: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.module = module
        self.out_of_place = out_of_place
        self.copy_inputs = copy_inputs
        self.masks = masks
        # vmap entered at the first random call (._late_vmap): with mcdrop's masks, in eager code
        self.late = masks is not None and not any(
            isinstance(getattr(m, "_orig_mod", None), torch.nn.Module) for m in _modules(module)
        )
        # Late passes refused in a row (shared by the copies a kept plan's calls make): after
        # _MISSES, the passes run under vmap from the start (no prefix run twice).
        self.misses = [0]
        self.attributed = attributed
        self.no_layer_skip = no_layer_skip
        self.device = device
        self.amp = amp
        self.n_outputs = n_outputs
        self.output_transform = output_transform

    def call(self, batch: _Batch) -> Outputs:
        output = self.module(*batch.args, **batch.kwargs)
        return extract_outputs(
            output,
            n_outputs=self.n_outputs,
            transform=self.output_transform,
            batch_size=batch.rows(),
        )

    def run(
        self,
        strategy: str,
        batch: _Batch,
        k: int,
        *,
        record: Recorded | None = None,
        first: int = 0,
    ) -> Outputs:
        """``k`` samples of ``batch``: outputs of shape ``(k, B, ...)``. ``record`` gives modes to
        enter innermost, where they see every call before mcdrop's own modes (the first chunk's
        check of the sampling twin, :func:`mcdrop.dropout._probe.recording`). ``first``: the
        index of the first of the ``k`` samples (shared masks: sample ``t`` is network ``f_t``)."""
        autocast = (
            contextlib.nullcontext()
            if self.amp is None
            else torch.autocast(device_type=self.device.type, dtype=self.amp)
        )
        fast: contextlib.AbstractContextManager[Any]
        if self.masks is not None:
            fast = self._masked()
        elif self.device.type == "cpu":
            fast = FastCPUDropout(out_of_place=self.out_of_place)
        elif self.out_of_place:
            fast = OutOfPlaceDropout()
        else:
            fast = contextlib.nullcontext()
        keep_layers = NoLayerSkip() if self.no_layer_skip else contextlib.nullcontext()
        recording = contextlib.nullcontext() if record is None else record()
        with autocast, fast, keep_layers, recording:
            if strategy == "vmap":
                if record is None and self.late and self.misses[0] < _MISSES:
                    return self._late_vmap(batch, k, first)
                return self._vmap(batch, k, first)
            if strategy == "loop" or k == 1:
                return self._loop(batch, k, first)
            return self._replicate(batch, k, first)

    def forked(self) -> contextlib.AbstractContextManager[Any]:
        """Inside, passes draw without consuming the call's random numbers (checks,
        measurements): mcdrop's generators put back, or PyTorch's forked (compiled graphs,
        TorchScript)."""
        if self.masks is not None:
            return self.masks.forked()
        return torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])

    @contextlib.contextmanager
    def _masked(self) -> Any:
        assert self.masks is not None
        hooks = contextlib.nullcontext() if self.attributed is None else self.attributed()
        # Entered inside the masks: the call reaches them out of place.
        plain = OutOfPlaceDropout() if self.out_of_place else contextlib.nullcontext()
        with hooks, self.masks, plain:
            yield

    def _start(
        self,
        t: torch.Tensor,
        rows: int,
        samples: list[int] | None = None,
        chunk: range | None = None,
    ) -> None:
        """The next pass holds the samples ``t`` (sample-major), ``rows`` rows each;
        ``samples``: their values, when known on the host; ``chunk``: the loop's samples."""
        if self.masks is not None:
            self.masks.start_pass(t, rows, samples, chunk)

    def _loop(self, batch: _Batch, k: int, first: int = 0) -> Outputs:
        outs = []
        chunk = range(first, first + k)
        for t in chunk:
            self._start(torch.full((1,), t, device=self.device), batch.size, [t], chunk)
            # In-place dropout of an input must not write into the caller's tensors.
            outs.append(self.call(batch.map_batched(torch.clone) if self.copy_inputs else batch))
        return tuple(torch.stack(parts) for parts in zip(*outs, strict=True))

    def _replicate(self, batch: _Batch, k: int, first: int = 0) -> Outputs:
        big = batch.map_batched(lambda t: t.repeat(k, *([1] * (t.ndim - 1))))
        samples = list(range(first, first + k))
        self._start(torch.arange(first, first + k, device=self.device), batch.size, samples)
        result = []
        for out in self.call(big):
            if out.ndim == 0 or out.shape[0] != k * batch.size:
                raise RuntimeError(
                    f"replicated a batch of {batch.size} examples {k} times but the model "
                    f"returned leading dimension {tuple(out.shape)[:1]}; the output must keep the "
                    "batch dimension first"
                )
            result.append(out.reshape(k, batch.size, *out.shape[1:]))
        return tuple(result)

    def _vmap(self, batch: _Batch, k: int, first: int = 0) -> Outputs:
        def one(t: torch.Tensor) -> Outputs:
            self._start(t.reshape(1), batch.size)  # batched: each sample its own index
            return self.call(batch)

        samples = torch.arange(first, first + k, device=self.device)
        return tuple(torch.func.vmap(one, randomness="different")(samples))

    def _late_vmap(self, batch: _Batch, k: int, first: int = 0) -> Outputs:
        """:meth:`_vmap` with vmap entered at the pass's first random call
        (:mod:`._late_vmap`): the same numbers, the prefix before it outside vmap."""
        masks = self.masks
        assert masks is not None
        samples = torch.arange(first, first + k, device=self.device)
        late = LateVmap(samples, lambda t: self._start(t, batch.size), self.device)

        def enter() -> None:  # refused: raises again at every later call of the pass
            late.enter()
            masks.before_first = None

        masks.before_first = enter
        try:
            outs = late.outputs(self.call(batch))
            self.misses[0] = 0
            return outs
        except Late:  # vmap could not be entered there: the pass runs under vmap from the start
            self.misses[0] += 1
        finally:
            masks.before_first = None
            late.leave()
        return self._vmap(batch, k, first)
