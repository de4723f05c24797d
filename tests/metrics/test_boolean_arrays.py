"""Booleans where real values are expected are refused (TypeError naming the argument), one rule
for every metric; labels may still be booleans."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import softmax

from mcdrop import metrics as M

N, C, T = 12, 3, 5
_RNG = np.random.default_rng(0)
Y = np.arange(N) % C
P = softmax(_RNG.normal(size=(N, C)), axis=1)
P2 = P[:, :2] / P[:, :2].sum(axis=1, keepdims=True)  # binary, for the (N,) forms
S = _RNG.random(N)
YR, MU, SD = _RNG.normal(size=N), _RNG.normal(size=N), _RNG.uniform(0.5, 1.5, size=N)
SAMPLES = _RNG.normal(size=(T, N))
LOGITS = _RNG.normal(size=(N, C))

# every function taking real-valued arrays: (name, call with keyword arrays, arrays)
CALLS = {
    "risk_coverage_curve": (M.risk_coverage_curve, {"y_true": Y, "y_prob": P, "scores": S}),
    "accuracy_rejection_curve": (
        M.accuracy_rejection_curve,
        {"y_true": Y, "y_prob": P, "scores": S},
    ),
    "aurc": (M.aurc, {"y_true": Y, "y_prob": P, "scores": S}),
    "augrc": (M.augrc, {"y_true": Y, "y_prob": P, "scores": S}),
    "risk_at_coverage": (
        lambda **a: M.risk_at_coverage(**a, coverage=0.5),
        {"y_true": Y, "y_prob": P, "scores": S},
    ),
    "coverage_at_risk": (
        lambda **a: M.coverage_at_risk(**a, risk=0.5),
        {"y_true": Y, "y_prob": P, "scores": S},
    ),
    "prediction_rejection_ratio": (
        M.prediction_rejection_ratio,
        {"y_true": Y, "y_prob": P, "scores": S},
    ),
    "misclassification_auroc": (M.misclassification_auroc, {"y_true": Y, "y_prob": P, "scores": S}),
    "ood_auroc": (M.ood_auroc, {"scores_in": S, "scores_out": S + 1}),
    "fpr_at_95_tpr": (M.fpr_at_95_tpr, {"scores_in": S, "scores_out": S + 1}),
    "sparsification_curve": (M.sparsification_curve, {"errors": SD, "scores": S}),
    "ause": (M.ause, {"errors": SD, "scores": S}),
    "smooth_calibration_error": (M.smooth_calibration_error, {"y_true": Y, "y_prob": P}),
    "expected_calibration_error": (M.expected_calibration_error, {"y_true": Y, "y_prob": P}),
    "brier_score": (M.brier_score, {"y_true": Y, "y_prob": P}),
    "negative_log_likelihood": (M.negative_log_likelihood, {"y_true": Y, "y_prob": P}),
    "ence": (M.ence, {"y": YR, "mean": MU, "std": SD}),
    "uce": (M.uce, {"y": YR, "mean": MU, "variance": SD}),
    "qce": (M.qce, {"y": YR, "mean": MU, "std": SD}),
    "crps_gaussian": (M.crps_gaussian, {"y": YR, "mean": MU, "std": SD}),
    "gaussian_nll": (M.gaussian_nll, {"y": YR, "mean": MU, "var": SD}),
    "energy_score": (M.energy_score, {"y": YR, "samples": SAMPLES}),
    "crps_samples": (M.crps_samples, {"y": YR, "samples": SAMPLES}),
    "energy_ood_score": (M.energy_ood_score, {"logits": LOGITS}),
    "rmse": (M.rmse, {"y": YR, "mean": MU}),
    "sharpness": (M.sharpness, {"std": SD}),
}
LABELS = {"y_true"}  # may be booleans


def _cases():
    for function, (call, arrays) in CALLS.items():
        for argument in arrays:
            if argument not in LABELS:
                yield pytest.param(call, arrays, argument, id=f"{function}-{argument}")


@pytest.mark.parametrize(("call", "arrays", "argument"), list(_cases()))
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_boolean_arrays_are_refused_where_reals_are_expected(call, arrays, argument, kind):
    call(**arrays)  # the real-valued call works
    flags = np.asarray(arrays[argument]) > 0.5  # same shape, booleans
    bad = dict(arrays, **{argument: flags if kind == "numpy" else torch.from_numpy(flags)})
    with pytest.raises(TypeError, match=rf"`{argument}`.*real numbers.*booleans \(dtype bool\)"):
        call(**bad)


@pytest.mark.parametrize("argument", ["scores", "y_prob"])
def test_integer_arrays_are_still_real_values(argument):
    """Only booleans are refused: integer scores (counts, votes) and 0/1 probabilities pass."""
    arrays = {"y_true": Y, "y_prob": np.eye(C)[Y], "scores": np.arange(N) % 4}
    arrays[argument] = np.asarray(arrays[argument]).astype(np.int64)
    assert M.aurc(**arrays) == pytest.approx(M.aurc(**{k: v * 1.0 for k, v in arrays.items()}))


def test_boolean_labels_are_still_labels():
    y = np.arange(N) % 2
    assert M.augrc(y.astype(bool), P2, S) == M.augrc(y, P2, S)
    assert M.brier_score(y.astype(bool), P2[:, 1]) == M.brier_score(y, P2[:, 1])
