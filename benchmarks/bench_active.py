"""Speed of mcdrop.active on the CPU: pool scoring against the forward passes, and BatchBALD.

1. ``acquire(method="bald")`` on a pool of ``--pool`` (50,000) examples with ``T = --samples``
   (100) against the ``T`` forward passes alone (a plain loop over the pool's batches, dropout
   on, no statistics) and ``predict_with_uncertainty`` alone (the passes and the streamed
   statistics) on the same pool, seed and options: the share of the time spent in the forward
   passes. ``--cpu-time`` measures it on a busy machine: CPU time of this process (not wall
   time, which other processes stretch; use ``--threads 1``, OpenMP's idle threads spin), and
   the time inside the model's forward during ``acquire`` itself (hooks on the model, which its
   sampling twin shares), so the share comes from one run.
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


def forward_passes(net: nn.Module, pool: torch.Tensor, samples: int, batch_size: int) -> None:
    """The ``T`` forward passes alone, as a hand-written loop: dropout on (the model has no
    normalisation layer), no statistics kept."""
    net.train()
    try:
        with torch.no_grad():
            for lo in range(0, len(pool), batch_size):
                x = pool[lo : lo + batch_size]
                for _ in range(samples):
                    net(x)
    finally:
        net.eval()


def in_forward(net: nn.Module, fn) -> tuple[float, float, float]:
    """``(CPU seconds of fn, CPU seconds inside net's forward during fn, wall seconds)``:
    forward pre/post hooks on ``net`` (mcdrop's sampling twin shares them) add up the CPU time
    of every forward pass, probe passes included."""
    inside = [0.0]
    started: list[float] = []

    def pre(_module: nn.Module, _args: object) -> None:
        started.append(time.process_time())

    def post(_module: nn.Module, _args: object, _out: object) -> None:
        inside[0] += time.process_time() - started.pop()

    handles = [net.register_forward_pre_hook(pre), net.register_forward_hook(post)]
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        return time.process_time() - cpu, inside[0], time.perf_counter() - wall
    finally:
        for handle in handles:
            handle.remove()


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def compare_baal(candidates: int, t: int, *, batch: int) -> None:
    """One BatchBALD acquisition by baal and by mcdrop on the same (T, N, 10) probabilities."""
    from baal.active.heuristics import BatchBALD

    probs = torch.distributions.Dirichlet(torch.full((10,), 0.3)).sample((t, candidates)).double()
    start = time.perf_counter()
    ours = batchbald(probs, batch, n_configurations=1000, seed=0)
    mine = time.perf_counter() - start
    start = time.perf_counter()
    theirs = BatchBALD(num_samples=batch, num_draw=500)(probs.permute(1, 2, 0).numpy())[:batch]
    baal_seconds = time.perf_counter() - start
    # baal holds (N, 500 T, C) float64 joint probabilities at once (its _joint_entropy).
    baal_bytes = candidates * 500 * t * 10 * 8
    print(
        f"BatchBALD, {batch} of {candidates} candidates, T={t}, C=10: mcdrop "
        f"(n_configurations=1000) {mine:.1f} s, chunks of 32 MiB; baal (500 draws) "
        f"{baal_seconds:.1f} s, one array of {baal_bytes / 2**30:.1f} GiB; "
        f"{len(set(ours.tolist()) & {int(i) for i in theirs})} picks in common"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", type=int, default=50_000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--candidates", type=int, default=5_000)
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--configurations", type=int, nargs="+", default=[1_000, 10_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--baal",
        type=int,
        nargs=2,
        metavar=("CANDIDATES", "T"),
        help="also time baal 2.1's BatchBALD (500 draws) against mcdrop's on this pool size",
    )
    parser.add_argument("--skip-pool", action="store_true", help="skip the pool-scoring part")
    parser.add_argument("--skip-batchbald", action="store_true", help="skip the BatchBALD part")
    parser.add_argument(
        "--cpu-time", action="store_true", help="pool scoring in CPU time, within acquire"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    if args.baal:
        compare_baal(*args.baal, batch=args.batch)
    if args.skip_pool:
        return
    net = model(64, 10)
    pool = torch.randn(args.pool, 64, generator=torch.Generator().manual_seed(1))
    options = {"n_samples": args.samples, "seed": 0, "batch_size": 4096, "progress": False}
    if args.cpu_time:
        loop_cpu, _, loop_wall = in_forward(
            net, lambda: forward_passes(net, pool, args.samples, 4096)
        )
        whole_cpu, inside, whole_wall = in_forward(net, lambda: acquire(net, pool, 10, **options))
        print(
            f"pool scoring: N={args.pool}, T={args.samples}, MLP 64-256-256-10 with two dropouts, "
            f"batches of 4096, {args.threads} threads; CPU time of this process (wall time)"
        )
        print(f"  forward passes alone (a plain loop): {loop_cpu:.1f} s ({loop_wall:.1f} s)")
        print(
            f"  acquire(method='bald'): {whole_cpu:.1f} s ({whole_wall:.1f} s), of which inside "
            f"the model's forward {inside:.1f} s: {inside / whole_cpu:.1%}; the plain loop's "
            f"passes are {loop_cpu / whole_cpu:.1%} of it"
        )
    else:
        _wall_shares(net, pool, args, options)
    if args.skip_batchbald:
        return
    _batchbald(args)


def _wall_shares(
    net: nn.Module, pool: torch.Tensor, args: argparse.Namespace, options: dict
) -> None:
    forward = best_of(args.repeats, lambda: forward_passes(net, pool, args.samples, 4096))
    passes = best_of(args.repeats, lambda: mcdrop.predict_with_uncertainty(net, pool, **options))
    whole = best_of(args.repeats, lambda: acquire(net, pool, 10, **options))
    print(
        f"pool scoring: N={args.pool}, T={args.samples}, MLP 64-256-256-10 with two dropouts, "
        f"batches of 4096, {args.threads} threads; best of {args.repeats}"
    )
    print(
        f"  forward passes alone (a plain loop) {forward:.2f} s, predict_with_uncertainty "
        f"alone {passes:.2f} s, acquire(method='bald') {whole:.2f} s"
    )
    print(f"  forward passes: {forward / whole:.1%} of acquire")
    print(f"  forward passes and streamed statistics: {passes / whole:.1%} of acquire")


def _batchbald(args: argparse.Namespace) -> None:
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
