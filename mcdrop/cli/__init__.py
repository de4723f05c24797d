"""The ``mcdrop`` command line: ``mcdrop demo`` and ``mcdrop report``, a thin parser.

``mcdrop demo`` runs :func:`mcdrop.cli.demo.run` (deterministic network, MC dropout, temperature
scaling and a deep ensemble on digits, in distribution, under shift and out of distribution) and
prints what it found. ``mcdrop report`` loads a result saved with ``result.save(path)`` and
writes :func:`mcdrop.report`'s metrics, figures and JSON. Errors a user can fix (missing file,
wrong format, no targets) print one line ``mcdrop: error: ...`` on stderr and exit with
status 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcdrop._version import __version__

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

__all__ = ["main"]

PROG = "mcdrop"

DESCRIPTION = """\
Monte Carlo dropout uncertainty for trained PyTorch models.

Start with 'mcdrop demo': in under a minute on one CPU thread it shows, on
scikit-learn's digits, what MC dropout does under shift and out of distribution. Run 'mcdrop COMMAND --help' for the
options of a command.
"""

EPILOG = """\
examples:
  mcdrop demo --out mcdrop-demo
  mcdrop report mcdrop-demo/result.npz --out mcdrop-report
"""

DEMO_DESCRIPTION = """\
Train (seeded) small dropout CNNs on scikit-learn's bundled 8x8 digits 0-7 (no
download) and compare, over --seeds seeds:

  deterministic       the network in eval mode (dropout off)
  MC dropout          the average of --samples stochastic passes with dropout on
  temperature-scaled  the deterministic logits divided by a temperature fitted on a
                      validation split (Guo et al. 2017)
  deep ensemble       the average of --members networks trained from different seeds

in distribution, under increasing rotation and pixel noise, and out of distribution
(the held-out digits 8 and 9). Prints accuracy, NLL, Brier score and ECE per shift
level, the OOD AUROC of each uncertainty measure and what the numbers show, and
writes into --out: shift.png (means over seeds), reliability.png,
accuracy_rejection.png, uncertainty_hist.png and ood.png (the first seed, each number
as 'seed | mean over seeds'), report.json and result.npz (the in-distribution MC
dropout result, with its targets, readable by 'mcdrop report').
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
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    demo = commands.add_parser(
        "demo",
        help="digits in distribution, under shift and out of distribution: deterministic, "
        "MC dropout, temperature scaling and a deep ensemble; plots and a JSON report",
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
        default=30,
        help="Monte Carlo dropout samples per test example (default: %(default)s)",
    )
    demo.add_argument(
        "--epochs",
        metavar="N",
        type=_positive_int,
        default=15,
        help="training epochs of every network (default: %(default)s)",
    )
    demo.add_argument(
        "--seed",
        metavar="S",
        type=_seed,
        default=0,
        help="first seed of the data split, the training, the noise and the sampling "
        "(default: %(default)s)",
    )
    demo.add_argument(
        "--seeds",
        metavar="K",
        type=_positive_int,
        default=3,
        help="seeds to run, for the mean and spread of every number (default: %(default)s)",
    )
    demo.add_argument(
        "--members",
        metavar="M",
        type=_positive_int,
        default=5,
        help="networks of the deep ensemble, at least 2 (default: %(default)s)",
    )
    demo.add_argument(
        "--threads",
        metavar="N",
        type=_positive_int,
        default=1,
        help="torch CPU threads; one is the fastest on a small or busy machine "
        "(default: %(default)s)",
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
# handlers: parse, call the library, turn its ValueErrors into one line
# ----------------------------------------------------------------------------------------------


def _run_demo(args: argparse.Namespace) -> int:
    from mcdrop.cli.demo import run

    try:
        result = run(
            out=args.out,
            epochs=args.epochs,
            samples=args.samples,
            seed=args.seed,
            seeds=args.seeds,
            members=args.members,
            threads=args.threads,
            quiet=args.quiet,
        )
    except ValueError as error:
        raise CLIError(str(error)) from None
    print(result.summary)
    return 0


def _load_targets(path: str) -> np.ndarray:
    import numpy as np

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


def _load(path: str) -> Any:
    if not os.path.exists(path) and not os.path.exists(path + ".npz"):
        raise CLIError(f"result file not found: {path}")
    if os.path.isdir(path):
        raise CLIError(f"expected a result file, but {path} is a directory")
    try:
        from mcdrop.results import load_result

        return load_result(path)
    except FileNotFoundError:
        raise CLIError(f"result file not found: {path}") from None
    except ValueError as error:  # the only error load_result raises for a bad file
        raise CLIError(
            f"{path} is not an mcdrop result file (write one with result.save(path)): {error}"
        ) from None


def _run_report(args: argparse.Namespace) -> int:
    path = args.result_file
    result = _load(path)
    if args.targets is None and result.targets is None:
        raise CLIError(f"{path} holds no targets; pass them with --targets FILE.npy")
    targets = None if args.targets is None else _load_targets(args.targets)
    name = args.name or Path(path).stem
    info = {
        "command": "report",
        "result_file": os.path.abspath(path),
        "targets": "result" if args.targets is None else os.path.abspath(args.targets),
    }
    from mcdrop.reporting import report
    from mcdrop.results import ClassificationResult

    try:
        rep = report(result, targets, name=name, n_bins=args.bins, info=info)
    except ValueError as error:
        message = str(error)
        if not message.startswith(("expected", "cannot")):
            message = f"cannot score {path} against its targets: {message}"
        raise CLIError(message) from None
    if isinstance(result, ClassificationResult):
        rep.columns = (*rep.columns, "mce", "aurc")
        rep.payload["table_columns"] = list(rep.columns)
    try:
        files = rep.save(args.out)
    except ValueError as error:
        raise CLIError(str(error)) from None
    print(rep.table())
    if not args.quiet:
        print(f"wrote {', '.join(files)} to {args.out}/", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
