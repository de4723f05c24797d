"""Post-hoc recalibration of classifiers and regressors.

Classification: :class:`TemperatureScaling`, :class:`VectorScaling`, :class:`MatrixScaling`,
:class:`DirichletCalibration` (parametric, fitted by maximum likelihood), and
:class:`IsotonicCalibration`, :class:`HistogramBinning` (non-parametric, one-vs-rest).
Regression: :class:`StdScaling` (one scale for the predictive standard deviation) and
:class:`IsotonicQuantileCalibration` (recalibrated quantiles).

Every recalibrator follows the scikit-learn pattern ``fit(...) -> self`` then
``transform(...)``, accepts NumPy arrays or :class:`torch.Tensor` objects, computes in
``float64`` NumPy and raises :class:`sklearn.exceptions.NotFittedError` (a ``ValueError`` and
``AttributeError``) when used before ``fit``. The classification recalibrators take the MC
averaged probabilities (``result.mean``) or logits, and their ``transform`` also maps
per-sample outputs ``(T, N, C)``. Fit them on held-out validation data, never on the test set.

Every recalibrator is saved and loaded without pickle: ``save(path)`` writes JSON,
``Class.load(path)`` reads it back and checks it (``to_dict`` / ``from_dict`` for the same data
in memory, e.g. inside a checkpoint).
"""

from __future__ import annotations

from mcdrop.calibration._affine import DirichletCalibration, MatrixScaling, VectorScaling
from mcdrop.calibration._binning import HistogramBinning, IsotonicCalibration
from mcdrop.calibration._quantile import IsotonicQuantileCalibration
from mcdrop.calibration._scaling import StdScaling, TemperatureScaling

__all__ = [
    "DirichletCalibration",
    "HistogramBinning",
    "IsotonicCalibration",
    "IsotonicQuantileCalibration",
    "MatrixScaling",
    "StdScaling",
    "TemperatureScaling",
    "VectorScaling",
]
