"""Recalibrators refuse saved states that would map probabilities outside [0, 1], non-numbers in
numeric state, and labels of one class (found by a hostile review: each loaded or fitted
silently before)."""

from __future__ import annotations

import numpy as np
import pytest

from mcdrop.calibration import (
    DirichletCalibration,
    HistogramBinning,
    IsotonicCalibration,
    MatrixScaling,
    VectorScaling,
)


def _data(n=300, c=3, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return logits, probs, rng.integers(0, c, n)


def test_isotonic_knots_outside_the_unit_interval_are_refused():
    _, probs, y = _data()
    state = IsotonicCalibration().fit(probs, y).to_dict()
    state["state"]["y"] = [[-5.0] * len(row) for row in state["state"]["y"]]
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        IsotonicCalibration.from_dict(state)


def test_histogram_edges_outside_the_unit_interval_are_refused():
    _, probs, y = _data()
    state = HistogramBinning().fit(probs, y).to_dict()
    state["state"]["edges"] = [[-5.0] * len(row) for row in state["state"]["edges"]]
    with pytest.raises(ValueError, match=r"`edges` in \[0, 1\]"):
        HistogramBinning.from_dict(state)


@pytest.mark.parametrize("bad", [[True, False, True], [1.0, "1.5", 0.0]])
def test_booleans_and_strings_in_numeric_state_are_refused(bad):
    logits, _, y = _data()
    state = VectorScaling().fit(logits, y).to_dict()
    state["state"]["weights"] = bad
    with pytest.raises(ValueError, match=r"`weights` in the saved state to be numbers"):
        VectorScaling.from_dict(state)


@pytest.mark.parametrize("cls", [VectorScaling, MatrixScaling, DirichletCalibration])
def test_a_fit_on_one_class_is_refused_naming_y(cls):
    logits, probs, y = _data()
    outputs = probs if cls is DirichletCalibration else logits  # Dirichlet takes probabilities
    with pytest.raises(ValueError, match=r"`y` to hold at least two classes"):
        cls().fit(outputs, np.zeros_like(y))


@pytest.mark.parametrize("cls", [IsotonicCalibration, HistogramBinning])
def test_a_binned_fit_on_one_class_is_refused_naming_y(cls):
    _, probs, y = _data()
    with pytest.raises(ValueError, match=r"`y` to hold at least two classes"):
        cls().fit(probs, np.full_like(y, 2))


def test_an_untampered_state_still_loads_to_the_same_map():
    _, probs, y = _data()
    fitted = IsotonicCalibration().fit(probs, y)
    loaded = IsotonicCalibration.from_dict(fitted.to_dict())
    np.testing.assert_array_equal(loaded.transform(probs), fitted.transform(probs))
