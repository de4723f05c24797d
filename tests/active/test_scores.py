"""Single-point acquisition scores against naive loops, scipy and mcdrop's own results."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mcdrop import summarize_samples
from mcdrop.active import (
    bald,
    entropy,
    least_confidence,
    margin,
    mean_std,
    variation_ratio,
)

SCORES = {
    "bald": bald,
    "entropy": entropy,
    "margin": margin,
    "least_confidence": least_confidence,
    "variation_ratio": variation_ratio,
    "mean_std": mean_std,
}


def _probs(shape: tuple[int, ...], seed: int, concentration: float = 0.4) -> np.ndarray:
    """Dirichlet probability vectors along dimension 2 (the class dimension)."""
    rng = np.random.default_rng(seed)
    t, n, c, *rest = shape
    draws = rng.dirichlet(np.full(c, concentration), size=(t, n, *rest))  # (..., C) last
    return np.moveaxis(draws, -1, 2)


def _naive(name: str, p: np.ndarray) -> np.ndarray:
    """Score of each example of (T, N, C), written from the formula with explicit loops."""
    t_count, n_count, c_count = p.shape
    out = np.zeros(n_count)
    for i in range(n_count):
        mean = [sum(p[t, i, c] for t in range(t_count)) / t_count for c in range(c_count)]
        h_mean = -sum(m * math.log(m) for m in mean if m > 0)
        if name == "entropy":
            out[i] = h_mean
        elif name == "bald":
            h_each = [
                -sum(p[t, i, c] * math.log(p[t, i, c]) for c in range(c_count) if p[t, i, c] > 0)
                for t in range(t_count)
            ]
            out[i] = h_mean - sum(h_each) / t_count
        elif name == "margin":
            first, second = sorted(mean, reverse=True)[:2]
            out[i] = 1.0 - (first - second)
        elif name == "least_confidence":
            out[i] = 1.0 - max(mean)
        elif name == "variation_ratio":
            votes = [0] * c_count
            for t in range(t_count):
                row = list(p[t, i])
                votes[row.index(max(row))] += 1
            out[i] = 1.0 - max(votes) / t_count
        elif name == "mean_std":
            stds = [
                math.sqrt(sum((p[t, i, c] - mean[c]) ** 2 for t in range(t_count)) / t_count)
                for c in range(c_count)
            ]
            out[i] = sum(stds) / c_count
    return out


@pytest.mark.parametrize("name", sorted(SCORES))
def test_each_score_matches_a_naive_loop(name: str) -> None:
    p = _probs((9, 13, 5), seed=1)
    got = SCORES[name](p)
    assert got.dtype == torch.float64
    assert got.shape == (13,)
    np.testing.assert_allclose(got.numpy(), _naive(name, p), rtol=1e-12, atol=1e-12)
    assert got.std() > 0.01  # the probabilities differ enough for the comparison to mean something


def test_entropy_and_bald_match_scipy() -> None:
    p = _probs((6, 11, 4), seed=2)
    mean = p.mean(0)
    expected_entropy = scipy.stats.entropy(mean, axis=1)
    expected_bald = expected_entropy - scipy.stats.entropy(p, axis=2).mean(0)
    np.testing.assert_allclose(entropy(p).numpy(), expected_entropy, rtol=1e-12)
    np.testing.assert_allclose(bald(p).numpy(), expected_bald, rtol=1e-10, atol=1e-14)


def test_scores_match_mcdrops_own_result() -> None:
    p = torch.from_numpy(_probs((16, 20, 3), seed=3))
    result = summarize_samples(p, outputs="probs")
    torch.testing.assert_close(bald(p), result.mutual_information.double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(entropy(p), result.predictive_entropy.double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(variation_ratio(p), result.variation_ratio.double())
    torch.testing.assert_close(mean_std(p), result.std.mean(1).double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(margin(p), 1.0 - result.margin.double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(
        least_confidence(p), 1.0 - result.confidence.double(), rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("name", sorted(SCORES))
def test_pixel_scores_and_reductions(name: str) -> None:
    p = _probs((5, 4, 3, 2, 3), seed=4)  # (T, N, C, H, W)
    per_pixel = SCORES[name](p, reduction=None)
    assert per_pixel.shape == (4, 2, 3)
    # Every pixel scored as an example of its own.
    as_examples = np.moveaxis(p, 2, -1).reshape(5, -1, 3)
    as_examples = np.moveaxis(as_examples, -1, 2)
    np.testing.assert_allclose(
        per_pixel.numpy().ravel(), _naive(name, as_examples), rtol=1e-12, atol=1e-12
    )
    flat = per_pixel.numpy().reshape(4, -1)
    np.testing.assert_allclose(SCORES[name](p).numpy(), flat.mean(1), rtol=1e-12)
    np.testing.assert_allclose(SCORES[name](p, reduction="sum").numpy(), flat.sum(1), rtol=1e-12)
    np.testing.assert_allclose(SCORES[name](p, reduction="max").numpy(), flat.max(1), rtol=1e-12)


def test_float32_and_numpy_and_tensor_inputs_agree() -> None:
    p = _probs((8, 6, 4), seed=5)
    from_numpy = bald(p)
    from_tensor32 = bald(torch.from_numpy(p).float())
    torch.testing.assert_close(from_tensor32, from_numpy, rtol=1e-5, atol=1e-6)


def test_scores_of_a_chunked_pool_equal_those_of_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcdrop.active import _checks

    p = _probs((4, 50, 3), seed=6)
    whole = bald(p)
    monkeypatch.setattr(_checks, "CHUNK_ELEMENTS", 4 * 3 * 7)  # chunks of 7 examples
    torch.testing.assert_close(bald(p), whole, rtol=0, atol=0)


@settings(max_examples=40, deadline=None)
@given(
    t=st.integers(2, 6),
    n=st.integers(1, 5),
    c=st.integers(2, 5),
    seed=st.integers(0, 2**31),
    concentration=st.sampled_from([0.05, 0.5, 5.0]),
)
def test_score_invariants(t: int, n: int, c: int, seed: int, concentration: float) -> None:
    p = _probs((t, n, c), seed=seed, concentration=concentration)
    h, mi = entropy(p), bald(p)
    assert torch.all(mi >= 0) and torch.all(mi <= h + 1e-12)
    assert torch.all(h <= math.log(c) + 1e-12)
    for name, fn in SCORES.items():
        value = fn(p)
        # The order of the samples does not matter; the order of the examples carries over.
        rng = np.random.default_rng(seed)
        perm_t, perm_n = rng.permutation(t), rng.permutation(n)
        torch.testing.assert_close(fn(p[perm_t]), value, rtol=1e-10, atol=1e-12, msg=name)
        torch.testing.assert_close(fn(p[:, perm_n]), value[perm_n], rtol=1e-10, atol=1e-12)
        if name not in ("entropy", "bald"):
            assert torch.all(value >= -1e-12) and torch.all(value <= 1 + 1e-12), name


def test_identical_samples_have_no_epistemic_score() -> None:
    one = _probs((1, 7, 4), seed=7)
    same = np.repeat(one, 5, axis=0)
    for fn in (bald, variation_ratio, mean_std):
        torch.testing.assert_close(
            fn(same), torch.zeros(7, dtype=torch.float64), atol=1e-12, rtol=0
        )


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["bald", "variation_ratio", "mean_std"])
def test_a_single_sample_is_refused_by_the_epistemic_scores(name: str) -> None:
    with pytest.raises(ValueError, match=r"`probs`.*at least 2 Monte Carlo samples.*T = 1"):
        SCORES[name](_probs((1, 3, 4), seed=0))


@pytest.mark.parametrize("name", ["entropy", "margin", "least_confidence"])
def test_a_single_sample_is_fine_for_the_predictive_scores(name: str) -> None:
    p = _probs((1, 3, 4), seed=0)
    np.testing.assert_allclose(SCORES[name](p).numpy(), _naive(name, p), rtol=1e-12)


@pytest.mark.parametrize(
    ("probs", "error", "message"),
    [
        (np.full((3, 4), 0.25), ValueError, r"`probs` to have shape \(T, N, C\)"),
        (np.full((3, 0, 4), 0.25), ValueError, r"`probs` to hold at least one example"),
        (np.ones((3, 2, 1)), ValueError, r"at least 2 classes"),
        (np.full((3, 2, 4), 0.3), ValueError, r"sum to 1 along the class dimension"),
        (np.array([[[1.5, -0.5]]] * 2), ValueError, r"probabilities in \[0, 1\]"),
        (np.array([[[np.nan, 1.0]]] * 2), ValueError, r"finite"),
        (np.array([[["a", "b"]]]), TypeError, r"`probs`"),
    ],
)
def test_bad_probs_are_refused(probs: np.ndarray, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        bald(probs)


def test_logits_are_refused_with_a_hint() -> None:
    with pytest.raises(ValueError, match="not logits"):
        entropy(torch.randn(4, 3, 5).abs() / 10)


def test_a_bad_reduction_is_refused() -> None:
    with pytest.raises(ValueError, match="`reduction`"):
        bald(_probs((2, 3, 4, 5), seed=0), reduction="median")
    with pytest.raises(TypeError, match="`reduction`"):
        bald(_probs((2, 3, 4), seed=0), reduction=1)
