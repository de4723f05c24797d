"""How close the logged run-time estimate comes to the real time (not a test).

Without a progress bar, a run expected to take over a minute logs one line, after its first
chunk, saying how long it will take (:mod:`mcdrop.sampling._progress`). This script forces that
line for every run (threshold 0) on models of the test suite's kinds, sized so a run takes a few
seconds and spans many chunks, and prints, per model, the estimate, the measured wall time of the
call, their ratio, and the ratio the earlier formula (the elapsed time at the first chunk
extrapolated to every sample, one-time costs included) would have given::

    PYTHONPATH=. python benchmarks/check_estimates.py --threads 2

Exits 1 when any ratio falls outside [1/1.5, 1.5].
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from torch import nn

import mcdrop
from mcdrop.sampling import _progress


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(32, 256), nn.BatchNorm1d(256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 10)
    )


def _deep() -> nn.Module:
    return nn.Sequential(
        nn.Linear(32, 256), nn.ReLU(), nn.Dropout(0.2), nn.Linear(256, 256), nn.ReLU(),
        nn.Dropout(0.2), nn.Linear(256, 10),
    )  # fmt: skip


def _conv() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Dropout(0.5), nn.Linear(64, 10),
    )  # fmt: skip


class _Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(64, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


class _LSTM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(16, 64, num_layers=2, dropout=0.3, batch_first=True)
        self.head = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


# name -> (model, inputs, options): a few seconds each on two CPU threads, many chunks
CASES: dict[str, tuple[Any, Any, dict[str, Any]]] = {
    "mlp (vmap)": (_mlp, lambda: torch.randn(2048, 32), {"n_samples": 300}),
    "deep mlp (replicate)": (_deep, lambda: torch.randn(1024, 32), {"n_samples": 200}),
    "conv net (batches)": (
        _conv,
        lambda: torch.randn(512, 3, 32, 32),
        {"n_samples": 40, "batch_size": 64},
    ),
    "encoder": (_Encoder, lambda: torch.randn(256, 16, 64), {"n_samples": 40}),
    "lstm": (_LSTM, lambda: torch.randn(256, 20, 16), {"n_samples": 60}),
}


def measure(name: str) -> dict[str, float]:
    build, inputs, options = CASES[name]
    torch.manual_seed(0)
    model, x = build().eval(), inputs()
    seen: dict[str, float] = {}
    original = _progress.Progress._announce

    def capture(self: _progress.Progress, n: int, seconds: float | None) -> None:
        elapsed = _progress._clock() - self.started
        seen.update(
            estimate=self.estimate(n, seconds),
            earlier=elapsed * (self.total or 0) / max(n, 1),
        )
        original(self, n, seconds)

    _progress.Progress._announce = capture  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        mcdrop.predict_with_uncertainty(model, x, seed=0, **options)
        seen["real"] = time.perf_counter() - start
    finally:
        _progress.Progress._announce = original  # type: ignore[method-assign]
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default=",".join(CASES))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    _progress._ANNOUNCE_AFTER_S = 0.0  # log the estimate of every run
    _progress._interactive = lambda: False  # no bar: the estimate is what the user sees
    print(f"{'model':24} {'real s':>8} {'estimate':>9} {'ratio':>6} {'earlier':>8}")
    worst = 1.0
    for name in args.models.split(","):
        seen = measure(name)
        ratio = seen["estimate"] / seen["real"]
        worst = max(worst, ratio, 1 / ratio)
        print(
            f"{name:24} {seen['real']:8.2f} {seen['estimate']:9.2f} {ratio:6.2f} "
            f"{seen['earlier'] / seen['real']:8.2f}"
        )
    print(f"worst ratio (either way): {worst:.2f}")
    return 0 if worst <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
