"""Time replicate (vmap for the conv net) against rows per pass (not a test).

The measurements behind ``mcdrop._engine.planner.CPU_PASS_BYTES``: for each benchmark family of
``bench_sampling.py`` (CPU sizes), the bytes of every op's output per example as the probe sees
them, and ``MCDropout`` (T=100) with pass sizes of 1 to 16 batches and 1024 rows, against the
loop; medians of 3 interleaved rounds, ms.

Run::

    python benchmarks/sweep_pass_size.py --threads 2
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
from mcdrop import _probe


def _bytes_per_row(model: nn.Module, x: torch.Tensor) -> float:
    with mcdrop.dropout_enabled(model, example_inputs=x[:2]) as twin:
        modules = dict(twin.named_modules())
        with torch.inference_mode():
            trace = _probe.trace(modules, lambda: twin(x[:2]), flops=True)
    return trace.output_bytes / 2


def sweep(name: str, batch: int) -> None:
    model = build(name, SIZES[name][1]).eval()
    x = model.example(batch, torch.device("cpu"))  # type: ignore[operator]
    strategy = "vmap" if name == "conv" else "replicate"
    fns: dict[str, Callable[[], object]] = {}
    for rows in (batch, 2 * batch, 4 * batch, 8 * batch, 16 * batch, 1024):
        mc = mcdrop.MCDropout(model, n_samples=100, strategy=strategy, batch_budget=rows)
        fns[str(rows)] = lambda mc=mc: mc(x)
    loop = mcdrop.MCDropout(model, n_samples=100, strategy="loop")
    fns["loop"] = lambda: loop(x)
    times: dict[str, list[float]] = {key: [] for key in fns}
    for fn in fns.values():
        fn()
    for _ in range(3):
        for key, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    medians = {key: round(statistics.median(v) * 1e3) for key, v in times.items()}
    print(
        f"{name} ({strategy}): {_bytes_per_row(model, x) / 1024:.0f} KiB per row; ms by rows "
        f"per pass: {medians}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name, batch in (("transformer", 16), ("mlp", 32), ("conv", 32)):
        sweep(name, batch)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
