"""Strategies refused where they cannot sample a model: examples that interact under replicate,
fused kernels and errors under vmap, dropout on a weight; each refusal names the option."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
from conftest import FusedClassifier, training_reference
from strategy_models import _assert_same_distribution, _naive_probs
from torch import nn
from torch.nn import functional as F

import mcdrop
from mcdrop.sampling._strategies import Runner


class SetModel(nn.Module):
    """Examples interact (centred over the batch): replicating the batch would change them."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.3)
        self.body = nn.Linear(6, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.body(self.drop(x))
        return self.head(h - h.mean(0))


def test_auto_does_not_replicate_a_model_whose_examples_interact(caplog):
    model = SetModel().eval()
    x = torch.randn(8, 6)
    with caplog.at_level(logging.INFO, logger="mcdrop"):
        mc = mcdrop.MCDropout(model, n_samples=300, seed=0)
        samples = torch.softmax(mc(x), -1)
    assert mc.last_strategy != "replicate"
    assert any("'replicate' does not fit" in r.getMessage() for r in caplog.records)
    _assert_same_distribution(samples, _naive_probs(model, x, 300, seed=1))


def test_explicit_replicate_is_refused_when_examples_interact():
    """A replicated batch would mix the samples of its copies: refused, not a silent mix."""
    with pytest.raises(ValueError, match="`strategy` other than 'replicate'.*other examples"):
        mcdrop.predict_with_uncertainty(SetModel().eval(), torch.randn(8, 6), strategy="replicate")
    for strategy in ("vmap", "loop"):  # each sample sees the batch as it is
        mcdrop.predict_with_uncertainty(SetModel().eval(), torch.randn(8, 6), strategy=strategy)


class MaybeCentred(SetModel):
    """Examples interact only while ``centre`` is set: a plain attribute decides."""

    centre = False

    def forward(self, x):
        h = self.body(self.drop(x))
        return self.head(h - h.mean(0) if self.centre else h)


def test_examples_interact_check_runs_again_when_an_attribute_changes():
    model = MaybeCentred().eval()
    x = torch.randn(8, 6)
    mc = mcdrop.MCDropout(model, n_samples=20)
    mc(x)
    assert mc.last_strategy == "replicate"
    model.centre = True  # now a replicated batch would mix samples
    mc = mcdrop.MCDropout(model, n_samples=20)
    mc(x)
    assert mc.last_strategy != "replicate"


class LinearDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.fc(x))


class HostRead(LinearDropout):
    """Reads its sampled activations on the host: fine in a loop, impossible under vmap."""

    def forward(self, x):
        h = self.drop(self.fc(x))
        np.asarray(h.detach())
        return h


def test_explicit_vmap_errors_name_the_option_only_when_the_model_runs_without_vmap():
    with pytest.raises(ValueError, match="`strategy`.*'vmap' cannot.*storage.*'auto'"):
        mcdrop.predict_with_uncertainty(HostRead().eval(), torch.randn(5, 4), strategy="vmap")
    assert mcdrop.predict_with_uncertainty(HostRead().eval(), torch.randn(5, 4)).n_samples == 100
    broken = HostRead().eval()
    broken.fc = nn.Linear(5, 3).eval()  # the user's own shape error stays the user's error
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        mcdrop.predict_with_uncertainty(broken, torch.randn(5, 4), strategy="vmap")


class HostCheck(nn.Module):
    """A data-dependent check after the dropout: vmap cannot run it."""

    def __init__(self):
        super().__init__()
        self.body, self.drop, self.head = nn.Linear(16, 32), nn.Dropout(0.3), nn.Linear(32, 3)

    def forward(self, x):
        h = self.drop(torch.relu(self.body(x)))
        if not bool(torch.isfinite(h).all()):
            raise ValueError("non-finite activations")
        return self.head(h).mean(1)


def test_explicit_vmap_that_cannot_run_the_model_names_the_option():
    """A model vmap cannot run: a clear error, not torch's."""
    model = HostCheck().eval()
    with pytest.raises(ValueError, match="`strategy`.*'vmap'.*'auto'"):
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 5, 16), n_samples=4, strategy="vmap")
    auto = mcdrop.predict_with_uncertainty(model, torch.randn(4, 5, 16), n_samples=4)
    assert auto.n_samples == 4


def test_explicit_vmap_runs_fused_attention_with_mcdrops_masks():
    """SDPA's fused dropout cannot draw per-sample masks under vmap; mcdrop writes the attention
    out with its own masks, which vmap batches: sampled like training mode."""
    model = FusedClassifier().eval()
    for module in model.modules():  # a head that is not near-constant
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=1.0)
    x = torch.randn(4, 5, 16)
    mc = mcdrop.MCDropout(model, n_samples=300, strategy="vmap", seed=0)
    samples = torch.softmax(mc(x), -1)
    assert mc.last_strategy == "vmap"
    torch.manual_seed(1)
    reference = training_reference(model, lambda m: torch.softmax(m(x), -1), 300)
    _assert_same_distribution(samples, reference)


def test_vmap_is_refused_for_sites_whose_kernels_were_not_probed():
    """Without a probe mcdrop cannot see an attention kernel inside a custom module (on CUDA its
    dropout would share one mask between the samples of a vmap pass): vmap is refused there,
    and auto does not try it; PyTorch's own plain layers stay vmap-able."""
    # Without a probe (either way), a parent reading its child nn.Dropout's rate into SDPA
    # (timm/HF style) is unseen, so any module outside torch.nn makes vmap unverifiable.
    for unprobed in ({"scope": "train_except_norm"}, {"detect_silent": False, "include": "head"}):
        with pytest.raises(ValueError, match="`strategy`.*FusedAttention \\(not probed\\)"):
            mcdrop.predict_with_uncertainty(
                FusedClassifier().eval(),
                torch.randn(4, 5, 16),
                n_samples=4,
                strategy="vmap",
                **unprobed,
            )
    mc = mcdrop.MCDropout(FusedClassifier().eval(), n_samples=4, scope="train_except_norm")
    mc(torch.randn(4, 5, 16))
    assert mc.last_strategy == "replicate"
    plain = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3), nn.Linear(8, 3)).eval()
    for model in (plain, torch.compile(plain)):
        result = mcdrop.predict_with_uncertainty(
            model, torch.randn(5, 6), n_samples=4, strategy="vmap", detect_silent=False
        )
        assert result.n_samples == 4


class RowCheck(LinearDropout):
    """Refuses inputs whose fifth row is negative: the user's own error, on any strategy."""

    def forward(self, x):
        if x.shape[0] > 4 and bool(x[4, 0] < 0):
            raise KeyError("row 4 is out of range")
        return super().forward(x)


def test_explicit_vmap_keeps_the_users_own_errors():
    x = torch.randn(6, 4)
    x[4, 0] = -1.0
    for strategy in ("vmap", "loop"):
        with pytest.raises(KeyError, match="row 4"):
            mcdrop.predict_with_uncertainty(RowCheck().eval(), x, n_samples=4, strategy=strategy)


class AlwaysOn(nn.Module):
    """Hand-written MC dropout: random in eval mode, but its examples never interact."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 16), nn.Linear(16, 1)

    def forward(self, x):
        return self.b(F.dropout(torch.relu(self.a(x)), 0.3, training=True))


class Noisy(AlwaysOn):
    """Random in eval mode beyond dropout (noise injection): the check cannot tell."""

    def forward(self, x):
        return super().forward(x + 0.1 * torch.randn_like(x))


class Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.d, self.b = nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1)

    def forward(self, x):
        h = self.d(self.a(x))
        return self.b(h - h.mean(0, keepdim=True))


class TrainCentred(nn.Module):
    """Centres over the batch while training, with a fixed buffer in eval mode."""

    def __init__(self):
        super().__init__()
        self.register_buffer("centre", torch.zeros(16))

    def forward(self, h):
        return h - (h.mean(0) if self.training else self.centre)


class TrainOnlyMixer(Mixer):
    def __init__(self):
        super().__init__()
        self.centre = TrainCentred()

    def forward(self, x):
        return self.b(self.centre(self.d(self.a(x))))


def test_replicate_check_runs_the_twin_as_it_samples_with_its_dropout_off(caplog):
    x = torch.randn(8, 4)
    kw = {"n_samples": 20, "task": "regression", "strategy": "replicate", "seed": 0}
    result = mcdrop.predict_with_uncertainty(AlwaysOn().eval(), x, **kw)  # not refused
    assert (result.epistemic_variance > 0).all()
    with caplog.at_level(logging.WARNING, logger="mcdrop"):
        mcdrop.predict_with_uncertainty(Noisy().eval(), x, **kw)
    assert any("cannot be checked" in r.getMessage() for r in caplog.records)
    model = TrainOnlyMixer().eval()  # mixes only in the modules scope= puts in training mode
    mcdrop.predict_with_uncertainty(model, x, **kw)
    with pytest.raises(ValueError, match="other than 'replicate'"):
        mcdrop.predict_with_uncertainty(model, x, scope="train_except_norm", **kw)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_small_batches_whose_examples_interact_are_not_replicated(n):
    """Fewer than four examples: zero rows are the companions (one example's copies would mix
    too)."""
    torch.manual_seed(0)
    model = Mixer().eval()
    x = torch.randn(n, 4)
    kw = {"task": "regression", "seed": 0}
    with pytest.raises(ValueError, match="other than 'replicate'"):
        mcdrop.predict_with_uncertainty(model, x, n_samples=4, strategy="replicate", **kw)
    if n == 1:  # centred over one example the output is constant: nothing to sample
        return
    T = 3000
    samples = mcdrop.predict_with_uncertainty(model, x, n_samples=T, keep_samples=True, **kw)
    model.train()
    with torch.no_grad():
        reference = torch.stack([model(x) for _ in range(T)])
    model.eval()
    _assert_same_distribution(samples.samples, reference)


class SumNormalised(nn.Module):
    """Divides by a sum over the batch of non-negative units: zero rows would not change it."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.lin = nn.Linear(4, 8, bias=False)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(8, 1, bias=False)
        self.scale = scale

    def forward(self, x):
        h = self.drop(torch.relu(self.lin(x)))
        return self.scale * self.out(h / (h.abs().sum(0, keepdim=True) + 1e-3))


@pytest.mark.parametrize(("n", "amp"), [(1, None), (2, None), (3, None), (8, torch.bfloat16)])
def test_interactions_are_seen_in_small_batches_and_small_low_precision_outputs(n, amp):
    torch.manual_seed(0)
    model = SumNormalised(scale=0.1 if amp else 1.0).eval()
    with pytest.raises(ValueError, match="other than 'replicate'"):
        mcdrop.predict_with_uncertainty(
            model, torch.randn(n, 4), n_samples=4, strategy="replicate", task="regression", amp=amp
        )


class FailsOnFour(LinearDropout):
    def forward(self, x):
        if x.shape[0] == 4:
            raise RuntimeError("this model never sees four examples")
        return super().forward(x)


def test_replicate_that_cannot_be_checked_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="mcdrop"):
        mcdrop.predict_with_uncertainty(
            FailsOnFour().eval(), torch.randn(8, 4), n_samples=4, strategy="replicate"
        )
    assert any(
        "cannot be checked" in r.getMessage() and "four examples" in r.getMessage()
        for r in caplog.records
    )


class DropConnect(nn.Module):
    """Dropout on a weight (as AWD-LSTM's WeightDrop): one mask per pass."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, x):
        weight = F.dropout(self.lin.weight, 0.5, self.training)
        return F.linear(x, weight, self.lin.bias)


def test_dropout_on_a_weight_is_never_replicated():
    """Closed form per example: var = p / (1 - p) sum w^2 x^2, independent between samples."""
    torch.manual_seed(0)
    model = DropConnect().eval()
    x = torch.randn(8, 4)
    kw = {"task": "regression", "seed": 0}
    with pytest.raises(ValueError, match="drops out a weight"):
        mcdrop.predict_with_uncertainty(model, x, n_samples=4, strategy="replicate", **kw)
    T = 4000
    mc = mcdrop.MCDropout(model, n_samples=T, **kw)
    samples = mc(x).squeeze(-1).double()
    assert mc.last_strategy in ("vmap", "loop")
    w = model.lin.weight.detach().double().squeeze(0)
    var_true = (w**2 * x.double() ** 2).sum(1)  # p / (1 - p) = 1 at p = 0.5
    sq = (samples - samples.mean(0)) ** 2
    z_var = (sq.mean(0) - var_true) / (sq.std(0) / math.sqrt(T))
    assert z_var.abs().max() < 5


def test_the_examples_interact_check_leaves_the_callers_random_stream():
    from mcdrop.sampling._checks import rows_interact as _rows_interact
    from mcdrop.sampling._inputs import _Batch

    runner = Runner(
        Noisy().eval(), device=torch.device("cpu"), amp=None, n_outputs=1, output_transform=None
    )
    batch = _Batch((torch.randn(8, 4),), {}, None, 8)
    before = torch.get_rng_state()
    assert "random" in (_rows_interact(runner, batch) or "")
    assert torch.equal(torch.get_rng_state(), before)


class RelativeToFirstRow(nn.Module):
    """Every output relative to the batch's first row: row 0 is 0 in every sample, and a
    replicated batch would subtract the first copy's row 0 from every copy."""

    def __init__(self, last: bool = False):
        super().__init__()
        self.lin, self.drop = nn.Linear(6, 3), nn.Dropout(0.3)
        self.last = last

    def forward(self, x):
        z = self.lin(self.drop(x))
        return z - (z[-1:] if self.last else z[:1])


@pytest.mark.parametrize("last", [False, True])
@pytest.mark.parametrize("n", [1, 2, 5])
def test_outputs_that_depend_on_the_first_or_last_row_are_not_replicated(last, n):
    """The examples-interact check puts a companion before the examples as well as after them:
    one placed only after them left a dependence on the batch's first row unseen, and
    ``auto`` replicated (row 0 was then not 0)."""
    torch.manual_seed(0)
    model, x = RelativeToFirstRow(last).eval(), torch.randn(n, 6)
    with pytest.raises(ValueError, match="other than 'replicate'"):
        mcdrop.MCDropout(model, n_samples=4, seed=0, strategy="replicate")(x)
    if n == 1:  # relative to itself the output is constant: nothing to sample
        return
    mc = mcdrop.MCDropout(model, n_samples=50, seed=0)
    samples = mc(x)
    assert mc.last_strategy != "replicate"
    row = 0 if not last else n - 1
    assert torch.equal(samples[:, row], torch.zeros_like(samples[:, row]))  # as training mode
    model.train()
    with torch.no_grad():
        assert bool((model(x)[row] == 0).all())
