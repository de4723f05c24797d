"""First-call cost of ``strategy="auto"`` against each fixed strategy on full-size models (not a test).

``auto`` used to time every candidate at the full sample count before sampling: torchvision
``swin_t`` (32 px, B=4, T=200) took 161.5 s with ``auto`` against 19.0 s with ``loop``. Now it
decides from the probe pass (FLOPs before the first dropout, validity on the first chunk), so its
first call should cost about what the best fixed strategy's does. Each method is a fresh
``predict_with_uncertainty`` call (nothing is cached between calls but compiled graphs); methods
run round-robin, ``--repeats`` rounds, medians reported, ratios from the same run.

Models (torchvision, ``weights=None``, nothing downloads): ``swin_t`` with dropout and attention
dropout 0.1 (32 px, B=4, T=200), ``vit_b_16`` with dropout and attention dropout 0.1 (32 px,
N=32, T=20) and ``convnext_tiny`` with a dropout head (32 px, N=32, T=100).

Run::

    python benchmarks/bench_first_call.py --json benchmarks/results/bench_first_call_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import mcdrop

STRATEGIES = ("loop", "replicate", "vmap", "auto")


def _convnext() -> nn.Module:
    from torchvision.models import convnext_tiny

    model = convnext_tiny(weights=None)
    head = model.classifier[2]
    model.classifier[2] = nn.Sequential(nn.Dropout(0.5), head)
    return model


def _vit() -> nn.Module:
    from torchvision.models import vit_b_16

    model = vit_b_16(weights=None, image_size=32, dropout=0.1, attention_dropout=0.1)
    nn.init.normal_(model.heads.head.weight, std=0.02)  # torchvision zero-initialises the head
    return model


def _models() -> dict[str, tuple[Callable[[], nn.Module], int, int, int]]:
    """name: (build, image size, batch, T)."""
    from torchvision.models import swin_t

    return {
        "swin_t": (lambda: swin_t(weights=None, dropout=0.1, attention_dropout=0.1), 32, 4, 200),
        "vit_b_16": (_vit, 32, 32, 20),
        "convnext_tiny": (_convnext, 32, 32, 100),
    }


def bench(name: str, repeats: int) -> dict[str, Any]:
    build, image, batch, T = _models()[name]
    torch.manual_seed(0)
    model = build().eval()
    x = torch.randn(batch, 3, image, image)
    times: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    errors: dict[str, str] = {}
    for _ in range(repeats):
        for strategy in STRATEGIES:
            if strategy in errors:
                continue
            start = time.perf_counter()
            try:
                mcdrop.predict_with_uncertainty(
                    model, x, n_samples=T, strategy=strategy, seed=0, progress=False
                )
            except Exception as error:  # vmap cannot run every model
                errors[strategy] = f"{type(error).__name__}: {str(error)[:100]}"
                continue
            times[strategy].append(time.perf_counter() - start)
    row: dict[str, Any] = {"model": name, "image": image, "batch": batch, "samples": T}
    for strategy, values in times.items():
        row[f"{strategy}_s"] = statistics.median(values) if values else None
    row["errors"] = errors
    fixed = [row[f"{s}_s"] for s in STRATEGIES[:-1] if row[f"{s}_s"] is not None]
    if not fixed or row["auto_s"] is None:
        raise RuntimeError(f"{name}: no strategy ran: {errors}")
    row["auto_vs_best_fixed"] = row["auto_s"] / min(fixed)
    mc = mcdrop.MCDropout(model, n_samples=T)
    mc(x[:1])
    row["auto_strategy"] = mc.last_strategy
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", default="swin_t,vit_b_16,convnext_tiny")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for name in args.models.split(","):
        row = bench(name, args.repeats)
        rows.append(row)
        cells = "  ".join(
            f"{s} {row[f'{s}_s']:.2f} s" if row[f"{s}_s"] is not None else f"{s} -"
            for s in STRATEGIES
        )
        print(
            f"{name} (B={row['batch']}, T={row['samples']}): {cells}  -> auto/best fixed "
            f"{row['auto_vs_best_fixed']:.2f}x (auto chose {row['auto_strategy']!r})",
            flush=True,
        )
        for strategy, message in row["errors"].items():
            print(f"  {strategy}: {message}")
    if args.json:
        meta = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
            "repeats": args.repeats,
        }
        with open(args.json, "w") as handle:
            json.dump({**meta, "results": rows}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
