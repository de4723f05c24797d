"""Where the time of one ``predict_with_uncertainty`` call goes (not a test).

For a benchmark family of ``bench_sampling.py`` (default: the conv net with dropout only in the
head; CPU sizes and ``B = 32`` on the CPU, GPU sizes and ``B = 64`` on CUDA; ``T = 100``): one
deterministic pass, and the parts of a first ``auto`` call measured one by one — building the
twin, the training-mode probe (with FLOP counting), the sampling chunk of 100 samples (vmap for
the conv net, replicate for PyTorch's fused transformer, both otherwise) plain (a vmap chunk
enters vmap at its first random call, :mod:`mcdrop.sampling._late_vmap`; also timed entering it
from the start), recorded (a new plan's first chunk also checks the sampling twin's dropout calls) and counted (a kept plan's
first chunk counts its calls), the examples-interact check (``auto`` before replicate) and the
streaming statistics; on the conv net, its trunk alone and under a ``TorchFunctionMode`` that
does nothing (what the mode that answers the dropout calls costs at least). Then the calls a server makes again and again on the same model, on the
plans kept between calls: ``mcdrop.predict_with_uncertainty`` (and its first call, with nothing
kept), ``MCDropout``'s ``predict_with_uncertainty(x)`` and ``MCDropout(x)``, and what every
such call adds: the fingerprint (:mod:`mcdrop.sampling._fingerprint`) and the training-mode
probe on two examples (:func:`mcdrop.dropout.training_calls`), which a kept call runs only when
its first chunk read a training flag that training mode flips (:mod:`mcdrop.dropout._flags`). Medians of
``--repeats`` interleaved rounds, milliseconds, with a device synchronisation around each.

Run::

    python benchmarks/profile_fixed_costs.py --threads 2
    python benchmarks/profile_fixed_costs.py --device cuda --model mlp
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode

sys.path.insert(0, str(Path(__file__).parent))
from bench_sampling import SIZES, build

import mcdrop
from mcdrop.dropout import MaskedDropout, _probe, trained_modules, training_calls
from mcdrop.dropout._masks import keep_units
from mcdrop.dropout._sites import _set_flags, _TwinModules
from mcdrop.dropout._twin import _twin
from mcdrop.sampling import _engine, _run
from mcdrop.sampling._checks import rows_interact as _rows_interact
from mcdrop.sampling._fingerprint import fingerprint
from mcdrop.sampling._inputs import _Batch
from mcdrop.sampling._strategies import Runner
from mcdrop.stats import ClassificationAccumulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="conv", choices=sorted(SIZES))
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument(
        "--cprofile",
        type=int,
        default=0,
        metavar="N",
        help="also profile N end-to-end calls with cProfile (host time per function)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    sizes = SIZES[args.model][0 if cuda else 1]
    batch = 64 if cuda else 32
    model = build(args.model, sizes).to(device).eval()
    x = model.example(batch, device)  # type: ignore[operator]
    with mcdrop.dropout_enabled(model, example_inputs=x[:2]) as sampler:
        on = {name for name, m in sampler.named_modules() if m.training}
    twin = _twin(model)
    assert twin is not None
    modules = dict(twin.named_modules())
    for name, module in modules.items():
        module.training = name in on
    trainer = _twin(model)  # the probe's twin: training mode, norm layers in eval
    assert trainer is not None
    trainer_modules = _TwinModules(trainer)
    _set_flags(trainer_modules, None)
    # The conv net's replicate chunk runs its body 100 times (not what auto does); vmap cannot
    # give PyTorch's fused attention a mask per sample.
    fused = any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules())
    strategies = ["vmap"] if args.model == "conv" else ["replicate"] + ([] if fused else ["vmap"])
    amp = torch.bfloat16 if args.dtype == "bf16" else None
    masks = MaskedDropout(0)  # independent masks from mcdrop's generators, as calls draw them
    runner = Runner(twin, device=device, amp=amp, n_outputs=1, output_transform=None, masks=masks)
    b = _Batch((x,), {}, None, batch)
    with torch.inference_mode():
        outs = runner.run(strategies[0], b, 100)

    def stats() -> None:
        acc = ClassificationAccumulator(outputs="logits", class_dim=1, keep_samples=False)
        acc.update(outs[0])
        acc.state()

    def recorded(strategy: str) -> None:  # a plan's first chunk: checks the twin's dropout calls
        with _probe.recording(modules, flops=False) as rec:
            runner.run(strategy, b, 100, record=rec.modes)

    def counted(strategy: str) -> None:  # a kept plan's first chunk: its calls counted
        assert runner.masks is not None
        with runner.masks.counting({id(m): n for n, m in modules.items()}, {}):
            runner.run(strategy, b, 100)

    def from_scratch() -> None:  # the function's first call on a model: nothing kept
        kept = dict(_engine._FUNCTION_PLANS)
        _engine._FUNCTION_PLANS.clear()
        try:
            mcdrop.predict_with_uncertainty(
                model, x, n_samples=100, seed=0, progress=False, amp=amp
            )
        finally:
            _engine._FUNCTION_PLANS.update(kept)

    parts: dict[str, Callable[[], object]] = {
        "deterministic pass": lambda: model(x),
        "twin": lambda: _twin(model),
        "training probe + FLOPs": lambda: _probe.trace(
            trainer_modules, lambda: trainer(x[:2]), flops=True
        ),
        "  its pass alone, unrecorded": lambda: trainer(x[:2]),
    }
    for strategy in strategies:
        parts[f"{strategy} chunk, 100 samples"] = lambda s=strategy: runner.run(s, b, 100)
        if strategy == "vmap":  # the chunk enters vmap at its first random call (_late_vmap)
            parts["  vmap from the start"] = lambda: runner.run(
                "vmap", b, 100, record=contextlib.nullcontext
            )
        parts[f"  the same, recorded ({strategy})"] = lambda s=strategy: recorded(s)
        parts[f"  the same, counted ({strategy})"] = lambda s=strategy: counted(s)
    if args.model == "conv":  # what prefix sharing cannot go below: the trunk once, the head
        # on 100 x B rows, mcdrop's cheapest masks (one random byte per unit), no checks
        generator = torch.Generator(device=device).manual_seed(0)
        trunk, head = model.features, model.head[1]  # type: ignore[index, union-attr]

        def by_hand() -> torch.Tensor:
            h = trunk(x)
            keep = keep_units((100, *h.shape), 0.5, device, generator)
            return head((h * 2.0 * keep).flatten(0, 1))

        parts["  by hand: trunk once, 100 heads"] = by_hand

        def under_a_mode() -> torch.Tensor:  # PyTorch calls a Python mode on every operation
            with _DoNothing():
                return trunk(x)

        parts["  the trunk alone"] = lambda: trunk(x)
        parts["  the trunk under a do-nothing mode"] = under_a_mode
    mc = mcdrop.MCDropout(model, n_samples=100, seed=0, progress=False, amp=amp)
    mc(x)
    assert mc._engine.kept  # the plan kept by the first call
    parts |= {
        "examples-interact check": lambda: _rows_interact(runner, b),
        "statistics": stats,
        "predict_with_uncertainty": lambda: mcdrop.predict_with_uncertainty(
            model, x, n_samples=100, seed=0, progress=False, amp=amp
        ),
        "  first call (nothing kept)": from_scratch,
        "MCDropout.predict_with_uncertainty": lambda: mc.predict_with_uncertainty(x),
        "MCDropout(x)": lambda: mc(x),
        "  fingerprint (every call)": lambda: fingerprint(model, ((x,), {}), (3200, "cpu")),
        "  twin brought up to date (every call)": lambda: mc._engine.kept[0].refresh(model),
        "  training-mode probe (if a flag is read)": lambda: training_calls(
            twin, trained_modules(model), ((x[:2],), {}), 0
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in parts}
    with torch.inference_mode():
        for fn in parts.values():
            fn()
        for _ in range(args.repeats):
            for name, fn in parts.items():
                if cuda:
                    torch.cuda.synchronize(device)
                start = time.perf_counter()
                fn()
                if cuda:
                    torch.cuda.synchronize(device)
                times[name].append(time.perf_counter() - start)
    det = statistics.median(times["deterministic pass"])
    where = torch.cuda.get_device_name(device) if cuda else f"{args.threads} threads"
    print(
        f"torch {torch.__version__}, {where}, {args.model} {args.dtype} {sizes}, B={batch}, T=100"
    )
    for name, values in times.items():
        ms = statistics.median(values) * 1e3
        print(f"  {name:<36} {ms:8.2f} ms  {ms / (det * 1e3):7.2f}x pass")
    # What a call cannot go below while it probes at every call: the sampling itself, the
    # probe's pass without its recording, the twin and the statistics.
    floor_parts = (f"{strategies[0]} chunk, 100 samples", "  its pass alone, unrecorded")
    floor = sum(statistics.median(times[k]) for k in (*floor_parts, "twin", "statistics"))
    print(
        f"  {'floor (chunk+pass+twin+stats)':<36} {floor * 1e3:8.2f} ms  {floor / det:7.2f}x pass"
    )
    kept = (
        f"{strategies[0]} chunk, 100 samples",
        "statistics",
        "  fingerprint (every call)",
        "  twin brought up to date (every call)",
    )
    floor = sum(statistics.median(times[k]) for k in kept)
    print(
        f"  {'kept floor (chunk+stats+fp+retwin)':<36} {floor * 1e3:8.2f} ms  {floor / det:7.2f}x pass"
    )
    print(f"  MCDropout plans made: {mc._engine.plans_made} (1: the plan was kept every call)")
    watched = mc._engine.kept[0].flags is not None
    probed = _probes_of(lambda: mc(x), 5)
    print(
        f"  kept plan watches the flags training mode flips: {watched}; training-mode probes "
        f"in 5 kept calls: {probed}"
    )
    if args.cprofile:
        _host_profile(parts["predict_with_uncertainty"], args.cprofile, cuda)
        _host_profile(parts["MCDropout.predict_with_uncertainty"], args.cprofile, cuda)
    return 0


class _DoNothing(TorchFunctionMode):
    """A ``TorchFunctionMode`` that only calls each function: what any mode costs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        return func(*args, **(kwargs or {}))


def _probes_of(call: Callable[[], object], n: int) -> int:
    """How many training-mode probes ``n`` calls run (a kept plan probes only when a flag that
    training mode flips was read: ``mcdrop.dropout._flags``)."""
    made = []
    real = _run.training_calls

    def counting(*args: object, **kwargs: object) -> object:
        made.append(None)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    _run.training_calls = counting  # type: ignore[assignment]
    try:
        with torch.inference_mode():
            for _ in range(n):
                call()
    finally:
        _run.training_calls = real
    return len(made)


def _host_profile(call: Callable[[], object], n: int, cuda: bool) -> None:
    """Where the host time of ``n`` calls goes (on CUDA a sync's wait shows in its caller)."""
    profiler = cProfile.Profile()
    with torch.inference_mode():
        profiler.enable()
        for _ in range(n):
            call()
        if cuda:
            torch.cuda.synchronize()
        profiler.disable()
    print(f"  cProfile of {n} end-to-end calls, by cumulative time:")
    pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    raise SystemExit(main())
