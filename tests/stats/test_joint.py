"""Joint predictive quantities of several inputs under one set of networks, against naive loops
and scipy's entropies."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sstats

from mcdrop.stats import joint_log_predictive, joint_predictive, pairwise_mutual_information


def _log_probs(t: int, n: int, c: int, seed: int = 0, sharp: float = 2.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.log_softmax(sharp * torch.randn(t, n, c, generator=gen, dtype=torch.float64), -1)


def test_joint_predictive_is_the_mean_over_networks_of_the_product():
    lp = _log_probs(7, 3, 4)
    table = joint_predictive(lp)
    p = lp.exp()
    for labels in itertools.product(range(4), repeat=3):
        naive = sum(math.prod(float(p[t, i, y]) for i, y in enumerate(labels)) for t in range(7))
        assert float(table[labels]) == pytest.approx(naive / 7, rel=1e-12, abs=1e-15)
    assert float(table.sum()) == pytest.approx(1.0, abs=1e-12)
    configs = torch.tensor(list(itertools.product(range(4), repeat=3)))
    logs = joint_log_predictive(lp, configs)
    torch.testing.assert_close(logs.exp(), table[tuple(configs.T)])
    assert joint_log_predictive(lp, configs[5]).ndim == 0


def test_pairwise_mutual_information_against_scipy_entropies():
    lp = _log_probs(9, 5, 3, seed=1)
    mi = pairwise_mutual_information(lp)
    p = lp.exp().numpy()
    for i in range(5):
        for j in range(5):
            joint = (p[:, i, :, None] * p[:, j, None, :]).mean(0)
            expected = (
                sstats.entropy(joint.sum(1))
                + sstats.entropy(joint.sum(0))
                - sstats.entropy(joint.ravel())
            )
            assert float(mi[i, j]) == pytest.approx(max(expected, 0.0), abs=1e-12)


def test_one_network_has_no_mutual_information_and_copies_share_it():
    one = _log_probs(1, 4, 3)  # a single network: labels are independent given it
    assert float(pairwise_mutual_information(one).abs().max()) < 1e-12
    lp = _log_probs(50, 1, 3, seed=2)
    copies = lp.expand(50, 2, 3)
    mi = pairwise_mutual_information(copies)
    assert float(mi[0, 1]) == pytest.approx(float(mi[0, 0])) and float(mi[0, 1]) > 1e-3


@given(st.integers(1, 6), st.integers(1, 5), st.integers(2, 4), st.integers(0, 10**6))
@settings(max_examples=40, deadline=None)
def test_mutual_information_is_symmetric_bounded_and_non_negative(t, n, c, seed):
    lp = _log_probs(t, n, c, seed=seed)
    mi = pairwise_mutual_information(lp)
    h = torch.special.entr(lp.exp().mean(0)).sum(-1)
    assert torch.equal(mi, mi.T)
    assert bool((mi >= 0).all())
    assert bool((mi <= torch.minimum(h[:, None], h[None, :]) + 1e-9).all())


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="`log_probs`"):
        joint_predictive(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="sum to 1"):
        pairwise_mutual_information(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="at most"):
        joint_predictive(_log_probs(2, 30, 3))
    with pytest.raises(ValueError, match="`labels`"):
        joint_log_predictive(_log_probs(2, 3, 4), torch.tensor([0, 1]))
    with pytest.raises(TypeError, match="`labels`"):
        joint_log_predictive(_log_probs(2, 3, 4), torch.tensor([0.0, 1.0, 2.0]))
