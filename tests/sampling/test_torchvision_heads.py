"""torchvision's own classifiers with ``nn.Dropout(inplace=True)`` heads keep prefix sharing.

Skipped where torchvision is not installed (it is not a dependency of mcdrop). Random weights
(``weights=None``, nothing downloads), 32 px inputs, two examples, a few samples.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import mcdrop

models = pytest.importorskip("torchvision.models")

FAMILIES = ["mobilenet_v3_small", "efficientnet_b0", "mnasnet0_5"]


def _model(name: str) -> torch.nn.Module:
    """Random weights whose eval-mode activations do not vanish: the norm layers' running
    statistics set from a few training-mode batches (random init leaves logits near 1e-10)."""
    torch.manual_seed(0)
    model = getattr(models, name)(weights=None)
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average of the batches seen
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(8, 3, 32, 32))
        model.classifier[-1].weight.mul_(10.0)
    return model.eval()


def _out_of_place(model: torch.nn.Module) -> torch.nn.Module:
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if isinstance(module, torch.nn.Dropout):
            module.inplace = False
    return plain


@pytest.mark.parametrize("name", FAMILIES)
def test_torchvision_inplace_heads_sample_with_vmap(name):
    """``auto`` shares the body (vmap, no fallback, no warning) and gives, bit for bit, the
    samples of the same weights with ``inplace=False``; the model is left as it was."""
    model = _model(name)
    assert any(
        getattr(m, "inplace", False) for m in model.modules() if type(m).__name__ == "Dropout"
    )
    x = torch.randn(2, 3, 32, 32)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = mcdrop.predict_with_uncertainty(
            model, x, n_samples=6, seed=0, keep_samples=True, progress=False
        )
    assert result.sampling.strategy == "vmap" and result.sampling.fallbacks == ()
    plain = mcdrop.predict_with_uncertainty(
        _out_of_place(model), x, n_samples=6, seed=0, keep_samples=True, progress=False
    )
    assert torch.equal(result.samples, plain.samples)
    assert result.samples.std(0).max() > 1e-3  # dropout moves the outputs
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(m.training for m in model.modules())
