"""Monte Carlo dropout on torchvision's own classifiers against one deterministic pass (not a test).

One row per family with a dropout head: EfficientNet (B0, V2-S), MobileNetV3 (small, large) and
MNASNet, whose heads hold ``nn.Dropout(inplace=True)``; ConvNeXt-T, whose head has no dropout,
with an ``nn.Dropout(0.2)`` inserted before the classifier's last Linear; VGG-11 (two dropouts
between its fully connected layers). Weights are random (``weights=None``, nothing downloads).

For each: one deterministic pass ``model(x)`` in eval mode under ``torch.inference_mode()``,
``mcdrop.predict_with_uncertainty(model, x, n_samples=T)`` end to end, and a held
``mcdrop.MCDropout(model, n_samples=T)`` called on ``x`` (the stacked samples) — medians of
``--repeats`` rounds, timed round-robin (one run of each per round, after one untimed run each)
so that load from other processes hits all alike; the ratios are to the pass's median.
The strategy each used is read from ``result.sampling`` / ``MCDropout.last_strategy``.

The ``floor`` is what a perfect prefix-sharing sampler cannot avoid: one deterministic pass plus
``model.classifier`` from its first dropout onwards (a copy, dropouts in train mode) run on
``T x B`` rows, that dropout's input captured once and repeated ``T`` times along dim 0 inside
each call, timed in the same rounds. ``held/floor`` is how far the held ``MCDropout`` is above it.

Runs against whichever mcdrop is imported (``PYTHONPATH``), so the same script gives the before
and after figures::

    PYTHONPATH=. python benchmarks/bench_torchvision.py --json after.json
    PYTHONPATH=/path/to/old/checkout python benchmarks/bench_torchvision.py --json before.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import mcdrop

FAMILIES = (
    "efficientnet_b0",
    "efficientnet_v2_s",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mnasnet0_5",
    "convnext_tiny",
    "vgg11",
)


def build(name: str) -> nn.Module:
    """``name`` from ``torchvision.models`` with random weights; ConvNeXt gets a dropout head."""
    from torchvision import models

    torch.manual_seed(0)
    model = getattr(models, name)(weights=None)
    if name.startswith("convnext"):
        *rest, last = model.classifier
        model.classifier = nn.Sequential(*rest, nn.Dropout(0.2), last)
    return model.eval()


def timed(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median ms of each function, round-robin after one untimed run each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def first_dropout(model: nn.Module) -> int:
    """Index of the first ``nn.Dropout`` in ``model.classifier`` (an ``nn.Sequential``)."""
    for i, module in enumerate(model.classifier):
        if isinstance(module, nn.Dropout):
            return i
    raise ValueError(f"{type(model).__name__}.classifier holds no nn.Dropout")


def floor_tail(model: nn.Module, x: torch.Tensor, T: int) -> Callable[[], Any]:
    """The floor's sampled part: ``classifier[i:]`` on the first dropout's input, ``T`` times.

    The input is captured by a forward pre-hook during one pass under ``torch.inference_mode()``;
    the tail is a deep copy (the model is never modified), dropouts in train mode, the rest eval.
    """
    i = first_dropout(model)
    captured: list[torch.Tensor] = []
    hook = model.classifier[i].register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    try:
        with torch.inference_mode():
            model(x)
    finally:
        hook.remove()
    h = captured[0]
    tail = copy.deepcopy(model.classifier[i:]).eval()
    for module in tail.modules():
        if isinstance(module, nn.Dropout):
            module.train()

    def run() -> None:
        with torch.inference_mode():
            tail(h.repeat(T, *[1] * (h.dim() - 1)))

    return run


def row(name: str, batch: int, size: int, T: int, repeats: int) -> dict[str, Any]:
    model = build(name)
    x = torch.randn(batch, 3, size, size)
    held = mcdrop.MCDropout(model, n_samples=T, seed=0)
    tail = floor_tail(model, x, T)
    record: dict[str, Any] = {}

    def one_pass() -> None:
        with torch.inference_mode():
            model(x)

    def predict() -> None:
        result = mcdrop.predict_with_uncertainty(model, x, n_samples=T, seed=0, progress=False)
        sampling = getattr(result, "sampling", None)
        record["strategy"] = getattr(sampling, "strategy", None)
        record["fallbacks"] = [f[0] for f in getattr(sampling, "fallbacks", ())]

    def held_call() -> None:
        held(x)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fns = {"pass": one_pass, "predict": predict, "held": held_call, "tail": tail}
        ms = timed(fns, repeats)
    floor = ms["pass"] + ms["tail"]
    return {
        "model": name,
        "batch": batch,
        "size": size,
        "samples": T,
        "pass_ms": ms["pass"],
        "predict_ms": ms["predict"],
        "held_ms": ms["held"],
        "predict_ratio": ms["predict"] / ms["pass"],
        "held_ratio": ms["held"] / ms["pass"],
        "tail_ms": ms["tail"],
        "floor_ms": floor,
        "floor_ratio": floor / ms["pass"],
        "held_over_floor": ms["held"] / floor,
        "strategy": record.get("strategy"),
        "held_strategy": getattr(held, "last_strategy", None),
        "fallbacks": record.get("fallbacks", []),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(FAMILIES))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--samples", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=str, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import torchvision

    env = {
        "mcdrop": os.path.dirname(mcdrop.__file__),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "loadavg_start": open("/proc/loadavg").read().split()[:3],
    }
    print(json.dumps(env))
    header = (
        f"{'model':<20}{'pass ms':>9}{'predict ms':>12}{'x':>7}{'held ms':>10}{'x':>7}"
        f"{'floor ms':>10}{'x':>7}{'held/floor':>12}  strategy"
    )
    print(header)
    rows = []
    for name in args.models:
        r = row(name, args.batch, args.size, args.samples, args.repeats)
        rows.append(r)
        fell = f" (after {', '.join(r['fallbacks'])})" if r["fallbacks"] else ""
        print(
            f"{name:<20}{r['pass_ms']:>9.1f}{r['predict_ms']:>12.1f}{r['predict_ratio']:>7.2f}"
            f"{r['held_ms']:>10.1f}{r['held_ratio']:>7.2f}{r['floor_ms']:>10.1f}"
            f"{r['floor_ratio']:>7.2f}{r['held_over_floor']:>12.2f}  {r['strategy']}{fell}",
            flush=True,
        )
    env["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    print(json.dumps({"loadavg_end": env["loadavg_end"]}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
