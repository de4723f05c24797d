"""``predict_with_uncertainty`` and ``MCDropout``: correctness against closed forms and loops."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import MLP, FunctionalDropout, FusedClassifier
from scipy import stats
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mcdrop


class DotDropout(nn.Module):
    """y = w . dropout(x): mean w.x, variance p/(1-p) sum w_i^2 x_i^2."""

    def __init__(self, w: torch.Tensor, p: float):
        super().__init__()
        self.drop = nn.Dropout(p)
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x) @ self.w.unsqueeze(1)


@pytest.mark.parametrize("strategy", ["replicate", "vmap", "loop"])
def test_closed_form_mean_and_variance(strategy):
    p = 0.3
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, -1.0, 4.0], [0.5, 0.0, 3.0, -2.0]], dtype=torch.float64)
    model = DotDropout(w, p).eval()
    T = 20_000
    result = mcdrop.predict_with_uncertainty(
        model, x, n_samples=T, task="regression", strategy=strategy, keep_samples=True, seed=3
    )
    mean_true = (x @ w).unsqueeze(1)
    var_true = (p / (1 - p) * (w**2 * x**2).sum(1)).unsqueeze(1)
    z_mean = (result.mean - mean_true) / torch.sqrt(var_true / T)
    assert z_mean.abs().max() < 5
    # the standard error of a variance estimate, from the samples themselves
    samples = result.samples.double()
    sq = (samples - samples.mean(0)) ** 2
    se_var = sq.std(0) / math.sqrt(T)
    assert ((result.epistemic_variance - var_true) / se_var).abs().max() < 5
    assert torch.equal(result.aleatoric_variance, torch.zeros_like(result.mean))


def test_masks_independent_across_samples_and_replicated_examples():
    p = 0.5
    model = nn.Sequential(nn.Dropout(p)).eval()
    x = torch.ones(8, 64)
    T = 400
    result = mcdrop.predict_with_uncertainty(
        model, x, n_samples=T, task="regression", strategy="replicate", keep_samples=True, seed=0
    )
    masks = (result.samples != 0).double()  # (T, 8, 64)
    assert masks.mean().item() == pytest.approx(1 - p, abs=0.01)
    flat = masks.reshape(T, -1)
    # across samples: consecutive samples agree on ~half the units, never identical
    agreement = (flat[1:] == flat[:-1]).double().mean(1)
    assert agreement.max() < 0.7 and agreement.mean().item() == pytest.approx(0.5, abs=0.02)
    # across examples of one replicated pass: correlation ~ 0
    per_example = masks.permute(1, 0, 2).reshape(8, -1)
    corr = np.corrcoef(per_example.numpy())
    off_diagonal = corr[~np.eye(8, dtype=bool)]
    assert np.abs(off_diagonal).max() < 0.05
    # kept values are rescaled by 1 / (1 - p)
    kept = result.samples[result.samples != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)))


def _naive_classification(model, x, T):
    """Independent reference: a plain Python loop with the dropout module switched on."""
    model.eval()
    model.drop.train()
    with torch.no_grad():
        probs = torch.stack([torch.softmax(model(x), -1) for _ in range(T)]).double()
    model.eval()
    mean = probs.mean(0)
    pe = -(mean * mean.log()).sum(-1)
    ee = -(probs * probs.log()).sum(-1).mean(0)
    modes = probs.argmax(-1)
    vr = (
        1
        - torch.stack(
            [
                torch.bincount(modes[:, i], minlength=probs.shape[-1]).max()
                for i in range(x.shape[0])
            ]
        )
        / T
    )
    return probs, mean, pe, ee, vr


def test_streaming_equals_stacked_computation():
    model = MLP().eval()
    x = torch.randn(30, 6)
    T = 97
    torch.manual_seed(0)
    result = mcdrop.predict_with_uncertainty(
        model, x, n_samples=T, keep_samples=True, batch_budget=30 * 8, batch_size=7, seed=5
    )
    probs = result.samples.double()  # (T, N, C): the very samples that were aggregated
    mean = probs.mean(0)
    np.testing.assert_allclose(result.mean, mean, atol=1e-6)
    np.testing.assert_allclose(result.variance, probs.var(0, unbiased=False), atol=1e-6)
    pe = -(mean * mean.log()).sum(-1)
    ee = -(probs * probs.log()).sum(-1).mean(0)
    np.testing.assert_allclose(result.predictive_entropy, pe, atol=1e-6)
    np.testing.assert_allclose(result.expected_entropy, ee, atol=1e-6)
    np.testing.assert_allclose(result.mutual_information, (pe - ee).clamp_min(0), atol=1e-6)
    modes = probs.argmax(-1)
    vr = [1 - np.bincount(modes[:, i], minlength=4).max() / T for i in range(30)]
    np.testing.assert_allclose(result.variation_ratio, vr, atol=1e-12)
    top2 = np.sort(mean.numpy(), -1)[:, -2:]
    np.testing.assert_allclose(result.margin, top2[:, 1] - top2[:, 0], atol=1e-6)
    se = probs.std(0, unbiased=True) / math.sqrt(T)
    np.testing.assert_allclose(result.standard_error, se, atol=1e-6)
    assert result.n_samples == T
    assert torch.equal(result.predicted_class, mean.argmax(-1))


def test_agrees_with_naive_loop_within_mc_error():
    model = MLP().eval()
    x = torch.randn(20, 6)
    T = 1000
    _, mean_ref, *_ = _naive_classification(model, x, T)
    result = mcdrop.predict_with_uncertainty(model, x, n_samples=T, seed=1)
    se = torch.sqrt(result.standard_error**2 + (result.variance / (T - 1)))
    assert ((result.mean - mean_ref).abs() / se.clamp_min(1e-9)).max() < 6


def test_large_t_does_not_hold_all_samples():
    script = textwrap.dedent(
        """
        import resource, torch, mcdrop
        from torch import nn
        torch.set_num_threads(2)
        N, C, T = 100, 500, 2000  # T x N x C float32 would be 400 MB
        model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.2), nn.Linear(8, C)).eval()
        x = torch.randn(N, 4)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        r = mcdrop.predict_with_uncertainty(model, x, n_samples=T, batch_budget=2000, seed=0)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert r.samples is None and r.n_samples == T and r.mean.shape == (N, C)
        print((after - before) / 1024)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    growth_mb = float(out.stdout.strip().splitlines()[-1])
    assert growth_mb < 150, f"peak memory grew by {growth_mb:.0f} MB"


def test_batchnorm_buffers_and_parameters_unchanged_even_from_train_mode():
    model = MLP()
    model.train()
    with torch.no_grad():
        model.body[1].running_mean.uniform_()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    with pytest.warns(UserWarning, match="is in training mode"):
        result = mcdrop.predict_with_uncertainty(model, torch.randn(16, 6) * 5 + 3, n_samples=20)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert {n: m.training for n, m in model.named_modules()} == flags
    # eval-mode BatchNorm: the result equals sampling with BN in eval explicitly
    assert result.mean.shape == (16, 4)


class ExplodesMidSampling(MLP):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        if type(self).calls == 8:  # after the probes, in the middle of the 50 passes
            raise RuntimeError("exploded mid-sampling")
        return super().forward(x)


def test_flags_restored_after_exception_mid_sampling():
    model = ExplodesMidSampling().eval()
    ExplodesMidSampling.calls = 0
    before = {n: m.training for n, m in model.named_modules()}
    with pytest.raises(RuntimeError, match="exploded mid-sampling"):
        mcdrop.predict_with_uncertainty(
            model, torch.randn(4, 6), n_samples=50, strategy="loop", batch_budget=4
        )
    assert {n: m.training for n, m in model.named_modules()} == before


def _attention_only_transformer():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.3, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    return nn.Sequential(encoder, nn.Flatten(), nn.Linear(16 * 5, 3)).eval()


def test_transformer_attention_dropout_alone_gives_mutual_information():
    model = _attention_only_transformer()
    x = torch.randn(6, 5, 16)
    # keep only attention dropout: the three nn.Dropout modules of each layer stay off
    result = mcdrop.predict_with_uncertainty(model, x, n_samples=30, exclude="*.dropout*", seed=0)
    assert (result.mutual_information > 0).all()
    # the trap: eval + nn.Dropout modules on gives identical passes (fast path / dropout_p = 0)
    model.eval()
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.train()
    with torch.no_grad():
        outs = [model(x) for _ in range(3)]
    model.eval()
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[1], outs[2])


def test_multihead_attention_dropout_gives_mutual_information():
    class AttnOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(16, 2, dropout=0.3, batch_first=True)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.attn(x, x, x, need_weights=False)[0].mean(1))

    result = mcdrop.predict_with_uncertainty(AttnOnly().eval(), torch.randn(5, 7, 16), n_samples=30)
    assert (result.mutual_information > 0).all()


def test_fused_sdpa_attention_block_is_detected_and_samples():
    model = FusedClassifier().eval()
    x = torch.randn(6, 5, 16)
    result = mcdrop.predict_with_uncertainty(model, x, n_samples=30, seed=0)
    assert (result.mutual_information > 0).all()
    assert not any(m.training for m in model.modules())
    # without the probe the block's dropout never runs: a clear error, not zero uncertainty
    with pytest.raises(ValueError, match="identical"):
        mcdrop.predict_with_uncertainty(model, x, n_samples=10, detect_silent=False)


def test_functional_dropout_is_switched_on():
    model = FunctionalDropout().eval()
    result = mcdrop.predict_with_uncertainty(model, torch.randn(5, 6), n_samples=30)
    assert (result.mutual_information > 0).all()
    forced = mcdrop.predict_with_uncertainty(
        model, torch.randn(5, 6), n_samples=30, scope="train_except_norm", detect_silent=False
    )
    assert (forced.variance > 0).any()


# -- input and output forms ---------------------------------------------------------------------


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 8)
        self.b = nn.Linear(2, 8)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8, 3)

    def forward(self, x, z, scale=1.0):
        return self.head(self.drop(self.a(x) + self.b(z))) * scale


class Doubled(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, a, b):
        return self.inner(a, b) * 2.0


def test_tuple_dict_and_loader_inputs_agree():
    model = TwoInputs().eval()
    x, z = torch.randn(10, 3), torch.randn(10, 2)
    y = torch.randint(0, 3, (10,))
    kwargs = dict(n_samples=40, seed=7, strategy="replicate", batch_size=10)
    by_tuple = mcdrop.predict_with_uncertainty(model, (x, z), **kwargs)
    by_dict = mcdrop.predict_with_uncertainty(model, {"x": x, "z": z}, **kwargs)
    loader = DataLoader(TensorDataset(x, z, y), batch_size=10)
    by_loader = mcdrop.predict_with_uncertainty(
        model, (((a, b), t) for a, b, t in loader), **kwargs
    )
    np.testing.assert_allclose(by_tuple.mean, by_dict.mean, atol=1e-12)
    np.testing.assert_allclose(by_tuple.mean, by_loader.mean, atol=1e-12)
    assert torch.equal(by_loader.targets, y)
    assert by_tuple.targets is None
    # a non-batch argument passes through unchanged
    scaled = mcdrop.predict_with_uncertainty(model, {"x": x, "z": z, "scale": 2.0}, **kwargs)
    ref = Doubled(model).eval()
    doubled = mcdrop.predict_with_uncertainty(ref, (x, z), **kwargs)
    np.testing.assert_allclose(scaled.mean, doubled.mean, atol=1e-12)


def test_dataloader_pairs_keep_targets_in_order():
    model = MLP().eval()
    x, y = torch.randn(23, 6), torch.arange(23) % 4
    loader = DataLoader(TensorDataset(x, y), batch_size=5)
    result = mcdrop.predict_with_uncertainty(model, loader, n_samples=5, progress=False)
    assert result.mean.shape == (23, 4)
    assert torch.equal(result.targets, y)
    direct = mcdrop.predict_with_uncertainty(model, x, targets=y, n_samples=5)
    assert torch.equal(direct.targets, y)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda t: (t, "aux"),
        lambda t: {"logits": t, "hidden": None},
        lambda t: SimpleNamespace(logits=t, loss=None),
    ],
    ids=["tuple", "mapping", "object"],
)
def test_output_forms(wrap):
    base = MLP().eval()

    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.base = base

        def forward(self, x):
            return wrap(self.base(x))

    x = torch.randn(8, 6)
    ref = mcdrop.predict_with_uncertainty(base, x, n_samples=20, seed=2)
    got = mcdrop.predict_with_uncertainty(Wrapped().eval(), x, n_samples=20, seed=2)
    np.testing.assert_allclose(got.mean, ref.mean, atol=1e-12)


def test_output_transform_and_probability_outputs():
    base = MLP().eval()
    x = torch.randn(8, 6)
    ref = mcdrop.predict_with_uncertainty(base, x, n_samples=20, seed=2)
    as_probs = nn.Sequential(base, nn.Softmax(-1)).eval()
    as_log = nn.Sequential(base, nn.LogSoftmax(-1)).eval()
    by_probs = mcdrop.predict_with_uncertainty(as_probs, x, n_samples=20, seed=2, outputs="probs")
    by_log = mcdrop.predict_with_uncertainty(as_log, x, n_samples=20, seed=2, outputs="log_probs")
    by_fn = mcdrop.predict_with_uncertainty(
        nn.Sequential(base, nn.Unflatten(1, (1, 4))).eval(),
        x,
        n_samples=20,
        seed=2,
        output_transform=lambda out: out[:, 0],
    )
    for other in (by_probs, by_log, by_fn):
        np.testing.assert_allclose(other.mean, ref.mean, atol=1e-6)
        np.testing.assert_allclose(other.mutual_information, ref.mutual_information, atol=1e-5)


def test_dense_segmentation_outputs_give_per_pixel_maps():
    model = nn.Sequential(
        nn.Conv2d(2, 8, 3, padding=1), nn.ReLU(), nn.Dropout2d(0.3), nn.Conv2d(8, 3, 1)
    ).eval()
    x = torch.randn(4, 2, 6, 5)
    result = mcdrop.predict_with_uncertainty(model, x, n_samples=25, keep_samples=True, seed=0)
    assert result.mean.shape == (4, 3, 6, 5)
    assert result.mutual_information.shape == (4, 6, 5)
    assert result.predicted_class.shape == (4, 6, 5)
    np.testing.assert_allclose(result.mean.sum(1), 1.0, atol=1e-9)
    # per pixel equals the flat computation on (N*H*W, C)
    flat = mcdrop.summarize_samples(
        result.samples.permute(0, 1, 3, 4, 2).reshape(25, -1, 3), outputs="probs"
    )
    np.testing.assert_allclose(
        result.mutual_information.reshape(-1), flat.mutual_information, atol=1e-6
    )


def test_token_outputs_with_class_dim_last():
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 5)).eval()
    result = mcdrop.predict_with_uncertainty(
        model, torch.randn(3, 7, 4), n_samples=10, class_dim=-1
    )
    assert result.mean.shape == (3, 7, 5) and result.class_dim == 2
    assert result.predictive_entropy.shape == (3, 7)
    np.testing.assert_allclose(result.mean.sum(-1), 1.0, atol=1e-9)


# -- regression ---------------------------------------------------------------------------------


def test_regression_tau_and_interval():
    model = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 1)).eval()
    result = mcdrop.predict_with_uncertainty(
        model, torch.randn(9, 3), n_samples=50, task="regression", tau=4.0
    )
    assert isinstance(result, mcdrop.RegressionResult)
    np.testing.assert_allclose(result.aleatoric_variance, 0.25)
    np.testing.assert_allclose(result.variance, result.epistemic_variance + 0.25)
    lower, upper = result.interval(0.9)
    z = stats.norm.ppf(0.95)
    np.testing.assert_allclose(upper - result.mean, z * result.std, rtol=1e-12)
    np.testing.assert_allclose(result.mean - lower, z * result.std, rtol=1e-12)


def test_heteroscedastic_head_closed_form():
    p = 0.2

    class Hetero(nn.Module):
        """mu = w . dropout(h), log_var = log(1 + dropout(h)_0^2): both have closed forms."""

        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(p)
            self.w = nn.Parameter(torch.tensor([[0.5], [-1.5], [2.0]], dtype=torch.float64))

        def forward(self, h):
            d = self.drop(h)
            return d @ self.w, torch.log1p(d[:, :1] ** 2)

    h = torch.tensor([[1.0, 2.0, -0.5], [0.3, -1.0, 1.5]], dtype=torch.float64)
    T = 20_000
    result = mcdrop.predict_with_uncertainty(
        Hetero().eval(), h, n_samples=T, task="regression", heteroscedastic=True, seed=4
    )
    w = torch.tensor([0.5, -1.5, 2.0], dtype=torch.float64)
    mean = (h @ w).unsqueeze(1)
    epistemic = (p / (1 - p) * (w**2 * h**2).sum(1)).unsqueeze(1)
    # E[1 + d^2] with d = h0 / (1 - p) w.p. 1 - p, else 0; its Monte Carlo standard error
    big = (h[:, :1] / (1 - p)) ** 2
    aleatoric = 1 + (1 - p) * big
    se_aleatoric = big * math.sqrt(p * (1 - p) / T)
    assert result.mean.shape == (2, 1)
    assert ((result.mean - mean) / torch.sqrt(epistemic / T)).abs().max() < 5
    assert ((result.aleatoric_variance - aleatoric) / se_aleatoric).abs().max() < 5
    np.testing.assert_allclose(result.epistemic_variance, epistemic, rtol=0.05)
    np.testing.assert_allclose(
        result.variance, result.epistemic_variance + result.aleatoric_variance
    )
    with pytest.raises(TypeError, match="heteroscedastic"):
        mcdrop.predict_with_uncertainty(
            MLP().eval(), torch.randn(4, 6), n_samples=3, task="regression", heteroscedastic=True
        )


# -- randomness ---------------------------------------------------------------------------------


def test_seed_reproducible_and_global_rng_untouched():
    model = MLP().eval()
    x = torch.randn(12, 6)
    state = torch.get_rng_state()
    a = mcdrop.predict_with_uncertainty(model, x, n_samples=30, seed=11)
    assert torch.equal(torch.get_rng_state(), state)
    b = mcdrop.predict_with_uncertainty(model, x, n_samples=30, seed=11)
    c = mcdrop.predict_with_uncertainty(model, x, n_samples=30, seed=12)
    assert torch.equal(a.mean, b.mean) and not torch.equal(a.mean, c.mean)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    d = mcdrop.predict_with_uncertainty(model, x, n_samples=30, generator=g1)
    e = mcdrop.predict_with_uncertainty(model, x, n_samples=30, generator=g2)
    assert torch.equal(d.mean, e.mean)
    assert torch.equal(torch.get_rng_state(), state)


def test_progress_bar(capsys):
    model = MLP().eval()
    mcdrop.predict_with_uncertainty(model, torch.randn(4, 6), n_samples=5, progress=True)
    assert "MC dropout" in capsys.readouterr().err
    mcdrop.predict_with_uncertainty(model, torch.randn(4, 6), n_samples=5, progress=False)
    assert capsys.readouterr().err == ""


# -- MCDropout wrapper --------------------------------------------------------------------------


def test_mcdropout_module():
    model = MLP().eval()
    mc = mcdrop.MCDropout(model, n_samples=12, seed=3)
    x = torch.randn(5, 6)
    samples = mc(x)
    assert samples.shape == (12, 5, 4)
    assert not torch.equal(samples[0], samples[1])
    assert torch.equal(mc(x), samples)  # the seed makes forward reproducible
    assert set(mc.state_dict()) == {f"model.{k}" for k in model.state_dict()}
    result = mc.predict_with_uncertainty(x)
    assert isinstance(result, mcdrop.ClassificationResult) and result.n_samples == 12
    # the stacked samples, softmaxed and averaged, are the result's mean (same seed, same draws)
    np.testing.assert_allclose(result.mean, torch.softmax(samples.double(), -1).mean(0), atol=1e-6)
    assert [s.name for s in mc.sites()] == ["drop"]
    assert not any(m.training for m in model.modules())
    with pytest.raises(TypeError, match="unknown"):
        mcdrop.MCDropout(model, n_samples=3, samples=4)
    with pytest.raises(ValueError, match="`n_samples`"):
        mcdrop.MCDropout(model, n_samples=0)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_samples": 0}, ValueError, r"`n_samples`.*got 0"),
        ({"n_samples": 2.5}, TypeError, r"`n_samples`.*2\.5"),
        ({"n_samples": "many"}, ValueError, r"`n_samples`.*'many'"),
        ({"task": "ranking"}, ValueError, r"`task`.*'ranking'"),
        ({"outputs": "scores"}, ValueError, r"`outputs`.*'scores'"),
        ({"strategy": "magic"}, ValueError, r"`strategy`.*'magic'"),
        ({"batch_budget": 0}, ValueError, r"`batch_budget`"),
        ({"tau": -1.0, "task": "regression"}, ValueError, r"`tau`"),
        ({"tau": 1.0}, ValueError, r"`tau`.*regression"),
        ({"amp": "fp8"}, ValueError, r"`amp`.*'fp8'"),
        ({"seed": 1, "generator": torch.Generator()}, ValueError, r"`seed`.*`generator`"),
    ],
)
def test_bad_options(kwargs, error, match):
    model = MLP().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=match):
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 6), **kwargs)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert not any(m.training for m in model.modules())


def test_empty_and_wrong_inputs():
    model = MLP().eval()
    with pytest.raises(ValueError, match="`inputs`.*at least one example"):
        mcdrop.predict_with_uncertainty(model, torch.empty(0, 6))
    with pytest.raises(ValueError, match="`inputs`.*empty"):
        mcdrop.predict_with_uncertainty(
            model, DataLoader(TensorDataset(torch.empty(0, 6)), batch_size=2)
        )
    with pytest.raises(TypeError, match="`inputs`"):
        mcdrop.predict_with_uncertainty(model, 3.0)
    with pytest.raises(ValueError, match="`targets`"):
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 6), targets=torch.zeros(3))
    with pytest.raises(TypeError, match="`model`"):
        mcdrop.predict_with_uncertainty(lambda x: x, torch.randn(4, 6))


def test_mismatched_output_shapes_across_batches():
    class Ragged(nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.drop(x)  # output width follows the input width

    batches = [torch.randn(3, 4), torch.randn(3, 5)]
    with pytest.raises(ValueError, match=r"batch 1 gave \(N, 5\)"):
        mcdrop.predict_with_uncertainty(Ragged().eval(), iter(batches), n_samples=4)


def test_nan_outputs_name_the_batch():
    model = MLP().eval()
    x = torch.randn(9, 6)
    x[7, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf in batch 2 .examples 6 to 8"):
        mcdrop.predict_with_uncertainty(model, x, n_samples=4, batch_size=3)
    assert not any(m.training for m in model.modules())


def test_probabilities_must_sum_to_one():
    model = MLP().eval()
    with pytest.raises(ValueError, match="outputs='probs'"):
        mcdrop.predict_with_uncertainty(
            nn.Sequential(model, nn.Sigmoid()).eval(),
            torch.randn(4, 6),
            outputs="probs",
            n_samples=3,
        )


def test_dropout_that_never_changes_the_output_is_an_error():
    class DeadDropout(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            self.drop(x)  # called, result discarded
            return self.fc(x)

    with pytest.raises(
        ValueError, match="DeadDropout.*identical.*does not depend on what it drops"
    ):
        mcdrop.predict_with_uncertainty(DeadDropout().eval(), torch.randn(4, 3), n_samples=5)


def test_single_sample_is_allowed_with_infinite_standard_error():
    with pytest.warns(UserWarning, match="n_samples=1.*0 by construction") as record:
        mcdrop.MCDropout(MLP().eval(), n_samples=1).predict_with_uncertainty(torch.randn(3, 6))
    assert record[0].filename == __file__
    with pytest.warns(UserWarning, match="n_samples=1.*0 by construction") as record:
        result = mcdrop.predict_with_uncertainty(MLP().eval(), torch.randn(3, 6), n_samples=1)
    assert record[0].filename == __file__
    assert result.n_samples == 1 and torch.isinf(result.standard_error).all()
    np.testing.assert_allclose(result.mutual_information, 0.0, atol=1e-6)  # float32 entropies


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 0.25, 0.375])  # the last three: one byte a unit
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
@pytest.mark.parametrize("shape", [(20_000,), (40, 501)])
def test_cpu_dropout_mask_is_bernoulli_and_rescaled(p, inplace, dtype, shape):
    """The cheaper CPU mask keeps each unit with probability 1 - p and scales it by 1 / (1 - p);
    neighbouring units (bytes of one random word) are independent."""
    from mcdrop.sampling._strategies import FastCPUDropout as _FastCPUDropout

    x = torch.ones(shape, dtype=dtype)
    with _FastCPUDropout():
        out = torch.nn.functional.dropout(x.clone(), p, True, inplace)
        untouched = torch.nn.functional.dropout(x, p, False)
        alpha = torch.nn.functional.alpha_dropout(x, p, False)
    kept = out != 0
    n = x.numel()
    # binomial test of the keep rate against scipy
    assert stats.binomtest(int(kept.sum()), n, 1 - p).pvalue > 1e-4
    scale = float((torch.ones((), dtype=dtype) / (1 - p)).float())
    np.testing.assert_allclose(out[kept].float(), np.full(int(kept.sum()), scale), rtol=1e-2)
    assert torch.equal(untouched, x) and torch.equal(alpha, x)
    pairs = kept.reshape(-1, 2).long()  # units 2i and 2i+1: a 2x2 table of (kept, kept)
    table = torch.zeros(2, 2)
    table.index_put_((pairs[:, 0], pairs[:, 1]), torch.ones(len(pairs)), accumulate=True)
    assert stats.chi2_contingency(table.numpy()).pvalue > 1e-4


@pytest.mark.parametrize("p", [0.5, 0.25, 0.375, 0.1])
def test_cpu_dropout_keep_rate_is_exact_to_a_256th(p):
    """Two million units: a keep rate off by 1/256 would be 11 standard errors away."""
    from mcdrop.dropout import keep_mask as _keep_mask

    kept = _keep_mask(torch.Size([1000, 2000]), p, torch.device("cpu"))
    assert stats.binomtest(int(kept.sum()), kept.numel(), 1 - p).pvalue > 1e-4


def test_byte_masks_fall_back_to_floats_where_vmap_cannot_view_bytes(monkeypatch):
    """Before torch 2.13 vmap has no batching rule for viewing words as bytes: every mask is then
    drawn in float32, decided once per process without drawing random numbers."""
    from mcdrop.dropout import _masks as strategies

    strategies.bytes_under_vmap.cache_clear()
    before = torch.get_rng_state()
    assert strategies.bytes_under_vmap() in (True, False)
    assert torch.equal(torch.get_rng_state(), before)
    monkeypatch.setattr(strategies, "bytes_under_vmap", lambda: False)
    kept = strategies.keep_mask(torch.Size([1000, 2000]), 0.25, torch.device("cpu"))
    assert stats.binomtest(int(kept.sum()), kept.numel(), 0.75).pvalue > 1e-4
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, -1.0, 0.5]], dtype=torch.float64)
    model = nn.Sequential(nn.Dropout(0.25), nn.Linear(4, 1, bias=False, dtype=torch.float64))
    model[1].weight.data = w[None]
    samples = mcdrop.MCDropout(model.eval(), n_samples=4000, strategy="vmap", seed=0)(x)
    var = 0.25 / 0.75 * float((w**2 * x**2).sum())
    assert abs(float(samples.mean()) - float(x @ w)) < 5 * (var / 4000) ** 0.5


def test_mcdropout_forward_from_train_mode_warns_and_keeps_batchnorm():
    model = MLP().train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="is in training mode") as record:
        samples = mcdrop.MCDropout(model, n_samples=4)(torch.randn(8, 6) * 3 + 1)
    assert record[0].filename == __file__  # the caller's line, not torch's module call
    with pytest.warns(UserWarning, match="is in training mode") as record:
        nn.Sequential(nn.Identity(), mcdrop.MCDropout(model, n_samples=2))(torch.randn(8, 6))
    assert record[0].filename == __file__  # through torch's containers too
    assert samples.shape == (4, 8, 4)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(m.training for m in model.modules())  # flags restored to train mode


def test_batched_arguments_are_decided_once_for_every_batch():
    """A shared (M, d) context whose M equals the last batch's size must not be sliced."""

    class Context(nn.Module):
        def __init__(self):
            super().__init__()
            self.f = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 3))

        def forward(self, x, context):
            return self.f(x) + context.sum(0)[:3]

    model = Context().eval()
    context = torch.randn(3, 8)
    x = torch.randn(11, 4)
    batches = [{"x": x[i : i + 4], "context": context} for i in range(0, 11, 4)]  # 4, 4, 3
    got = mcdrop.predict_with_uncertainty(
        model, iter(batches), n_samples=200, seed=0, strategy="replicate"
    )
    # reference: a naive loop, context passed whole
    model.f[1].train()
    with torch.no_grad():
        probs = torch.stack([torch.softmax(model(x, context), -1) for _ in range(4000)]).double()
    model.eval()
    se = (probs.var(0) / 200).sqrt() + (probs.var(0) / 4000).sqrt()
    assert ((got.mean - probs.mean(0)).abs() / se.clamp_min(1e-6)).max() < 6


def test_one_logit_binary_classifier():
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Dropout(0.4), nn.Linear(8, 1)).eval()
    x = torch.randn(6, 3)
    with pytest.raises(ValueError, match="binary_logits"):
        mcdrop.predict_with_uncertainty(model, x, n_samples=5)
    res = mcdrop.predict_with_uncertainty(model, x, n_samples=3000, outputs="binary_logits", seed=1)
    model[2].train()
    with torch.no_grad():
        p = torch.stack([torch.sigmoid(model(x))[:, 0] for _ in range(3000)]).double()
    model.eval()
    assert res.mean.shape == (6, 2)
    se = (p.var(0) / 3000).sqrt() * 2
    assert ((res.mean[:, 1] - p.mean(0)).abs() / se.clamp_min(1e-6)).max() < 6
    assert (res.mutual_information > 0).all()


def test_exclude_callable_is_honoured_on_every_call():
    model = nn.Sequential(
        nn.Linear(4, 8),
        nn.Dropout(0.3),
        nn.ReLU(),
        nn.Linear(8, 8),
        nn.Dropout(0.3),
        nn.Linear(8, 3),
    ).eval()
    x = torch.randn(5, 4)
    for name in ("1", "4", "1", "4"):  # fresh lambdas may reuse an id: no stale decision
        by_lambda = mcdrop.predict_with_uncertainty(
            model, x, n_samples=30, seed=0, exclude=lambda n, m, name=name: n == name
        )
        by_name = mcdrop.predict_with_uncertainty(model, x, n_samples=30, seed=0, exclude=name)
        assert torch.equal(by_lambda.mean, by_name.mean)


class HostCheckLinear(nn.Linear):
    def forward(self, h):
        if not bool(torch.isfinite(h).all()):  # data-dependent: vmap cannot run it
            raise ValueError("non-finite activations")
        return super().forward(h)


def test_auto_decides_again_at_every_call_when_the_model_changes(caplog):
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 32))
            self.drop = nn.Dropout(0.3)
            self.out = nn.Linear(32, 3)

        def forward(self, x):
            return self.out(self.drop(self.body(x)))

    model = Head().eval()
    x = torch.randn(8, 4)
    mc = mcdrop.MCDropout(model, n_samples=64, seed=0)
    mc(x)
    assert mc.last_strategy == "vmap"  # the whole body comes before the dropout
    model.drop.inplace = True  # in-place dropout on an unbatched tensor: run out of place
    mc(x)
    assert mc.last_strategy == "vmap"
    model.out = HostCheckLinear(32, 3)  # a host-side check after the dropout: vmap now fails
    with caplog.at_level(logging.INFO, logger="mcdrop"), pytest.warns(UserWarning, match="fell"):
        samples = mc(x)
    assert mc.last_strategy == "replicate" and samples.shape == (64, 8, 3)
    assert any("'vmap' does not work" in r.getMessage() for r in caplog.records)
