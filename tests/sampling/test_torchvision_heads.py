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


@pytest.mark.parametrize("patched", ["stochastic_depth", "its torch"])
def test_stochastic_depth_reads_run_no_probe_unless_patched(monkeypatch, patched):
    """EfficientNet's StochasticDepth reads its flag at every call, only to gate a draw mcdrop
    never samples: a kept call runs no training-mode probe. Patched so that the flag also gates
    a dropout (``stochastic_depth`` replaced, or the ``torch`` it calls: found by the fourth
    review), the read is the user's: the probe runs and a dropout switched on between calls is
    sampled as a fresh call samples it."""
    import sys
    import types

    from torch.nn import functional as F

    from mcdrop.sampling import _engine, _run

    made: list[None] = []
    real = _run.training_calls
    monkeypatch.setattr(_run, "training_calls", lambda *a, **k: made.append(None) or real(*a, **k))
    model, x = _model("efficientnet_b0"), torch.randn(2, 3, 32, 32)
    sd = sys.modules["torchvision.ops.stochastic_depth"]  # (the package's name is the function)

    def call():
        return mcdrop.predict_with_uncertainty(
            model, x, n_samples=4, seed=0, keep_samples=True, progress=False
        ).samples

    first = call()
    before = len(made)
    assert torch.equal(call(), first) and len(made) == before  # kept, no probe
    gate = [False]
    if patched == "stochastic_depth":
        original = sd.stochastic_depth

        def with_dropout(input, p, mode, training=True):
            out = original(input, p, mode, training)
            return F.dropout(out, 0.5) if training and gate[0] else out

        monkeypatch.setattr(sd, "stochastic_depth", with_dropout)
    else:

        def empty(*args, **kwargs):  # reached in training mode only
            out = torch.empty(*args, **kwargs)
            return F.dropout(out.fill_(1.0), 0.5) * 0.5 if gate[0] else out

        proxy = types.SimpleNamespace(empty=empty, jit=torch.jit)
        monkeypatch.setattr(sd, "torch", proxy)
    _engine._FUNCTION_PLANS.clear()
    first = call()
    gate[0] = True
    second = call()
    _engine._FUNCTION_PLANS.clear()
    assert torch.equal(second, call()) and not torch.equal(first, second)
