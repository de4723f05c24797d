"""Stochastic batch acquisition: the sampling distribution against the expected probabilities."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.stats
import torch

from mcdrop.active import stochastic_batch

SCORES = np.array([0.05, 0.4, 0.1, 0.9, 0.25, 0.6])


def _expected(scores: np.ndarray, mode: str, beta: float) -> np.ndarray:
    """One-draw probabilities written from the definitions of Kirsch et al. (2023)."""
    if mode == "power":
        weights = scores**beta
    elif mode == "softmax":
        weights = np.exp(beta * scores)
    else:
        order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
        ranks = np.empty(len(scores))
        for rank, i in enumerate(order, start=1):
            ranks[i] = rank
        weights = ranks ** (-beta)
    return weights / weights.sum()


@pytest.mark.parametrize(
    ("mode", "beta"), [("power", 1.0), ("power", 2.0), ("softmax", 3.0), ("rank", 1.0)]
)
def test_a_single_draw_follows_the_expected_probabilities(mode: str, beta: float) -> None:
    draws = 3000
    counts = np.zeros(len(SCORES))
    for seed in range(draws):
        counts[int(stochastic_batch(SCORES, 1, mode=mode, beta=beta, seed=seed).indices[0])] += 1
    expected = _expected(SCORES, mode, beta) * draws
    assert scipy.stats.chisquare(counts, expected).pvalue > 1e-3
    # The test has power: the uniform distribution (what a bug ignoring the scores would give)
    # is rejected.
    assert scipy.stats.chisquare(counts, np.full(len(SCORES), draws / len(SCORES))).pvalue < 1e-6


def test_two_draws_are_without_replacement_in_plackett_luce_order() -> None:
    scores = np.array([0.1, 0.5, 0.2, 0.8])
    q = _expected(scores, "power", 1.0)
    pairs = list(itertools.permutations(range(4), 2))
    expected = np.array([q[i] * q[j] / (1 - q[i]) for i, j in pairs])
    draws = 3000
    counts = dict.fromkeys(pairs, 0)
    for seed in range(draws):
        i, j = stochastic_batch(scores, 2, seed=seed).tolist()
        counts[(i, j)] += 1
    assert (
        scipy.stats.chisquare(np.array([counts[p] for p in pairs]), expected * draws).pvalue > 1e-3
    )


def test_a_seed_gives_the_same_batch_and_leaves_the_global_streams_alone() -> None:
    scores = np.random.default_rng(0).random(50)
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()[1].copy()  # noqa: NPY002
    a = stochastic_batch(scores, 10, mode="softmax", beta=5.0, seed=3)
    b = stochastic_batch(scores, 10, mode="softmax", beta=5.0, seed=3)
    assert a.tolist() == b.tolist()
    assert len(set(a.tolist())) == 10
    np.testing.assert_array_equal(a.scores.numpy(), scores[a.indices.numpy()])
    assert torch.equal(torch.get_rng_state(), torch_state)
    np.testing.assert_array_equal(np.random.get_state()[1], numpy_state)  # noqa: NPY002
    assert stochastic_batch(scores, 10, seed=4).tolist() != a.tolist()


def test_limits_of_beta() -> None:
    scores = np.random.default_rng(1).random(30)
    top = np.argsort(-scores)[:5].tolist()
    assert stochastic_batch(scores, 5, mode="softmax", beta=1e4, seed=0).tolist() == top
    # beta = 0 is uniform: every example is first equally often.
    firsts = [
        stochastic_batch(scores, 1, mode="rank", beta=0.0, seed=s).tolist()[0] for s in range(1500)
    ]
    counts = np.bincount(firsts, minlength=30)
    assert scipy.stats.chisquare(counts).pvalue > 1e-3


def test_zero_power_scores_come_last_in_random_order() -> None:
    scores = np.array([0.0, 0.3, 0.0, 0.7, 0.0])
    seen = set()
    for seed in range(60):
        chosen = stochastic_batch(scores, 5, seed=seed).tolist()
        assert sorted(chosen[:2]) == [1, 3]
        seen.add(tuple(chosen[2:]))
    assert len(seen) == 6  # all orders of the three zeros


@pytest.mark.parametrize(
    ("scores", "n", "kwargs", "error", "message"),
    [
        (np.array([0.5, -0.1]), 1, {}, ValueError, r"`scores` >= 0 for mode='power'"),
        (SCORES, 7, {}, ValueError, r"`n` to be at most .*`scores` \(6\)"),
        (SCORES, 1, {"mode": "top"}, ValueError, r"`mode`"),
        (SCORES, 1, {"beta": -1.0}, ValueError, r"`beta`"),
        (SCORES, 1, {"beta": True}, TypeError, r"`beta`"),
        (np.ones((2, 3)), 1, {}, ValueError, r"`scores`"),
        (np.array([np.nan, 1.0]), 1, {}, ValueError, r"`scores`"),
        (np.array([]), 1, {}, ValueError, r"`scores`"),
    ],
)
def test_bad_input_is_refused(scores, n, kwargs, error, message) -> None:
    with pytest.raises(error, match=message):
        stochastic_batch(scores, n, **kwargs)
