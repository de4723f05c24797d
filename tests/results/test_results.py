"""Result objects: derived quantities, conversion, and pickle-free persistence."""

from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch
from scipy import stats

import mcdrop
from mcdrop.results import ClassificationResult, RegressionResult


def _classification(targets=True, samples=True):
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(20, 5, 3), -1).double()
    return mcdrop.summarize_samples(
        probs, outputs="probs", targets=torch.randint(0, 3, (5,)) if targets else None
    ), probs


def test_derived_quantities_match_definitions():
    result, probs = _classification()
    mean = probs.mean(0)
    assert torch.equal(result.predicted_class, mean.argmax(-1))
    np.testing.assert_allclose(result.confidence, mean.max(-1).values)
    np.testing.assert_allclose(result.std, probs.std(0, unbiased=False), atol=1e-12)
    np.testing.assert_allclose(
        result.standard_error, probs.std(0, unbiased=True) / math.sqrt(20), atol=1e-12
    )
    assert result.num_classes == 3
    single = ClassificationResult(
        mean=torch.ones(2, 1, dtype=torch.float64),
        variance=torch.zeros(2, 1, dtype=torch.float64),
        predictive_entropy=torch.zeros(2),
        expected_entropy=torch.zeros(2),
        variation_ratio=torch.zeros(2),
        n_samples=3,
    )
    np.testing.assert_allclose(single.margin, 1.0)


def test_save_load_roundtrip_classification(tmp_path):
    result, _ = _classification()
    path = tmp_path / "result.npz"
    result.save(path)
    loaded = mcdrop.load_result(path)
    assert isinstance(loaded, ClassificationResult)
    for key, value in result.to_dict().items():
        other = loaded.to_dict()[key]
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, other), key
        else:
            assert value == other, key
    assert ClassificationResult.load(path).n_samples == 20
    with pytest.raises(ValueError, match="RegressionResult"):
        RegressionResult.load(path)


def test_save_load_regression_without_suffix(tmp_path):
    res = mcdrop.summarize_samples(torch.randn(10, 4, 1), task="regression", tau=2.0)
    res.save(tmp_path / "reg")  # numpy appends .npz
    loaded = mcdrop.load_result(tmp_path / "reg")
    assert isinstance(loaded, RegressionResult) and loaded.tau == 2.0 and loaded.targets is None
    assert torch.equal(loaded.epistemic_variance, res.epistemic_variance)


def test_file_format_needs_no_pickle(tmp_path):
    result, _ = _classification()
    path = tmp_path / "r.npz"
    result.save(path)
    with np.load(path, allow_pickle=False) as archive:
        meta = json.loads(archive["__meta__"].tobytes())
        assert meta["task"] == "classification" and meta["format"] == "mcdrop-result"
        assert all(archive[k].dtype != object for k in archive.files)


def test_loading_rejects_other_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        mcdrop.load_result(tmp_path / "missing.npz")
    bad = tmp_path / "bad.npz"
    bad.write_text("not a zip")
    with pytest.raises(ValueError, match="`path`.*mcdrop result"):
        mcdrop.load_result(bad)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(ValueError, match="no metadata"):
        mcdrop.load_result(plain)
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, __meta__=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(ValueError, match="`path`"):
        mcdrop.load_result(pickled)
    future = tmp_path / "future.npz"
    meta = json.dumps({"format": "mcdrop-result", "version": 99, "task": "regression"}).encode()
    np.savez(future, __meta__=np.frombuffer(meta, dtype=np.uint8))
    with pytest.raises(ValueError, match="version"):
        mcdrop.load_result(future)
    assert zipfile.is_zipfile(plain)


def test_to_numpy_has_every_quantity():
    result, _ = _classification()
    out = result.to_numpy()
    for key in (
        "mean",
        "variance",
        "mutual_information",
        "predictive_entropy",
        "expected_entropy",
        "variation_ratio",
        "margin",
        "standard_error",
        "predicted_class",
        "targets",
        "std",
    ):
        assert isinstance(out[key], np.ndarray), key
    assert out["task"] == "classification" and out["n_samples"] == 20


def test_interval_levels_and_errors():
    res = RegressionResult(
        mean=torch.zeros(4, dtype=torch.float64),
        epistemic_variance=torch.full((4,), 1.0, dtype=torch.float64),
        aleatoric_variance=torch.full((4,), 3.0, dtype=torch.float64),
        n_samples=50,
    )
    _, hi = res.interval(0.5)
    np.testing.assert_allclose(hi, stats.norm.ppf(0.75) * 2.0)
    _, hi = res.interval(0.95, kind="epistemic")
    np.testing.assert_allclose(hi, stats.norm.ppf(0.975))
    for level in (0.0, 1.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match="`level`"):
            res.interval(level)
    with pytest.raises(ValueError, match="`kind`"):
        res.interval(0.9, kind="aleatoric")


def test_shape_validation():
    with pytest.raises(ValueError, match="`variance`"):
        ClassificationResult(
            mean=torch.zeros(3, 2),
            variance=torch.zeros(3, 3),
            predictive_entropy=torch.zeros(3),
            expected_entropy=torch.zeros(3),
            variation_ratio=torch.zeros(3),
            n_samples=2,
        )
    with pytest.raises(ValueError, match="`targets`"):
        RegressionResult(
            mean=torch.zeros(3),
            epistemic_variance=torch.zeros(3),
            aleatoric_variance=torch.zeros(3),
            n_samples=2,
            targets=torch.zeros(4),
        )
    with pytest.raises(ValueError, match="`samples`"):
        RegressionResult(
            mean=torch.zeros(3),
            epistemic_variance=torch.zeros(3),
            aleatoric_variance=torch.zeros(3),
            n_samples=2,
            samples=torch.zeros(2, 4),
        )
