"""EPIG against a naive loop, the reference implementation's formulas, and its invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mcdrop.active import bald, entropy, epig


def _probs(t: int, n: int, c: int, seed: int, concentration: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.moveaxis(rng.dirichlet(np.full(c, concentration), size=(t, n)), -1, 2)


def _naive_epig(pool: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Mean over targets of I(y; y*) = KL(p(y, y*) || p(y) p(y*)), with explicit loops."""
    t_count, n_count, c_count = pool.shape
    m_count, c_target = target.shape[1], target.shape[2]
    out = np.zeros(n_count)
    for i in range(n_count):
        total = 0.0
        for j in range(m_count):
            p_y = [sum(pool[t, i, a] for t in range(t_count)) / t_count for a in range(c_count)]
            p_s = [sum(target[t, j, b] for t in range(t_count)) / t_count for b in range(c_target)]
            for a in range(c_count):
                for b in range(c_target):
                    joint = sum(pool[t, i, a] * target[t, j, b] for t in range(t_count)) / t_count
                    if joint > 0:
                        total += joint * math.log(joint / (p_y[a] * p_s[b]))
        out[i] = total / m_count
    return out


def _reference_epig(probs_pool: torch.Tensor, probs_targ: torch.Tensor) -> torch.Tensor:
    """The formulas of the reference implementation (``epig_from_probs_using_matmul`` and
    ``conditional_epig_from_probs``), written anew for ``[N, K, Cl]`` inputs."""
    n_t, k, cl = probs_targ.shape

    def marginal_entropy(p: torch.Tensor) -> torch.Tensor:
        mean = p.mean(1)
        return -torch.special.xlogy(mean, mean).sum(-1)

    joint = probs_pool.permute(0, 2, 1) @ probs_targ.permute(1, 0, 2).reshape(k, n_t * cl) / k
    joint_entropy = -torch.special.xlogy(joint, joint).sum((-2, -1)) / n_t
    by_matmul = marginal_entropy(probs_pool) + marginal_entropy(probs_targ).mean() - joint_entropy

    pool5 = probs_pool[:, None, :, :, None]
    targ5 = probs_targ[None, :, :, None, :]
    joint5 = (pool5 * targ5).mean(2)
    independent = pool5.mean(2) * targ5.mean(2)
    conditional = torch.special.xlogy(joint5, joint5).sum((-2, -1)) - torch.special.xlogy(
        joint5, independent
    ).sum((-2, -1))
    torch.testing.assert_close(by_matmul, conditional.mean(-1), rtol=1e-9, atol=1e-12)
    return by_matmul


def test_epig_matches_a_naive_loop() -> None:
    pool, target = _probs(7, 6, 3, seed=0), _probs(7, 4, 3, seed=1)
    got = epig(pool, target)
    assert got.shape == (6,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), _naive_epig(pool, target), rtol=1e-10, atol=1e-12)
    assert got.std() > 1e-3


def test_epig_matches_the_reference_formulas() -> None:
    pool, target = _probs(20, 30, 5, seed=2), _probs(20, 9, 5, seed=3)
    expected = _reference_epig(
        torch.from_numpy(pool).permute(1, 0, 2), torch.from_numpy(target).permute(1, 0, 2)
    )
    torch.testing.assert_close(epig(pool, target), expected.clamp_min(0), rtol=1e-6, atol=1e-9)


def test_chunked_epig_equals_one_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from mcdrop.active import _checks, _epig

    pool, target = _probs(5, 40, 3, seed=4), _probs(5, 6, 3, seed=5)
    whole = epig(pool, target)
    monkeypatch.setattr(_epig, "CHUNK_ELEMENTS", 3 * 6 * 3 * 4)
    monkeypatch.setattr(_checks, "CHUNK_ELEMENTS", 5 * 3 * 9)
    torch.testing.assert_close(epig(pool, target), whole, rtol=0, atol=1e-15)


def test_a_target_without_epistemic_uncertainty_gives_zero() -> None:
    pool = _probs(10, 8, 4, seed=6)
    constant = np.repeat(_probs(1, 5, 4, seed=7), 10, axis=0)  # every network agrees
    torch.testing.assert_close(epig(pool, constant), torch.zeros(8, dtype=torch.float64))


def test_independent_samples_give_about_zero() -> None:
    """Pool and targets from independent networks (a mask per example) carry no information
    about each other: EPIG shrinks to the finite-T noise, far below its shared-mask value."""
    t, d, c = 400, 5, 4
    rng = np.random.default_rng(8)
    weights = rng.normal(size=(t, d, c)) * 1.5  # network t: a softmax-linear model
    pool_x, target_x = rng.normal(size=(12, d)), rng.normal(size=(10, d))
    pool = torch.softmax(torch.from_numpy(np.einsum("nd,tdc->tnc", pool_x, weights)), -1)
    target = torch.softmax(torch.from_numpy(np.einsum("nd,tdc->tnc", target_x, weights)), -1)
    shared = epig(pool, target)
    independent = torch.stack([target[rng.permutation(t), j] for j in range(10)], dim=1)
    unshared = epig(pool, independent)
    assert float(shared.min()) > 0.02
    assert float(unshared.mean()) < 0.1 * float(shared.mean())


@settings(max_examples=30, deadline=None)
@given(
    t=st.integers(2, 8),
    n=st.integers(1, 4),
    m=st.integers(1, 4),
    c=st.integers(2, 4),
    seed=st.integers(0, 2**31),
)
def test_epig_invariants(t: int, n: int, m: int, c: int, seed: int) -> None:
    pool, target = _probs(t, n, c, seed=seed), _probs(t, m, c, seed=seed + 1)
    value = epig(pool, target)
    # Information about y* passes through the weights: EPIG <= BALD <= H[y].
    assert torch.all(value >= 0)
    assert torch.all(value <= bald(pool) + 1e-10)
    assert torch.all(value <= entropy(pool) + 1e-10)
    # I(y; y*) is symmetric in pool and target.
    for i in range(n):
        for j in range(m):
            forward = epig(pool[:, [i]], target[:, [j]])
            backward = epig(target[:, [j]], pool[:, [i]])
            torch.testing.assert_close(forward, backward, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("pool", "target", "error", "message"),
    [
        (_probs(4, 3, 3, 0), _probs(5, 3, 3, 0), ValueError, r"`target_probs`.*as many samples"),
        (_probs(1, 3, 3, 0), _probs(1, 3, 3, 0), ValueError, r"`pool_probs`.*at least 2"),
        (_probs(4, 3, 3, 0), np.ones((4, 3)) / 3, ValueError, r"`target_probs` to have shape"),
        (_probs(4, 3, 3, 0), np.ones((4, 0, 3)) / 3, ValueError, r"`target_probs`.*one example"),
        (_probs(4, 3, 3, 0), np.full((4, 2, 3), 0.5), ValueError, r"`target_probs`.*sum to 1"),
    ],
)
def test_bad_input_is_refused(pool, target, error, message) -> None:
    with pytest.raises(error, match=message):
        epig(pool, target)
