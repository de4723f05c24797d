"""In-place dropout keeps prefix sharing: the sampling twin runs it out of place when the forward
does not read its input again (torchvision's EfficientNet, MobileNetV3, MNASNet heads), and keeps
it in place, without vmap, when it does.

References: the same model in training mode (no norm layers here, so ``model.train()``), and the
same weights with ``inplace=False`` (the same numbers, bit for bit, at a fixed seed).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from strategy_models import _assert_same_distribution
from torch import nn
from torch.nn import functional as F

import mcdrop


def _scaled(model: nn.Module, gain: float = 3.0) -> nn.Module:
    """Random heads are near-constant: larger weights so that dropout moves the outputs."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.weight.mul_(gain)
    return model.eval()


class ConvHead(nn.Module):
    """conv + pool + Dropout(inplace=True) + Linear: torchvision's EfficientNet/MNASNet head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.4, inplace=True), nn.Linear(16, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class HardswishHead(nn.Module):
    """MobileNetV3's head: Linear + Hardswish + Dropout(inplace=True) + Linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Hardswish())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(16, 32), nn.Hardswish(), nn.Dropout(0.3, inplace=True), nn.Linear(32, 5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class FunctionalInplace(nn.Module):
    """``F.dropout(..., inplace=True)`` in the forward."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean((2, 3))
        return self.head(F.dropout(h, 0.3, self.training, inplace=True))


class ChannelInplace(nn.Module):
    """``nn.Dropout2d(inplace=True)`` on feature maps, then ``nn.AlphaDropout(inplace=True)``."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.drop2d = nn.Dropout2d(0.3, inplace=True)
        self.hidden = nn.Sequential(nn.Linear(16, 16), nn.SELU())
        self.alpha = nn.AlphaDropout(0.2, inplace=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop2d(self.features(x)).mean((2, 3))
        return self.head(self.alpha(self.hidden(h)))


class ReadAgain(nn.Module):
    """The aliasing pattern: the forward reads the input of an in-place dropout again, so it
    relies on that input holding the dropped values (``h + dropped`` is ``2 * dropped``)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU())
        self.drop = nn.Dropout(0.4, inplace=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).mean((2, 3))
        dropped = self.drop(h)
        return self.head(h + dropped)


class InputReadAgain(nn.Module):
    """In-place dropout of the model's own input, read again: kept in place, and the caller's
    tensor must still never be written."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dropped = F.dropout(x, 0.3, self.training, inplace=True)
        return self.head(x + dropped)


OUT_OF_PLACE = [ConvHead, HardswishHead, FunctionalInplace, ChannelInplace]


def _images(n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8)


def _training_reference(model: nn.Module, x: torch.Tensor, T: int, seed: int) -> torch.Tensor:
    """``T`` passes in training mode (these models have no norm layers), softmax, on a copy of
    ``x`` per pass (in-place dropout of the input writes into it)."""
    torch.manual_seed(seed)
    model.train()
    try:
        with torch.no_grad():
            return torch.stack([torch.softmax(model(x.clone()), -1) for _ in range(T)]).double()
    finally:
        model.eval()


def _samples(model: nn.Module, x: torch.Tensor, T: int, **options) -> mcdrop.ClassificationResult:
    return mcdrop.predict_with_uncertainty(
        model, x, n_samples=T, keep_samples=True, progress=False, **options
    )


def _without_inplace(model: nn.Module) -> nn.Module:
    """The same weights with every dropout module out of place (functional calls as they are)."""
    twin = copy.deepcopy(model)
    for module in twin.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return twin


@pytest.mark.parametrize("model_cls", OUT_OF_PLACE)
def test_auto_shares_the_prefix_of_inplace_dropout(model_cls):
    """``auto`` samples with vmap (no fallback, no warning), the caller's input is untouched, and
    the samples agree with training mode within Monte Carlo error."""
    torch.manual_seed(0)
    model, x = _scaled(model_cls()), _images()
    before = x.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = _samples(model, x, 200, seed=3)
    assert result.sampling.strategy == "vmap"
    assert result.sampling.fallbacks == ()
    assert torch.equal(x, before)
    assert not any(m.training for m in model.modules())
    _assert_same_distribution(result.samples, _training_reference(model, x, 200, seed=4))


@pytest.mark.parametrize("strategy", ["loop", "replicate", "vmap"])
@pytest.mark.parametrize("model_cls", [ConvHead, HardswishHead, ChannelInplace])
def test_inplace_dropout_gives_the_numbers_of_out_of_place_dropout(model_cls, strategy):
    """Same weights, ``inplace=False``: the very same samples for every strategy and seed."""
    torch.manual_seed(0)
    model, x = _scaled(model_cls()), _images()
    plain = _without_inplace(model)
    a = _samples(model, x, 12, seed=5, strategy=strategy)
    b = _samples(plain, x, 12, seed=5, strategy=strategy)
    assert a.sampling.strategy == b.sampling.strategy == strategy
    assert torch.equal(a.samples, b.samples)
    assert a.samples.std(0).max() > 1e-3  # dropout moves the outputs: the comparison can fail


def test_strategies_agree_on_inplace_dropout():
    """loop, replicate and vmap sample one distribution (different random streams)."""
    torch.manual_seed(0)
    model, x = _scaled(HardswishHead()), _images()
    loop = _samples(model, x, 200, seed=6, strategy="loop").samples
    for strategy in ("replicate", "vmap"):
        _assert_same_distribution(_samples(model, x, 200, seed=7, strategy=strategy).samples, loop)


def test_a_dropout_input_read_again_stays_in_place_without_vmap():
    """``h + drop_(h)``: the in-place semantics (``2 * dropped``) are kept, so auto does without
    vmap, says why and what it costs, and the samples agree with training mode, not with the
    out-of-place reading (which the comparison tells apart)."""
    torch.manual_seed(0)
    model, x = _scaled(ReadAgain()), _images()
    with pytest.warns(UserWarning, match=r"not 'vmap'.*in-place F\.dropout in `drop`.*FLOPs"):
        result = _samples(model, x, 400, seed=8)
    record = result.sampling
    assert record.strategy == "replicate" and record.fallbacks == ()
    assert "in-place F.dropout in `drop` whose input the forward reads again" in record.reason
    reference = _training_reference(model, x, 400, seed=9)
    _assert_same_distribution(result.samples, reference)
    out_of_place = _training_reference(_without_inplace(model), x, 400, seed=9)
    with pytest.raises(AssertionError, match="differ"):
        _assert_same_distribution(out_of_place, reference)
    loop = _samples(model, x, 400, seed=10, strategy="loop")
    _assert_same_distribution(loop.samples, reference)
    with pytest.raises(ValueError, match=r"'vmap'.*in-place F\.dropout in `drop`.*reads again"):
        _samples(model, x, 8, seed=1, strategy="vmap")


@pytest.mark.parametrize("strategy", ["auto", "loop", "replicate"])
def test_inplace_dropout_of_the_input_never_writes_the_callers_tensor(strategy):
    torch.manual_seed(0)
    model, x = _scaled(InputReadAgain()), torch.randn(6, 8)
    before = x.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # auto: does without vmap (tested above)
        result = _samples(model, x, 300, seed=11, strategy=strategy)
    assert torch.equal(x, before)
    assert result.sampling.strategy != "vmap"
    _assert_same_distribution(result.samples, _training_reference(model, x, 300, seed=12))


def test_inplace_dropout_under_mcdropout_and_shared_masks():
    """The held wrapper, and shared masks (MaskedDropout answers the calls), take the same path."""
    torch.manual_seed(0)
    model, x = _scaled(ConvHead()), _images()
    mc = mcdrop.MCDropout(model, n_samples=16, seed=2)
    held = mc(x)
    assert mc.last_sampling.strategy == "vmap"
    assert torch.equal(held, mcdrop.MCDropout(_without_inplace(model), n_samples=16, seed=2)(x))
    shared = _samples(model, x, 16, seed=2, masks="shared")
    assert shared.sampling.strategy == "vmap"
    plain = _samples(_without_inplace(model), x, 16, seed=2, masks="shared")
    assert torch.equal(shared.samples, plain.samples)


class HostCheckAfterDropout(nn.Module):
    """Prefix-heavy, but a host-side check after the dropout that vmap cannot run."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU())
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(128, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.body(x))
        if not bool(torch.isfinite(h).all()):
            raise ValueError("non-finite activations")
        return self.head(h)


def test_vmap_that_cannot_run_names_the_module_and_the_call():
    model, x = HostCheckAfterDropout().eval(), torch.randn(5, 6)
    with pytest.raises(ValueError, match=r"'vmap' cannot: `<model>` \(\w+\) raised") as refused:
        _samples(model, x, 8, seed=0, strategy="vmap")
    assert "Use strategy='auto', 'replicate' or 'loop'" in str(refused.value)
    with pytest.warns(UserWarning, match=r"fell back to 'replicate'.*about \d+x the FLOPs"):
        result = _samples(model, x, 50, seed=0)
    assert [name for name, _ in result.sampling.fallbacks] == ["vmap"]
