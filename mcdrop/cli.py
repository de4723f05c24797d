"""The ``mcdrop`` command line: ``mcdrop demo`` and ``mcdrop report``.

``mcdrop demo`` trains a small dropout CNN on scikit-learn's bundled digits, compares the
deterministic network, Monte Carlo dropout and temperature scaling, and writes plots and a JSON
report. ``mcdrop report`` computes the same metrics and plots from a result saved elsewhere with
``result.save(path)``. Errors a user can fix (missing file, wrong format, no targets) print one
line ``mcdrop: error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

import mcdrop

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from torch import nn

    from mcdrop.results import ClassificationResult, RegressionResult

__all__ = ["main"]

PROG = "mcdrop"
#: Columns of the printed classification table (every metric of ``evaluate`` goes to the JSON).
TABLE_COLUMNS = ("accuracy", "nll", "brier", "ece")
REGRESSION_COLUMNS = ("rmse", "gaussian_nll", "picp_95", "crps")

DESCRIPTION = """\
Monte Carlo dropout uncertainty for trained PyTorch models.

Start with 'mcdrop demo': it trains a small dropout CNN on scikit-learn's digits in
seconds on a CPU and writes a calibration report. Run 'mcdrop COMMAND --help' for the
options of a command.
"""

EPILOG = """\
examples:
  mcdrop demo --out mcdrop-demo
  mcdrop report mcdrop-demo/result.npz --out mcdrop-report
"""

DEMO_DESCRIPTION = """\
Train a small convolutional network with dropout on scikit-learn's bundled 8x8 digits
(no download), then evaluate on a held-out test split:

  deterministic       the network in eval mode (dropout off)
  MC dropout          the average of --samples stochastic passes with dropout on
  temperature-scaled  the deterministic logits divided by a temperature fitted on a
                      validation split (Guo et al. 2017)

Prints accuracy, negative log-likelihood, Brier score and expected calibration error of
each, and writes into --out: reliability.png, accuracy_rejection.png,
uncertainty_hist.png, report.json and result.npz (the MC dropout result, with its
targets, readable by 'mcdrop report').
"""

DEMO_EPILOG = """\
example:
  mcdrop demo --out mcdrop-demo
  mcdrop report mcdrop-demo/result.npz --out mcdrop-report
"""

REPORT_DESCRIPTION = """\
Metrics and plots from a result saved with result.save(path), for pipelines that run
inference elsewhere. The targets are read from the result when it holds them, or from
--targets (a .npy array with one row per example).

classification results: reliability.png, accuracy_rejection.png, uncertainty_hist.png
regression results:     regression_calibration.png, residual_std.png
and report.json with every metric of mcdrop.metrics.evaluate.
"""

REPORT_EPILOG = """\
example:
  python -c "import mcdrop; ...; result.save('run.npz')"
  mcdrop report run.npz --targets labels.npy --out run-report
"""


class CLIError(Exception):
    """A problem the user can fix; reported as one line and exit status 2."""


# ----------------------------------------------------------------------------------------------
# argument parsing
# ----------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``mcdrop`` command (exposed for documentation tools)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog=PROG, description=DESCRIPTION, epilog=EPILOG, formatter_class=formatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {mcdrop.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    demo = commands.add_parser(
        "demo",
        help="train a small dropout CNN on digits; compare deterministic, MC dropout and "
        "temperature scaling; write plots and a JSON report",
        description=DEMO_DESCRIPTION,
        epilog=DEMO_EPILOG,
        formatter_class=formatter,
    )
    demo.add_argument(
        "--out",
        metavar="DIR",
        default="mcdrop-demo",
        help="directory for the plots and reports, created if needed (default: %(default)s)",
    )
    demo.add_argument(
        "--samples",
        metavar="T",
        type=_positive_int,
        default=100,
        help="Monte Carlo dropout samples per test example (default: %(default)s)",
    )
    demo.add_argument(
        "--epochs",
        metavar="N",
        type=_positive_int,
        default=15,
        help="training epochs (default: %(default)s)",
    )
    demo.add_argument(
        "--seed",
        metavar="S",
        type=_seed,
        default=0,
        help="seed of the data split, the training and the sampling (default: %(default)s)",
    )
    demo.add_argument(
        "--quiet",
        "-q",
        action="store_true",
        help="no progress bars or status lines; the metrics table is still printed",
    )
    demo.set_defaults(handler=_run_demo)

    report = commands.add_parser(
        "report",
        help="metrics and plots from a saved result (result.save(path))",
        description=REPORT_DESCRIPTION,
        epilog=REPORT_EPILOG,
        formatter_class=formatter,
    )
    report.add_argument("result_file", metavar="RESULT_FILE", help="an .npz file of result.save")
    report.add_argument(
        "--out",
        metavar="DIR",
        required=True,
        help="directory for the plots and report.json, created if needed",
    )
    report.add_argument(
        "--targets",
        metavar="FILE",
        help="labels or regression targets as a .npy array (default: the result's own targets)",
    )
    report.add_argument(
        "--name",
        default=None,
        help="model name in the table and the legends (default: the file name)",
    )
    report.add_argument(
        "--bins",
        metavar="B",
        type=_positive_int,
        default=15,
        help="bins of the calibration errors and the reliability diagram (default: %(default)s)",
    )
    report.add_argument(
        "--quiet", "-q", action="store_true", help="no status lines; the table is still printed"
    )
    report.set_defaults(handler=_run_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mcdrop`` command line with ``argv`` (default ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status: 0 on success, 2 for usage errors and problems with the inputs.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.handler(args))
    except CLIError as error:
        message = " ".join(str(error).split())  # always one line
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------------------------
# shared helpers
# ----------------------------------------------------------------------------------------------


class _Log:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet

    def __call__(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)


def _output_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise CLIError(
            f"cannot create the output directory {path!r}: a file is in the way"
        ) from None
    except OSError as error:
        raise CLIError(f"cannot create the output directory {path!r}: {error.strerror}") from None
    return out


def _json_safe(value: Any) -> Any:
    """Plain JSON values: NaN and infinities become ``null`` (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write_json(path: Path, payload: Mapping[str, Any]) -> None:
    text = json.dumps(_json_safe(payload), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")


def _table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str]) -> str:
    from mcdrop.metrics import format_table

    return format_table({name: {k: m[k] for k in columns if k in m} for name, m in rows.items()})


@contextmanager
def _figure(path: Path, *, figsize: tuple[float, float]) -> Iterator[Figure]:
    """A Matplotlib figure saved to ``path`` on exit; no pyplot, so no GUI backend and no leak."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    yield figure
    figure.savefig(path, dpi=120)


def _plot_classification(
    out: Path,
    predictions: Mapping[str, Any],
    result: ClassificationResult,
    labels: np.ndarray,
    *,
    n_bins: int,
) -> list[str]:
    """Reliability diagram, accuracy-rejection curve and uncertainty histogram."""
    from mcdrop.plot import AccuracyRejectionDisplay, ReliabilityDisplay

    written = []
    n_models = len(predictions)
    with _figure(out / "reliability.png", figsize=(max(4.2 * n_models, 5.6), 5.8)) as fig:
        grid = fig.add_gridspec(2, n_models, height_ratios=(3.2, 1.0))
        for column, (name, value) in enumerate(predictions.items()):
            ax = fig.add_subplot(grid[0, column])
            hist_ax = fig.add_subplot(grid[1, column], sharex=ax)
            probs = value.mean if isinstance(value, mcdrop.ClassificationResult) else value
            display = ReliabilityDisplay.from_predictions(
                labels, probs, n_bins=n_bins, name=name, ax=ax, hist_ax=hist_ax, color=f"C{column}"
            )
            ax.set_title(f"{name}\nECE = {display.ece:.4f}", fontsize="medium")
            legend = ax.get_legend()
            if legend is not None:
                legend.remove()
            if column:
                ax.set_ylabel("")
                hist_ax.set_ylabel("")
        fig.suptitle(
            "Accuracy per confidence bin (bars) and gap to perfect calibration (hatched)\n"
            "dashed: the diagonal of a perfectly calibrated model",
            fontsize="medium",
        )
    written.append("reliability.png")

    with _figure(out / "accuracy_rejection.png", figsize=(5.6, 4.4)) as fig:
        ax = fig.add_subplot()
        AccuracyRejectionDisplay.from_result(
            result, labels, score="predictive_entropy", ax=ax, oracle=True
        )
        AccuracyRejectionDisplay.from_result(
            result, labels, score="mutual_information", ax=ax, oracle=False
        )
        ax.set_title(f"Accuracy–rejection, MC dropout (T = {result.n_samples})")
    written.append("accuracy_rejection.png")

    with _figure(out / "uncertainty_hist.png", figsize=(9.0, 3.8)) as fig:
        correct = result.predicted_class.numpy().reshape(-1) == labels.reshape(-1)
        axes = fig.subplots(1, 2)
        for ax, attribute, label in (
            (axes[0], "predictive_entropy", "Predictive entropy (nats)"),
            (axes[1], "mutual_information", "Mutual information (nats)"),
        ):
            values = getattr(result, attribute).numpy().reshape(-1)
            edges = np.histogram_bin_edges(values, bins=30)
            for mask, name, color in ((correct, "correct", "C0"), (~correct, "wrong", "C3")):
                if mask.any():
                    ax.hist(
                        values[mask],
                        bins=edges,
                        density=True,
                        alpha=0.5,
                        color=color,
                        label=f"{name} ({int(mask.sum())})",
                    )
            ax.set(xlabel=label, ylabel="Density")
            ax.legend(loc="upper right", fontsize="small")
        fig.suptitle("MC dropout uncertainty of correct and wrong test predictions")
    written.append("uncertainty_hist.png")
    return written


def _plot_regression(out: Path, result: RegressionResult, targets: np.ndarray) -> list[str]:
    from mcdrop.plot import RegressionCalibrationDisplay, ResidualStdDisplay

    with _figure(out / "regression_calibration.png", figsize=(5.0, 5.0)) as fig:
        ax = fig.add_subplot()
        RegressionCalibrationDisplay.from_result(result, targets, name="total", ax=ax)
    with _figure(out / "residual_std.png", figsize=(5.6, 4.4)) as fig:
        ax = fig.add_subplot()
        ResidualStdDisplay.from_result(result, targets, ax=ax)
    return ["regression_calibration.png", "residual_std.png"]


# ----------------------------------------------------------------------------------------------
# mcdrop demo
# ----------------------------------------------------------------------------------------------


def _digits_cnn() -> nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 32, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 64 x 4 x 4
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(64 * 4 * 4, 128),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(128, 10),
    )


def _digits_splits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Train / validation / test splits (60 / 20 / 20 %, stratified) of the bundled digits."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 1, 8, 8) in [0, 1]
    labels = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.25, stratify=y_rest, random_state=seed
    )
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test)}


def _train(
    model: nn.Module, x: np.ndarray, y: np.ndarray, *, epochs: int, seed: int, progress: bool
) -> list[float]:
    import torch
    from torch.nn import functional as F
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    model.train()
    bar = tqdm(range(epochs), desc="training", unit="epoch", disable=not progress, leave=False)
    for _ in bar:
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            loss = F.cross_entropy(model(inputs[index]), targets[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(index)
        losses.append(total / len(inputs))
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    model.eval()
    return losses


def _run_demo(args: argparse.Namespace) -> int:
    import torch

    from mcdrop.calibration import TemperatureScaling
    from mcdrop.metrics import evaluate

    log = _Log(args.quiet)
    out = _output_dir(args.out)
    started = time.perf_counter()
    torch.manual_seed(args.seed)
    splits = _digits_splits(args.seed)
    (x_train, y_train), (x_val, y_val), (x_test, y_test) = (
        splits["train"],
        splits["val"],
        splits["test"],
    )
    log(
        f"digits (scikit-learn, 8x8): {len(y_train)} train, {len(y_val)} validation, "
        f"{len(y_test)} test images"
    )
    model = _digits_cnn()
    losses = _train(
        model, x_train, y_train, epochs=args.epochs, seed=args.seed, progress=not args.quiet
    )
    log(
        f"trained {args.epochs} epochs in {time.perf_counter() - started:.1f} s, "
        f"final training loss {losses[-1]:.4f}"
    )

    test_inputs = torch.from_numpy(x_test)
    with torch.inference_mode():
        val_logits = model(torch.from_numpy(x_val)).double()
        test_logits = model(test_inputs).double()
    deterministic = torch.softmax(test_logits, dim=1).numpy()

    sites = mcdrop.dropout_sites(model, example_inputs=test_inputs[:2])
    log("dropout sites switched on: " + ", ".join(str(site) for site in sites))
    result = mcdrop.predict_with_uncertainty(
        model,
        test_inputs,
        targets=torch.from_numpy(y_test),
        n_samples=args.samples,
        seed=args.seed,
        progress=not args.quiet,
    )
    assert isinstance(result, mcdrop.ClassificationResult)
    scaler = TemperatureScaling().fit(val_logits, y_val)
    scaled = scaler.transform(test_logits)
    log(f"temperature fitted on the validation split: T = {scaler.temperature:.3f}")

    predictions: dict[str, Any] = {
        "deterministic": deterministic,
        "MC dropout": result.mean.numpy(),
        "temperature-scaled": scaled,
    }
    metrics = {name: evaluate(probs, y_test) for name, probs in predictions.items()}

    result.save(out / "result.npz")
    files = _plot_classification(out, predictions, result, y_test, n_bins=15)
    files += ["report.json", "result.npz"]
    report = {
        "command": "demo",
        "mcdrop_version": mcdrop.__version__,
        "dataset": {
            "name": "digits (sklearn.datasets.load_digits)",
            "n_train": len(y_train),
            "n_validation": len(y_val),
            "n_test": len(y_test),
            "n_classes": 10,
        },
        "settings": {"epochs": args.epochs, "samples": args.samples, "seed": args.seed},
        "training_loss": losses,
        "temperature": scaler.temperature,
        "dropout_sites": [str(site) for site in sites],
        "table_columns": list(TABLE_COLUMNS),
        "metrics": metrics,
        "files": files,
        "seconds": time.perf_counter() - started,
    }
    _write_json(out / "report.json", report)

    print(_table(metrics, TABLE_COLUMNS))
    log(f"wrote {', '.join(files)} to {out}/ in {time.perf_counter() - started:.1f} s")
    log(f"next: mcdrop report {out / 'result.npz'} --out {out / 'report'}")
    return 0


# ----------------------------------------------------------------------------------------------
# mcdrop report
# ----------------------------------------------------------------------------------------------


def _load_targets(path: str) -> np.ndarray:
    if not os.path.exists(path):
        raise CLIError(f"targets file not found: {path}")
    try:
        targets = np.load(path, allow_pickle=False)
    except Exception as error:  # ValueError for pickles and garbage, OSError, zip errors, ...
        raise CLIError(
            f"cannot read targets from {path} (expected a .npy array): {error}"
        ) from None
    if not isinstance(targets, np.ndarray):  # an .npz archive
        targets.close()
        raise CLIError(f"expected a .npy array in {path}, but it is an .npz archive")
    return targets


def _run_report(args: argparse.Namespace) -> int:
    from mcdrop.metrics import evaluate

    log = _Log(args.quiet)
    path = args.result_file
    if not os.path.exists(path) and not os.path.exists(path + ".npz"):
        raise CLIError(f"result file not found: {path}")
    if os.path.isdir(path):
        raise CLIError(f"expected a result file, but {path} is a directory")
    try:
        result = mcdrop.load_result(path)
    except FileNotFoundError:
        raise CLIError(f"result file not found: {path}") from None
    except ValueError as error:  # the only error load_result raises for a bad file
        raise CLIError(
            f"{path} is not an mcdrop result file (write one with result.save(path)): {error}"
        ) from None

    targets: Any
    if args.targets is not None:
        targets = _load_targets(args.targets)
    elif result.targets is not None:
        targets = result.targets.numpy()
    else:
        raise CLIError(f"{path} holds no targets; pass them with --targets FILE.npy")
    n = int(result.mean.shape[0])
    if targets.ndim == 0 or targets.shape[0] != n:
        raise CLIError(
            f"expected {n} targets (one per example of the result), but got shape "
            f"{tuple(targets.shape)}"
        )

    name = args.name or Path(path).stem
    out = _output_dir(args.out)
    try:
        metrics = evaluate(result, targets, n_bins=args.bins)
    except (ValueError, TypeError) as error:
        raise CLIError(f"cannot score {path} against its targets: {error}") from None

    if isinstance(result, mcdrop.ClassificationResult):
        labels = targets.reshape(-1)
        columns: tuple[str, ...] = (*TABLE_COLUMNS, "mce", "aurc")
        if result.mean.ndim == 2:
            files = _plot_classification(out, {name: result}, result, labels, n_bins=args.bins)
        else:  # dense outputs (segmentation, tokens): the reliability diagram of every position
            files = _plot_dense_reliability(out, result, targets, name, args.bins)
    else:
        columns = REGRESSION_COLUMNS
        files = _plot_regression(out, result, targets)
    files.append("report.json")
    report = {
        "command": "report",
        "mcdrop_version": mcdrop.__version__,
        "result_file": os.path.abspath(path),
        "task": result.task,
        "n_examples": n,
        "n_samples": result.n_samples,
        "targets": "result" if args.targets is None else os.path.abspath(args.targets),
        "table_columns": list(columns),
        "metrics": {name: metrics},
        "files": files,
    }
    _write_json(out / "report.json", report)
    print(_table({name: metrics}, columns))
    log(f"wrote {', '.join(files)} to {out}/")
    return 0


def _plot_dense_reliability(
    out: Path, result: ClassificationResult, targets: np.ndarray, name: str, n_bins: int
) -> list[str]:
    from mcdrop.plot import ReliabilityDisplay

    with _figure(out / "reliability.png", figsize=(5.0, 6.2)) as fig:
        grid = fig.add_gridspec(2, 1, height_ratios=(3.2, 1.0))
        ax = fig.add_subplot(grid[0])
        hist_ax = fig.add_subplot(grid[1], sharex=ax)
        ReliabilityDisplay.from_result(
            result, targets, n_bins=n_bins, name=name, ax=ax, hist_ax=hist_ax
        )
    return ["reliability.png"]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
