"""The keys that evaluate gained with the selective-prediction and calibration metrics equal the
functions they name, on the same arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import softmax, xlogy

from mcdrop import RegressionResult
from mcdrop import metrics as M


def test_classification_keys_equal_the_functions():
    rng = np.random.default_rng(0)
    probs = softmax(rng.normal(scale=2.0, size=(300, 4)), axis=1)
    labels = np.array([rng.choice(4, p=p) for p in softmax(np.log(probs) / 1.5, axis=1)])
    entropy = -xlogy(probs, probs).sum(axis=1)
    got = M.evaluate(probs, labels)
    assert got["augrc"] == pytest.approx(M.augrc(labels, probs, entropy), abs=1e-15)
    assert got["prr"] == pytest.approx(
        M.prediction_rejection_ratio(labels, probs, entropy), abs=1e-15
    )
    assert got["smooth_ece"] == pytest.approx(M.smooth_calibration_error(labels, probs), abs=1e-15)
    assert got["augrc"] <= got["aurc"]
    # every prediction right: the PRR is undefined and reported as NaN, like the AUROC
    perfect = M.evaluate(probs, probs.argmax(axis=1))
    assert math.isnan(perfect["prr"]) and math.isnan(perfect["misclassification_auroc"])
    assert perfect["augrc"] == 0.0


def test_regression_keys_equal_the_functions():
    gen = torch.Generator().manual_seed(0)
    mean = torch.randn(200, 1, generator=gen, dtype=torch.float64)
    epistemic = torch.rand(200, 1, generator=gen, dtype=torch.float64) + 0.1
    y = mean + 1.5 * torch.randn(200, 1, generator=gen, dtype=torch.float64)
    result = RegressionResult(mean, epistemic, torch.full_like(mean, 0.2), 10, targets=y)
    got = M.evaluate(result)
    std = result.std.numpy()
    assert got["ence"] == pytest.approx(M.ence(y, mean, std), abs=1e-15)
    assert got["ause"] == pytest.approx(M.ause(np.abs(y.numpy() - mean.numpy()), std), abs=1e-15)
    flat = RegressionResult(mean, torch.zeros_like(mean), torch.zeros_like(mean), 1, targets=y)
    zero = M.evaluate(flat)
    assert math.isnan(zero["ence"]) and math.isnan(zero["ause"])
