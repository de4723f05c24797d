"""README.md as a newcomer reads it: install commands, quickstart, numbers and figures."""

from __future__ import annotations

import json
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


# ----------------------------------------------------------------------------------------------
# README's install commands, as written, in a new virtual environment
# ----------------------------------------------------------------------------------------------

RUNTIME = {"torch", "numpy", "scipy", "scikit-learn", "matplotlib", "tqdm"}
DEV_ONLY = {
    "transformers",
    "datasets",
    "lightning",
    "mapie",
    "mypy",
    "ruff",
    "pytest",
    "hypothesis",
}
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def _section(text: str, heading: str) -> str:
    return text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]


def _console_lines(section: str) -> list[list[str]]:
    blocks = re.findall(r"^```console\n(.*?)^```", section, flags=re.DOTALL | re.MULTILINE)
    return [
        [line.split("  #")[0].strip() for line in b.splitlines() if line.strip()] for b in blocks
    ]


def test_readme_installs_the_library_alone_and_the_dev_tools_separately() -> None:
    text = README.read_text(encoding="utf-8")
    library, cpu_first = _console_lines(_section(text, "Install"))[:2]
    assert library == ["pip install -e ."]
    assert cpu_first == [f"pip install torch {CPU_INDEX}", "pip install -e ."]
    assert _console_lines(_section(text, "Develop and test"))[0] == [
        'pip install -e ".[dev]"',
        "python -m pytest",
    ]
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((README.parent / "pyproject.toml").read_text(encoding="utf-8"))
    names = {re.split(r"[<>=!~\[ ]", d)[0].lower() for d in pyproject["project"]["dependencies"]}
    assert names == RUNTIME  # the library-only install pulls nothing of the dev extra


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("MCDROP_FRESH_VENV") != "1",
    reason="set MCDROP_FRESH_VENV=1: installs README's commands into a new venv (minutes, GBs)",
)
def test_readme_commands_in_a_fresh_venv(tmp_path: Path) -> None:
    """README's commands as written, in a new venv: library alone, quickstart, dev, pytest.

    The CPU-wheel line is not run (its index is not PyPI, which is all CI reaches): pip takes
    the torch it resolves, or ``MCDROP_FRESH_VENV_TORCH`` (say ``torch==2.13.0``) first.
    """
    root = README.parent
    text = README.read_text(encoding="utf-8")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MCDROP_FRESH_VENV")}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv), MPLBACKEND="Agg"
    )

    def shell(command: str, cwd: Path = root, timeout: int = 1800) -> str:
        proc = subprocess.run(
            ["bash", "-c", command],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    if os.environ.get("MCDROP_FRESH_VENV_TORCH"):
        shell(f"pip install '{os.environ['MCDROP_FRESH_VENV_TORCH']}'")
    for command in _console_lines(_section(text, "Install"))[0]:
        shell(command)
    installed = {p["name"].lower() for p in json.loads(shell("pip list --format json"))}
    assert installed >= RUNTIME | {"mcdrop"}
    assert not installed & DEV_ONLY, installed & DEV_ONLY

    assert shell("mcdrop --help").startswith("usage: mcdrop")
    work = tmp_path / "work"
    work.mkdir()
    (work / "quickstart.py").write_text(_python_blocks(text)[0], encoding="utf-8")
    shell("python quickstart.py", cwd=work, timeout=600)
    assert (work / "reliability.png").is_file()
    # from the folder that holds the clone, the clone's folder does not shadow the install
    above = tmp_path / "above"
    above.mkdir()
    (above / "mcdrop").symlink_to(root, target_is_directory=True)
    shell("python -c 'import mcdrop; mcdrop.predict_with_uncertainty'", cwd=above)

    develop = _console_lines(_section(text, "Develop and test"))[0]
    shell(develop[0])
    installed = {p["name"].lower() for p in json.loads(shell("pip list --format json"))}
    assert installed >= DEV_ONLY
    # README's test command: every test module imports, and this file's tests pass (.ci/run runs
    # the whole suite after the same install on a clean clone).
    assert " tests collected" in shell(f"{develop[1]} --collect-only -q -p no:cacheprovider")
    shell(f"{develop[1]} -q -p no:cacheprovider tests/test_readme.py tests/test_layout.py")


# ----------------------------------------------------------------------------------------------
# README's demo numbers and figures: those of the run that docs/make_readme_figure.py recorded
# ----------------------------------------------------------------------------------------------


def _readme_script():
    import importlib.util

    path = README.parent / "docs" / "make_readme_figure.py"
    spec = importlib.util.spec_from_file_location("make_readme_figure", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_numbers_are_those_the_demo_printed() -> None:
    script = _readme_script()
    summary = script.SUMMARY.read_text(encoding="utf-8")
    readme = README.read_text(encoding="utf-8")
    block = readme[readme.index(script.BEGIN) : readme.index(script.END) + len(script.END)]
    assert block == script.readme_block(summary), "run python docs/make_readme_figure.py"
    quoted = re.findall(r"\d+\.\d+", block.split("\n", 1)[1])
    assert len(quoted) > 20
    printed = summary.split("\n", 2)[2]  # the demo's own output, below the script's header
    missing = [n for n in quoted if n not in printed and n not in summary.splitlines()[0]]
    assert not missing, missing


def test_readme_figures_are_those_of_the_recorded_run() -> None:
    import hashlib

    script = _readme_script()
    summary = script.SUMMARY.read_text(encoding="utf-8")
    line = summary.strip().splitlines()[-1]
    assert line.startswith("Figures of this run (sha256): ")
    recorded = dict(item.split(" ") for item in line.split(": ", 1)[1].split(", "))
    assert set(recorded) == set(script.FIGURES.values())
    readme = README.read_text(encoding="utf-8")
    for name, digest in recorded.items():
        data = (script.STATIC / name).read_bytes()
        assert hashlib.sha256(data).hexdigest()[:16] == digest, name
        assert f"(docs/_static/{name})" in readme, name
