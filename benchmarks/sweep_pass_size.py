"""Time replicate (vmap for the conv net) against rows per pass (not a test).

The measurements behind ``mcdrop.sampling._planner.CPU_PASS_BYTES`` and ``GPU_PASS_BYTES``: for
each benchmark family of ``bench_sampling.py``, the bytes of every op's output per example as the
probe sees them, and ``MCDropout`` (T=100) with pass sizes of 1 to 16 batches and 1024 rows (CPU
sizes, fp32) or all ``T x B`` rows (GPU sizes, bf16), the default sizing, and the loop; medians
of 3 (CPU) or 5 (GPU) interleaved rounds, ms.

Run::

    python benchmarks/sweep_pass_size.py --threads 2
    python benchmarks/sweep_pass_size.py --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_sampling import SIZES, build

import mcdrop
from mcdrop.dropout import _probe


def _bytes_per_row(model: nn.Module, x: torch.Tensor) -> float:
    with mcdrop.dropout_enabled(model, example_inputs=x[:2]) as twin:
        modules = dict(twin.named_modules())
        with torch.inference_mode():
            trace = _probe.trace(modules, lambda: twin(x[:2]), flops=True)
    return trace.output_bytes / 2


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sweep(name: str, batch: int, device: torch.device, amp: str | None) -> None:
    cuda = device.type == "cuda"
    model = build(name, SIZES[name][0 if cuda else 1]).to(device).eval()
    x = model.example(batch, device)  # type: ignore[operator]
    strategy = "vmap" if name == "conv" else "replicate"
    T = 100
    fns: dict[str, Callable[[], object]] = {}
    sizes = [batch * m for m in (1, 2, 4, 8, 16)] + ([T * batch] if cuda else [1024])
    for rows in sizes:
        mc = mcdrop.MCDropout(model, n_samples=T, strategy=strategy, batch_budget=rows, amp=amp)
        fns[str(rows)] = lambda mc=mc: mc(x)
    default = mcdrop.MCDropout(model, n_samples=T, strategy=strategy, amp=amp)
    fns["default"] = lambda: default(x)
    loop = mcdrop.MCDropout(model, n_samples=T, strategy="loop", amp=amp)
    fns["loop"] = lambda: loop(x)
    times: dict[str, list[float]] = {key: [] for key in fns}
    for fn in fns.values():
        fn()
    for _ in range(5 if cuda else 3):
        for key, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[key].append(time.perf_counter() - start)
    medians = {key: round(statistics.median(v) * 1e3, 1) for key, v in times.items()}
    engine = default._engine
    rows = None if engine is None else engine.planner.budget * engine.planner.scale
    print(
        f"{device.type} {name} ({strategy}, amp={amp}): {_bytes_per_row(model, x) / 1024:.0f} KiB "
        f"of op outputs per row; default rows per pass {rows}; ms by rows per pass: {medians}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        for name in ("transformer", "mlp", "conv"):
            sweep(name, 64, device, "bf16")
        return 0
    for name, batch in (("transformer", 16), ("mlp", 32), ("conv", 32)):
        sweep(name, batch, device, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
