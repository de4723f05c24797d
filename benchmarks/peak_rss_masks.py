"""Peak resident memory of one ``predict_with_uncertainty`` call, shared vs independent masks
(CPU, not a test). Run once per model and mode, each in a fresh process::

    for m in conv mlp transformer; do for k in independent shared; do
        python benchmarks/peak_rss_masks.py $m $k; done; done

Models and CPU sizes of ``bench_sampling.py``; batch 32 (16 for the transformer), T = 100, one
thread. Prints the process's peak RSS and how much it grew during the call.
"""

from __future__ import annotations

import resource
import sys

import torch
from bench_sampling import SIZES, build

import mcdrop


def main() -> None:
    name, masks = sys.argv[1], sys.argv[2]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build(name, SIZES[name][1]).eval()
    x = model.example(16 if "transformer" in name else 32, torch.device("cpu"))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mcdrop.predict_with_uncertainty(model, x, n_samples=100, seed=0, masks=masks, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"{name} {masks}: peak RSS {after / 1024:.1f} MiB, grew {(after - before) / 1024:.1f} MiB"
    )


if __name__ == "__main__":
    main()
