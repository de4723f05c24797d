"""The caller's random stream: independent masks come from mcdrop's own generators.

PyTorch's global generators belong to the user: a call never seeds, forks, rewinds, reads or
advances them (the one exception, ``compile=`` and TorchScript, warns). A thread drawing from them
while a seeded call samples neither perturbs it nor gets repeated numbers.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import FusedClassifier, training_reference
from strategy_models import _assert_same_distribution, drawing_from_the_global_stream
from torch import nn
from torch.nn import functional as F

import mcdrop


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.drop2d = nn.Conv2d(2, 8, 3, padding=1), nn.Dropout2d(0.3)
        self.drop, self.head = nn.Dropout(0.5), nn.Linear(8, 3)

    def forward(self, x):
        h = self.drop2d(torch.relu(self.conv(x))).mean((2, 3))
        return self.head(self.drop(h))


class Recurrent(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(4, 16, num_layers=2, dropout=0.4, batch_first=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


class Locked(nn.Module):
    """AWD-LSTM's hand-written dropout: one mask per sequence, drawn under ``self.training``."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, h):
        if not self.training:
            return h
        return h * (torch.rand_like(h[:, :1]) > self.p) / (1 - self.p)


class LockedDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.body, self.lock, self.head = nn.Linear(4, 16), Locked(0.4), nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.lock(torch.relu(self.body(x)))).mean(1)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3)).eval()


CASES = {
    "mlp": (_mlp, lambda: torch.randn(16, 6), {}),
    "conv": (ConvNet, lambda: torch.randn(6, 2, 5, 5), {}),
    "attention": (FusedClassifier, lambda: torch.randn(6, 5, 16), {}),
    "lstm": (Recurrent, lambda: torch.randn(6, 7, 4), {}),
    "hand-written": (LockedDropout, lambda: torch.randn(6, 7, 4), {"include": ["lock"]}),
}


def _case(name):
    make, inputs, options = CASES[name]
    torch.manual_seed(0)
    model = make().eval()
    for module in model.modules():  # heads that are not near-constant: the tests can fail
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=1.0)
    return model, inputs(), options


def _strategies(name):
    # vmap cannot run the LSTM kernel; include= without a probe cannot prove vmap safe
    return (
        ["loop", "replicate"] if name in ("lstm", "hand-written") else ["loop", "replicate", "vmap"]
    )


@pytest.mark.parametrize("name", sorted(CASES))
def test_seeded_calls_ignore_a_thread_drawing_from_the_global_generator(name):
    model, x, options = _case(name)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    alone = {
        s: mcdrop.MCDropout(model, n_samples=24, strategy=s, seed=3, **options)(x)
        for s in _strategies(name)
    }
    assert torch.equal(torch.get_rng_state(), state)  # neither read-and-restored nor advanced
    with drawing_from_the_global_stream() as draws:
        busy = [
            (s, mcdrop.MCDropout(model, n_samples=24, strategy=s, seed=3, **options)(x))
            for s in _strategies(name)
            for _ in range(2)
        ]
    assert len(draws) > 5
    for strategy, result in busy:
        assert torch.equal(result, alone[strategy])
    if "vmap" in alone:  # both draw each call's masks for every sample at once
        assert torch.equal(alone["vmap"], alone["replicate"])
    # the thread's stream was never rewound or re-seeded: it drew what it would have alone
    torch.set_rng_state(state)
    assert torch.equal(torch.stack(draws), torch.stack([torch.rand(8) for _ in draws]))


@pytest.mark.parametrize("name", sorted(CASES))
def test_independent_masks_sample_like_training_mode(name):
    model, x, options = _case(name)
    mc = mcdrop.MCDropout(model, n_samples=400, seed=0, **options)
    samples = torch.softmax(mc(x), -1)
    torch.manual_seed(1)
    reference = training_reference(model, lambda m: torch.softmax(m(x), -1), 400)
    _assert_same_distribution(samples, reference)


def test_unseeded_calls_leave_the_global_stream_alone_and_differ():
    model, x, _ = _case("mlp")
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = mcdrop.predict_with_uncertainty(model, x, n_samples=16)
    b = mcdrop.predict_with_uncertainty(model, x, n_samples=16)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(a.mean, b.mean)  # fresh seeds from the operating system
    seeded = [
        mcdrop.predict_with_uncertainty(model, x, n_samples=16, seed=7).mean for _ in range(2)
    ]
    assert torch.equal(seeded[0], seeded[1])


def test_a_generator_option_seeds_mcdrops_own_stream():
    """``generator=`` is the caller's own generator: one draw from it, nothing from the global."""
    model, x, _ = _case("mlp")
    state = torch.get_rng_state()
    runs = [
        mcdrop.predict_with_uncertainty(
            model, x, n_samples=16, generator=torch.Generator().manual_seed(4)
        ).mean
        for _ in range(2)
    ]
    assert torch.equal(runs[0], runs[1])
    assert torch.equal(torch.get_rng_state(), state)


def test_only_compile_draws_from_the_global_stream_and_says_so():
    from mcdrop.sampling import _engine

    model, x, _ = _case("mlp")
    _engine._WARNED.clear()
    with pytest.warns(UserWarning, match=r"global random generator.*compile=None") as record:
        mcdrop.predict_with_uncertainty(model, x, n_samples=4, seed=0, compile={"backend": "eager"})
    assert record[0].filename == __file__
    with warnings.catch_warnings():  # once per process
        warnings.filterwarnings("error", "mcdrop", UserWarning)
        mcdrop.predict_with_uncertainty(model, x, n_samples=4, seed=0, compile={"backend": "eager"})
    # a model compiled by the user is twinned through _orig_mod and runs eagerly: no warning
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "mcdrop", UserWarning)
        mcdrop.predict_with_uncertainty(torch.compile(model), x, n_samples=4, seed=0)


class _Stochastic(nn.Module):
    """Training-only randomness that is not dropout: RReLU and a Gumbel-softmax head."""

    def __init__(self):
        super().__init__()
        self.a, self.act, self.d, self.b = (
            nn.Linear(4, 8),
            nn.RReLU(),
            nn.Dropout(0.2),
            nn.Linear(8, 3),
        )

    def forward(self, x):
        logits = self.b(self.d(self.act(self.a(x))))
        if self.training:
            sample = torch.distributions.Gamma(torch.ones(3), torch.ones(3)).sample()
            return F.gumbel_softmax(logits, tau=1.0) + 0.01 * sample
        return logits


class _FractionalPool(nn.Module):
    """F.fractional_max_pool2d draws its pooling offsets with torch.rand inside Python, in eval
    mode too, before the dropout."""

    def __init__(self):
        super().__init__()
        self.conv, self.drop, self.out = (
            nn.Conv2d(2, 4, 3, padding=1),
            nn.Dropout(0.3),
            nn.Linear(100, 3),
        )

    def forward(self, x):
        h = F.fractional_max_pool2d(self.conv(x), 2, output_size=5)  # (8 - 2) / 4: random
        return self.out(self.drop(h.flatten(1)))


@pytest.mark.parametrize("strategy", ["loop", "replicate", "vmap"])
def test_fractional_max_pooling_draws_from_mcdrops_generator(strategy):
    torch.manual_seed(0)
    model, x = _FractionalPool().eval(), torch.randn(4, 2, 8, 8)
    mc = mcdrop.MCDropout(model, n_samples=8, seed=5, strategy=strategy, batch_budget=16)
    first = mc(x)
    state = torch.get_rng_state()
    kept = mc(x)  # a kept plan (its vmap passes enter vmap late)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's stream: not drawn from
    fresh = mcdrop.MCDropout(model, n_samples=8, seed=5, strategy=strategy, batch_budget=16)(x)
    assert torch.equal(first, kept) and torch.equal(first, fresh)
    # each sample pools at its own offsets: even without the dropout the samples would differ
    with torch.inference_mode():
        twin = copy.deepcopy(model)
    twin.drop.p = 1e-9  # (about 1e-6 of a unit dropped in all: the rest is the pooling)
    no_drop = mcdrop.MCDropout(twin, n_samples=8, seed=5, strategy=strategy)
    assert no_drop(x).var(0).amax() > 0


def test_fractional_max_pooling_given_its_offsets_draws_nothing_and_shares_masks():
    offsets = torch.rand(3, 2, 2)
    model = nn.Sequential(
        nn.FractionalMaxPool2d(2, output_size=4, _random_samples=offsets),
        nn.Flatten(),
        nn.Dropout(0.3),
    ).eval()
    x = torch.randn(3, 2, 9, 9)
    shared = mcdrop.MCDropout(model, n_samples=4, seed=1, masks="shared")(x)  # nothing random
    pooled = F.fractional_max_pool2d(x, 2, output_size=4, _random_samples=offsets).flatten(1)
    kept = shared != 0  # each sample: the pooling as given, its dropped units zero, the rest
    assert torch.allclose(shared[kept], (pooled / 0.7).expand_as(shared)[kept])  # scaled
    model[0]._random_samples = None
    with pytest.raises(ValueError, match="fractional_max_pool2d"):  # random offsets: refused
        mcdrop.MCDropout(model, n_samples=4, seed=1, masks="shared")(x)


@pytest.mark.parametrize("strategy", ["loop", "replicate", "auto"])
def test_random_ops_inside_python_functions_draw_from_mcdrops_generator(strategy):
    """F.rrelu and F.gumbel_softmax draw inside Python; torch.distributions through
    ``_standard_gamma``: all from mcdrop's generator, so the seed reproduces them."""
    torch.manual_seed(0)
    model, x = _Stochastic().eval(), torch.randn(5, 4)
    state = torch.get_rng_state()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        runs = [
            mcdrop.MCDropout(
                model, n_samples=8, seed=123, scope="train_except_norm", strategy=strategy
            )(x)
            for _ in range(2)
        ]
    assert torch.equal(runs[0], runs[1]) and runs[0].var(0).min() > 0
    assert torch.equal(torch.get_rng_state(), state)
