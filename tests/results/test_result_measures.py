"""Disagreement, EPKL and reverse mutual information of ClassificationResult, against loops over
pairs of samples and torch-uncertainty's Disagreement."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch
from peer_libraries import torch_uncertainty

from mcdrop import ClassificationResult, summarize_samples


def _with_samples(samples: torch.Tensor) -> ClassificationResult:
    """The result of sampled probabilities ``(T, N, C, *S)`` that keeps them."""
    summary = summarize_samples(samples, outputs="probs")
    return dataclasses.replace(summary, samples=samples)


def _result(
    t: int, n: int, c: int, *, extra=(), seed=0, dtype=torch.float64
) -> ClassificationResult:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((t, n, c, *extra), generator=gen, dtype=torch.float64) * 2.0
    return _with_samples(logits.softmax(dim=2).to(dtype))


def _kl(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q, strict=True) if a > 0)


@pytest.mark.parametrize(("t", "n", "c"), [(2, 3, 2), (6, 5, 3), (9, 4, 10)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_measures_match_loops_over_pairs_of_samples(t, n, c, dtype):
    result = _result(t, n, c, seed=t + c, dtype=dtype)
    samples = result.samples.to(torch.float64).numpy()
    for i in range(n):
        dists = [samples[s, i] for s in range(t)]
        votes = [int(np.argmax(p)) for p in dists]
        pairs = list(itertools.permutations(range(t), 2))
        disagree = sum(votes[a] != votes[b] for a, b in pairs) / len(pairs)
        mean = np.mean(dists, axis=0)
        epkl = sum(_kl(dists[a], dists[b]) for a in range(t) for b in range(t)) / t**2
        rmi = sum(_kl(mean, p) for p in dists) / t
        mi = sum(_kl(p, mean) for p in dists) / t
        assert float(result.disagreement[i]) == pytest.approx(disagree, abs=1e-12)
        assert float(result.expected_pairwise_kl[i]) == pytest.approx(epkl, rel=1e-9, abs=1e-12)
        assert float(result.reverse_mutual_information[i]) == pytest.approx(
            rmi, rel=1e-9, abs=1e-12
        )
        # the decomposition of Malinin & Gales: EPKL = MI + RMI
        assert epkl == pytest.approx(mi + rmi, rel=1e-9, abs=1e-12)


def test_disagreement_equals_torch_uncertainty():
    tu = torch_uncertainty("metrics.classification.disagreement")
    result = _result(12, 40, 4, seed=3)
    metric = tu.Disagreement(reduction="none")
    metric.update(result.samples.permute(1, 0, 2))  # torch-uncertainty: (N, estimators, C)
    np.testing.assert_allclose(result.disagreement.numpy(), metric.compute().numpy(), atol=1e-6)


def test_measures_follow_class_dim_of_dense_outputs():
    dense = _result(5, 3, 4, extra=(2, 3), seed=4)  # samples (T, N, C, H, W)
    moved = dense.samples.movedim(2, -1).reshape(5, -1, 4)  # one prediction per pixel
    flat = _with_samples(moved)
    for name in ("disagreement", "expected_pairwise_kl", "reverse_mutual_information"):
        got = getattr(dense, name)
        assert got.shape == (3, 2, 3)
        np.testing.assert_allclose(got.reshape(-1).numpy(), getattr(flat, name).numpy(), atol=1e-12)


def test_agreeing_samples_give_zero_and_zeros_in_samples_give_inf():
    probs = torch.tensor([[0.7, 0.3, 0.0], [0.6, 0.3, 0.1]], dtype=torch.float64)
    same = _with_samples(probs[:1].expand(4, 1, 3).clone())
    assert float(same.disagreement[0]) == 0.0
    assert float(same.expected_pairwise_kl[0]) == 0.0
    assert float(same.reverse_mutual_information[0]) == 0.0
    mixed = _with_samples(probs[:, None, :])
    # class 2 has probability 0 in one sample and 0.05 on average: KL(p_t || p_s) is infinite
    assert math.isinf(float(mixed.expected_pairwise_kl[0]))
    assert math.isinf(float(mixed.reverse_mutual_information[0]))
    assert math.isfinite(float(mixed.mutual_information[0]))


def test_measures_need_kept_samples_and_pairs():
    result = _result(4, 3, 3)
    bare = summarize_samples(result.samples, outputs="probs")
    for name in ("disagreement", "expected_pairwise_kl", "reverse_mutual_information"):
        with pytest.raises(ValueError, match=f"`{name}`.*keep_samples=True"):
            getattr(bare, name)
    single = _result(1, 3, 3)
    with pytest.raises(ValueError, match="at least 2 samples"):
        _ = single.disagreement
    assert torch.all(single.expected_pairwise_kl == 0.0)
