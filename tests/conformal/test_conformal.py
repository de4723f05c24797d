"""Split-conformal prediction: MAPIE agreement, the coverage guarantee, errors, the display."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import mcdrop
from mcdrop.conformal import (
    ConformalCoverageDisplay,
    SplitConformalClassifier,
    SplitConformalRegressor,
    conformal_quantile,
    coverage_curve,
    mean_set_size,
    set_coverage,
)
from mcdrop.conformal._split import _class_scores, _members


def _pool(n: int = 3000, c: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Exchangeable (probabilities, labels): labels drawn from a sharpened copy of the probs."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(c, 0.7), size=n)
    truth = probs**1.5 / (probs**1.5).sum(axis=1, keepdims=True)  # miscalibrated on purpose
    labels = (truth.cumsum(axis=1) > rng.uniform(size=(n, 1))).argmax(axis=1)
    return probs, labels


# -- the quantile -------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [9, 10, 37, 100, 1001])
@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.2, 0.5])
def test_quantile_is_the_finite_sample_order_statistic(n: int, alpha: float) -> None:
    scores = np.random.default_rng(n).normal(size=n)
    if n < 19 and alpha == 0.05:
        pytest.skip("too few examples for alpha=0.05")
    k = math.ceil(round((n + 1) * (1 - alpha), 9))  # the k-th smallest score
    expected = np.sort(scores)[k - 1]
    assert conformal_quantile(scores, alpha) == expected
    # the quantile of MAPIE, the reference library
    utils = pytest.importorskip("mapie.utils")
    mapie_q = utils._compute_classification_quantile(scores.reshape(-1, 1), np.array([alpha]))
    assert conformal_quantile(scores, alpha) == pytest.approx(float(np.ravel(mapie_q)[0]))


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, math.nan])
def test_alpha_outside_unit_interval_is_refused(alpha: float) -> None:
    with pytest.raises(ValueError, match=r"`alpha` to be a number in \(0, 1\)"):
        SplitConformalClassifier(alpha=alpha)
    with pytest.raises(ValueError, match=r"`alpha`"):
        SplitConformalRegressor(alpha=alpha)


def test_too_small_calibration_set_says_how_many_are_needed() -> None:
    probs, labels = _pool(n=8)
    with pytest.raises(
        ValueError, match=r"at least 9 calibration examples for alpha=0.1, but got 8"
    ):
        SplitConformalClassifier(alpha=0.1).fit(probs, labels)
    # 9 examples suffice for alpha=0.1: ceil(10 * 0.9) = 9 <= 9
    SplitConformalClassifier(alpha=0.1).fit(*_pool(n=9))
    with pytest.raises(ValueError, match="larger `alpha`"):
        conformal_quantile(np.arange(3.0), 0.2)


def test_bad_options_and_unfitted_use() -> None:
    with pytest.raises(ValueError, match="method"):
        SplitConformalClassifier(method="naive")
    with pytest.raises(ValueError, match="randomized"):
        SplitConformalClassifier(method="lac", randomized=True)
    with pytest.raises(TypeError, match="randomized"):
        SplitConformalClassifier(method="aps", randomized=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="call `fit` first"):
        SplitConformalClassifier().predict(np.full((2, 2), 0.5))
    probs, labels = _pool(n=50)
    with pytest.raises(ValueError, match=r"`y` to hold labels in \[0, 5\]"):
        SplitConformalClassifier().fit(probs, labels + 10)
    with pytest.raises(ValueError, match="hold labels"):
        SplitConformalClassifier().fit(probs)
    fitted = SplitConformalClassifier(alpha=0.2).fit(probs, labels)
    with pytest.raises(ValueError, match="6 classes"):
        fitted.predict(probs[:, :3] / probs[:, :3].sum(axis=1, keepdims=True))


# -- agreement with MAPIE on the same scores ---------------------------------------------------


class _Lookup:
    """A prefit scikit-learn classifier that returns given probabilities for row indices."""

    _estimator_type = "classifier"

    def __init__(self, probs: np.ndarray) -> None:
        self.probs = probs
        self.classes_ = np.arange(probs.shape[1])
        self.n_features_in_ = 1
        self.fitted_ = True

    def fit(self, X, y):
        return self

    def predict_proba(self, X):
        return self.probs[np.asarray(X, dtype=int).ravel()]

    def predict(self, X):
        return self.predict_proba(X).argmax(axis=1)

    def get_params(self, deep: bool = True) -> dict:
        return {"probs": self.probs}

    def __sklearn_tags__(self):
        from sklearn.utils import ClassifierTags, Tags

        return Tags(estimator_type="classifier", target_tags=None, classifier_tags=ClassifierTags())


@pytest.mark.parametrize("alpha", [0.05, 0.1, 0.3])
def test_lac_sets_equal_mapie(alpha: float) -> None:
    classification = pytest.importorskip("mapie.classification")
    probs, labels = _pool(n=1200)
    index = np.arange(1200).reshape(-1, 1)
    mapie = classification.SplitConformalClassifier(
        _Lookup(probs), confidence_level=1 - alpha, conformity_score="lac", prefit=True
    ).conformalize(index[:600], labels[:600])
    _, mapie_sets = mapie.predict_set(index[600:])
    ours = SplitConformalClassifier(alpha=alpha, method="lac").fit(probs[:600], labels[:600])
    np.testing.assert_allclose(np.ravel(mapie.conformity_scores), ours.scores_, atol=1e-12)
    np.testing.assert_array_equal(ours.predict(probs[600:]).numpy(), mapie_sets[:, :, 0])


def test_aps_scores_and_quantile_equal_mapie() -> None:
    """MAPIE's APS calibration score is always randomised; give ours MAPIE's uniforms."""
    classification = pytest.importorskip("mapie.classification")
    probs, labels = _pool(n=800)
    index = np.arange(800).reshape(-1, 1)
    mapie = classification.SplitConformalClassifier(
        _Lookup(probs),
        confidence_level=0.9,
        conformity_score="aps",
        prefit=True,
        random_state=7,
    ).conformalize(index, labels)
    u = np.random.RandomState(7).uniform(size=800)
    ours = _class_scores(probs, "aps", u=u)[np.arange(800), labels]
    np.testing.assert_allclose(np.ravel(mapie.conformity_scores), ours, atol=1e-12)
    mapie.predict_set(index[:5])  # MAPIE computes its quantile at prediction time
    quantile = mapie._mapie_classifier.conformity_score_function_.quantiles_
    assert conformal_quantile(ours, 0.1) == pytest.approx(float(np.ravel(quantile)[0]))


def test_aps_sets_equal_mapie_include_last_label() -> None:
    """Given MAPIE's threshold, our (non-randomised) APS sets are MAPIE's default sets."""
    classification = pytest.importorskip("mapie.classification")
    probs, labels = _pool(n=1000)
    index = np.arange(1000).reshape(-1, 1)
    mapie = classification.SplitConformalClassifier(
        _Lookup(probs), confidence_level=0.8, conformity_score="aps", prefit=True, random_state=0
    ).conformalize(index[:500], labels[:500])
    _, mapie_sets = mapie.predict_set(index[500:])  # include_last_label=True
    quantile = float(np.ravel(mapie._mapie_classifier.conformity_score_function_.quantiles_)[0])
    test = probs[500:]
    ours = _members(_class_scores(test, "aps"), test, quantile, include_last=True)
    np.testing.assert_array_equal(ours, mapie_sets[:, :, 0])
    assert ours.sum(axis=1).min() >= 1  # never empty


def test_aps_and_raps_scores_against_a_naive_loop() -> None:
    probs, _ = _pool(n=40, c=5)
    fast = _class_scores(probs, "raps", k_reg=2, lambda_reg=0.05)
    for i in range(40):
        order = sorted(range(5), key=lambda c: (-probs[i, c], c))
        for c in range(5):
            rank = order.index(c)
            mass = sum(probs[i, j] for j in order[: rank + 1])
            assert fast[i, c] == pytest.approx(mass + 0.05 * max(0, rank + 1 - 2))
    np.testing.assert_allclose(
        _class_scores(probs, "raps", lambda_reg=0.0), _class_scores(probs, "aps")
    )


# -- the guarantee -------------------------------------------------------------------------------


def _split_coverages(method: str, alpha: float, randomized: bool, repeats: int = 300):
    probs, labels = _pool()
    rng = np.random.default_rng(1)
    n_cal, n_test = 100, 100
    coverages = []
    for r in range(repeats):
        pick = rng.permutation(probs.shape[0])[: n_cal + n_test]
        cal, test = pick[:n_cal], pick[n_cal:]
        conformal = SplitConformalClassifier(
            alpha=alpha, method=method, randomized=randomized, seed=r
        ).fit(probs[cal], labels[cal])
        coverages.append(set_coverage(conformal.predict(probs[test]), labels[test]))
    return np.asarray(coverages), n_cal, n_test


@pytest.mark.parametrize(
    ("method", "randomized"), [("lac", False), ("aps", False), ("aps", True), ("raps", True)]
)
def test_coverage_guarantee_over_random_splits(method: str, randomized: bool) -> None:
    """1 - alpha <= E[coverage] (<= 1 - alpha + 1 / (n + 1) for exact sets, continuous scores)."""
    alpha = 0.1
    coverages, n_cal, _ = _split_coverages(method, alpha, randomized)
    error = 3.0 * coverages.std(ddof=1) / math.sqrt(coverages.size)
    assert coverages.mean() >= 1 - alpha - error
    if method == "lac" or randomized:  # sets of exactly {score <= q}: tight from above too
        assert coverages.mean() <= 1 - alpha + 1 / (n_cal + 1) + error


def test_adaptive_sets_are_larger_for_uncertain_examples() -> None:
    probs, labels = _pool()
    sets = SplitConformalClassifier(alpha=0.1, method="aps").fit(probs[:1500], labels[:1500])
    size = sets.predict(probs[1500:]).sum(dim=1).numpy()
    entropy = -(probs[1500:] * np.log(probs[1500:])).sum(axis=1)
    assert np.corrcoef(size, entropy)[0, 1] > 0.5


def test_regression_guarantee_and_normalisation() -> None:
    rng = np.random.default_rng(0)
    n = 4000
    mean = rng.normal(size=n)
    std = np.exp(rng.normal(scale=0.7, size=n))
    y = mean + std * rng.standard_t(df=5, size=n)  # heavy tails: Gaussian intervals would fail
    result = mcdrop.RegressionResult(
        torch.from_numpy(mean),
        torch.from_numpy(std**2),
        torch.zeros(n, dtype=torch.float64),
        n_samples=50,
        targets=torch.from_numpy(y),
    )
    coverages = []
    for r in range(200):
        pick = np.random.default_rng(r).permutation(n)[:200]
        cal, test = _subset(result, pick[:100]), _subset(result, pick[100:])
        lower, upper = SplitConformalRegressor(alpha=0.2).fit(cal).predict(test)
        coverages.append(mcdrop.metrics.picp(test.targets, lower, upper))
    coverages = np.asarray(coverages)
    error = 3.0 * coverages.std(ddof=1) / math.sqrt(coverages.size)
    assert 0.8 - error <= coverages.mean() <= 0.8 + 1 / 101 + error
    # intervals are q * std wide: proportional to the MC predictive std
    fitted = SplitConformalRegressor(alpha=0.2).fit(result)
    lower, upper = fitted.predict(result)
    np.testing.assert_allclose((upper - lower).numpy(), 2 * fitted.quantile_ * std)
    naive = sorted(abs(y - mean) / std)[math.ceil((n + 1) * 0.8) - 1]
    assert fitted.quantile_ == naive


def _subset(result: mcdrop.RegressionResult, index: np.ndarray) -> mcdrop.RegressionResult:
    return mcdrop.RegressionResult(
        result.mean[index],
        result.epistemic_variance[index],
        result.aleatoric_variance[index],
        n_samples=result.n_samples,
        targets=result.targets[index],
    )


def test_regression_with_unit_std_equals_mapie_absolute_score() -> None:
    regression = pytest.importorskip("mapie.regression")
    from sklearn.dummy import DummyRegressor

    rng = np.random.default_rng(3)
    y = rng.normal(size=500)
    model = DummyRegressor(strategy="constant", constant=0.0).fit(np.zeros((2, 1)), [0, 0])
    x = np.zeros((500, 1))
    mapie = regression.SplitConformalRegressor(
        model, confidence_level=0.9, conformity_score="absolute", prefit=True
    ).conformalize(x[:250], y[:250])
    _, intervals = mapie.predict_interval(x[250:])
    zeros = torch.zeros(500, dtype=torch.float64)
    result = mcdrop.RegressionResult(zeros, torch.ones(500, dtype=torch.float64), zeros, 10)
    cal = mcdrop.RegressionResult(zeros[:250], zeros[:250] + 1, zeros[:250], 10)
    lower, upper = SplitConformalRegressor(alpha=0.1).fit(cal, y[:250]).predict(result)
    np.testing.assert_allclose(lower.numpy()[250:], intervals[:, 0, 0])
    np.testing.assert_allclose(upper.numpy()[250:], intervals[:, 1, 0])


def test_regression_refuses_zero_std_and_missing_targets() -> None:
    zeros = torch.zeros(20, dtype=torch.float64)
    result = mcdrop.RegressionResult(zeros, zeros, zeros, 10)
    with pytest.raises(ValueError, match=r"std > 0 .* `tau=`"):
        SplitConformalRegressor().fit(result, zeros)
    result = mcdrop.RegressionResult(zeros, zeros + 1, zeros, 10)
    with pytest.raises(ValueError, match="targets"):
        SplitConformalRegressor().fit(result)
    with pytest.raises(TypeError, match="RegressionResult"):
        SplitConformalRegressor().fit(np.zeros(20))  # type: ignore[arg-type]


# -- on a real MC dropout result ---------------------------------------------------------------


def test_on_a_monte_carlo_dropout_result() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3)).eval()
    x, y = torch.randn(300, 4), torch.randint(0, 3, (300,))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=100)
    result = mcdrop.predict_with_uncertainty(model, loader, n_samples=20, seed=0)
    conformal = SplitConformalClassifier(alpha=0.2, method="aps").fit(result)  # stored targets
    sets = conformal.predict(result.mean)
    assert sets.shape == (300, 3) and sets.dtype == torch.bool
    assert 1.0 <= mean_set_size(sets) <= 3.0
    # same inputs, options and seed -> same sets (randomised too)
    first = SplitConformalClassifier(method="aps", randomized=True, seed=3).fit(result)
    again = SplitConformalClassifier(method="aps", randomized=True, seed=3).fit(result)
    assert torch.equal(first.predict(result), again.predict(result))
    assert torch.equal(first.predict(result), first.predict(result))  # predict keeps no state


def test_coverage_curve_and_display(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs, labels = _pool(n=1000)
    conformal = SplitConformalClassifier(method="lac")
    curve = coverage_curve(
        conformal, probs[:500], probs[500:], y_calibration=labels[:500], y_test=labels[500:]
    )
    assert curve.level.shape == curve.coverage.shape == curve.size.shape == (25,)
    assert np.all(np.diff(curve.size) >= 0)  # higher level, larger sets
    _, ax = plt.subplots()
    display = ConformalCoverageDisplay.from_results(
        conformal,
        probs[:500],
        probs[500:],
        y_calibration=labels[:500],
        y_test=labels[500:],
        ax=ax,
        name="LAC",
    )
    assert display.ax_ is ax and display.figure_ is ax.figure
    np.testing.assert_allclose(display.line_.get_ydata(), curve.coverage)
    assert display.line_.get_label() == "LAC"
    plt.close("all")
