"""mcdrop: honest uncertainty for any trained PyTorch model through Monte Carlo dropout.

>>> import mcdrop
>>> result = mcdrop.predict_with_uncertainty(model, inputs, n_samples=100)  # doctest: +SKIP
>>> result.mean, result.mutual_information  # doctest: +SKIP
"""

from mcdrop import calibration, metrics, plot, stats
from mcdrop._version import __version__
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
