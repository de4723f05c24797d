"""Dropout-site discovery and the ``dropout_enabled`` context manager."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import MLP, FunctionalDropout, FusedClassifier
from torch import nn

import mcdrop
from mcdrop.dropout import Scope


def _flags(model: nn.Module) -> dict[str, bool]:
    return {name: module.training for name, module in model.named_modules()}


def test_only_dropout_samples_and_the_model_is_never_written_to():
    model = MLP().eval()
    model.head.train()  # an unusual but legal mixed state must stay exactly as it is
    before = _flags(model)
    with pytest.warns(UserWarning, match="training mode"):
        with mcdrop.dropout_enabled(model, example_inputs=torch.randn(2, 6)) as sampler:
            assert _flags(model) == before  # the model itself, not for an instant
            assert sampler is not model and sampler.drop is not model.drop
            assert sampler.drop.training
            assert not sampler.body[1].training  # BatchNorm stays in eval
            assert not sampler.head.training  # was on in the model, is off while sampling
            assert sampler.head.weight is model.head.weight  # shared, not copied
            assert sampler.body[1].running_mean is model.body[1].running_mean
    assert [s.name for s in mcdrop.dropout_sites(model, example_inputs=torch.randn(2, 6))] == [
        "drop"
    ]
    assert _flags(model) == before


def test_flags_untouched_when_body_raises():
    model = MLP().eval()
    before = _flags(model)
    with pytest.raises(RuntimeError, match="boom"):
        with mcdrop.dropout_enabled(model):
            raise RuntimeError("boom")
    assert _flags(model) == before


@pytest.mark.parametrize(
    "cls",
    [nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout],
)
def test_every_torch_dropout_type_is_a_site(cls):
    model = nn.Sequential(nn.Identity(), cls(0.2)).eval()
    sites = mcdrop.dropout_sites(model)
    assert [(s.name, s.type, s.rate) for s in sites] == [("1", cls.__name__, 0.2)]


def test_transformer_layers_and_attention_are_sites():
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.1, batch_first=True)
    model = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()
    sites = {s.name: s for s in mcdrop.dropout_sites(model)}
    assert "layers.0" in sites and "layers.0.self_attn" in sites
    assert "fast path" in sites["layers.0"].reason
    assert sites["layers.1.self_attn"].rate == pytest.approx(0.1)


def test_fused_attention_child_is_detected_with_example_inputs():
    model = FusedClassifier().eval()
    x = torch.randn(3, 5, 16)
    static = {s.name for s in mcdrop.dropout_sites(model)}
    assert static == {"attn.attn_drop"}  # registered, but never called
    probed = {s.name: s for s in mcdrop.dropout_sites(model, example_inputs=x)}
    assert "attn" in probed
    assert "scaled_dot_product_attention" in probed["attn"].reason
    assert "attn.attn_drop" not in probed  # never called: sampling it would change nothing
    assert probed["attn"].rate == pytest.approx(0.4)


def test_functional_dropout_is_detected_with_example_inputs():
    model = FunctionalDropout().eval()
    with pytest.raises(ValueError, match="FunctionalDropout.*scope="):
        with mcdrop.dropout_enabled(model):
            pass
    sites = mcdrop.dropout_sites(model, example_inputs=torch.randn(2, 6))
    assert [s.name for s in sites] == [""]
    assert "F.dropout" in sites[0].reason and sites[0].rate == 0.5


def test_train_except_norm_scope_keeps_norm_layers_in_eval():
    model = nn.Sequential(
        nn.Linear(3, 4),
        nn.BatchNorm1d(4),
        nn.InstanceNorm1d(4, track_running_stats=True),
        nn.ReLU(),
    ).eval()
    names = {s.name for s in mcdrop.dropout_sites(model, scope="train_except_norm")}
    assert {"", "0", "3"} <= names and not {"1", "2"} & names
    with mcdrop.dropout_enabled(model, scope="train_except_norm") as sampler:
        assert not sampler[1].training and not sampler[2].training
        assert sampler[0].training
    assert not any(m.training for m in model.modules())
    assert Scope("train_except_norm") is Scope.TRAIN_EXCEPT_NORM


def test_include_and_exclude_by_pattern_and_predicate():
    model = MLP().eval()
    assert {s.name for s in mcdrop.dropout_sites(model, include="body.0")} == {"drop", "body.0"}
    with mcdrop.dropout_enabled(model, include="body.0") as sampler:
        assert sampler.body[0].training and not model.body[0].training
    keep_head = mcdrop.dropout_sites(model, include=lambda name, m: isinstance(m, nn.Linear))
    assert {s.name for s in keep_head} == {"drop", "body.0", "head"}
    with pytest.raises(ValueError, match="no dropout"):
        with mcdrop.dropout_enabled(model, exclude=["dr*"]):
            pass


def test_no_dropout_and_zero_rate_errors_name_the_model():
    with pytest.raises(ValueError, match="Found no dropout in the model `Sequential`.*scope="):
        with mcdrop.dropout_enabled(nn.Sequential(nn.Linear(2, 2))):
            pass
    with pytest.raises(ValueError, match="rate 0"):
        with mcdrop.dropout_enabled(nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0))):
            pass


def test_bad_arguments():
    with pytest.raises(ValueError, match="`scope`.*'everything'"):
        mcdrop.dropout_sites(MLP(), scope="everything")
    with pytest.raises(TypeError, match="`include`"):
        mcdrop.dropout_sites(MLP(), include=3)
    with pytest.raises(TypeError, match="`model`"):
        mcdrop.dropout_sites("not a model")


def test_site_str_is_readable():
    site = mcdrop.dropout_sites(MLP())[0]
    assert str(site) == "drop (Dropout, p=0.3): dropout module"


# -- the probes run at every call ----------------------------------------------------------------


class TensorRate(nn.Module):
    """Reads its dropout rate from a buffer at call time (0 at first: not a site)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("p", torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.dropout(x, float(self.p), self.training)


def test_sites_follow_changes_no_attribute_shows():
    """A rate held in a tensor, and a branch on the input values: every call probes its own
    first batch, so neither is sampled stale (a kept probe outcome would miss both)."""
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), TensorRate(), nn.Linear(4, 2)).eval()
    x = torch.randn(6, 4)
    assert [s.name for s in mcdrop.dropout_sites(model, example_inputs=x)] == ["1"]
    model[2].p.fill_(0.5)
    assert [s.name for s in mcdrop.dropout_sites(model, example_inputs=x)] == ["1", "2"]
    fresh = copy.deepcopy(model)
    ours = mcdrop.predict_with_uncertainty(model, x, n_samples=8, seed=0, task="regression")
    theirs = mcdrop.predict_with_uncertainty(fresh, x, n_samples=8, seed=0, task="regression")
    assert torch.equal(ours.variance, theirs.variance)

    class Branch(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.dropout(x, 0.5, self.training) if x.sum() > 0 else x

    branch = nn.Sequential(nn.Linear(4, 4), Branch()).eval()
    positive, negative = torch.ones(2, 4), -torch.ones(2, 4)
    with torch.no_grad():
        branch[0].weight.copy_(torch.eye(4))
        branch[0].bias.zero_()
    assert [s.name for s in mcdrop.dropout_sites(branch, example_inputs=positive)] == ["1"]
    assert mcdrop.dropout_sites(branch, example_inputs=negative) == []


def test_a_model_holding_an_mcdropout_is_refused_not_sampled_twice():
    inner = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 2)).eval()
    wrapper = mcdrop.MCDropout(inner, n_samples=3)
    outer = nn.Sequential(nn.Linear(4, 4), wrapper).eval()
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match="`1` is one.*its `.model`"):
        mcdrop.predict_with_uncertainty(outer, x, n_samples=4)
    with pytest.raises(ValueError, match="the model itself is one"):
        mcdrop.dropout_sites(wrapper, example_inputs=x)
    assert wrapper(x).shape == (3, 5, 2)  # the wrapper itself still samples
    assert not any(m.training for m in inner.modules())

    class Sub(mcdrop.MCDropout):
        pass

    with pytest.raises(ValueError, match="the model itself is one"):
        mcdrop.predict_with_uncertainty(Sub(inner, n_samples=3), x, n_samples=4)
