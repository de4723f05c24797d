"""Result objects returned by :func:`mcdrop.predict_with_uncertainty`.

One frozen dataclass per task; the type never depends on a flag. Every tensor lives on the CPU
(unless ``device=`` asked otherwise), statistics are ``float64``. Shapes use

* ``T`` – number of Monte Carlo samples,
* ``N`` – number of examples,
* ``C`` – number of classes (classification), at ``class_dim`` of the model output,
* ``*S`` – any further dimensions of the model output (pixels of a segmentation map, tokens,
  regression targets, ...).

Results are saved with :meth:`ClassificationResult.save` / :meth:`RegressionResult.save` to a
NumPy ``.npz`` archive whose metadata is JSON; :func:`load_result` reads it back with
``allow_pickle=False``, so loading a file can never execute code.
"""

from __future__ import annotations

from mcdrop.results._classes import (
    ClassificationResult,
    RegressionResult,
    load_result,
    standard_error_of,
)
from mcdrop.results._record import SamplingRecord

__all__ = ["ClassificationResult", "RegressionResult", "SamplingRecord", "load_result"]

# Not part of the public API; used by mcdrop.stats, which builds results from accumulator states.
__internal__ = ["standard_error_of"]
