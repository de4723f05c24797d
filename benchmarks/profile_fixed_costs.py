"""Where the time of one ``predict_with_uncertainty`` call goes (not a test).

For the CPU head-dropout benchmark (conv net of ``bench_sampling.py``, dropout only in the head,
``T = 100``, ``B = 32``): one deterministic pass, and the parts of an ``auto`` call measured one by
one — building the twin, the training-mode probe, the sampling probe (with FLOP counting), the
vmap chunk of 100 samples and the streaming statistics. Medians of ``--repeats`` interleaved
rounds, milliseconds.

Run::

    python benchmarks/profile_fixed_costs.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_sampling import SIZES, ConvHead

import mcdrop
from mcdrop import _probe
from mcdrop._engine.strategies import Runner
from mcdrop._inputs import _Batch
from mcdrop._twin import _twin
from mcdrop.uncertainty import _ClassificationAccumulator


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = ConvHead(**SIZES["conv"][1]).eval()
    x = model.example(32, torch.device("cpu"))
    twin = _twin(model)
    assert twin is not None
    modules = dict(twin.named_modules())
    for name, module in modules.items():
        module.training = name == "head.0"
    runner = Runner(twin, device=x.device, amp=None, n_outputs=1, output_transform=None)
    batch = _Batch((x,), {}, None, 32)
    with torch.inference_mode():
        outs = runner.run("vmap", batch, 100)

    def stats() -> None:
        acc = _ClassificationAccumulator(outputs="logits", class_dim=1, keep_samples=False)
        acc.update(outs[0])
        acc.state()

    parts = {
        "deterministic pass": lambda: model(x),
        "twin": lambda: _twin(model),
        "training probe (2 rows)": lambda: _probe.trace(modules, lambda: twin(x[:2]), flops=False),
        "sampling probe + FLOPs": lambda: _probe.trace(modules, lambda: twin(x[:2]), flops=True),
        "vmap chunk, 100 samples": lambda: runner.run("vmap", batch, 100),
        "statistics": stats,
        "predict_with_uncertainty": lambda: mcdrop.predict_with_uncertainty(
            model, x, n_samples=100, seed=0, progress=False
        ),
    }
    times: dict[str, list[float]] = {name: [] for name in parts}
    with torch.inference_mode():
        for fn in parts.values():
            fn()
        for _ in range(args.repeats):
            for name, fn in parts.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    det = statistics.median(times["deterministic pass"])
    print(f"torch {torch.__version__}, {args.threads} threads, conv width 16, B=32, T=100")
    for name, values in times.items():
        ms = statistics.median(values) * 1e3
        print(f"  {name:<26} {ms:8.2f} ms  {ms / (det * 1e3):6.2f}x pass")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
