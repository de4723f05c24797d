"""Speed of mcdrop.active on the CPU: pool scoring against the forward passes, and BatchBALD.

1. ``acquire(method="bald")`` on a pool of ``--pool`` (50,000) examples with ``T = --samples``
   (100) against ``predict_with_uncertainty`` alone on the same pool, seed and options: the
   share of the time spent in the forward passes.
2. :func:`mcdrop.active.batchbald` choosing ``--batch`` (10) of ``--candidates`` (5,000)
   examples from random ``(T, N, C)`` probabilities: time, the steps with an exact joint entropy,
   and the peak resident memory of the process.

Usage::

    python benchmarks/bench_active.py --threads 2
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from torch import nn

import mcdrop
from mcdrop.active import acquire, batchbald


def model(d: int, classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(d, 256),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(256, 256),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(256, classes),
    ).eval()


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", type=int, default=50_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--configurations", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    net = model(64, 10)
    pool = torch.randn(args.pool, 64, generator=torch.Generator().manual_seed(1))
    options = {"n_samples": args.samples, "seed": 0, "batch_size": 4096}
    passes = best_of(args.repeats, lambda: mcdrop.predict_with_uncertainty(net, pool, **options))
    whole = best_of(args.repeats, lambda: acquire(net, pool, 10, **options))
    print(
        f"pool scoring: N={args.pool}, T={args.samples}, MLP 64-256-256-10 with two dropouts, "
        f"{args.threads} threads; best of {args.repeats}"
    )
    print(f"  predict_with_uncertainty alone {passes:.2f} s, acquire(method='bald') {whole:.2f} s")
    print(f"  forward passes and streamed statistics: {passes / whole:.1%} of acquire")

    probs = (
        torch.distributions.Dirichlet(torch.full((10,), 0.3))
        .sample((args.samples, args.candidates))
        .double()
    )
    for m in args.configurations:
        start = time.perf_counter()
        chosen = batchbald(probs, args.batch, n_configurations=m, seed=0)
        elapsed = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"batchbald: {args.batch} of {args.candidates} candidates, T={args.samples}, C=10, "
            f"n_configurations={m}: {elapsed:.1f} s ({chosen.n_exact} exact steps), "
            f"peak RSS of the process so far {peak:.0f} MiB"
        )


if __name__ == "__main__":
    main()
