"""Time of one independent CPU keep mask, per rate and size (not a test).

``mcdrop.dropout._masks.keep_units`` draws a mask for ``T x B x F`` units from mcdrop's own
generator: one random bit per unit at ``p = 0.5`` (64 from each 64-bit draw), one random byte
per unit at other multiples of 1/256 (eight from each draw), a float32 per unit otherwise; beside
it, PyTorch's own ``bernoulli_`` on a float tensor. Medians of ``--repeats`` interleaved rounds,
microseconds.

Run::

    python benchmarks/bench_masks.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mcdrop.dropout._masks import keep_units

SHAPES = ((100, 32, 64), (100, 32, 512), (100, 64, 1024))
RATES = (0.5, 0.25, 0.1)  # bits, bytes, floats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=31)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    generator = torch.Generator().manual_seed(0)
    cases = {}
    for shape in SHAPES:
        for p in RATES:
            cases[(shape, f"keep_units p={p}")] = lambda s=shape, p=p: keep_units(
                s, p, cpu, generator
            )
        cases[(shape, "bernoulli_ p=0.5")] = lambda s=shape: torch.empty(s).bernoulli_(
            0.5, generator=generator
        )
    times: dict[tuple[tuple[int, ...], str], list[float]] = {key: [] for key in cases}
    for fn in cases.values():
        fn()
    for _ in range(args.repeats):
        for key, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats}")
    for (shape, name), values in times.items():
        print(
            f"  {' x '.join(map(str, shape)):>16}  {name:<20} {statistics.median(values) * 1e6:9.0f} us"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
