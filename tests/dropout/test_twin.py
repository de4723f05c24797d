"""The sampling twin: the user's model is never written to, so threads can share it."""

from __future__ import annotations

import copy
import functools
import threading

import numpy as np
import pytest
import torch
from conftest import MLP
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import mcdrop
from mcdrop.dropout._twin import _twin


def _snapshot(model: nn.Module):
    return (
        {name: module.training for name, module in model.named_modules()},
        {
            name: (dict(m._forward_hooks), dict(m._forward_pre_hooks))
            for name, m in model.named_modules()
        },
        {key: value.clone() for key, value in model.state_dict().items()},
        {name: sorted(vars(m)) for name, m in model.named_modules()},
    )


def _assert_same(before, after):
    flags, hooks, state, attrs = before
    assert after[0] == flags and after[1] == hooks and after[3] == attrs
    assert state.keys() == after[2].keys()
    assert all(torch.equal(state[k], after[2][k]) for k in state)


def test_twin_shares_tensors_and_hooks_but_not_flags_or_registries():
    model = MLP().eval()
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    twin = _twin(model)
    assert twin is not model and twin.head is not model.head
    assert twin.head.weight is model.head.weight
    assert twin.body[1].running_var is model.body[1].running_var
    twin.drop.train()
    twin.head.register_forward_hook(lambda m, i, o: None)
    assert not model.drop.training and len(model.head._forward_hooks) == 1
    twin(torch.randn(3, 6))
    assert seen == [(3, 4)]  # the user's hook runs on the twin too


def test_twin_is_rebuilt_each_call_never_stale():
    model = MLP().eval()
    x = torch.randn(5, 6)
    first = mcdrop.predict_with_uncertainty(model, x, n_samples=20, seed=0)
    model.head = nn.Linear(32, 4)  # a submodule replaced between calls
    second = mcdrop.predict_with_uncertainty(model, x, n_samples=20, seed=0)
    model.drop.p = 0.6  # an attribute changed between calls
    third = mcdrop.predict_with_uncertainty(model, x, n_samples=20, seed=0)
    with torch.no_grad():
        plain = torch.softmax(model.head(model.body(x)), -1)
    assert not torch.allclose(first.mean, second.mean)
    assert not torch.allclose(second.mean, third.mean)
    # the MC mean of the new head is close to its deterministic probabilities, not the old one's
    assert (third.mean - plain).abs().mean() < (first.mean - plain).abs().mean()


def test_plain_calls_stay_deterministic_while_another_thread_samples():
    model = MLP().eval()
    x = torch.randn(16, 6)
    with torch.no_grad():
        expected = model(x)
    before = _snapshot(model)
    errors: list[BaseException] = []
    stop = threading.Event()

    def sample():
        try:
            while not stop.is_set():
                mcdrop.predict_with_uncertainty(model, x, n_samples=200, strategy="loop")
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    worker = threading.Thread(target=sample)
    worker.start()
    try:
        noisy = 0
        for _ in range(300):
            with torch.no_grad():
                noisy += not torch.equal(model(x), expected)
    finally:
        stop.set()
        worker.join()
    assert not errors and noisy == 0
    _assert_same(before, _snapshot(model))


def test_overlapping_calls_with_different_options_agree_with_single_threaded():
    class TwoDropouts(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Dropout(0.4))
            self.b = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Dropout(0.4))
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            return self.head(self.b(self.a(x)))

    model = TwoDropouts().eval()
    with torch.no_grad():
        model.head.weight.mul_(4)
    x = torch.randn(8, 6)
    options = [{}, {"exclude": "b.*"}]
    single = [
        mcdrop.predict_with_uncertainty(model, x, n_samples=400, seed=i, **o)
        for i, o in enumerate(options)
    ]
    before = _snapshot(model)
    results: dict[int, list] = {0: [], 1: []}

    def run(i):
        for _ in range(3):
            results[i].append(
                mcdrop.predict_with_uncertainty(model, x, n_samples=400, seed=i, **options[i])
            )

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in (0, 1):
        assert len(results[i]) == 3
        for res in results[i]:  # same seed, same options: the same numbers, whatever ran beside
            np.testing.assert_allclose(res.mean, single[i].mean, atol=1e-12)
    # and the two options really differ (one samples less dropout)
    assert single[1].mutual_information.mean() < 0.8 * single[0].mutual_information.mean()
    _assert_same(before, _snapshot(model))


def test_torchscript_falls_back_to_locked_flags_and_keeps_batchnorm_in_eval():
    model = MLP().eval()
    with torch.no_grad():
        model.body[1].running_mean.uniform_()
    scripted = torch.jit.script(model)
    before = {k: v.clone() for k, v in scripted.state_dict().items()}
    x = torch.randn(8, 6)
    with pytest.warns(UserWarning, match="TorchScript"):
        result = mcdrop.predict_with_uncertainty(
            scripted, x, n_samples=30, scope="train_except_norm", seed=0
        )
    assert (result.mutual_information > 0).all()
    after = scripted.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats untouched
    assert not any(m.training for m in scripted.modules())


class NeedsTargetsInTraining(nn.Module):
    """Like torchvision detection models: training mode wants targets."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 16)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, 3)

    def forward(self, x, targets=None):
        if self.training and targets is None:
            raise ValueError("In training mode, targets should be passed")
        return self.head(self.drop(self.body(x)))


def test_training_probe_that_raises_names_the_model_and_the_way_out():
    model = NeedsTargetsInTraining().eval()
    before = _snapshot(model)
    with pytest.raises(ValueError, match="NeedsTargetsInTraining.*detect_silent=False"):
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 6), n_samples=5)
    _assert_same(before, _snapshot(model))
    result = mcdrop.predict_with_uncertainty(
        model, torch.randn(4, 6), n_samples=5, detect_silent=False
    )
    assert result.mean.shape == (4, 3)


def test_model_errors_are_the_users_own_with_their_batch():
    model = MLP().eval()
    with pytest.raises(RuntimeError, match="7x5"):  # the user's 7 rows, not the probe's 2
        mcdrop.predict_with_uncertainty(model, torch.randn(7, 5), n_samples=5)


# -- cases found by a hostile review -----------------------------------------------------------------
def test_training_mode_buffer_updates_never_reach_the_model():
    base = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    base[0] = nn.utils.spectral_norm(base[0])  # power iteration updates weight_u in training
    model = base.eval()
    x = torch.randn(5, 6)
    with torch.no_grad():
        before = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for scope in ("dropout", "train_except_norm"):
        mcdrop.predict_with_uncertainty(model, x, n_samples=5, scope=scope)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_uninitialised_lazy_modules_are_refused_and_left_alone():
    model = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3)).eval()
    hooks = len(model[0]._forward_pre_hooks)
    with pytest.raises(ValueError, match="lazy modules.*call the model once"):
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 5), n_samples=3)
    assert len(model[0]._forward_pre_hooks) == hooks and model[0].has_uninitialized_params()
    model(torch.randn(2, 5))  # initialised: now it samples
    assert mcdrop.predict_with_uncertainty(model, torch.randn(4, 5), n_samples=3).mean.shape == (
        4,
        3,
    )


class ListedBlocks(nn.Module):
    """Blocks called through a plain list attribute; a forward that records into a list."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Dropout(0.4)) for _ in range(2)
        )
        self.order = [self.blocks[1], self.blocks[0]]
        self.head = nn.Linear(8, 3)
        self.seen: list[int] = []

    def forward(self, x):
        self.seen.append(len(x))
        for block in self.order:
            x = block(x)
        return self.head(x)


def test_modules_in_plain_containers_are_twinned_and_containers_copied():
    model = ListedBlocks().eval()
    x = torch.randn(2, 8)
    names = {s.name for s in mcdrop.dropout_sites(model, example_inputs=x)}
    assert names == {"blocks.0.2", "blocks.1.2"}
    mcdrop.predict_with_uncertainty(model, torch.randn(4, 8), n_samples=4)
    assert model.seen == []  # the twin appended to its own copy of the list


def test_a_decorated_forward_is_redirected_to_the_twin():
    model = MLP().eval()
    plain = copy.deepcopy(model)
    model.body.forward = torch.autocast("cpu", enabled=False)(model.body.forward)
    x = torch.randn(4, 6)
    got = mcdrop.predict_with_uncertainty(model, x, n_samples=20, seed=0, keep_samples=True)
    want = mcdrop.predict_with_uncertainty(plain, x, n_samples=20, seed=0, keep_samples=True)
    torch.testing.assert_close(got.samples, want.samples)


def test_a_wrapper_mcdrop_cannot_copy_that_would_run_the_model_is_refused():
    model = MLP().eval()
    model.body.forward = functools.lru_cache(maxsize=None)(model.body.forward)
    with pytest.raises(ValueError, match="wrapper.*decorator"):
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 6), n_samples=3)


class LayerDrop(nn.Module):
    def __init__(self, p: float = 0.5):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.2)) for _ in range(4)
        )
        self.p = p

    def forward(self, x):
        for layer in self.layers:
            if self.training and torch.rand([]) < self.p:  # layer drop, as Hugging Face writes it
                continue
            x = layer(x)
        return x


def test_layer_drop_in_the_training_probe_never_hides_a_site():
    model = LayerDrop().eval()
    for seed in range(5):
        torch.manual_seed(seed)
        sites = mcdrop.dropout_sites(model, example_inputs=torch.randn(2, 8))
        assert [s.name for s in sites] == [f"layers.{i}.1" for i in range(4)]


class AuxHead(nn.Module):
    """Like GoogLeNet: in training mode the model also returns an auxiliary head's logits."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 16)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, 3)
        self.aux = nn.Sequential(nn.Dropout(0.7), nn.Linear(16, 3))

    def forward(self, x):
        h = torch.relu(self.body(x))
        out = self.head(self.drop(h))
        return (out, self.aux(h)) if self.training else out


def test_auxiliary_heads_stay_off():
    model = AuxHead().eval()
    with pytest.warns(UserWarning, match="auxiliary branch.*aux.0"):
        sites = mcdrop.dropout_sites(model, example_inputs=torch.randn(2, 6))
    assert [s.name for s in sites] == ["drop"]


def test_mcdropout_checks_its_call_options_at_construction():
    with pytest.raises(TypeError, match="`n_samples`.*integer"):
        mcdrop.MCDropout(MLP(), n_samples="auto")
    with pytest.raises(TypeError, match="`distributed`"):
        mcdrop.MCDropout(MLP(), distributed="yes")
    with pytest.raises(ValueError, match="`result_device`"):
        mcdrop.MCDropout(MLP(), result_device="nope")


def test_include_and_exclude_patterns_must_match_a_module():
    with pytest.raises(ValueError, match="`exclude` pattern.*'dorp'"):
        mcdrop.predict_with_uncertainty(MLP().eval(), torch.randn(4, 6), exclude="dorp")
    assert mcdrop._validation.check_bool("x", np.True_) is True


class _EqualByClass(nn.Module):
    """Modules of this class compare equal to each other (hash by class): PyTorch's own walk
    (``modules()``) keeps one of them."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 3)), min_size=1, max_size=25))
@settings(max_examples=100, deadline=None)
def test_modules_of_walks_as_modules_does(edges):
    """``modules_of`` (the walks of every kept call) lists what ``list(root.modules())`` does:
    pre-order, shared modules once, None children skipped, modules that compare equal once."""
    from mcdrop.dropout import modules_of

    nodes = [nn.Module() for _ in range(7)] + [_EqualByClass() for _ in range(3)]
    for i, (parent, kind) in enumerate(edges):
        child = None if kind == 0 else nodes[(parent + kind) % len(nodes)]
        nodes[parent]._modules[f"c{i}"] = child  # (cycles too: each module is listed once)
    assert modules_of(nodes[0]) == list(nodes[0].modules())
    assert [id(m) for m in modules_of(nodes[0])] == [id(m) for m in nodes[0].modules()]
