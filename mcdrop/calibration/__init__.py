"""Post-hoc recalibration: temperature scaling (classification) and std scaling (regression).

Both recalibrators follow the scikit-learn pattern ``fit(...) -> self`` then ``transform(...)``,
accept NumPy arrays or :class:`torch.Tensor` objects, compute in ``float64`` NumPy and raise
:class:`sklearn.exceptions.NotFittedError` (a ``ValueError`` and ``AttributeError``) when used
before ``fit``. Fit them on held-out validation data, never on the test set.
"""

from __future__ import annotations

from mcdrop.calibration._scaling import StdScaling, TemperatureScaling

__all__ = ["StdScaling", "TemperatureScaling"]
