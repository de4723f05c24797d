"""Tests of mcdrop.calibration: temperature scaling and std scaling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import minimize_scalar
from scipy.special import softmax
from scipy.stats import norm
from sklearn.exceptions import NotFittedError
from sklearn.metrics import log_loss

from mcdrop.calibration import StdScaling, TemperatureScaling
from mcdrop.metrics import expected_calibration_error, gaussian_nll


def _tempered_data(t0: float, n: int = 20000, c: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, c))
    probs = softmax(logits / t0, axis=1)
    labels = (probs.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits, labels


@pytest.mark.parametrize("t0", [0.5, 1.0, 2.5])
def test_temperature_scaling_recovers_known_temperature(t0):
    logits, labels = _tempered_data(t0)
    scaler = TemperatureScaling().fit(logits, labels)
    assert scaler.temperature == pytest.approx(t0, rel=0.05)
    assert isinstance(scaler.temperature, float)


def test_temperature_is_nll_minimiser_and_improves_calibration():
    logits, labels = _tempered_data(2.0, n=5000, seed=1)
    scaler = TemperatureScaling().fit(logits, labels)
    t = scaler.temperature
    probs = scaler.transform(logits)
    np.testing.assert_allclose(probs, softmax(logits / t, axis=1))
    best = log_loss(labels, probs)
    for other in (0.9 * t, 1.1 * t):
        assert best < log_loss(labels, softmax(logits / other, axis=1))
    raw = softmax(logits, axis=1)
    assert expected_calibration_error(labels, probs) < expected_calibration_error(labels, raw)
    np.testing.assert_array_equal(probs.argmax(1), logits.argmax(1))


def test_temperature_scaling_on_probs_and_log_probs():
    logits, labels = _tempered_data(1.7, n=5000, seed=2)
    mean_probs = softmax(logits, axis=1)
    by_logits = TemperatureScaling().fit(logits, labels)
    by_probs = TemperatureScaling(inputs="probs").fit(mean_probs, labels)
    by_log = TemperatureScaling(inputs="log_probs").fit(np.log(mean_probs), labels)
    # log softmax(z) differs from z by a per-row constant: same temperature, same output.
    assert by_probs.temperature == pytest.approx(by_logits.temperature, rel=1e-5)
    assert by_log.temperature == pytest.approx(by_logits.temperature, rel=1e-5)
    np.testing.assert_allclose(
        by_probs.transform(mean_probs), by_logits.transform(logits), atol=1e-6
    )
    out = by_probs.fit_transform(torch.from_numpy(mean_probs).float(), torch.from_numpy(labels))
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    assert out.dtype == np.float64


def test_temperature_scaling_mc_averaged_probabilities_with_zeros():
    probs = np.array([[1.0, 0.0, 0.0], [0.2, 0.8, 0.0], [0.5, 0.25, 0.25], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 2, 2])
    scaler = TemperatureScaling(inputs="probs").fit(probs, labels)
    out = scaler.transform(probs)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out.sum(1), 1.0)


def test_temperature_scaling_accepts_tensors():
    logits, labels = _tempered_data(1.5, n=3000, seed=3)
    a = TemperatureScaling().fit(torch.from_numpy(logits), torch.from_numpy(labels))
    b = TemperatureScaling().fit(logits, labels)
    assert a.temperature == pytest.approx(b.temperature, rel=1e-9)


def test_temperature_at_bound_warns():
    logits = np.array([[5.0, -5.0], [5.0, -5.0]])
    with pytest.warns(RuntimeWarning, match="bounds"):
        TemperatureScaling(bounds=(0.5, 2.0)).fit(logits, [0, 0])


def test_not_fitted_errors():
    scaler = TemperatureScaling()
    with pytest.raises(NotFittedError, match="fit"):
        _ = scaler.temperature
    with pytest.raises(ValueError, match="not fitted"):
        scaler.transform(np.zeros((2, 3)))
    assert "unfitted" in repr(scaler)
    std = StdScaling()
    with pytest.raises(NotFittedError, match="fit"):
        _ = std.scale
    with pytest.raises(ValueError, match="not fitted"):
        std.transform([1.0])


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: TemperatureScaling(inputs="softmax"), "inputs.*'softmax'"),
        (lambda: TemperatureScaling(bounds=(2.0, 1.0)), "bounds"),
        (lambda: TemperatureScaling(bounds=(0.0, 1.0)), r"bounds\[0\]"),
        (lambda: TemperatureScaling(bounds=3.0), "bounds"),  # type: ignore[arg-type]
        (lambda: TemperatureScaling().fit(np.zeros((3, 2)), [0, 2, 1]), "y.*got 2"),
        (lambda: TemperatureScaling().fit(np.zeros((3, 2)), [0, 1]), "y.*3 labels"),
        (lambda: TemperatureScaling().fit(np.zeros((3, 2)), [0.5, 1, 0]), "y.*0.5"),
        (lambda: TemperatureScaling().fit(np.zeros(3), [0, 1, 0]), r"logits.*shape \(N, C\)"),
        (lambda: TemperatureScaling().fit(np.zeros((0, 2)), []), "logits"),
        (lambda: TemperatureScaling().fit([[np.nan, 0.0]], [0]), "logits.*non-finite"),
        (lambda: TemperatureScaling().fit([[-np.inf, 0.0]], [0]), "logits.*non-finite"),
        (lambda: TemperatureScaling(inputs="probs").fit([[0.5, 0.6]], [0]), "logits.*sum to 1"),
        (lambda: TemperatureScaling(inputs="log_probs").fit([[0.1, -1.0]], [0]), "log-prob"),
        (lambda: TemperatureScaling(inputs="log_probs").fit([[-np.inf, -np.inf]], [0]), "-inf"),
        (lambda: StdScaling().fit([0.0, 1.0], [1.0, 0.0], [0.0, 1.0]), "std.*> 0"),
        (lambda: StdScaling().fit([0.0, 1.0], [1.0, 1.0], [0.0, 1.0, 2.0]), "mean.*shape"),
        (lambda: StdScaling().fit([0.0, 1.0], [1.0, 1.0], [0.0, 1.0]), "residual"),
        (lambda: StdScaling().fit([0.0, np.nan], [1.0, 1.0], [0.0, 1.0]), "mean.*non-finite"),
        (lambda: StdScaling().fit([1.0], [1.0], [2.0]).transform([-1.0]), "std.*>= 0"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_log_probs_keep_zero_probabilities():
    with np.errstate(divide="ignore"):
        log_p = np.log(np.array([[0.7, 0.3, 0.0], [0.2, 0.3, 0.5]]))
    scaler = TemperatureScaling(inputs="log_probs").fit(log_p, [0, 2])
    out = scaler.transform(log_p)
    assert out[0, 2] == 0.0
    np.testing.assert_allclose(out.sum(1), 1.0)


def test_std_scaling_closed_form_matches_brute_force():
    rng = np.random.default_rng(0)
    n = 2000
    mean = rng.normal(size=n)
    std = rng.uniform(0.2, 1.0, n)
    y = mean + 2.3 * std * rng.normal(size=n)  # std underestimated by 2.3x
    scaler = StdScaling().fit(mean, std, y)
    brute = minimize_scalar(
        lambda log_s: float(gaussian_nll(y, mean, (math.exp(log_s) * std) ** 2)),
        bounds=(-5, 5),
        method="bounded",
        options={"xatol": 1e-10},
    )
    assert scaler.scale == pytest.approx(math.exp(brute.x), rel=1e-5)
    assert scaler.scale == pytest.approx(2.3, rel=0.05)
    np.testing.assert_allclose(scaler.transform(std), scaler.scale * std)
    nll_after = -np.mean(norm.logpdf(y, mean, scaler.transform(std)))
    assert nll_after < -np.mean(norm.logpdf(y, mean, std))
    # Tensors and (N, 1) shapes.
    t = StdScaling().fit(
        torch.from_numpy(mean)[:, None], torch.from_numpy(std)[:, None], torch.from_numpy(y)
    )
    assert t.scale == pytest.approx(scaler.scale)
    assert "scale=" in repr(t)


# --------------------------------------------------------------------------------------------
# Numerics at the edges of float64 (issue 11, group 5)
# --------------------------------------------------------------------------------------------


def _decimal_scale(y, mean, std):
    """Reference ``sqrt(mean(((y - mean) / std)^2))`` in 60-digit decimals (no overflow)."""
    import decimal

    ctx = decimal.Context(prec=60, Emax=10**6, Emin=-(10**6))
    d = decimal.Decimal
    total = sum(
        ctx.power(ctx.divide(ctx.subtract(d(a), d(b)), d(s)), 2)
        for a, b, s in zip(y, mean, std, strict=True)
    )
    return ctx.sqrt(ctx.divide(total, len(y)))


_big = st.floats(min_value=-1e308, max_value=1e308, allow_nan=False, allow_infinity=False)
_std = st.floats(min_value=1e-300, max_value=1e300)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_big, _big, _std), min_size=1, max_size=5))
def test_std_scaling_is_finite_and_exact_or_refused(rows):
    import decimal

    y, mean, std = (np.array(col) for col in zip(*rows, strict=True))
    expected = _decimal_scale(y, mean, std)
    limit = decimal.Decimal(np.finfo(np.float64).max)
    if (
        expected == 0
        or expected >= limit
        or expected < decimal.Decimal(float(np.finfo(np.float64).tiny))
    ):
        with pytest.raises(ValueError, match="residual|scale"):
            StdScaling().fit(mean, std, y)
        return
    scale = StdScaling().fit(mean, std, y).scale
    assert math.isfinite(scale)
    assert scale == pytest.approx(float(expected), rel=1e-9)


def test_std_scaling_refuses_an_infinite_scale():
    with pytest.raises(ValueError, match="outside the range of float64"):
        StdScaling().fit([1e200], [1e-200], [0.0])
    scaler = StdScaling().fit([1e200, 3.0], [1e100, 1.0], [0.0, 0.0])
    assert scaler.scale == pytest.approx(1e100 / math.sqrt(2))  # residual/std 1e100 and 3
    with pytest.raises(ValueError, match="overflows"):
        scaler.transform([1e300])


def test_temperature_scaling_on_huge_logits_is_equivariant():
    # softmax(c z / (c T)) = softmax(z / T): the fit on logits scaled by 1e305 (bounds scaled
    # too) must find the same temperature, scaled.
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(0.5 * z, axis=1)])
    small = TemperatureScaling().fit(z, y).temperature
    big = TemperatureScaling(bounds=(1e303, 1e307)).fit(z * 1e305, y).temperature
    assert big == pytest.approx(small * 1e305, rel=1e-4)


def test_temperature_scaling_refuses_saturated_logits_instead_of_fitting_a_bound():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 3)) * 1e307
    with pytest.raises(ValueError, match="saturated"):
        TemperatureScaling().fit(z, z.argmax(1))  # every probability is one-hot at every T
    with pytest.warns(RuntimeWarning, match="edge of `bounds`"):
        TemperatureScaling().fit(z, rng.integers(0, 3, 50))  # the optimum is beyond 100


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(2, 4)), elements=_big))
def test_temperature_transform_never_returns_nan_for_finite_logits(logits):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(300, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(4 * z, axis=1)])
    scaler = TemperatureScaling().fit(z, y)  # underconfident logits: a temperature < 1
    assert scaler.temperature < 1
    probs = scaler.transform(logits)
    assert np.all(np.isfinite(probs))
    np.testing.assert_allclose(probs.sum(1), 1.0)
    # Scaling keeps the order of the classes (ties may round together).
    larger = logits[:, :, None] > logits[:, None, :]
    assert np.all((probs[:, :, None] >= probs[:, None, :])[larger])


def test_temperature_scaling_refuses_logits_that_do_not_depend_on_the_temperature():
    logits = np.zeros((10, 3))  # every row uniform at every temperature
    with pytest.raises(ValueError, match="no temperature can be identified"):
        TemperatureScaling().fit(logits, np.arange(10) % 3)
