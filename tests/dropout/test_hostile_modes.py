"""Training mode as the model defines it, and randomness that is not a dropout call (issue 25,
groups 2 and 6).

The reference is training mode itself: ``model.train()`` (the model's own override) with norm
layers in eval. MC dropout's spread must agree with it within Monte Carlo error; training-only
randomness mcdrop does not sample is never left out silently.
"""

from __future__ import annotations

import types
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mcdrop

T = 400


def _snapshot(model: nn.Module):
    return (
        {name: module.training for name, module in model.named_modules()},
        {name: dict(m._forward_hooks) for name, m in model.named_modules()},
        {key: value.clone() for key, value in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        {name: sorted(vars(m)) for name, m in model.named_modules()},
    )


def _assert_untouched(model: nn.Module, before) -> None:
    after = _snapshot(model)
    assert after[0] == before[0] and after[1] == before[1]
    assert after[3] == before[3] and after[4] == before[4]
    assert all(torch.equal(before[2][k], after[2][k]) for k in before[2])


def _training_reference(model: nn.Module, x: torch.Tensor, n: int = T) -> torch.Tensor:
    """``n`` passes after ``model.train()`` (its own override), norms in eval; back to eval."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.eval()
    try:
        with torch.no_grad():
            return torch.stack([model(x) for _ in range(n)])
    finally:
        model.eval()


def _ratio(model: nn.Module, x: torch.Tensor, **options) -> float:
    """MC dropout's spread over the training-mode reference's; the model checked untouched."""
    before = _snapshot(model)
    samples = mcdrop.MCDropout(model, n_samples=T, seed=0, **options)(x)
    _assert_untouched(model, before)
    torch.manual_seed(1)
    reference = _training_reference(model, x)
    return float(samples.var(0).mean() / reference.var(0).mean())


# -- group 2: the model's own train() --------------------------------------------------------------
class FrozenBackbone(nn.Module):
    """Fine-tuning: train() keeps the backbone (and its dropout) in eval and freezes it."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Linear(5, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.5)
        )
        self.adapter = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.1))
        self.head = nn.Linear(32, 3)

    def train(self, mode: bool = True):
        super().train(mode)
        self.backbone.eval()
        for p in self.backbone.parameters():
            p.requires_grad_(not mode)
        self.backbone[1].reset_running_stats()  # writes buffers: on the twin's stand-ins only
        return self

    def forward(self, x):
        return self.head(self.adapter(self.backbone(x)))


class AdapterOnly(nn.Module):
    """ "Dropout only in the adapter": train() switches only the adapter."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(5, 32), nn.ReLU(), nn.Dropout(0.4))
        self.adapter = nn.Dropout(0.1)
        self.head = nn.Linear(32, 3)

    def train(self, mode: bool = True):
        self.training = mode
        for child in self.children():
            child.train(False)
        self.adapter.train(mode)
        return self

    def forward(self, x):
        return self.head(self.adapter(self.encoder(x)))


class AlwaysEval(nn.Sequential):
    """A submodule class whose train() never trains (a frozen block, wherever it is used)."""

    def train(self, mode: bool = True):
        return super().train(False)


class WithFrozenBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            [AlwaysEval(nn.Linear(5, 32), nn.ReLU(), nn.Dropout(0.5)), nn.Dropout(0.1)]
        )
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.blocks[1](self.blocks[0](x)))


TRAIN_OVERRIDES = {
    FrozenBackbone: ["adapter.2"],
    AdapterOnly: ["adapter"],
    WithFrozenBlocks: ["blocks.1"],
}


def _init(cls):
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():
        model.head.weight.mul_(4)
    return model


@pytest.mark.parametrize("cls", list(TRAIN_OVERRIDES), ids=lambda c: c.__name__)
def test_a_dropout_the_models_train_keeps_off_never_samples(cls):
    model = _init(cls)
    x = torch.randn(16, 5)
    expected = TRAIN_OVERRIDES[cls]
    assert [s.name for s in mcdrop.dropout_sites(model, example_inputs=x[:2])] == expected
    assert [s.name for s in mcdrop.dropout_sites(model)] == expected  # without a probe too
    ratio = _ratio(model, x)
    assert 0.85 < ratio < 1.18, ratio  # every dropout on gave 3x-10x


@pytest.mark.parametrize("cls", list(TRAIN_OVERRIDES), ids=lambda c: c.__name__)
def test_scope_train_except_norm_follows_the_models_train(cls):
    model = _init(cls)
    x = torch.randn(16, 5)
    ratio = _ratio(model, x, scope="train_except_norm")
    assert 0.85 < ratio < 1.18, ratio


def test_a_train_override_that_writes_never_reaches_the_model():
    model = _init(FrozenBackbone)
    model.backbone[1].running_mean.add_(1.0)  # trained statistics, reset by train()
    before = _snapshot(model)
    with mcdrop.dropout_enabled(model, example_inputs=torch.randn(2, 5)) as sampler:
        assert not sampler.backbone[3].training and sampler.adapter[2].training
    _assert_untouched(model, before)
    assert all(p.requires_grad for p in model.parameters())


class RaisingTrain(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.drop = nn.Linear(5, 3), nn.Dropout(0.3)

    def train(self, mode: bool = True):
        raise RuntimeError("use fit() instead")

    def forward(self, x):
        return self.drop(self.a(x))


def test_a_train_that_raises_is_reported_not_guessed():
    with pytest.raises(ValueError, match=r"RaisingTrain.train\(\)` to run.*use fit"):
        mcdrop.predict_with_uncertainty(RaisingTrain(), torch.randn(4, 5), n_samples=5)


class RateFromTrain(nn.Module):
    """train() sets a rate instead of a flag: mcdrop takes only flags from train(), and says so."""

    def __init__(self):
        super().__init__()
        self.a, self.drop, self.other = nn.Linear(5, 16), nn.Dropout(0.0), nn.Dropout(0.1)
        self.head = nn.Linear(16, 3)

    def train(self, mode: bool = True):
        super().train(mode)
        self.drop.p = 0.5 if mode else 0.0
        return self

    def forward(self, x):
        return self.head(self.other(self.drop(self.a(x))))


def test_a_train_that_sets_attributes_besides_flags_is_reported():
    model = _init(RateFromTrain)
    before = _snapshot(model)
    with pytest.warns(UserWarning, match=r"changes attributes besides the training flags \(drop.p"):
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 5), n_samples=5)
    _assert_untouched(model, before)
    assert model.drop.p == 0.0


def test_a_train_set_on_the_instance_is_the_models_training_mode():
    model = _init(AdapterOnly)
    model.train = types.MethodType(lambda self, mode=True: nn.Module.train(self, mode), model)
    sites = [s.name for s in mcdrop.dropout_sites(model, example_inputs=torch.randn(2, 5))]
    assert sites == ["encoder.2", "adapter"]  # the instance's train() trains everything
    assert model.train.__self__ is model


# -- group 6: randomness in training mode that is not a dropout call -------------------------------
class LockedDropout(nn.Module):
    """AWD-LSTM's locked (variational) dropout: one mask per sequence, shared over time."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):  # (L, B, H)
        if not self.training or not self.p:
            return x
        mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - self.p) / (1 - self.p)
        return mask * x


class AWDLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 16)
        self.lockdrop = LockedDropout(0.4)
        self.rnn = nn.LSTM(16, 16)
        self.drop = nn.Dropout(0.05)  # a small recognised dropout beside it
        self.head = nn.Linear(16, 3)

    def forward(self, x):  # (B, L, 4)
        h = self.lockdrop(self.embed(x).transpose(0, 1))
        out, _ = self.rnn(h)
        return self.head(self.drop(self.lockdrop(out[-1:]))[0])


class InlineBernoulli(nn.Module):
    """Hand-written dropout in the model's own forward, from a tensor of keep probabilities."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(5, 32), nn.Linear(32, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        if self.training:
            h = h * torch.bernoulli(torch.full_like(h, 0.6)) / 0.6
        return self.head(h)


class MaskedWeights(nn.Module):
    """DropConnect written by hand: a mask over the weight, one per pass."""

    def __init__(self):
        super().__init__()
        self.a, self.head = nn.Linear(5, 32), nn.Linear(32, 3)

    def forward(self, x):
        w = self.head.weight
        if self.training:
            w = w * w.new_empty(w.shape).bernoulli_(0.7) / 0.7
        return F.linear(torch.relu(self.a(x)), w, self.head.bias)


@pytest.mark.parametrize(
    ("cls", "site"),
    [(AWDLike, "lockdrop"), (InlineBernoulli, ""), (MaskedWeights, "")],
    ids=["locked", "inline", "weights"],
)
def test_hand_written_bernoulli_dropout_samples_like_training(cls, site):
    model = _init(cls)
    x = torch.randn(16, 6, 4) if cls is AWDLike else torch.randn(16, 5)
    sites = {s.name: s for s in mcdrop.dropout_sites(model, example_inputs=x[:2])}
    assert site in sites and "hand-written dropout" in sites[site].reason
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # sampled: nothing to warn about
        ratio = _ratio(model, x)
    assert 0.85 < ratio < 1.18, ratio  # skipped, it gave 0.05x-0.3x


class RandLikeMask(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.drop, self.b = nn.Linear(5, 32), nn.Dropout(0.05), nn.Linear(32, 3)
        self.mask = TorchRandMask()

    def forward(self, x):
        return self.b(self.drop(self.mask(torch.relu(self.a(x)))))


class TorchRandMask(nn.Module):
    def forward(self, h):
        if self.training:
            return h * (torch.rand_like(h) > 0.4) / 0.6
        return h


class GaussianNoise(nn.Module):
    def forward(self, h):
        return h + 0.5 * torch.randn_like(h) if self.training else h


class Noisy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.noise, self.drop = nn.Linear(5, 32), GaussianNoise(), nn.Dropout(0.2)
        self.b = nn.Linear(32, 3)

    def forward(self, x):
        return self.b(self.drop(self.noise(torch.relu(self.a(x)))))


class Block(nn.Module):
    """Stochastic depth written by hand, in a module not named like it: reported, not sampled."""

    def __init__(self):
        super().__init__()
        self.f = nn.Linear(32, 32)

    def forward(self, h):
        if self.training:
            keep = h.new_empty(h.shape[0], 1).bernoulli_(0.8)
            return h + self.f(h) * keep / 0.8
        return h + self.f(h)


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.block, self.drop = nn.Linear(5, 32), Block(), nn.Dropout(0.2)
        self.b = nn.Linear(32, 3)

    def forward(self, x):
        return self.b(self.drop(self.block(self.a(x))))


class RReLUNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.act, self.drop = nn.Linear(5, 32), nn.RReLU(), nn.Dropout(0.2)
        self.b = nn.Linear(32, 3)

    def forward(self, x):
        return self.b(self.drop(self.act(self.a(x))))


@pytest.mark.parametrize(
    ("cls", "module", "function"),
    [
        (RandLikeMask, "mask", "torch.rand_like"),
        (Noisy, "noise", "torch.randn_like"),
        (Residual, "block", "Tensor.bernoulli_"),
        (RReLUNet, "act", "F.rrelu"),
    ],
)
def test_training_only_randomness_that_is_not_sampled_is_reported(cls, module, function):
    model = _init_plain(cls)
    x = torch.randn(8, 5)
    before = _snapshot(model)
    with pytest.warns(
        UserWarning, match=rf"`{module}` \(\w+: {function}\).*include=\['{module}'\]"
    ):
        mcdrop.predict_with_uncertainty(model, x, n_samples=10)
    _assert_untouched(model, before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # vmap cannot run some of these ops at all (rrelu): the strategy's fallback may warn.
        warnings.filterwarnings("ignore", "mcdrop: strategy='auto' fell back", UserWarning)
        mcdrop.predict_with_uncertainty(model, x, n_samples=10, exclude=module)  # acknowledged


def _init_plain(cls):
    torch.manual_seed(0)
    return cls().eval()


def test_include_samples_a_rand_like_mask_like_training():
    model = _init_plain(RandLikeMask)
    with torch.no_grad():
        model.b.weight.mul_(4)
    x = torch.randn(16, 5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ratio = _ratio(model, x, include="mask")
    assert 0.85 < ratio < 1.18, ratio


class DropPath(nn.Module):
    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, h):
        if not self.training:
            return h
        return h * h.new_empty(h.shape[0], 1).bernoulli_(1 - self.p) / (1 - self.p)


class Top1Router(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(32, 4)

    def forward(self, h):
        if self.training:  # Switch Transformers' jitter noise
            h = h * torch.empty_like(h).uniform_(0.99, 1.01)
        return self.gate(h)


class KnownNotDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.drop_path, self.router = nn.Linear(5, 32), DropPath(0.3), Top1Router()
        self.drop = nn.Dropout(0.2)
        self.b = nn.Linear(4, 3)

    def forward(self, x):
        return self.b(self.drop(self.router(self.drop_path(torch.relu(self.a(x))))))


def test_known_not_dropout_stays_off_without_a_word():
    model = _init_plain(KnownNotDropout)
    x = torch.randn(8, 5)
    assert [s.name for s in mcdrop.dropout_sites(model, example_inputs=x[:2])] == ["drop"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mcdrop.predict_with_uncertainty(model, x, n_samples=10)


class EvalNoise(nn.Module):
    """Random in eval mode too (a sampling layer): sampling runs it anyway, nothing to report."""

    def __init__(self):
        super().__init__()
        self.a, self.drop, self.b = nn.Linear(5, 32), nn.Dropout(0.2), nn.Linear(32, 3)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(self.drop(h + 0.1 * torch.randn_like(h)))


class NoiseBesideDropout(nn.Module):
    """Noise and dropout behind one training flag: sampling the dropout samples the noise."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 32), nn.Linear(32, 3)

    def forward(self, x):
        h = self.a(x)
        if self.training:
            h = h + torch.randn_like(h)
        return self.b(F.dropout(h, 0.3, self.training))


def test_noise_that_samples_with_a_sites_dropout_is_reported():
    model = _init_plain(NoiseBesideDropout)
    with pytest.warns(UserWarning, match=r"also draw random numbers.*`<model>`: torch.randn_like"):
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 5), n_samples=5)


def test_randomness_that_eval_mode_runs_too_is_not_reported():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mcdrop.dropout_sites(_init_plain(EvalNoise), example_inputs=torch.randn(2, 5))
