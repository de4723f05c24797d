"""Peer implementations that some tests compare against; each test skips when its peer is absent.

torch-uncertainty's package ``__init__`` imports torchvision and Lightning; the metric and
calibration modules themselves do not. :func:`torch_uncertainty` loads one such module under
empty stand-in parent packages, so the tests need neither.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest


def torch_uncertainty(module: str) -> types.ModuleType:
    """``torch_uncertainty.<module>`` without running the package's ``__init__`` files."""
    top = sys.modules.get("torch_uncertainty")
    if top is None:
        spec = importlib.util.find_spec("torch_uncertainty")
        if spec is None or spec.origin is None:
            pytest.skip("torch-uncertainty is not installed")
        root = Path(spec.origin).parent
    else:
        root = Path(top.__path__[0])
    parts = f"torch_uncertainty.{module}".split(".")
    for i in range(1, len(parts)):
        name = ".".join(parts[:i])
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*parts[1:i]))]
            sys.modules[name] = package
    if module.startswith("post_processing."):
        abstract = importlib.import_module("torch_uncertainty.post_processing.abstract")
        sys.modules["torch_uncertainty.post_processing"].PostProcessing = abstract.PostProcessing
    try:
        return importlib.import_module(f"torch_uncertainty.{module}")
    except ImportError as error:  # a dependency of that module is missing
        pytest.skip(f"torch-uncertainty's {module} cannot be imported: {error}")
