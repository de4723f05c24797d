"""Benchmark of ``masks="shared"`` against ``masks="independent"`` (not a test).

On the rows of ``benchmarks/bench_sampling.py`` (its models and sizes: conv net with a dropout
head, MLP with dropout after every layer, transformer encoder classifier on PyTorch's fused
layers and written out with eager attention), times ``mcdrop.MCDropout(strategy=s, masks=m)``
returning the ``T`` stacked samples for each strategy ``s`` (``loop``, ``replicate``, ``vmap``,
``auto``) and both mask kinds, and ``predict_with_uncertainty`` end to end. Medians and minima of
``--repeats`` runs after warm-up, timed round-robin (one run of each per round) so that load from
other processes hits both kinds alike; each ratio ``shared / independent`` comes from the same
run (on a shared machine the ratio of minima is the steadier one). On CUDA the peak memory of each call above the model is measured too.

Run::

    python benchmarks/bench_shared_masks.py --json shared.json
    python benchmarks/bench_shared_masks.py --quick
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_sampling import QUICK_SIZES, SIZES, _sync, _warm_up_process, build, cpu_name

import mcdrop

STRATEGIES = ("loop", "replicate", "vmap", "auto")
MASKS = ("independent", "shared")


def timeit_interleaved(
    fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int
) -> dict[str, float]:
    """Median and minimum ms of each function, timed round-robin after one untimed run each.

    On a machine shared with other jobs the minimum is the better estimate of a function's own
    cost (load only ever adds time); the median is reported too."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1e3)
    out = {f"{name}_ms": statistics.median(t) for name, t in times.items()}
    out.update({f"{name}_min_ms": min(t) for name, t in times.items()})
    return out


def _peak_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - start


def bench_row(
    name: str, model: Any, device: torch.device, dtype: str, batch: int, T: int, repeats: int
) -> dict[str, Any]:
    x = model.example(batch, device)
    amp = "bf16" if dtype == "bf16" else None
    row: dict[str, Any] = {"model": name, "dtype": dtype, "device": device.type, "batch": batch}
    row["samples"] = T
    fns: dict[str, Callable[[], Any]] = {}
    _warm_up_process()
    for strategy in STRATEGIES:
        for masks in MASKS:
            key = f"{strategy}_{masks}"
            mc = mcdrop.MCDropout(model, n_samples=T, strategy=strategy, amp=amp, masks=masks)
            try:
                mc(x)
            except Exception as error:  # vmap cannot run every model
                row[f"{key}_error"] = f"{type(error).__name__}: {str(error)[:120]}"
                continue
            fns[key] = lambda mc=mc: mc(x)
            if strategy == "auto":
                row[f"auto_{masks}_strategy"] = mc.last_strategy
            row[f"{key}_peak_bytes"] = _peak_bytes(fns[key], device)
    for masks in MASKS:

        def predict(masks: str = masks) -> None:
            mcdrop.predict_with_uncertainty(
                model, x, n_samples=T, amp=amp, seed=0, progress=False, masks=masks
            )

        fns[f"predict_{masks}"] = predict
    row.update(timeit_interleaved(fns, device, repeats))
    for key in (*STRATEGIES, "predict"):
        for stat in ("", "_min"):
            shared = row.get(f"{key}_shared{stat}_ms")
            independent = row.get(f"{key}_independent{stat}_ms")
            if shared is not None and independent is not None:
                row[f"{key}{stat}_ratio"] = shared / independent
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--samples", type=int, default=100, help="T")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=None, help="default 5 on GPU, 3 on CPU")
    parser.add_argument("--models", default="conv,mlp,transformer,eager_transformer")
    parser.add_argument("--dtype", default="fp32,bf16")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    T = 4 if args.quick else args.samples
    repeats = 1 if args.quick else args.repeats or (5 if device.type == "cuda" else 3)
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()][: 1 if args.quick else None]
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if device.type == "cuda" else None,
        "mcdrop": mcdrop.__version__,
    }
    print(f"torch {info['torch']}, CPU {info['cpu']} ({info['cpu_threads']} threads)", end="")
    print(f", GPU {info['cuda_device']}" if info["cuda_device"] else "")
    results = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        gpu_sizes, cpu_sizes = SIZES[name]
        sizes = (
            QUICK_SIZES[name] if args.quick else gpu_sizes if device.type == "cuda" else cpu_sizes
        )
        batch = args.batch
        if name.endswith("transformer") and device.type == "cpu" and not args.quick:
            batch = min(batch, 16)
        torch.manual_seed(0)
        model = build(name, sizes).to(device).eval()
        for dtype in dtypes:
            row = bench_row(name, model, device, dtype, batch, T, repeats)
            row["sizes"] = sizes
            results.append(row)
            print(
                f"\n[{device.type}] {name} {dtype}: {sizes}, batch {batch}, T={T}, median of {repeats}"
            )
            for key in (*STRATEGIES, "predict"):
                ind, sh = row.get(f"{key}_independent_ms"), row.get(f"{key}_shared_ms")
                if ind is None or sh is None:
                    error = row.get(f"{key}_shared_error") or row.get(f"{key}_independent_error")
                    print(f"  {key:<10} {error}")
                    continue
                mem = ""
                if row.get(f"{key}_shared_peak_bytes") is not None:
                    a, b = row[f"{key}_independent_peak_bytes"], row[f"{key}_shared_peak_bytes"]
                    mem = f"   peak {a / 2**20:8.1f} -> {b / 2**20:8.1f} MiB"
                print(
                    f"  {key:<10} independent {ind:9.2f} ms  shared {sh:9.2f} ms  "
                    f"ratio {sh / ind:5.2f}  (minimum: {row[f'{key}_independent_min_ms']:9.2f}"
                    f" / {row[f'{key}_shared_min_ms']:9.2f} ms, ratio {row[f'{key}_min_ratio']:5.2f})"
                    f"{mem}"
                )
            print(
                f"  auto chose {row.get('auto_independent_strategy')!r} (independent), "
                f"{row.get('auto_shared_strategy')!r} (shared)"
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({**info, "argv": sys.argv[1:], "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
