"""Metrics for predictive uncertainty: calibration, proper scores, ranking and selective prediction.

Every function accepts NumPy arrays, array-likes or :class:`torch.Tensor` objects (on any device),
computes in ``float64`` NumPy and returns Python ``float`` scalars (or NumPy arrays for curves).

Shapes
------
* Classification: ``y_true`` of shape ``(N,)`` with integer labels in ``[0, C)``; ``y_prob`` of
  shape ``(N, C)`` whose rows are probability vectors. Where stated, ``y_prob`` of shape ``(N,)``
  is accepted for binary problems and read as the probability of class ``1`` (as in
  scikit-learn); ``y_true`` must then hold labels in ``{0, 1}``.
* Regression: ``y`` of shape ``(N, *S)``; ``mean``, ``std``, ``var``, ``lower``, ``upper`` of
  the same shape (a trailing dimension of size one on either side is tolerated, so ``(N,)`` and
  ``(N, 1)`` match); Monte Carlo ``samples`` of shape ``(T, N, *S)``. Every element of a
  multi-dimensional output is scored as a separate scalar prediction and averages run over all
  elements.

Input checks
------------
Malformed inputs raise ``ValueError`` (or ``TypeError`` for a wrong type) naming the argument
and the offending value: labels out of range or not whole numbers (floats holding whole numbers
and booleans are accepted as labels), probabilities outside ``[0, 1]`` or rows that do not sum to
one (tolerance ``max(1e-6, C * eps)`` with ``eps`` the machine epsilon of the input's dtype),
mismatched shapes, empty inputs, NaN or infinite values, ``n_bins < 1``.

Binning convention
------------------
The calibration metrics built on bins (:func:`reliability_curve`,
:func:`expected_calibration_error`, :func:`maximum_calibration_error`,
:func:`classwise_calibration_error`) share one code path. With edges
``e_0 < e_1 < ... < e_B`` bin ``b`` is the right-closed interval ``(e_b, e_{b+1}]``, except the
first bin which is closed on both sides, ``[e_0, e_1]``. A confidence of exactly ``0.0`` therefore
falls in the first bin and a confidence of exactly ``1.0`` in the last one. This is the convention
of :func:`sklearn.calibration.calibration_curve` (``np.searchsorted(edges[1:-1], p)``).
"""

from __future__ import annotations

from mcdrop.metrics._bootstrap import BootstrapResult, bootstrap
from mcdrop.metrics._calibration import (
    ReliabilityCurve,
    adaptive_calibration_error,
    classwise_calibration_error,
    expected_calibration_error,
    maximum_calibration_error,
    reliability_curve,
)
from mcdrop.metrics._curves import (
    binned_residuals,
    central_interval,
    convergence_curve,
    ood_roc_curve,
    oracle_rejection_curve,
    reliability_intervals,
)
from mcdrop.metrics._evaluate import evaluate, format_table
from mcdrop.metrics._ranking import (
    energy_ood_score,
    fpr_at_95_tpr,
    misclassification_aupr,
    misclassification_auroc,
    ood_aupr,
    ood_auroc,
)
from mcdrop.metrics._regression import (
    crps_gaussian,
    crps_samples,
    energy_score,
    gaussian_nll,
    interval_calibration_curve,
    mc_log_likelihood,
    mean_interval_width,
    miscalibration_area,
    picp,
    rmse,
    sharpness,
)
from mcdrop.metrics._regression_calibration import ence, qce, uce
from mcdrop.metrics._scores import accuracy, brier_score, negative_log_likelihood
from mcdrop.metrics._selective import (
    accuracy_rejection_curve,
    augrc,
    aurc,
    ause,
    coverage_at_risk,
    prediction_rejection_ratio,
    risk_at_coverage,
    risk_coverage_curve,
    sparsification_curve,
)
from mcdrop.metrics._smooth_calibration import smooth_calibration_error

__all__ = [
    "BootstrapResult",
    "ReliabilityCurve",
    "accuracy",
    "accuracy_rejection_curve",
    "adaptive_calibration_error",
    "augrc",
    "aurc",
    "ause",
    "binned_residuals",
    "bootstrap",
    "brier_score",
    "central_interval",
    "classwise_calibration_error",
    "convergence_curve",
    "coverage_at_risk",
    "crps_gaussian",
    "crps_samples",
    "ence",
    "energy_ood_score",
    "energy_score",
    "evaluate",
    "expected_calibration_error",
    "format_table",
    "fpr_at_95_tpr",
    "gaussian_nll",
    "interval_calibration_curve",
    "maximum_calibration_error",
    "mc_log_likelihood",
    "mean_interval_width",
    "miscalibration_area",
    "misclassification_aupr",
    "misclassification_auroc",
    "negative_log_likelihood",
    "ood_aupr",
    "ood_auroc",
    "ood_roc_curve",
    "oracle_rejection_curve",
    "picp",
    "prediction_rejection_ratio",
    "qce",
    "reliability_curve",
    "reliability_intervals",
    "risk_at_coverage",
    "risk_coverage_curve",
    "rmse",
    "sharpness",
    "smooth_calibration_error",
    "sparsification_curve",
    "uce",
]
