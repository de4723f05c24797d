"""Regenerate the README's demo figures and numbers from one default ``mcdrop demo`` run.

Run from the repository root::

    python docs/make_readme_figure.py

It runs :func:`mcdrop.cli.demo.run` with its defaults (one torch thread), copies ``shift.png`` and
``reliability.png`` to ``docs/_static/demo_shift.png`` and ``docs/_static/reliability_demo.png``,
and writes the printed tables and summary, with the wall time of the run, to
``docs/_static/demo_summary.txt`` (the numbers quoted in README.md come from that file).
"""

from __future__ import annotations

import platform
import shutil
import tempfile
import time
from pathlib import Path

import torch

import mcdrop
from mcdrop.cli.demo import run

STATIC = Path(__file__).resolve().parent / "_static"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = run(out=tmp, quiet=True)
        seconds = time.perf_counter() - started
        shutil.copyfile(Path(tmp) / "shift.png", STATIC / "demo_shift.png")
        shutil.copyfile(Path(tmp) / "reliability.png", STATIC / "reliability_demo.png")
    settings = result.payload["settings"]
    header = (
        f"mcdrop demo with its defaults {settings}, mcdrop {mcdrop.__version__}, torch "
        f"{torch.__version__}, {platform.processor() or platform.machine()}: {seconds:.1f} s "
        "wall time including imports of the data set and figures\n\n"
    )
    (STATIC / "demo_summary.txt").write_text(header + result.summary + "\n", encoding="utf-8")
    print(header + result.summary)


if __name__ == "__main__":
    main()
