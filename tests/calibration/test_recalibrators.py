"""Vector, matrix and Dirichlet scaling, isotonic and histogram binning, isotonic quantile
recalibration: against scikit-learn (logistic regression, isotonic regression,
CalibratedClassifierCV), torch autograd, torch-uncertainty and loops."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from peer_libraries import torch_uncertainty
from scipy.special import log_softmax, softmax
from scipy.stats import norm
from sklearn.exceptions import NotFittedError
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from mcdrop import metrics as M
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


def _miscalibrated(n: int, c: int, seed: int, *, dtype=np.float64):
    """Logits whose labels follow a different affine map of them: over-confident and biased."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=3.0, size=(n, c))
    mixing = 0.45 * np.eye(c) + rng.normal(scale=0.08, size=(c, c))
    truth = softmax(logits @ mixing.T + rng.normal(scale=0.4, size=c), axis=1)
    labels = (truth.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits.astype(dtype), labels


def _nll(probs, labels):
    return float(-np.mean(np.log(probs[np.arange(labels.size), labels])))


def _logistic(features, labels):
    return LogisticRegression(C=np.inf, tol=1e-12, max_iter=100_000).fit(features, labels)


# ------------------------------------------------------------------------------------------
# parametric maps against scikit-learn and autograd
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "c", "seed"), [(300, 2, 0), (1500, 3, 1), (3000, 7, 2)])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matrix_scaling_is_multinomial_logistic_regression_on_logits(n, c, seed, dtype):
    logits, labels = _miscalibrated(n, c, seed, dtype=dtype)
    mine = MatrixScaling().fit(logits, labels).transform(logits)
    peer = _logistic(logits.astype(np.float64), labels).predict_proba(logits.astype(np.float64))
    # same convex objective: the optimum agrees to 1e-10 in NLL; the probabilities to 1e-5
    # (weakly identified directions leave scikit-learn's lbfgs slightly short of it)
    assert _nll(mine, labels) <= _nll(peer, labels) + 1e-10
    np.testing.assert_allclose(mine, peer, atol=1e-5)


@pytest.mark.parametrize(("n", "c", "seed"), [(800, 3, 3), (1500, 5, 4)])
def test_unregularised_dirichlet_is_logistic_regression_on_log_probs(n, c, seed):
    logits, labels = _miscalibrated(n, c, seed)
    probs = softmax(logits, axis=1)
    model = DirichletCalibration(reg_lambda=0.0, reg_mu=0.0).fit(probs, labels)
    mine = model.transform(probs)
    peer = _logistic(np.log(probs), labels).predict_proba(np.log(probs))
    assert _nll(mine, labels) <= _nll(peer, labels) + 1e-10
    np.testing.assert_allclose(mine, peer, atol=1e-5)
    # logits or log-probabilities in: the same log-softmax features, the same map
    by_logits = DirichletCalibration(inputs="logits", reg_lambda=0.0, reg_mu=0.0).fit(
        logits, labels
    )
    np.testing.assert_allclose(by_logits.transform(logits), mine, atol=1e-7)


def _autograd_objective(weights, bias, features, labels, lam, mu, kind):
    w = torch.tensor(weights, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(bias, dtype=torch.float64, requires_grad=True)
    x = torch.from_numpy(features)
    z = (x * w if kind == "vector" else x @ w.T) + b
    c = features.shape[1]
    loss = torch.nn.functional.cross_entropy(z, torch.from_numpy(labels))
    if kind == "matrix":
        off = w - torch.diag(torch.diag(w))
        loss = loss + lam * (off**2).sum() / (c * (c - 1)) + mu * (b**2).sum() / c
    loss.backward()
    return float(loss.detach()), np.concatenate([w.grad.numpy().ravel(), b.grad.numpy()])


@pytest.mark.parametrize(("lam", "mu"), [(0.0, 0.0), (0.05, 0.01), (1.0, 1.0)])
def test_dirichlet_odir_fit_is_a_stationary_point_by_autograd(lam, mu):
    logits, labels = _miscalibrated(1200, 4, 5)
    model = DirichletCalibration(inputs="logits", reg_lambda=lam, reg_mu=mu).fit(logits, labels)
    _, gradient = _autograd_objective(
        model.weights, model.bias, log_softmax(logits, axis=1), labels, lam, mu, "matrix"
    )
    assert np.max(np.abs(gradient)) < 1e-7
    assert model.reg_lambda_ == lam and model.reg_mu_ == mu


def test_vector_scaling_is_a_stationary_point_by_autograd():
    logits, labels = _miscalibrated(1500, 5, 6)
    model = VectorScaling().fit(logits, labels)
    _, gradient = _autograd_objective(model.weights, model.bias, logits, labels, 0, 0, "vector")
    assert np.max(np.abs(gradient)) < 1e-7


def test_dirichlet_objective_is_at_most_torch_uncertainty_s():
    """torch-uncertainty minimises the same ODIR objective with 200 LBFGS steps of lr 0.1;
    mcdrop's optimum is at least as low (and close: 1e-3 in probability)."""
    tu = torch_uncertainty("post_processing.calibration.dirichlet_scaler")
    logits, labels = _miscalibrated(1000, 4, 7, dtype=np.float32)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(logits), torch.from_numpy(labels)),
        batch_size=500,
    )
    logging.disable(logging.WARNING)
    try:
        peer = tu.DirichletScaler(num_classes=4, max_iter=100, lambda_reg=0.1, mu_reg=0.05)
        peer.fit(loader, progress=False)
    finally:
        logging.disable(logging.NOTSET)
    mine = DirichletCalibration(inputs="logits", reg_lambda=0.1, reg_mu=0.05).fit(logits, labels)
    features = log_softmax(logits.astype(np.float64), axis=1)
    peer_w = peer.inv_temperature_weight.detach().double().numpy()
    peer_b = peer.inv_temperature_bias.detach().double().numpy()
    args = (features, labels, 0.1, 0.05, "matrix")
    mine_value, _ = _autograd_objective(mine.weights, mine.bias, *args)
    peer_value, _ = _autograd_objective(peer_w, peer_b, *args)
    assert mine_value <= peer_value + 1e-9
    with torch.no_grad():
        peer_probs = torch.softmax(peer(torch.from_numpy(logits)).double(), dim=-1).numpy()
    np.testing.assert_allclose(mine.transform(logits), peer_probs, atol=2e-3)


def test_temperature_within_vector_within_matrix():
    """Nested families: on the fitting data each larger one reaches an NLL at most as high."""
    logits, labels = _miscalibrated(2000, 4, 8)
    raw = _nll(softmax(logits, axis=1), labels)
    temperature = _nll(TemperatureScaling().fit_transform(logits, labels), labels)
    vector = _nll(VectorScaling().fit_transform(logits, labels), labels)
    matrix = _nll(MatrixScaling().fit_transform(logits, labels), labels)
    assert matrix <= vector + 1e-12 <= temperature + 2e-12 <= raw + 3e-12
    # vector scaling with every scale 1/T and no bias is temperature scaling: a common scale
    # and zero bias are a feasible point, so the nesting is strict only through the data
    assert vector < temperature and matrix < vector


def test_dirichlet_cross_validation_chooses_from_the_grid_and_beats_a_poor_choice():
    logits, labels = _miscalibrated(900, 6, 9)
    probs = softmax(logits, axis=1)
    grid = (1e-4, 1e-1, 10.0)
    model = DirichletCalibration(grid=grid, cv=3).fit(probs[:600], labels[:600])
    assert model.reg_lambda_ in grid and model.reg_mu_ == model.reg_lambda_
    fixed_mu = DirichletCalibration(reg_mu=0.5, grid=grid, cv=3).fit(probs[:600], labels[:600])
    assert fixed_mu.reg_mu_ == 0.5 and fixed_mu.reg_lambda_ in grid
    # the chosen weights generalise at least as well as the worst grid point
    held = [
        _nll(
            DirichletCalibration(reg_lambda=g, reg_mu=g)
            .fit(probs[:600], labels[:600])
            .transform(probs[600:]),
            labels[600:],
        )
        for g in grid
    ]
    assert _nll(model.transform(probs[600:]), labels[600:]) <= max(held)


def test_dirichlet_folds_shrink_to_the_rarest_class_and_a_singleton_class_is_refused():
    logits, labels = _miscalibrated(60, 3, 4)
    probs = softmax(logits, axis=1)
    grid = (1e-3, 1.0)
    # a rare class of 3 examples: cv=5 runs as cv=3 (every fold trains and tests every class)
    rare = np.flatnonzero(labels == 2)[3:]
    keep = np.setdiff1d(np.arange(60), rare)
    x, y = probs[keep], labels[keep]
    assert np.bincount(y).min() == 3
    five = DirichletCalibration(grid=grid, cv=5).fit(x, y)
    three = DirichletCalibration(grid=grid, cv=3).fit(x, y)
    assert (five.reg_lambda_, five.reg_mu_) == (three.reg_lambda_, three.reg_mu_)
    np.testing.assert_array_equal(five.weights, three.weights)
    # fewer examples than folds: N = 4, two of each class
    tiny = DirichletCalibration(grid=grid, cv=5).fit(
        probs[:4, :2] / probs[:4, :2].sum(1, keepdims=True), [0, 1, 0, 1]
    )
    assert tiny.reg_lambda_ in grid
    # a class seen once cannot be cross-validated: our error, not scikit-learn's
    single = np.r_[y[y != 2], 2]
    x_single = np.r_[x[y != 2], x[y == 2][:1]]
    for options, named in [({}, "`reg_lambda` and `reg_mu`"), ({"reg_mu": 0.1}, "`reg_lambda`")]:
        with pytest.raises(ValueError, match=rf"`y`.*at least 2 examples.*class 2 has 1.*{named}"):
            DirichletCalibration(grid=grid, **options).fit(x_single, single)
    given = DirichletCalibration(reg_lambda=0.1, reg_mu=0.1).fit(x_single, single)  # no CV
    assert given.reg_lambda_ == 0.1


# ------------------------------------------------------------------------------------------
# non-parametric: isotonic and histogram binning
# ------------------------------------------------------------------------------------------


def _precomputed(probs):
    """A fitted scikit-learn classifier whose predict_proba returns ``probs[X[:, 0]]``."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class Precomputed(ClassifierMixin, BaseEstimator):
        def __init__(self, table=None):
            self.table = table

        def fit(self, X, y):
            self.classes_ = np.arange(self.table.shape[1])
            return self

        def predict_proba(self, X):
            return self.table[np.asarray(X)[:, 0].astype(int)]

        def predict(self, X):
            return self.predict_proba(X).argmax(axis=1)

    return Precomputed(probs).fit(None, None)


@pytest.mark.parametrize(("n", "c", "seed"), [(500, 2, 10), (2000, 4, 11), (1500, 9, 12)])
def test_isotonic_equals_sklearn_calibrated_classifier(n, c, seed):
    pytest.importorskip("sklearn.frozen")
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.frozen import FrozenEstimator

    logits, labels = _miscalibrated(2 * n, c, seed)
    probs = softmax(logits, axis=1)
    index = np.arange(2 * n)[:, None]
    peer = CalibratedClassifierCV(FrozenEstimator(_precomputed(probs)), method="isotonic")
    peer.fit(index[:n], labels[:n])
    mine = IsotonicCalibration().fit(probs[:n], labels[:n])
    np.testing.assert_allclose(mine.transform(probs[n:]), peer.predict_proba(index[n:]), atol=1e-12)


def test_isotonic_maps_are_sklearn_isotonic_regressions():
    logits, labels = _miscalibrated(1000, 3, 13)
    probs = softmax(logits, axis=1)
    model = IsotonicCalibration().fit(probs, labels)
    test = softmax(_miscalibrated(300, 3, 14)[0], axis=1)
    for k in range(3):
        reg = IsotonicRegression(out_of_bounds="clip").fit(probs[:, k], labels == k)
        np.testing.assert_allclose(
            np.interp(test[:, k], *model.thresholds_[k]), reg.predict(test[:, k]), atol=1e-14
        )


def _naive_histogram(train, labels, test, n_bins):
    out = np.empty_like(test)
    for k in range(train.shape[1]):
        for i, value in enumerate(test[:, k]):
            b = next(b for b in range(n_bins) if value <= (b + 1) / n_bins or b == n_bins - 1)
            members = [
                j
                for j, v in enumerate(train[:, k])
                if (b == 0 and v <= 1 / n_bins) or (b / n_bins < v <= (b + 1) / n_bins)
            ]
            out[i, k] = np.mean(labels[members] == k) if members else (b + 0.5) / n_bins
    total = out.sum(axis=1, keepdims=True)
    return np.where(total > 0, out / np.where(total > 0, total, 1), 1 / train.shape[1])


@pytest.mark.parametrize(("n", "c", "n_bins"), [(40, 2, 4), (300, 3, 10)])
def test_histogram_binning_matches_the_loop(n, c, n_bins):
    logits, labels = _miscalibrated(n, c, 15)
    probs = softmax(logits, axis=1)
    test = softmax(_miscalibrated(50, c, 16)[0], axis=1)
    got = HistogramBinning(n_bins=n_bins).fit(probs, labels).transform(test)
    np.testing.assert_allclose(got, _naive_histogram(probs, labels, test, n_bins), atol=1e-12)


def test_histogram_binning_equals_torch_uncertainty():
    tu = torch_uncertainty("post_processing.calibration.histogram_binning")
    logits, labels = _miscalibrated(2000, 4, 17, dtype=np.float32)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.from_numpy(logits), torch.from_numpy(labels)),
        batch_size=500,
    )
    logging.disable(logging.WARNING)
    try:
        peer = tu.HistogramBinningScaler(num_bins=15)
        peer.fit(loader, progress=False)
    finally:
        logging.disable(logging.NOTSET)
    with torch.no_grad():
        peer_probs = torch.exp(peer(torch.from_numpy(logits))).double().numpy()
    mine = HistogramBinning(inputs="logits").fit(logits, labels).transform(logits)
    np.testing.assert_allclose(mine, peer_probs, atol=1e-6)  # torch-uncertainty: float32


def test_histogram_binning_quantile_bins_hold_equal_counts():
    logits, labels = _miscalibrated(1000, 3, 18)
    probs = softmax(logits, axis=1)
    model = HistogramBinning(n_bins=5, strategy="quantile").fit(probs, labels)
    for k in range(3):
        ids = np.searchsorted(model.edges_[k, 1:-1], probs[:, k], side="left")
        assert np.all(np.abs(np.bincount(ids, minlength=5) - 200) <= 1)


# ------------------------------------------------------------------------------------------
# what every classification recalibrator does
# ------------------------------------------------------------------------------------------

ALL = [
    (TemperatureScaling, {}),
    (VectorScaling, {}),
    (MatrixScaling, {"reg_lambda": 1e-3, "reg_mu": 1e-3}),
    (DirichletCalibration, {"inputs": "logits", "reg_lambda": 1e-3, "reg_mu": 1e-3}),
    (IsotonicCalibration, {"inputs": "logits"}),
    (HistogramBinning, {"inputs": "logits"}),
]
IDS = [cls.__name__ for cls, _ in ALL]


@pytest.mark.parametrize(("cls", "options"), ALL, ids=IDS)
def test_each_recalibrator_improves_held_out_calibration(cls, options):
    logits, labels = _miscalibrated(6000, 4, 19)
    val, test = slice(0, 3000), slice(3000, None)
    model = cls(**options).fit(logits[val], labels[val])
    raw = softmax(logits[test], axis=1)
    calibrated = model.transform(logits[test])
    y = labels[test]
    assert M.expected_calibration_error(y, calibrated) < 0.5 * M.expected_calibration_error(y, raw)
    assert M.classwise_calibration_error(y, calibrated) < M.classwise_calibration_error(y, raw)
    if cls not in (IsotonicCalibration, HistogramBinning):
        # the parametric maps minimise the NLL; the binned ones can output exact zeros
        assert _nll(calibrated, y) < _nll(raw, y)


@pytest.mark.parametrize(("cls", "options"), ALL, ids=IDS)
def test_each_recalibrator_is_nearly_the_identity_on_calibrated_data(cls, options):
    rng = np.random.default_rng(20)
    logits = rng.normal(scale=2.0, size=(20000, 3))
    probs = softmax(logits, axis=1)
    labels = (probs.cumsum(axis=1) > rng.random((20000, 1))).argmax(axis=1)
    model = cls(**options).fit(logits, labels)
    shift = np.abs(model.transform(logits) - probs)
    tolerance = 0.03 if cls in (IsotonicCalibration, HistogramBinning) else 0.01
    assert shift.mean() < tolerance


@pytest.mark.parametrize(("cls", "options"), ALL, ids=IDS)
def test_each_recalibrator_maps_per_sample_outputs_and_keeps_the_simplex(cls, options):
    logits, labels = _miscalibrated(600, 3, 21)
    model = cls(**options).fit(logits, labels)
    samples = logits[None] + np.random.default_rng(22).normal(size=(4, 600, 3))
    out = model.transform(samples)
    for t in range(4):
        np.testing.assert_allclose(out[t], model.transform(samples[t]), atol=1e-15)
    assert out.shape == (4, 600, 3)
    assert np.all(out >= 0) and np.all(out <= 1)
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 30),
    st.floats(0.1, 30.0),
    st.integers(0, 2**32 - 1),
)
def test_fitted_recalibrators_keep_any_input_on_the_simplex(n, scale, seed):
    rng = np.random.default_rng(seed)
    test = rng.normal(scale=scale, size=(n, 3))
    for model in _FITTED:
        out = model.transform(test)
        assert np.all(np.isfinite(out)) and np.all(out >= 0) and np.all(out <= 1)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-12)


_FITTED = [cls(**options).fit(*_miscalibrated(500, 3, 23)) for cls, options in ALL]


def test_fit_on_per_sample_outputs_pools_the_samples():
    logits, labels = _miscalibrated(400, 3, 24)
    samples = logits[None] + np.random.default_rng(25).normal(size=(3, 400, 3))
    pooled = VectorScaling().fit(samples.reshape(-1, 3), np.tile(labels, 3))
    stacked = VectorScaling().fit(samples, labels)
    np.testing.assert_allclose(stacked.weights, pooled.weights, rtol=1e-10)
    np.testing.assert_allclose(stacked.bias, pooled.bias, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# persistence
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "options"), [*ALL, (DirichletCalibration, {})], ids=[*IDS, "DirichletCV"]
)
def test_save_and_load_round_trip_exactly(cls, options, tmp_path):
    logits, labels = _miscalibrated(300, 3, 26)
    model = cls(**options).fit(logits if options else softmax(logits, axis=1), labels)
    path = tmp_path / "recalibrator.json"
    model.save(path)
    loaded = cls.load(path)
    test = _miscalibrated(50, 3, 27)[0]
    test = test if options else softmax(test, axis=1)
    np.testing.assert_array_equal(loaded.transform(test), model.transform(test))
    assert json.loads(path.read_text())["class"] == cls.__name__
    # an unfitted recalibrator round-trips unfitted
    cls.from_dict(cls(**options).to_dict())


def test_regression_recalibrators_round_trip(tmp_path):
    rng = np.random.default_rng(28)
    mean, std = rng.normal(size=200), rng.uniform(0.5, 2.0, 200)
    y = mean + 2 * std * rng.normal(size=200)
    for model in (StdScaling().fit(mean, std, y), IsotonicQuantileCalibration().fit(mean, std, y)):
        path = tmp_path / f"{type(model).__name__}.json"
        model.save(path)
        loaded = type(model).load(path)
        if isinstance(model, StdScaling):
            assert loaded.scale == model.scale
        else:
            np.testing.assert_array_equal(
                loaded.interval(mean, std)[0], model.interval(mean, std)[0]
            )


def test_load_refuses_other_classes_and_tampered_files(tmp_path):
    logits, labels = _miscalibrated(200, 3, 29)
    data = MatrixScaling().fit(logits, labels).to_dict()
    with pytest.raises(ValueError, match="holds a 'MatrixScaling'"):
        VectorScaling.from_dict(data)
    bad = json.loads(json.dumps(data))
    bad["state"]["weights"] = bad["state"]["weights"][:2]
    with pytest.raises(ValueError, match="`weights`.*shape"):
        MatrixScaling.from_dict(bad)
    bad = json.loads(json.dumps(data))
    bad["state"]["bias"][0] = "1.0; import os"
    with pytest.raises(ValueError, match="`bias`"):
        MatrixScaling.from_dict(bad)
    bad = json.loads(json.dumps(data))
    bad["options"]["inputs"] = "pickles"
    with pytest.raises(ValueError, match="`inputs`"):
        MatrixScaling.from_dict(bad)
    with pytest.raises(ValueError, match="mcdrop recalibrator"):
        MatrixScaling.from_dict({"weights": [1.0]})
    path = tmp_path / "not.json"
    path.write_bytes(b"\x80\x04\x95 a pickle")
    with pytest.raises(ValueError, match="not JSON"):
        MatrixScaling.load(path)
    iso = IsotonicCalibration().fit(softmax(logits, axis=1), labels).to_dict()
    iso["state"]["y"][0] = list(reversed(iso["state"]["y"][0]))
    with pytest.raises(ValueError, match="non-decreasing"):
        IsotonicCalibration.from_dict(iso)


# ------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "options"), ALL[1:], ids=IDS[1:])
def test_recalibrators_refuse_bad_input(cls, options):
    logits, labels = _miscalibrated(100, 3, 30)
    model = cls(**options)
    with pytest.raises(NotFittedError, match="fit"):
        model.transform(logits)
    model.fit(logits, labels)
    with pytest.raises(ValueError, match="3 classes.*got 4"):
        model.transform(np.zeros((5, 4)))
    with pytest.raises(ValueError, match="`y`.*labels in \\[0, 2\\]"):
        cls(**options).fit(logits, np.where(np.arange(100) == 7, 3, labels))
    with pytest.raises(ValueError, match="`y`"):
        cls(**options).fit(logits, labels[:50])
    nan = logits.copy()
    nan[3, 1] = np.nan
    with pytest.raises(ValueError, match="finite"):
        model.transform(nan)
    with pytest.raises(ValueError, match="shape"):
        model.transform(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="shape"):
        model.transform(np.zeros(3))
    with pytest.raises(ValueError, match="at least 2 classes"):
        cls(**options).fit(np.zeros((5, 1)), np.zeros(5, int))
    with pytest.raises(ValueError, match="`inputs`"):
        cls(inputs="scores")


def test_probability_inputs_are_checked():
    model = IsotonicCalibration()
    with pytest.raises(ValueError, match="`probs`.*sum to 1"):
        model.fit(np.full((4, 3), 0.5), np.zeros(4, int))
    with pytest.raises(ValueError, match="`logits`.*<= 0"):
        MatrixScaling(inputs="log_probs").fit(np.ones((4, 3)), np.zeros(4, int))


def test_option_checks():
    with pytest.raises(ValueError, match="`reg_lambda`"):
        MatrixScaling(reg_lambda=-1.0)
    with pytest.raises(ValueError, match="`grid`"):
        DirichletCalibration(grid=[0.1, -0.1])
    with pytest.raises(ValueError, match="`cv`"):
        DirichletCalibration(cv=1)
    with pytest.raises(TypeError, match="`n_bins`"):
        HistogramBinning(n_bins=2.5)
    with pytest.raises(ValueError, match="`strategy`"):
        HistogramBinning(strategy="kmeans")


# ------------------------------------------------------------------------------------------
# isotonic quantile recalibration (Kuleshov et al. 2018)
# ------------------------------------------------------------------------------------------


def _heavy_tailed(n, seed, scale=2.0):
    rng = np.random.default_rng(seed)
    mean, std = rng.normal(size=n), rng.uniform(0.5, 2.0, n)
    return mean, std, mean + scale * std * rng.standard_t(df=3, size=n)


def test_quantile_map_is_the_isotonic_regression_of_the_empirical_cdf():
    mean, std, y = _heavy_tailed(800, 31)
    model = IsotonicQuantileCalibration().fit(mean, std, y)
    pit = norm.cdf((y - mean) / std)
    empirical = np.array([np.mean(pit <= p) for p in pit])
    peer = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(pit, empirical)
    # inside the fitted range (a transform of exactly 0 or 1 is pinned to R(0)=0, R(1)=1)
    interior = pit[(pit > 0) & (pit < 1)]
    inside = np.linspace(interior.min(), interior.max(), 500)
    np.testing.assert_allclose(model.transform(inside), peer.predict(inside), atol=1e-12)
    keep = (pit > 0) & (pit < 1)
    np.testing.assert_allclose(model.cdf(y, mean, std)[keep], peer.predict(pit[keep]), atol=1e-12)
    # outside the fitted range: linear to the end points of a CDF
    assert model.transform([0.0, 1.0]).tolist() == [0.0, 1.0]
    below = pit.min() / 2
    assert model.transform([below])[0] == pytest.approx(peer.predict([pit.min()])[0] / 2)


def test_quantile_recalibration_fixes_held_out_coverage():
    mean, std, y = _heavy_tailed(6000, 32)
    model = IsotonicQuantileCalibration().fit(mean[:3000], std[:3000], y[:3000])
    for level in (0.5, 0.8, 0.9, 0.95):
        lower, upper = model.interval(mean[3000:], std[3000:], level=level)
        raw_lower, raw_upper = M.central_interval(mean[3000:], std[3000:], level=level)
        calibrated = M.picp(y[3000:], lower, upper)
        assert abs(calibrated - level) < 0.03
        assert abs(calibrated - level) < abs(M.picp(y[3000:], raw_lower, raw_upper) - level)


def test_quantile_is_the_inverse_of_the_recalibrated_cdf():
    mean, std, y = _heavy_tailed(500, 33)
    model = IsotonicQuantileCalibration().fit(mean, std, y)
    for level in (0.01, 0.2, 0.5, 0.77, 0.99):
        q = model.quantile(mean, std, level=level)
        np.testing.assert_allclose(model.cdf(q, mean, std), level, atol=1e-9)
    qs = [model.quantile(mean[:5], std[:5], level=t) for t in (0.1, 0.5, 0.9)]
    assert np.all(qs[0] <= qs[1]) and np.all(qs[1] <= qs[2])


def test_quantile_recalibration_is_nearly_the_identity_when_calibrated():
    rng = np.random.default_rng(34)
    mean, std = rng.normal(size=20000), rng.uniform(0.5, 2.0, 20000)
    y = mean + std * rng.normal(size=20000)
    model = IsotonicQuantileCalibration().fit(mean, std, y)
    grid = np.linspace(0.0, 1.0, 101)
    assert np.max(np.abs(model.transform(grid) - grid)) < 0.02


def test_quantile_recalibration_refuses_bad_input():
    mean, std, y = _heavy_tailed(50, 35)
    model = IsotonicQuantileCalibration()
    with pytest.raises(NotFittedError, match="fit"):
        model.interval(mean, std)
    with pytest.raises(ValueError, match="`std`"):
        model.fit(mean, np.where(np.arange(50) == 2, 0.0, std), y)
    with pytest.raises(ValueError, match="`mean`"):
        model.fit(mean[:10], std, y)
    model.fit(mean, std, y)
    for level in (0.0, 1.0, math.nan):
        with pytest.raises(ValueError, match="`level`"):
            model.quantile(mean, std, level=level)
    with pytest.raises(ValueError, match="`probabilities`"):
        model.transform([0.5, 1.5])


def test_dirichlet_folds_keep_an_examples_samples_together():
    """(T, N, C) inputs whose T samples are copies of (N, C) logits: with folds over examples the
    cross-validated losses are T times those of (N, C), so the same weights are chosen; folds over
    rows would score each fold on copies of its training rows (and favour weak penalties)."""
    rng = np.random.default_rng(3)
    n, c = 60, 3
    y = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c)) * 2.0 + 1.5 * np.eye(c)[y] * rng.normal(size=(n, 1))
    one = DirichletCalibration(inputs="logits").fit(logits, y)
    copies = DirichletCalibration(inputs="logits").fit(np.broadcast_to(logits, (4, n, c)), y)
    assert (copies.reg_lambda_, copies.reg_mu_) == (one.reg_lambda_, one.reg_mu_)
    np.testing.assert_allclose(copies.weights, one.weights, rtol=1e-4, atol=1e-5)
