"""Dropout-site discovery and the ``dropout_enabled`` context manager."""

from __future__ import annotations

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


# -- the probes' outcome is kept per model and key --------------------------------------------


class _Config:
    """Hugging Face style configuration object (has ``to_dict``)."""

    def __init__(self) -> None:
        self.attention_dropout = 0.3
        self.attn_implementation = "eager"

    def to_dict(self) -> dict:
        return dict(vars(self))


class ConfigAttention(nn.Module):
    """Reads its rate and its attention path from a shared config at call time."""

    def __init__(self) -> None:
        super().__init__()
        self.config = _Config()
        self.proj = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = x.unsqueeze(1)
        p = self.config.attention_dropout if self.training else 0.0
        if self.config.attn_implementation == "sdpa":
            out = nn.functional.scaled_dot_product_attention(q, q, q, dropout_p=p)
        else:
            out = nn.functional.dropout(torch.softmax(q @ q.transpose(-1, -2), -1), p) @ q
        return self.proj(out.squeeze(1))


def _counting_probes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from mcdrop import _probe

    calls: list[int] = []
    real = _probe.trace

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(_probe, "trace", counted)
    return calls


def _sites(
    model: nn.Module, x: torch.Tensor, **options
) -> list[tuple[str, tuple[str, ...], float]]:
    return [
        (s.name, s.functions, s.rate)
        for s in mcdrop.dropout_sites(model, example_inputs=x, **options)
    ]


def test_probes_run_once_per_model_state_and_again_after_any_change(monkeypatch):
    probes = _counting_probes(monkeypatch)
    model = ConfigAttention().eval()
    x = torch.randn(4, 8)
    first = _sites(model, x)
    assert first == [("", ("F.dropout",), 0.3)] and len(probes) == 2
    assert _sites(model, x) == first and len(probes) == 2  # same key: no probe pass

    def changed(action) -> list:
        action()
        before = len(probes)
        sites = _sites(model, x)
        assert len(probes) > before, "a change the probes depend on did not probe again"
        return sites

    impl = changed(lambda: setattr(model.config, "attn_implementation", "sdpa"))
    assert impl == [("", ("F.scaled_dot_product_attention",), 0.3)]
    rate = changed(lambda: setattr(model.config, "attention_dropout", 0.1))
    assert rate[0][2] == 0.1
    changed(lambda: setattr(model, "proj", nn.Sequential(nn.Linear(8, 3), nn.Dropout(0.2))))
    assert [s[0] for s in _sites(model, x)] == ["", "proj.1"]
    changed(lambda: model.proj[1].__setattr__("p", 0.4))
    assert _sites(model, x)[1][2] == 0.4
    changed(lambda: model.register_forward_hook(lambda m, a, out: out))
    before = len(probes)
    _sites(model, torch.randn(4, 8))  # other values, same signature: kept
    assert len(probes) == before
    _sites(model, torch.randn(3, 8))
    assert len(probes) > before  # another batch size (the error path runs the whole batch)
    before = len(probes)
    model.double()
    _sites(model, torch.randn(4, 8).double())
    assert len(probes) > before  # another dtype


def test_a_new_include_callable_probes_again(monkeypatch):
    probes = _counting_probes(monkeypatch)
    model = MLP().eval()
    x = torch.randn(4, 6)
    for _ in range(2):
        _sites(model, x, include=lambda name, m: name == "head")
    assert len(probes) == 4  # a fresh lambda each time: compared by identity
    keep = lambda name, m: name == "head"  # noqa: E731
    _sites(model, x, include=keep)
    _sites(model, x, include=keep)
    assert len(probes) == 6


def test_kept_probe_outcome_gives_the_same_numbers_as_probing():
    from mcdrop import dropout

    model = MLP().eval()
    x = torch.randn(16, 6)
    dropout._PROBED.clear()
    cold = mcdrop.predict_with_uncertainty(model, x, n_samples=50, seed=9, keep_samples=True)
    assert model in dropout._PROBED
    warm = mcdrop.predict_with_uncertainty(model, x, n_samples=50, seed=9, keep_samples=True)
    assert torch.equal(cold.samples, warm.samples)
