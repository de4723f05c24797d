"""Smoke-run every gallery example (``examples/plot_*.py``) so that none of them can rot.

Each example runs in a fresh interpreter with the non-interactive Agg backend and
``MCDROP_EXAMPLE_QUICK=1``, which the examples read to train for fewer epochs and draw fewer
Monte Carlo samples. ``OMP_NUM_THREADS=1``: the example models are tiny, and one thread per
process is fastest for them (and does not oversubscribe the cores of a CI runner).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SCRIPTS = sorted(EXAMPLES.glob("plot_*.py"))


def test_examples_exist():
    assert len(SCRIPTS) >= 6
    assert (EXAMPLES / "README.txt").is_file()  # the sphinx-gallery header


# Optional dependencies (extras) an example may import: without them it is skipped, not failed.
OPTIONAL = ("datasets", "lightning", "torchmetrics", "transformers")


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.stem)
def test_example_runs(script: Path, tmp_path: Path) -> None:
    source = script.read_text(encoding="utf-8")
    for name in OPTIONAL:
        imported = re.search(rf"^\s*(from|import) {name}\b", source, re.MULTILINE)
        if imported and importlib.util.find_spec(name) is None:
            pytest.skip(f"{script.name} needs {name} (an optional extra), which is not installed")
    assert source.startswith('"""\n'), "sphinx-gallery needs a docstring with an rst title"
    title, underline = source.splitlines()[1:3]
    assert underline and set(underline) == {"="} and len(underline) >= len(title)
    assert "plt.show()" not in source  # sphinx-gallery captures the figures

    env = {
        **os.environ,
        "MPLBACKEND": "Agg",
        "MCDROP_EXAMPLE_QUICK": "1",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,  # whatever an example writes stays out of the repository
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, f"{script.name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), "every example prints the numbers its text refers to"
    saved = sorted(path.name for path in tmp_path.glob(f"{script.stem}_*.png"))
    assert saved, "run as a script, an example saves its figures"
    assert all((tmp_path / name).read_bytes()[:4] == b"\x89PNG" for name in saved)
