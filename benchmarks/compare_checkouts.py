"""End-to-end cost of one call against one pass, for two or more checkouts of mcdrop (not a test).

Each checkout runs in its own process (``sys.path`` puts it first), one after the other, and the
sequence repeats ``--repeats`` times, so that load from other processes hits the checkouts
alike. Model: the conv net with a dropout head of ``bench_sampling.py`` (CPU sizes), ``B = 32``,
``T = 100``, ``predict_with_uncertainty`` with ``seed=0``; medians of ``--rounds`` interleaved
rounds of one pass and one call. For example, against an older commit::

    git worktree add /tmp/old 5ec108d
    python benchmarks/compare_checkouts.py /tmp/old .
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

_CHILD = """
import statistics, sys, time, torch
root = sys.argv[1]
sys.path[:0] = [root, root + "/benchmarks"]
from bench_sampling import SIZES, build
import mcdrop
torch.set_num_threads(int(sys.argv[2])); torch.manual_seed(0)
model = build("conv", SIZES["conv"][1]).eval()
x = model.example(32, torch.device("cpu"))
call = lambda: mcdrop.predict_with_uncertainty(model, x, n_samples=100, seed=0, progress=False)
with torch.inference_mode():
    for _ in range(3):
        call(); model(x)
    calls, passes = [], []
    for _ in range(int(sys.argv[3])):
        start = time.perf_counter(); model(x); passes.append(time.perf_counter() - start)
        start = time.perf_counter(); call(); calls.append(time.perf_counter() - start)
c, p = statistics.median(calls) * 1e3, statistics.median(passes) * 1e3
print(f"pass {p:.2f} ms  call {c:.2f} ms  ratio {c / p:.2f}x")
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    for _ in range(args.repeats):
        for checkout in args.checkouts:
            root = str(checkout.resolve())
            out = subprocess.run(
                [sys.executable, "-c", _CHILD, root, str(args.threads), str(args.rounds)],
                capture_output=True,
                text=True,
                check=True,
            )
            print(f"{checkout}: {out.stdout.strip()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
