"""mcdrop: honest uncertainty for any trained PyTorch model through Monte Carlo dropout.

>>> import mcdrop
>>> result = mcdrop.predict_with_uncertainty(model, inputs, n_samples=100)  # doctest: +SKIP
>>> result.mean, result.mutual_information  # doctest: +SKIP

The names below are imported on first use (PEP 562), so that ``mcdrop --help`` and
``import mcdrop.cli`` need no torch; ``from mcdrop import X`` and ``mcdrop.X`` work as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mcdrop._version import __version__

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time see _LAZY
    from mcdrop import calibration, metrics, plot, stats
    from mcdrop.calibration import StdScaling, TemperatureScaling
    from mcdrop.dropout import DropoutSite, Scope, dropout_enabled, dropout_sites
    from mcdrop.reporting import Report, report
    from mcdrop.results import ClassificationResult, RegressionResult, load_result
    from mcdrop.sampling import MCDropout, predict_with_uncertainty, sample_log_probs
    from mcdrop.stats import summarize_samples

__all__ = [
    "ClassificationResult",
    "DropoutSite",
    "MCDropout",
    "RegressionResult",
    "Report",
    "Scope",
    "StdScaling",
    "TemperatureScaling",
    "__version__",
    "calibration",
    "dropout_enabled",
    "dropout_sites",
    "load_result",
    "metrics",
    "plot",
    "predict_with_uncertainty",
    "report",
    "sample_log_probs",
    "stats",
    "summarize_samples",
]

# name -> the module that defines it (a sub-package itself when the name is the module)
_LAZY: dict[str, str] = {
    "calibration": "mcdrop.calibration",
    "metrics": "mcdrop.metrics",
    "plot": "mcdrop.plot",
    "stats": "mcdrop.stats",
    "StdScaling": "mcdrop.calibration",
    "TemperatureScaling": "mcdrop.calibration",
    "DropoutSite": "mcdrop.dropout",
    "Scope": "mcdrop.dropout",
    "dropout_enabled": "mcdrop.dropout",
    "dropout_sites": "mcdrop.dropout",
    "Report": "mcdrop.reporting",
    "report": "mcdrop.reporting",
    "ClassificationResult": "mcdrop.results",
    "RegressionResult": "mcdrop.results",
    "load_result": "mcdrop.results",
    "MCDropout": "mcdrop.sampling",
    "predict_with_uncertainty": "mcdrop.sampling",
    "sample_log_probs": "mcdrop.sampling",
    "summarize_samples": "mcdrop.stats",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mcdrop' has no attribute {name!r}")
    imported = importlib.import_module(module)
    value = imported if module == f"mcdrop.{name}" else getattr(imported, name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
