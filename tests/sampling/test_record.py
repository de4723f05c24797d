"""The plan a call sampled with is on its result, ``auto``'s fallbacks say so, and nothing of
mcdrop's own leaks as a warning into the caller's run."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import MLP
from torch import nn

import mcdrop


class HostCheckAfterBody(nn.Module):
    """Prefix-heavy (auto tries vmap first), but a host-side check after the dropout that vmap
    cannot run."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(128, 3)

    def forward(self, x):
        h = self.drop(self.body(x))
        if not bool(torch.isfinite(h).all()):  # data-dependent: vmap cannot run it
            raise ValueError("non-finite activations")
        return self.head(h)


class DropoutFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.body = nn.Sequential(nn.Linear(6, 64), nn.ReLU(), nn.Linear(64, 4))

    def forward(self, x):
        return self.body(self.drop(x))


@pytest.mark.parametrize("model_cls", [MLP, DropoutFirst])
def test_the_result_records_the_strategy_that_gave_its_numbers(model_cls):
    """The recorded strategy, given explicitly, gives the very same numbers."""
    model, x = model_cls().eval(), torch.randn(10, 6)
    result = mcdrop.predict_with_uncertainty(model, x, n_samples=24, seed=2, progress=False)
    record = result.sampling
    assert record is not None and record.fallbacks == () and record.reason.startswith("auto")
    again = mcdrop.predict_with_uncertainty(
        model, x, n_samples=24, seed=2, strategy=record.strategy, progress=False
    )
    assert torch.equal(result.mean, again.mean)
    assert again.sampling.strategy == record.strategy
    assert 1 <= record.samples_per_pass <= 24
    mc = mcdrop.MCDropout(model, n_samples=24, seed=2)
    mc(x)
    assert mc.last_sampling.strategy == record.strategy  # the same plan for the same call
    assert (mc.last_strategy, mc.last_samples_per_pass) == (
        mc.last_sampling.strategy,
        mc.last_sampling.samples_per_pass,
    )


def test_a_fallback_of_auto_warns_and_is_recorded_with_its_reason():
    torch.manual_seed(0)
    model, x = HostCheckAfterBody().eval(), torch.randn(8, 6)
    with pytest.warns(UserWarning, match=r"fell back to 'replicate'.*'vmap'") as caught:
        result = mcdrop.predict_with_uncertainty(model, x, n_samples=20, seed=1, progress=False)
    assert caught[0].filename == __file__  # points at the caller's line
    record = result.sampling
    assert record.strategy == "replicate"
    assert [name for name, _ in record.fallbacks] == ["vmap"]
    assert "Error" in record.fallbacks[0][1]  # the exception vmap raised, by type and message
    fixed = mcdrop.predict_with_uncertainty(
        model, x, n_samples=20, seed=1, strategy="replicate", progress=False
    )
    assert torch.equal(result.mean, fixed.mean)  # the numbers of the strategy it settled on
    assert fixed.sampling.fallbacks == ()


def test_results_not_sampled_here_have_no_record():
    samples = torch.randn(5, 4, 3)
    assert mcdrop.summarize_samples(samples).sampling is None


class GradHead(nn.Module):
    """Parameters that require grad, a learned log-variance returned as a view of a parameter."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 16)
        self.drop = nn.Dropout(0.3)
        self.mean = nn.Linear(16, 2)
        self.log_var = nn.Parameter(torch.zeros(2))

    def forward(self, x):
        mean = self.mean(self.drop(torch.relu(self.body(x))))
        return mean, self.log_var.expand_as(mean)


@pytest.mark.parametrize("strategy", ["auto", "replicate", "vmap", "loop"])
def test_no_internal_warning_leaks_from_models_that_require_grad(strategy):
    """Every check that reads a tensor on the host (the examples-interact check, the variation
    and NaN checks, adaptive stopping) runs without autograd's scalar-conversion warning, even
    with inputs that require grad; warnings are errors here."""
    model = GradHead().eval()
    assert all(p.requires_grad for p in model.parameters())
    x = torch.randn(8, 6, requires_grad=True)
    options = {"task": "regression", "heteroscedastic": True, "strategy": strategy, "seed": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.enable_grad():
            mcdrop.predict_with_uncertainty(model, x, n_samples=8, progress=False, **options)
            mcdrop.predict_with_uncertainty(
                model, x, n_samples="auto", max_samples=40, progress=False, **options
            )
            mcdrop.MCDropout(model, n_samples=4, **options)(x)
            classifier = MLP().eval()
            mcdrop.predict_with_uncertainty(
                classifier, x, n_samples=8, strategy=strategy, progress=False
            )
