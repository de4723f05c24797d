"""The package's import structure: layers that import one way, no cycles, private stays private.

Every ``import`` in ``mcdrop/`` is read from the source (those inside functions too), so an
import hidden in a function cannot hide a cycle or an upward dependency.
"""

from __future__ import annotations

import ast
import importlib
import itertools
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mcdrop"

# Lower layers never import higher ones; units on the same layer never import each other.
LAYERS: dict[str, int] = {
    "_validation": 0,
    "_version": 0,
    "results": 1,
    "stats": 2,
    "dropout": 2,
    "sampling": 3,
    "metrics": 3,
    "calibration": 4,
    "conformal": 4,
    "plot": 5,
    "active": 5,
    "reporting": 6,
    "integrations": 6,
    "cli": 7,
}
# The package's face: ``mcdrop/__init__.py`` and the aliases kept for earlier import paths.
FACES = {"__init__", "__main__", "lightning", "transformers", "torchmetrics", "distributed"}
FACES |= {"uncertainty"}


def _module_name(path: Path) -> str:
    if PACKAGE.parent not in path.parents:
        return path.stem
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` of every import of an ``mcdrop`` module in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = (
        _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    )
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("mcdrop")]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "mcdrop":
                continue
            names = [a.name for a in node.names]
            # ``from mcdrop.sampling import _driver`` imports a module, not a name.
            submodules = [
                n for n in names if (PACKAGE.parent / base.replace(".", "/") / n).exists()
            ]
            submodules += [
                n for n in names if (PACKAGE.parent / base.replace(".", "/") / f"{n}.py").exists()
            ]
            for n in submodules:
                found.append((f"{base}.{n}", [], node.lineno))
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                found.append((base, rest, node.lineno))
    return found


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _graph() -> dict[str, list[tuple[str, list[str], int]]]:
    return {
        _module_name(path): _imports(path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def test_every_unit_is_placed_in_a_layer() -> None:
    units = {_unit(m) for m in _graph()}
    assert units <= set(LAYERS) | FACES, units - set(LAYERS) - FACES


def test_imports_run_down_the_layers() -> None:
    upward = []
    for module, imports in _graph().items():
        unit = _unit(module)
        if unit in FACES:
            continue
        for target, _, line in imports:
            other = _unit(target)
            if other == unit:
                continue
            assert other not in FACES, f"{module}:{line} imports the face {target}"
            if LAYERS[other] >= LAYERS[unit]:
                upward.append(f"{module}:{line} ({unit}, layer {LAYERS[unit]}) imports {target}")
    assert not upward, "\n".join(upward)


def test_no_private_name_crosses_a_sub_package() -> None:
    crossing = []
    for module, imports in _graph().items():
        unit = _unit(module)
        for target, names, line in imports:
            other = _unit(target)
            if (
                other == unit
                or other in ("_validation", "_version")
                or (unit in FACES and other in LAYERS)
            ):
                if unit in FACES and any(p.startswith("_") for p in target.split(".")[2:]):
                    # A face may re-export a sub-package's public names only.
                    crossing.append(f"{module}:{line} imports {target}")
                continue
            private_module = any(p.startswith("_") for p in target.split(".")[2:])
            private_names = [n for n in names if n.startswith("_")]
            if private_module or private_names:
                crossing.append(f"{module}:{line} imports {target} {private_names}")
    assert not crossing, "\n".join(crossing)


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    edges = {m: {t for t, _, _ in imports if t in graph and t != m} for m, imports in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    # A package face (``__init__``) importing its own private modules is the layout, not a
    # cycle; a private module importing its own package's face is one.
    real = [c for c in cycles if not all(b.startswith(a + ".") for a, b in itertools.pairwise(c))]
    assert not real, "\n".join(" -> ".join(c) for c in real)


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    path = tmp_path / "probe.py"
    path.write_text("def f():\n    from mcdrop.sampling import MCDropout\n", encoding="utf-8")
    assert ("mcdrop.sampling", ["MCDropout"], 2) in _imports(path)


@pytest.mark.parametrize(
    "face",
    [
        "mcdrop",
        "mcdrop.metrics",
        "mcdrop.plot",
        "mcdrop.calibration",
        "mcdrop.conformal",
        "mcdrop.active",
    ],
)
def test_importing_a_face_does_not_import_matplotlib_or_integrations(face: str) -> None:
    code = (
        f"import sys, {face}\n"
        "heavy = [m for m in ('matplotlib', 'lightning', 'transformers', 'torchmetrics')"
        " if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("old", "new", "library"),
    [
        ("mcdrop.lightning", "mcdrop.integrations.lightning", "lightning"),
        ("mcdrop.transformers", "mcdrop.integrations.huggingface", "transformers"),
        ("mcdrop.torchmetrics", "mcdrop.integrations.torchmetrics", "torchmetrics"),
    ],
)
def test_old_integration_paths_are_the_new_modules(old: str, new: str, library: str) -> None:
    pytest.importorskip(library)
    assert importlib.import_module(old) is importlib.import_module(new)
