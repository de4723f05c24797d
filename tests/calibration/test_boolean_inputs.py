"""Recalibrators refuse booleans where logits, probabilities, means, stds or targets are
expected (TypeError naming the argument), in ``fit`` and in ``transform``; labels may be
booleans."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from scipy.special import softmax

from mcdrop.calibration import (
    DirichletCalibration,
    HistogramBinning,
    IsotonicCalibration,
    IsotonicQuantileCalibration,
    MatrixScaling,
    StdScaling,
    TemperatureScaling,
    VectorScaling,
)

_RNG = np.random.default_rng(0)
N, C = 40, 3
LOGITS = _RNG.normal(scale=2.0, size=(N, C))
LABELS = (LOGITS + _RNG.gumbel(size=(N, C))).argmax(axis=1)  # the logits are informative
PROBS = softmax(LOGITS, axis=1)
MEAN, STD, Y = _RNG.normal(size=N), _RNG.uniform(0.5, 1.5, size=N), _RNG.normal(size=N)

CLASSIFIERS = [
    pytest.param(lambda: TemperatureScaling(), "logits", id="TemperatureScaling-logits"),
    pytest.param(lambda: TemperatureScaling(inputs="probs"), "probs", id="Temperature-probs"),
    pytest.param(lambda: TemperatureScaling(inputs="log_probs"), "log_probs", id="Temp-log_probs"),
    pytest.param(lambda: VectorScaling(), "logits", id="VectorScaling"),
    pytest.param(lambda: MatrixScaling(inputs="probs"), "probs", id="MatrixScaling-probs"),
    pytest.param(lambda: DirichletCalibration(reg_lambda=1e-3), "probs", id="Dirichlet"),
    pytest.param(lambda: IsotonicCalibration(), "probs", id="Isotonic"),
    pytest.param(lambda: HistogramBinning(inputs="logits"), "logits", id="Histogram-logits"),
]


def _inputs(kind, logits):
    probs = softmax(logits, axis=1)
    return {"logits": logits, "probs": probs, "log_probs": np.log(probs)}[kind]


def _flags(values, kind):
    flags = np.asarray(values) > np.median(values)
    return flags if kind == "numpy" else torch.from_numpy(flags)


@pytest.mark.parametrize(("make", "inputs"), CLASSIFIERS)
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_classification_recalibrators_refuse_boolean_inputs(make, inputs, kind):
    values = _inputs(inputs, LOGITS)
    argument = next(iter(inspect.signature(make().fit).parameters))  # `logits` or `probs`
    message = rf"`{argument}`.*real numbers.*booleans \(dtype bool\)"
    with pytest.raises(TypeError, match=message):
        make().fit(_flags(values, kind), LABELS)
    fitted = make().fit(values, LABELS)
    with pytest.raises(TypeError, match=message):
        fitted.transform(_flags(values, kind))
    # labels may be booleans (a binary problem)
    binary, y = _inputs(inputs, LOGITS[:, :2]), LABELS % 2
    np.testing.assert_array_equal(
        make().fit(binary, y.astype(bool)).transform(binary),
        make().fit(binary, y).transform(binary),
    )


@pytest.mark.parametrize("calibrator", [StdScaling, IsotonicQuantileCalibration])
@pytest.mark.parametrize("argument", ["mean", "std", "y"])
def test_regression_recalibrators_refuse_boolean_inputs(calibrator, argument):
    arrays = {"mean": MEAN, "std": STD, "y": Y}
    bad = dict(arrays, **{argument: _flags(arrays[argument], "numpy")})
    with pytest.raises(TypeError, match=rf"`{argument}`.*booleans \(dtype bool\)"):
        calibrator().fit(**bad)
    fitted = calibrator().fit(**arrays)
    name = "std" if calibrator is StdScaling else "probabilities"
    with pytest.raises(TypeError, match=rf"`{name}`.*booleans \(dtype bool\)"):
        fitted.transform(_flags(STD / 2, "numpy"))
