"""Energy scores: the proper scoring rule against loops, the CRPS and the Gaussian closed form;
the OOD energy against the formula of Liu et al. (2020)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mcdrop import metrics as M


def _naive_energy(y, samples):
    """The definition with explicit loops: (1/T) Σ ‖x_t - y‖ - 1/(2T²) Σ_{t,s} ‖x_t - x_s‖."""
    t_count, n = samples.shape[:2]
    out = []
    for i in range(n):
        target = y[i].ravel()
        xs = [samples[t, i].ravel() for t in range(t_count)]
        first = sum(math.dist(x, target) for x in xs) / t_count
        second = sum(math.dist(a, b) for a in xs for b in xs) / (2 * t_count**2)
        out.append(first - second)
    return np.array(out)


@pytest.mark.parametrize(
    ("t", "n", "dims"), [(1, 3, (2,)), (5, 4, (3,)), (12, 6, (2, 2)), (7, 5, ())]
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_energy_score_matches_the_definition(t, n, dims, dtype):
    rng = np.random.default_rng(t * 10 + n)
    samples = rng.normal(size=(t, n, *dims)).astype(dtype)
    y = rng.normal(size=(n, *dims)).astype(dtype)
    want = _naive_energy(y.astype(np.float64), samples.astype(np.float64))
    got = M.energy_score(y, samples, reduction="none")
    assert got.shape == (n,)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    assert M.energy_score(y, samples) == pytest.approx(want.mean(), rel=1e-12)


@pytest.mark.parametrize("shape", [(30,), (30, 1)])
def test_energy_score_in_one_dimension_is_crps_samples(shape):
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(40, *shape))
    y = rng.normal(size=shape)
    np.testing.assert_allclose(
        M.energy_score(y, samples, reduction="none"),
        np.ravel(M.crps_samples(y, samples, reduction="none")),
        rtol=1e-12,
    )
    # trailing singleton tolerated on either side
    assert M.energy_score(y.reshape(30), samples.reshape(40, 30, 1)) == pytest.approx(
        M.energy_score(y, samples)
    )


def test_energy_score_of_many_gaussian_samples_approaches_the_crps_closed_form():
    rng = np.random.default_rng(2)
    n, t = 50, 20000
    mean, std = rng.normal(size=n), rng.uniform(0.5, 2.0, n)
    y = mean + std * rng.normal(size=n) * 1.5
    samples = mean + std * rng.normal(size=(t, n))
    got = M.energy_score(y, samples, reduction="none")
    want = M.crps_gaussian(y, mean, std, reduction="none")
    # Monte Carlo error of the sample CRPS ~ std / sqrt(T) ~ 0.015; bias 1/(2T) E|X-X'| tiny
    np.testing.assert_allclose(got, want, atol=0.05)


def test_energy_score_is_proper_on_average():
    """The true distribution scores better than a shifted or over-dispersed one."""
    rng = np.random.default_rng(3)
    n, t, d = 300, 60, 3
    y = rng.normal(size=(n, d))
    truth = rng.normal(size=(t, n, d))
    assert M.energy_score(y, truth) < M.energy_score(y, truth + 0.5)
    assert M.energy_score(y, truth) < M.energy_score(y, 2.0 * truth)


def test_energy_score_accepts_tensors_and_refuses_bad_input():
    samples = torch.randn(4, 3, 2)
    y = torch.randn(3, 2)
    assert M.energy_score(y, samples) == pytest.approx(
        M.energy_score(y.numpy().astype(np.float64), samples.numpy().astype(np.float64))
    )
    with pytest.raises(ValueError, match="`samples`"):
        M.energy_score(y, samples[:, :2])
    with pytest.raises(ValueError, match="`samples`"):
        M.energy_score(y[:, 0], samples[0, :, 0])
    with pytest.raises(ValueError, match="`y`"):
        M.energy_score(torch.full((3, 2), math.nan), samples)
    with pytest.raises(ValueError, match="`reduction`"):
        M.energy_score(y, samples, reduction="sum")
    with pytest.raises(ValueError, match="`y`"):
        M.energy_score(np.zeros((0, 2)), np.zeros((4, 0, 2)))


# ------------------------------------------------------------------------------------------
# energy OOD score
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.5, 10.0])
def test_energy_ood_score_matches_the_formula(temperature):
    rng = np.random.default_rng(4)
    logits = rng.normal(scale=3.0, size=(6, 5))
    want = [-temperature * math.log(sum(math.exp(z / temperature) for z in row)) for row in logits]
    got = M.energy_ood_score(logits, temperature=temperature)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    torch_form = -temperature * torch.logsumexp(torch.from_numpy(logits) / temperature, dim=-1)
    np.testing.assert_allclose(got, torch_form.numpy(), rtol=1e-12)


def test_energy_ood_score_keeps_leading_dims_and_is_stable():
    rng = np.random.default_rng(5)
    logits = rng.normal(size=(3, 4, 7))  # (T, N, C)
    got = M.energy_ood_score(logits)
    assert got.shape == (3, 4)
    np.testing.assert_allclose(got[1], M.energy_ood_score(logits[1]))
    huge = np.array([[1e308, 0.0], [-1e308, -1e308]])
    values = M.energy_ood_score(huge, temperature=1e-3)
    assert np.all(np.isfinite(values))
    assert values[0] == -1e308
    # the energy of log-probabilities is 0: probabilities are not logits
    log_probs = np.log(np.array([[0.2, 0.3, 0.5]]))
    assert M.energy_ood_score(log_probs)[0] == pytest.approx(0.0, abs=1e-15)


def test_energy_ood_score_separates_confident_from_flat_logits():
    rng = np.random.default_rng(6)
    confident = rng.normal(size=(200, 10)) + 8.0 * np.eye(10)[rng.integers(0, 10, 200)]
    flat = rng.normal(size=(200, 10))
    auroc = M.ood_auroc(M.energy_ood_score(confident), M.energy_ood_score(flat))
    assert auroc > 0.99


def test_energy_ood_score_refuses_bad_input():
    with pytest.raises(ValueError, match="`temperature`"):
        M.energy_ood_score(np.zeros((2, 3)), temperature=0.0)
    with pytest.raises(TypeError, match="`temperature`"):
        M.energy_ood_score(np.zeros((2, 3)), temperature=True)
    with pytest.raises(ValueError, match="`logits`"):
        M.energy_ood_score(np.array([[0.0, np.inf]]))
    with pytest.raises(ValueError, match="`logits`"):
        M.energy_ood_score(np.zeros((0, 3)))
    with pytest.raises(ValueError, match="`logits`"):
        M.energy_ood_score(np.float64(1.0))
