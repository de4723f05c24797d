"""Recalibrators of mcdrop.calibration compared on held-out data (not a test).

``--data digits`` (default): for each seed the demo's dropout CNN
(:func:`mcdrop.cli.demo.digits_cnn`, digits 0-7, seeded 60/20/20 split,
:func:`mcdrop.cli.demo.train`) is trained once; MC dropout (``predict_with_uncertainty``,
``--samples`` passes) predicts the validation split (288 images), the test split, and the test
split under shift (rotated 30 degrees; Gaussian pixel noise of std 0.3,
:func:`mcdrop.cli.demo.shifted`).

``--data synthetic``: 10 classes, logits ``z ~ N(0, 3²)`` and labels drawn from
``softmax(A z + b)`` with ``A = 0.45 I + N(0, 0.08²)`` and ``b ~ N(0, 0.4²)`` per class: an
over-confident, class-dependent miscalibration, with 5000 validation and 5000 test examples.

Every recalibrator is fitted on the validation probabilities (``inputs="probs"``: the
MC-averaged ones for digits) and applied to the test sets; the table gives the mean and
standard deviation over seeds of accuracy, NLL, Brier score, ECE, classwise ECE and smooth ECE,
and the median fit time.

Run::

    python benchmarks/compare_recalibration.py --json benchmarks/results/compare_recalibration_digits_cpu.json
    python benchmarks/compare_recalibration.py --data synthetic --json benchmarks/results/compare_recalibration_synthetic_cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Any

import numpy as np
import torch
from scipy.special import softmax

import mcdrop
from mcdrop import metrics
from mcdrop.calibration import (
    DirichletCalibration,
    HistogramBinning,
    IsotonicCalibration,
    MatrixScaling,
    TemperatureScaling,
    VectorScaling,
)
from mcdrop.cli.demo import digits_cnn, digits_splits, shifted, train

RECALIBRATORS = {
    "none": None,
    "temperature": lambda: TemperatureScaling(inputs="probs"),
    "vector": lambda: VectorScaling(inputs="probs"),
    "matrix": lambda: MatrixScaling(inputs="probs"),
    "Dirichlet (ODIR, CV)": lambda: DirichletCalibration(),
    "isotonic": lambda: IsotonicCalibration(),
    "histogram (15 bins)": lambda: HistogramBinning(),
}
METRICS = {
    "accuracy": metrics.accuracy,
    "nll": metrics.negative_log_likelihood,
    "brier": metrics.brier_score,
    "ece": metrics.expected_calibration_error,
    "classwise_ece": metrics.classwise_calibration_error,
    "smooth_ece": metrics.smooth_calibration_error,
}
SHIFTS = {"in distribution": None, "rotation 30": ("rotation", 30.0), "noise 0.3": ("noise", 0.3)}


def _digits(
    seed: int, epochs: int, samples: int
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """MC dropout probabilities of the validation set and of each test condition."""
    splits = digits_splits(seed)
    torch.manual_seed(seed)
    model = digits_cnn()
    train(model, *splits["train"], epochs=epochs, seed=seed)
    x_test, y_test = splits["test"]
    sets = {"validation": splits["val"][0]}
    for name, shift in SHIFTS.items():
        sets[name] = x_test if shift is None else shifted(x_test, *shift, seed=seed)
    probs = {
        name: mcdrop.predict_with_uncertainty(
            model, torch.from_numpy(x), n_samples=samples, seed=seed
        ).mean.numpy()
        for name, x in sets.items()
    }
    return probs, splits["val"][1], y_test


def _synthetic(seed: int, n: int = 5000, c: int = 10):
    rng = np.random.default_rng(seed)
    mixing = 0.45 * np.eye(c) + rng.normal(scale=0.08, size=(c, c))
    bias = rng.normal(scale=0.4, size=c)
    probs, labels = {}, {}
    for name in ("validation", "in distribution"):
        logits = rng.normal(scale=3.0, size=(n, c))
        truth = softmax(logits @ mixing.T + bias, axis=1)
        labels[name] = (truth.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
        probs[name] = softmax(logits, axis=1)
    return probs, labels["validation"], labels["in distribution"]


def _one_seed(seed: int, data: str, epochs: int, samples: int) -> dict[str, Any]:
    if data == "digits":
        probs, y_val, y_test = _digits(seed, epochs, samples)
    else:
        probs, y_val, y_test = _synthetic(seed)
    conditions = [name for name in probs if name != "validation"]
    out: dict[str, Any] = {"metrics": {}, "fit_seconds": {}}
    for method, make in RECALIBRATORS.items():
        start = time.perf_counter()
        recalibrator = None if make is None else make().fit(probs["validation"], y_val)
        out["fit_seconds"][method] = time.perf_counter() - start
        out["metrics"][method] = {}
        for name in conditions:
            p = probs[name] if recalibrator is None else recalibrator.transform(probs[name])
            out["metrics"][method][name] = {k: float(f(y_test, p)) for k, f in METRICS.items()}
        if isinstance(recalibrator, DirichletCalibration):
            out["dirichlet_weights"] = [recalibrator.reg_lambda_, recalibrator.reg_mu_]
    return out


def _table(runs: list[dict[str, Any]]) -> str:
    lines = []
    for name in runs[0]["metrics"]["none"]:
        lines.append(f"\n{name} (mean ± std over {len(runs)} seeds)")
        header = (
            f"{'recalibrator':22s}" + "".join(f"{k:>17s}" for k in METRICS) + f"{'fit (s)':>10s}"
        )
        lines += [header, "-" * len(header)]
        for method in RECALIBRATORS:
            cells = []
            for key in METRICS:
                values = [r["metrics"][method][name][key] for r in runs]
                cells.append(f"{np.mean(values):9.4f} ± {np.std(values):.4f}")
            fit = statistics.median(r["fit_seconds"][method] for r in runs)
            lines.append(f"{method:22s}" + "".join(f"{c:>17s}" for c in cells) + f"{fit:10.3f}")
    return "\n".join(lines)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("digits", "synthetic"), default="digits")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    environment = {
        "machine": platform.machine(),
        "processor": _cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "mcdrop": mcdrop.__version__,
        "threads": args.threads,
    }
    start = time.perf_counter()
    runs = [_one_seed(seed, args.data, args.epochs, args.samples) for seed in range(args.seeds)]
    elapsed = time.perf_counter() - start
    setup = f"{args.seeds} seeds" + (
        f", {args.epochs} epochs, T={args.samples}" if args.data == "digits" else ""
    )
    print(f"# {args.data}: {environment} -- {setup}, {elapsed:.0f} s")
    print(_table(runs))
    weights = [r["dirichlet_weights"] for r in runs]
    print(f"\nDirichlet ODIR weights (lambda, mu) chosen per seed: {weights}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(
                {"environment": environment, "args": vars(args), "runs": runs}, handle, indent=1
            )


if __name__ == "__main__":
    main()
