"""End-to-end cost of one call against one pass, for two or more checkouts of mcdrop (not a test).

Each checkout runs in its own process (``sys.path`` puts it first), one after the other, and the
sequence repeats ``--repeats`` times, so that load from other processes hits the checkouts
alike. Models: the families of ``bench_sampling.py`` (CPU sizes; default: the conv net with a
dropout head), ``B = 32``, ``T = 100``, with ``seed=0``; for each family the median of
``--rounds`` interleaved rounds of one deterministic pass, one ``predict_with_uncertainty`` call
one call of a held ``MCDropout`` (steady state) and one of its ``predict_with_uncertainty``
(``MCDropout.pwu``; a checkout without it in the older behaviour re-plans at every call). ``--import-time`` also times ``import
mcdrop`` in fresh processes (median of ``--rounds``). At the end, per family, the median over
repeats of each checkout's ratios and their ratio to the first checkout. For example, against an
older commit::

    git worktree add /tmp/old 5ec108d
    python benchmarks/compare_checkouts.py /tmp/old . --families conv,mlp --import-time
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

_CHILD = """
import json, statistics, sys, time, torch
root, threads, rounds, families = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sys.path[:0] = [root, root + "/benchmarks"]
from bench_sampling import SIZES, build
import mcdrop
torch.set_num_threads(threads)
out = {}
for family in families.split(","):
    torch.manual_seed(0)
    model = build(family, SIZES[family][1]).eval()
    x = model.example(32, torch.device("cpu"))
    held = mcdrop.MCDropout(model, n_samples=100, progress=False)
    call = lambda: mcdrop.predict_with_uncertainty(model, x, n_samples=100, seed=0, progress=False)
    with torch.inference_mode():
        for _ in range(3):
            call(); model(x); held(x); held.predict_with_uncertainty(x)
        calls, passes, helds, pwus = [], [], [], []
        for _ in range(rounds):
            start = time.perf_counter(); model(x); passes.append(time.perf_counter() - start)
            start = time.perf_counter(); call(); calls.append(time.perf_counter() - start)
            start = time.perf_counter(); held(x); helds.append(time.perf_counter() - start)
            start = time.perf_counter(); held.predict_with_uncertainty(x)
            pwus.append(time.perf_counter() - start)
    p = statistics.median(passes)
    out[family] = {"pass_ms": p * 1e3, "call_x": statistics.median(calls) / p,
                   "mcdropout_x": statistics.median(helds) / p,
                   "pwu_x": statistics.median(pwus) / p}
print(json.dumps(out))
"""

_IMPORT = "import sys, time; sys.path.insert(0, sys.argv[1]); s = time.perf_counter(); import mcdrop; print(time.perf_counter() - s)"


def _run(code: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def _import_ms(root: str, rounds: int) -> float:
    return statistics.median(float(_run(_IMPORT, root)) for _ in range(rounds)) * 1e3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", default="conv")
    parser.add_argument("--import-time", action="store_true")
    args = parser.parse_args(argv)
    table: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for _ in range(args.repeats):
        for checkout in args.checkouts:
            root = str(checkout.resolve())
            rows = json.loads(
                _run(_CHILD, root, str(args.threads), str(args.rounds), args.families)
            )
            for family, row in rows.items():
                print(
                    f"{checkout}: {family:<18} pass {row['pass_ms']:.2f} ms  "
                    f"call {row['call_x']:.2f}x  MCDropout {row['mcdropout_x']:.2f}x  "
                    f"MCDropout.pwu {row['pwu_x']:.2f}x",
                    flush=True,
                )
                table[(str(checkout), family, "call")].append(row["call_x"])
                table[(str(checkout), family, "MCDropout")].append(row["mcdropout_x"])
                table[(str(checkout), family, "MCDropout.pwu")].append(row["pwu_x"])
            if args.import_time:
                ms = _import_ms(root, args.rounds)
                print(f"{checkout}: import mcdrop {ms:.0f} ms", flush=True)
                table[(str(checkout), "import", "ms")].append(ms)
    print("\nmedians over repeats (x one pass; import in ms), and the ratio to the first checkout")
    first = str(args.checkouts[0])
    for (checkout, family, what), values in sorted(table.items(), key=lambda kv: kv[0][1:]):
        median = statistics.median(values)
        base = statistics.median(table[(first, family, what)])
        print(f"  {family:<18} {what:<14} {checkout:<30} {median:8.2f}  {median / base:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
