"""Every strategy samples the distribution of a plain loop of ``T`` passes.

The checks are two-sample z-scores within Monte Carlo error (fixed seeds, 5 sigma: they cannot
flake), or closed forms.
"""

from __future__ import annotations

import math

import pytest
import torch
from strategy_models import (
    DeepDropoutMLP,
    DotDropout,
    HeadDropout,
    TinyTransformer,
    _assert_same_distribution,
    _mcdrop_probs,
    _naive_probs,
)

import mcdrop

# -- each strategy against a naive loop -------------------------------------------------------


@pytest.mark.parametrize("strategy", ["loop", "replicate", "vmap", "auto"])
def test_strategy_matches_naive_loop_dropout_everywhere(strategy):
    model = DeepDropoutMLP().eval()
    x = torch.randn(6, 6)
    T = 400
    reference = _naive_probs(model, x, T, seed=11)
    # a small budget: several chunks with an uneven last one
    samples = _mcdrop_probs(model, x, T, strategy, seed=12, batch_budget=6 * 48)
    _assert_same_distribution(samples, reference)


@pytest.mark.parametrize("strategy", ["loop", "replicate", "auto"])
def test_strategy_matches_naive_loop_transformer(strategy):
    model = TinyTransformer().eval()
    x = torch.randn(4, 5, 16)
    T = 200
    reference = _naive_probs(model, x, T, seed=21)
    samples = _mcdrop_probs(model, x, T, strategy, seed=22)
    _assert_same_distribution(samples, reference)


def test_strategy_matches_naive_loop_head_dropout():
    model = HeadDropout(width=32).eval()
    x = torch.randn(6, 16)
    reference = _naive_probs(model, x, 400, seed=31)
    for strategy in ("vmap", "replicate", "auto"):
        _assert_same_distribution(_mcdrop_probs(model, x, 400, strategy, seed=32), reference)


@pytest.mark.parametrize("strategy", ["auto", "loop", "replicate", "vmap"])
def test_closed_form_through_mcdropout_forward(strategy):
    """MCDropout.forward with several chunks per call (batch_budget) for every strategy."""
    p = 0.3
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, -1.0, 4.0], [0.5, 0.0, 3.0, -2.0]], dtype=torch.float64)
    T = 6000
    mc = mcdrop.MCDropout(
        DotDropout(w, p).eval(), n_samples=T, strategy=strategy, batch_budget=2 * 700, seed=4
    )
    samples = mc(x).squeeze(-1)  # (T, 2)
    assert samples.shape == (T, 2)
    mean_true = x @ w
    var_true = p / (1 - p) * (w**2 * x**2).sum(1)
    z_mean = (samples.mean(0) - mean_true) / (var_true / T).sqrt()
    assert z_mean.abs().max() < 5
    sq = (samples - samples.mean(0)) ** 2
    z_var = (sq.mean(0) - var_true) / (sq.std(0) / math.sqrt(T))
    assert z_var.abs().max() < 5
    if mc.last_strategy != "vmap":  # auto may let a vmap pass hold more (shared prefix)
        assert mc.last_samples_per_pass == 700
    if strategy != "auto":
        assert mc.last_strategy == strategy
