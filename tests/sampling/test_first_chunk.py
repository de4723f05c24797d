"""The sampling twin checked on the first chunk: confirmed by its recording, or the full check
(gating parents, auxiliary branches, refusals) on every strategy."""

from __future__ import annotations

import math

import pytest
import torch
from strategy_models import DotDropout, _assert_same_distribution, _eval_check
from torch import nn

import mcdrop
from mcdrop.sampling._strategies import Runner

# -- the sampling twin checked on the first chunk -------------------------------------------------


class GatedDot(DotDropout):
    """The dropout child runs only while the parent trains: the twin must switch the parent on,
    which only the first chunk (or a second probe) can find out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(x) if self.training else x
        return h @ self.w.unsqueeze(1)


class MixedModesFail(DotDropout):
    """Runs in eval and in full training mode, fails with only its dropout child training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop.training and not self.training:
            raise RuntimeError("mixed training modes")
        return super().forward(x)


def _two_row_calls(model: nn.Module) -> list[int]:
    """Batch sizes of every call of ``model``'s forward (its twins share its hooks)."""
    rows: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    return rows


@pytest.mark.parametrize("strategy", ["loop", "replicate", "vmap"])
def test_one_probe_pass_when_the_first_chunk_confirms_the_twin(strategy):
    model = DotDropout(torch.tensor([1.0, -2.0, 0.5]), 0.4).eval()
    rows = _two_row_calls(model)
    mcdrop.predict_with_uncertainty(
        model, torch.randn(8, 3), n_samples=16, strategy=strategy, task="regression"
    )
    # the training-mode probe (and for replicate the examples-interact check: 2 and 4 examples
    # alone); the first chunk checked the twin; then the plan kept for later calls takes the
    # calls of training mode on the same 2 examples once more (every later call compares them)
    assert rows.count(2) == (2 if strategy == "replicate" else 1) + 1
    assert all(r in (2, 4, 8, 8 * 16) for r in rows)


@pytest.mark.parametrize("strategy", ["loop", "replicate", "vmap"])
def test_gating_parent_found_on_the_first_chunk_matches_the_closed_form(strategy, caplog):
    p = 0.3
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, -1.0, 4.0], [0.5, 0.0, 3.0, -2.0]], dtype=torch.float64)
    T = 4000
    model = GatedDot(w, p).eval()
    mc = mcdrop.MCDropout(model, n_samples=T, strategy=strategy, batch_budget=2 * 500, seed=4)
    samples = mc(x).squeeze(-1)
    mean_true = x @ w
    var_true = p / (1 - p) * (w**2 * x**2).sum(1)
    z_mean = (samples.mean(0) - mean_true) / (var_true / T).sqrt()
    sq = (samples - samples.mean(0)) ** 2
    z_var = (sq.mean(0) - var_true) / (sq.std(0) / math.sqrt(T))
    assert z_mean.abs().max() < 5 and z_var.abs().max() < 5
    assert {s.name for s in mcdrop.dropout_sites(model, example_inputs=x)} == {"", "drop"}
    assert not any(m.training for m in model.modules())


def test_sampling_twin_that_fails_on_the_first_chunk_is_explained():
    model = MixedModesFail(torch.tensor([1.0, -2.0, 0.5]), 0.4).eval()
    with pytest.raises(ValueError, match="with its dropout sites in training mode on 2 examples"):
        mcdrop.predict_with_uncertainty(model, torch.randn(8, 3), n_samples=8, task="regression")
    assert not any(m.training for m in model.modules())


class TwiceGated(nn.Module):
    """One dropout module used twice, the second use only while the parent trains: the sampling
    twin without the parent makes the call, but too few times in every pass."""

    def __init__(self, w: torch.Tensor, p: float):
        super().__init__()
        self.drop = nn.Dropout(p)
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(x)
        if self.training:
            h = self.drop(h)
        return h @ self.w.unsqueeze(1)


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "loop"},
        {"strategy": "replicate", "batch_budget": 4},  # the first batch split in two passes
        {"strategy": "vmap", "batch_budget": 2},
        {"strategy": "replicate", "oom_rows": 3},  # the first chunk split by out-of-memory
    ],
    ids=["loop", "replicate-split", "vmap-split", "replicate-oom"],
)
def test_every_pass_of_the_first_chunk_must_make_the_calls_training_makes(monkeypatch, options):
    """Two independent masks per unit: var = sum w^2 x^2 (1 / (1 - p)^2 - 1)."""
    options = dict(options)
    oom_rows = options.pop("oom_rows", None)
    if oom_rows is not None:
        original = Runner.run

        def run(self, name, batch, k, **kw):
            if k * batch.size > oom_rows and not _eval_check(kw):
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return original(self, name, batch, k, **kw)

        monkeypatch.setattr(Runner, "run", run)
    p, T = 0.3, 4000
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, -1.0, 4.0], [0.5, 0.0, 3.0, -2.0]], dtype=torch.float64)
    x = x.repeat(4, 1)  # 8 examples: a budget of 4 rows splits them
    model = TwiceGated(w, p).eval()
    samples = mcdrop.MCDropout(model, n_samples=T, seed=1, task="regression", **options)(x)
    samples = samples.squeeze(-1)
    var_true = (w**2 * x**2).sum(1) * (1 / (1 - p) ** 2 - 1)
    sq = (samples - samples.mean(0)) ** 2
    z_var = (sq.mean(0) - var_true) / (sq.std(0) / math.sqrt(T))
    assert z_var.abs().max() < 5, z_var


class SharedGatedBlock(nn.Module):
    def __init__(self, drop: nn.Module, gated: bool):
        super().__init__()
        self.drop, self.gated, self.lin = drop, gated, nn.Linear(4, 4)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return h if (self.gated and not self.training) else self.drop(h)


class Unreproducible(nn.Module):
    """The shared dropout's second use needs the root's flag, which also switches on a
    training-only stochastic depth: mcdrop must refuse, not sample either way."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.1)
        self.b1, self.b2 = SharedGatedBlock(self.drop, False), SharedGatedBlock(self.drop, True)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        h = self.b2(self.b1(x))
        if self.training:
            h = h * (torch.rand(h.shape[0], 1) >= 0.5) * 2.0
        return self.head(h)


@pytest.mark.parametrize("strategy", ["auto", "replicate", "loop"])
def test_a_dropout_the_twin_cannot_reproduce_is_refused_under_every_strategy(strategy):
    model = Unreproducible().eval()
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match="would be missed"):
        mcdrop.dropout_sites(model, example_inputs=x[:2])
    with pytest.raises(ValueError, match="would be missed"):
        mcdrop.predict_with_uncertainty(model, x, n_samples=50, strategy=strategy, seed=0)
    assert not any(m.training for m in model.modules())


class AuxOnly(nn.Module):
    """The only dropout is in a training-only auxiliary head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.aux = nn.Sequential(nn.Dropout(0.5), nn.Linear(3, 2))

    def forward(self, x):
        h = self.body(x)
        return (h, self.aux(h)) if self.training else h


@pytest.mark.parametrize("n_samples", [1, 8])
def test_a_model_whose_only_dropout_is_an_auxiliary_head_is_refused(n_samples):
    with (
        pytest.warns(UserWarning, match="auxiliary branch"),
        pytest.raises(ValueError, match="Found no dropout"),
    ):
        mcdrop.predict_with_uncertainty(
            AuxOnly().eval(), torch.randn(6, 4), n_samples=n_samples, task="regression"
        )


class PaddedEncoder(nn.Module):
    """Dropout before a PyTorch encoder that is not a site: in eval mode its fused fast path
    gives padded positions other values than the slow path a recording forces."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.2)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        self.out = nn.Linear(16, 1)

    def forward(self, x, mask):
        return self.out(self.enc(self.drop(self.inp(x)), src_key_padding_mask=mask)).squeeze(-1)


def test_every_chunk_computes_the_same_function_around_fused_fast_paths():
    """A recorded first chunk runs the encoder's Python path; later chunks must too (its fused
    fast path gives padded positions other values): several chunks give the numbers of one."""
    torch.manual_seed(0)
    model = PaddedEncoder().eval()
    x = torch.randn(4, 6, 8)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 4:] = True
    runs = [
        mcdrop.MCDropout(
            model, n_samples=6, strategy="loop", batch_budget=budget, seed=0, task="regression"
        )(x, mask)
        for budget in (8, 10_000)
    ]
    assert torch.equal(runs[0], runs[1])
    assert runs[0][:, :, :4].var(0).min() > 0  # the real positions are sampled


class PerExample(nn.Module):
    """Runs a block per example (its dropout count grows with the batch) and, while training,
    the block's dropout once more: more calls on a full batch must not hide the missing one."""

    def __init__(self):
        super().__init__()
        self.lin, self.drop, self.head = nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 1)

    def forward(self, x):
        h = torch.cat([self.drop(self.lin(x[i : i + 1])) for i in range(x.shape[0])])
        if self.training:
            h = self.drop(h)
        return self.head(h)


@pytest.mark.parametrize("strategy", ["loop", "replicate", "vmap", "auto"])
def test_dropout_counts_that_grow_with_the_batch_do_not_hide_a_gated_call(strategy):
    torch.manual_seed(0)
    model = PerExample().eval()
    x = torch.randn(8, 4)
    T = 3000
    model.train()
    with torch.no_grad():
        reference = torch.stack([model(x) for _ in range(T)])
    model.eval()
    samples = mcdrop.predict_with_uncertainty(
        model, x, n_samples=T, strategy=strategy, task="regression", keep_samples=True, seed=1
    ).samples
    _assert_same_distribution(samples, reference)
