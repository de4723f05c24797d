"""README.md's quickstart must run exactly as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE)


def test_readme_quickstart_runs(tmp_path: Path) -> None:
    blocks = _python_blocks(README.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```python block"
    script = tmp_path / "quickstart.py"
    script.write_text(blocks[0], encoding="utf-8")
    env = {**os.environ, "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_commands() -> None:
    text = README.read_text(encoding="utf-8")
    for command in ('pip install -e ".[dev]"', "python -m pytest", "mcdrop demo"):
        assert command in text, command
    image = re.search(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert image is not None, "README shows the reliability diagram"
    assert (README.parent / image.group(1)).is_file(), image.group(1)


def test_docs_quickstart_matches_readme() -> None:
    """docs/getting_started.rst shows the same (tested) quickstart as README.md."""
    readme_code = _python_blocks(README.read_text(encoding="utf-8"))[0]
    page = (README.parent / "docs" / "getting_started.rst").read_text(encoding="utf-8")
    section = page.split("Quickstart\n----------\n", 1)[1]
    block = section.split(".. code-block:: python\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("   "):
            break
        lines.append(line[3:])
    assert "\n".join(lines).strip() == readme_code.strip()


def test_what_examples_quickstart_and_demo_write_is_git_ignored() -> None:
    """Running an example, the quickstart or the demo in the clone leaves ``git status`` clean."""
    root = README.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    written = ["reliability.png", "mcdrop-demo/shift.png", "mcdrop-report/report.json"]
    for example in sorted((root / "examples").glob("plot_*.py")):
        for number in (1, 12):
            written += [f"{example.stem}_{number}.png", f"examples/{example.stem}_{number}.png"]
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin", "-v", "-n"],
        input="\n".join(written),
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    not_ignored = [
        line.split("\t")[1] for line in proc.stdout.splitlines() if line.startswith("::")
    ]
    assert not not_ignored, not_ignored
    tracked = subprocess.run(
        ["git", "ls-files", "--", "docs/_static", "examples"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "docs/_static/demo_shift.png" in tracked  # the README's figures stay tracked
