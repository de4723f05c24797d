"""torchmetrics versions equal mcdrop.metrics: after several updates, merges and resets."""

from __future__ import annotations

import itertools

import pytest
import torch

pytest.importorskip("torchmetrics")

import mcdrop
from mcdrop import metrics
from mcdrop.torchmetrics import (
    AUGRC,
    Accuracy,
    BrierScore,
    CalibrationError,
    EnergyScore,
    GaussianNLL,
    MisclassificationAUROC,
    NegativeLogLikelihood,
)


def _result(n: int = 600, c: int = 4, seed: int = 0) -> mcdrop.ClassificationResult:
    """A real MC dropout result with targets (half right, half noise)."""
    g = torch.Generator().manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Linear(5, 32), torch.nn.ReLU(), torch.nn.Dropout(0.4), torch.nn.Linear(32, c)
    ).eval()
    x = torch.randn(n, 5, generator=g)
    with torch.no_grad():
        y = model[3](model[1](model[0](x))).argmax(1)
    y[: n // 2] = torch.randint(0, c, (n // 2,), generator=g)
    return mcdrop.predict_with_uncertainty(model, x, targets=y, n_samples=20, seed=seed)


def _slice(result: mcdrop.ClassificationResult, lo: int, hi: int) -> mcdrop.ClassificationResult:
    return mcdrop.ClassificationResult(
        result.mean[lo:hi],
        result.variance[lo:hi],
        result.predictive_entropy[lo:hi],
        result.expected_entropy[lo:hi],
        result.variation_ratio[lo:hi],
        n_samples=result.n_samples,
        targets=result.targets[lo:hi],
    )


RESULT = _result()
Y, P = RESULT.targets.numpy(), RESULT.mean.numpy()
CASES = [
    (NegativeLogLikelihood, {}, lambda: metrics.negative_log_likelihood(Y, P)),
    (BrierScore, {}, lambda: metrics.brier_score(Y, P)),
    (Accuracy, {}, lambda: metrics.accuracy(Y, P)),
    (CalibrationError, {}, lambda: metrics.expected_calibration_error(Y, P)),
    (CalibrationError, {"n_bins": 7, "norm": "l2"}, lambda: metrics.expected_calibration_error(Y, P, n_bins=7, norm="l2")),
    (CalibrationError, {"norm": "max"}, lambda: metrics.maximum_calibration_error(Y, P)),
    (MisclassificationAUROC, {}, lambda: metrics.misclassification_auroc(Y, P, RESULT.mutual_information)),
    (MisclassificationAUROC, {"score": "predictive_entropy"}, lambda: metrics.misclassification_auroc(Y, P, RESULT.predictive_entropy)),
    (AUGRC, {}, lambda: metrics.augrc(Y, P, RESULT.predictive_entropy)),
    (AUGRC, {"score": "mutual_information"}, lambda: metrics.augrc(Y, P, RESULT.mutual_information)),
]  # fmt: skip
CUTS = [0, 50, 51, 230, 600]  # uneven batches, one of a single example


@pytest.mark.parametrize(("cls", "kwargs", "reference"), CASES)
def test_equal_to_functional_after_several_updates(cls, kwargs, reference) -> None:
    metric = cls(**kwargs)
    for lo, hi in itertools.pairwise(CUTS):
        metric.update(_slice(RESULT, lo, hi))
    assert float(metric.compute()) == pytest.approx(reference(), rel=1e-12, abs=1e-14)
    metric.reset()
    metric.update(_slice(RESULT, 0, 600))
    assert float(metric.compute()) == pytest.approx(reference(), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize(("cls", "kwargs", "reference"), CASES)
def test_equal_after_merging_states_as_ddp(cls, kwargs, reference) -> None:
    """Two "ranks" see different batches; merge_state reduces with each dist_reduce_fx."""
    rank0, rank1 = cls(**kwargs), cls(**kwargs)
    rank0.update(_slice(RESULT, 0, 230))
    rank1.update(_slice(RESULT, 230, 400))
    rank1.update(_slice(RESULT, 400, 600))
    rank0.merge_state(rank1)
    assert float(rank0.compute()) == pytest.approx(reference(), rel=1e-12, abs=1e-14)


def test_sum_states_reduce_by_hand_like_all_reduce() -> None:
    parts = [CalibrationError(n_bins=10), CalibrationError(n_bins=10)]
    parts[0].update(_slice(RESULT, 0, 300))
    parts[1].update(_slice(RESULT, 300, 600))
    merged = CalibrationError(n_bins=10)
    merged._update_count = 2  # as after a sync: states filled by the reduction, not by update
    for name, reduce in merged._reductions.items():
        assert reduce is not None
        setattr(merged, name, getattr(parts[0], name) + getattr(parts[1], name))
    expected = metrics.expected_calibration_error(Y, P, n_bins=10)
    assert float(merged.compute()) == pytest.approx(expected, rel=1e-12)


def test_probability_tensors_and_explicit_scores() -> None:
    metric = MisclassificationAUROC()
    metric.update(RESULT.mean[:300], RESULT.targets[:300], scores=RESULT.mutual_information[:300])
    metric.update(RESULT.mean[300:], RESULT.targets[300:], scores=RESULT.mutual_information[300:])
    expected = metrics.misclassification_auroc(Y, P, RESULT.mutual_information)
    assert float(metric.compute()) == pytest.approx(expected)
    nll = NegativeLogLikelihood()
    nll.update(torch.from_numpy(P), torch.from_numpy(Y))
    assert float(nll.compute()) == pytest.approx(metrics.negative_log_likelihood(Y, P))


def test_dense_results_flatten_like_evaluate() -> None:
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(6, 3, 5, generator=g, dtype=torch.float64), dim=1)
    labels = torch.randint(0, 3, (6, 5), generator=g)
    dense = mcdrop.ClassificationResult(
        probs, probs * 0, torch.zeros(6, 5), torch.zeros(6, 5), torch.zeros(6, 5), 1, targets=labels
    )
    metric = BrierScore()
    metric.update(dense)
    assert float(metric.compute()) == pytest.approx(metrics.evaluate(dense)["brier"])


def test_regression_gaussian_nll() -> None:
    g = torch.Generator().manual_seed(0)
    mean, y = torch.randn(50, generator=g), torch.randn(50, generator=g)
    var = torch.rand(50, generator=g) + 0.1
    result = mcdrop.RegressionResult(mean, var, torch.zeros(50), 10, targets=y)
    metric = GaussianNLL()
    metric.update(result)
    expected = metrics.gaussian_nll(y, mean, var)
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-12)
    metric.reset()
    metric.update((mean[:20], var[:20]), y[:20])
    metric.update((mean[20:], var[20:]), y[20:])
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-12)


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="target"):
        NegativeLogLikelihood().update(RESULT.mean)
    with pytest.raises(ValueError, match="labels in"):
        BrierScore().update(RESULT.mean, RESULT.targets + 10)
    with pytest.raises(ValueError, match="sum to 1"):
        BrierScore().update(RESULT.mean * 0.5, RESULT.targets)
    with pytest.raises(TypeError, match="scores="):
        MisclassificationAUROC().update(RESULT.mean, RESULT.targets)
    with pytest.raises(ValueError, match="score"):
        MisclassificationAUROC(score="confidence")
    with pytest.raises(ValueError, match="n_bins"):
        CalibrationError(n_bins=0)
    with pytest.raises(ValueError, match="before `compute`"):
        NegativeLogLikelihood().compute()
    auroc = MisclassificationAUROC()
    auroc.update(RESULT.mean, RESULT.mean.argmax(1), scores=RESULT.mutual_information)
    with pytest.raises(ValueError, match="undefined"):
        auroc.compute()


def test_core_import_does_not_import_torchmetrics() -> None:
    import subprocess
    import sys

    code = "import sys, mcdrop; print(any(m.split('.')[0] in {'torchmetrics', 'lightning', 'transformers', 'mapie'} for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_states_are_tensors_that_ddp_can_reduce() -> None:
    metric = CalibrationError()
    assert all(isinstance(v, torch.Tensor) for v in metric.metric_state.values())
    assert set(metric._reductions) == {"bin_count", "bin_confidence", "bin_hits"}


def test_augrc_equals_evaluate_and_takes_explicit_scores() -> None:
    metric = AUGRC()
    metric.update(RESULT.mean[:100], RESULT.targets[:100], scores=RESULT.predictive_entropy[:100])
    metric.update(RESULT.mean[100:], RESULT.targets[100:], scores=RESULT.predictive_entropy[100:])
    assert float(metric.compute()) == pytest.approx(metrics.evaluate(RESULT)["augrc"], rel=1e-12)
    with pytest.raises(ValueError, match="before `compute`"):
        AUGRC().compute()


def _regression_with_samples(n: int = 90, t: int = 12, d: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    samples = torch.randn(t, n, d, generator=g, dtype=torch.float64)
    mean = samples.mean(0)
    targets = mean + torch.randn(n, d, generator=g, dtype=torch.float64)
    return mcdrop.RegressionResult(
        mean, samples.var(0, unbiased=False), torch.zeros_like(mean), t,
        targets=targets, samples=samples,
    )  # fmt: skip


def test_energy_score_streams_and_merges() -> None:
    result = _regression_with_samples()
    expected = metrics.energy_score(result.targets, result.samples)
    metric = EnergyScore()
    for lo, hi in itertools.pairwise([0, 1, 40, 90]):
        metric.update(result.samples[:, lo:hi], result.targets[lo:hi])
    assert float(metric.compute()) == pytest.approx(expected, rel=1e-12)
    rank0, rank1 = EnergyScore(), EnergyScore()
    rank0.update(result)
    rank1.update(_regression_with_samples(seed=1))
    rank0.merge_state(rank1)
    other = _regression_with_samples(seed=1)
    both = (expected + metrics.energy_score(other.targets, other.samples)) / 2
    assert float(rank0.compute()) == pytest.approx(both, rel=1e-12)
    bare = mcdrop.RegressionResult(
        result.mean,
        result.epistemic_variance,
        result.aleatoric_variance,
        12,
        targets=result.targets,
    )
    with pytest.raises(ValueError, match="keep_samples"):
        EnergyScore().update(bare)
    with pytest.raises(ValueError, match="target"):
        EnergyScore().update(result.samples)
