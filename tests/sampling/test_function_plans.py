"""The plans :func:`mcdrop.predict_with_uncertainty` keeps per model (``function_plans``): every
change to the model, its inputs, the options or torch's modes between two calls takes effect on
the second call, a plan that stands is used again (no new twin, no probe), and the store never
keeps a model alive.

The function is called as ``task="regression", keep_samples=True``, whose ``samples`` are the
raw stacked outputs (the same tensor :class:`mcdrop.MCDropout` returns, checked below). Each
change is checked as in ``test_plan_cache.py``: the second call equals a call with nothing kept
(bit for bit), it differs from the first call where the change changes the outputs, and where
it makes sense it agrees with the training-mode reference within Monte Carlo error.
"""

from __future__ import annotations

import copy
import gc
import types
import weakref

import pytest
import torch
from strategy_models import _assert_same_distribution, in_threads
from test_plan_cache import (
    SEED,
    Branchy,
    FloatAttention,
    T,
    TensorRate,
    _bert,
    _net,
    _reference,
    _x,
)
from torch import nn

import mcdrop
from mcdrop.sampling import _engine


@pytest.fixture
def planned(monkeypatch):
    """A list that grows by one at every plan made from scratch (a twin built and probed)."""
    made: list[None] = []
    real = _engine.sampling_twin

    def counting(*args, **kwargs):
        made.append(None)
        return real(*args, **kwargs)

    monkeypatch.setattr(_engine, "sampling_twin", counting)
    return made


def _samples(model, *args, **options) -> torch.Tensor:
    result = mcdrop.predict_with_uncertainty(
        model,
        args[0],
        n_samples=options.pop("n_samples", T),
        seed=options.pop("seed", SEED),
        task="regression",
        keep_samples=True,
        progress=False,
        **options,
    )
    return result.samples


def _nothing_kept(model, x, **options) -> torch.Tensor:
    """The function's samples with no plan kept for any model (a store of its own)."""
    saved = dict(_engine._FUNCTION_PLANS)
    _engine._FUNCTION_PLANS.clear()
    try:
        return _samples(model, x, **options)
    finally:
        _engine._FUNCTION_PLANS.clear()
        _engine._FUNCTION_PLANS.update(saved)


def _changed(planned, mutate, model=None, x=None, y=None):
    """(first call, second call after ``mutate(model)`` on ``y``, nothing kept, plans made)."""
    model = _net() if model is None else model
    x = _x() if x is None else x
    y = x if y is None else y
    first = _samples(model, x)
    assert torch.equal(_samples(model, x), first)  # the kept plan: same seed, same numbers
    assert len(planned) == 1
    mutate(model)
    second = _samples(model, y)
    plans = len(planned)
    return first, second, _nothing_kept(model, y), plans


def test_the_samples_are_those_mcdropout_returns(planned):
    model, x = _net(), _x()
    assert torch.equal(_samples(model, x), mcdrop.MCDropout(model, n_samples=T, seed=SEED)(x))
    assert torch.equal(_samples(model, x), _nothing_kept(model, x))
    assert len(planned) == 3  # the function's first call, the wrapper's, the store cleared


def _replace_head(m):
    m.head = nn.Linear(16, 3).eval()
    with torch.no_grad():
        m.head.weight.mul_(3)


def _replace_weight(m):
    m.head.weight = nn.Parameter(torch.randn(3, 16) * 3)


def _replace_forward(m):
    def without_head_dropout(self, x):
        return self.head(self.body(x)) + self.drop(torch.ones_like(x[:, :3]))

    m.forward = types.MethodType(without_head_dropout, m)


def _set_rate(m):
    m.drop.p = 0.6


def _add_hook(m):
    m.body.register_forward_hook(lambda _m, _a, out: out * 2)


@pytest.mark.parametrize(
    "mutate",
    [_replace_head, _set_rate, _replace_weight, _replace_forward, _add_hook],
    ids=["submodule replaced", "rate changed", "parameter replaced", "forward", "hook"],
)
def test_a_change_the_fingerprint_sees_takes_effect(planned, mutate):
    torch.manual_seed(5)
    first, second, fresh, plans = _changed(planned, mutate)
    assert plans == 2
    assert torch.equal(second, fresh) and not torch.equal(first, second)
    changed = _net()
    torch.manual_seed(5)
    mutate(changed)
    if mutate is not _replace_head and mutate is not _replace_weight:
        _assert_same_distribution(second, _reference(changed, _x()))


def test_a_rate_the_fingerprint_cannot_see_takes_effect(planned):
    """A rate held in a tensor updated in place: only the counted calls of the first chunk
    see it."""
    torch.manual_seed(0)
    model = TensorRate().eval()
    with torch.no_grad():
        model.head.weight.mul_(3)
    first, second, fresh, plans = _changed(planned, lambda m: m.rate.fill_(0.6), model)
    assert plans == 2
    assert torch.equal(second, fresh) and not torch.equal(first, second)
    _assert_same_distribution(second, _reference(model, _x()))


def test_an_attention_dropout_float_changed_takes_effect(planned):
    torch.manual_seed(0)
    model = FloatAttention().eval()
    x = torch.randn(6, 5, 8)

    def mutate(m):
        m.attention_dropout = 0.5

    first, second, fresh, plans = _changed(planned, mutate, model, x)
    assert plans == 2
    assert torch.equal(second, fresh) and not torch.equal(first, second)


@pytest.mark.parametrize("second_x", ["wider", "negative"])
def test_an_input_that_takes_another_branch(planned, second_x):
    torch.manual_seed(0)
    model = Branchy().eval()
    x = _x(8, 4).abs()
    y = _x(8, 8) if second_x == "wider" else torch.cat([-x[:1], x[1:]])
    _, second, fresh, plans = _changed(planned, lambda m: None, model, x, y)
    assert plans == 2  # "negative": same shapes; the counted calls found the plan stale
    assert torch.equal(second, fresh)
    _assert_same_distribution(second, _reference(model, y))


def test_parameters_updated_in_place_are_used_without_a_new_plan(planned):
    def mutate(m):
        with torch.no_grad():
            m.head.weight.mul_(2)
            m.head.bias.mul_(2)

    first, second, fresh, plans = _changed(planned, mutate)
    assert plans == 1
    assert torch.equal(second, fresh)
    torch.testing.assert_close(second, 2 * first)


def test_a_module_put_in_train_mode_and_a_dtype_change(planned):
    model, x = _net(), _x()
    first = _samples(model, x)
    model.body.train()
    with pytest.warns(UserWarning, match="is in training mode"):
        assert torch.equal(_samples(model, x), first)  # batch norm stays in eval
    assert len(planned) == 2
    model.body.eval()
    model.double()
    second = _samples(model, x.double())
    assert len(planned) == 3
    assert torch.equal(second, _nothing_kept(model, x.double()))


def test_options_and_seeds(planned):
    """Another seed uses the kept plan; options that change a plan get their own."""
    model, x = _net(), _x()
    _samples(model, x)
    other_seed = _samples(model, x, seed=SEED + 1)
    assert len(planned) == 1
    assert torch.equal(other_seed, _nothing_kept(model, x, seed=SEED + 1))
    fewer = _samples(model, x, n_samples=T // 2)
    looped = _samples(model, x, strategy="loop")
    assert len(planned) == 4  # the store cleared once, and two more plans
    assert torch.equal(fewer, _nothing_kept(model, x, n_samples=T // 2))
    assert torch.equal(looped, _nothing_kept(model, x, strategy="loop"))
    made = len(planned)
    _samples(model, x, n_samples=T // 2)
    _samples(model, x, strategy="loop")
    _samples(model, x, seed=SEED + 2)
    assert len(planned) == made  # all three kept
    assert len(_engine._FUNCTION_PLANS[id(model)][1]) == 3


_NOISY = [False]


class Noisy(nn.Module):
    """A random draw besides dropout behind a module global (the fingerprint cannot see it)."""

    def __init__(self):
        super().__init__()
        self.body, self.drop, self.head = nn.Linear(6, 16), nn.Dropout(0.3), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        if _NOISY[0]:
            h = h + 0.5 * torch.randn_like(h)
        return self.head(self.drop(h))


def test_a_random_draw_behind_a_global_flag_makes_a_new_plan(planned):
    torch.manual_seed(0)
    model, x = Noisy().eval(), _x()
    try:
        _, second, fresh, plans = _changed(planned, lambda m: _NOISY.__setitem__(0, True), model, x)
    finally:
        _NOISY[0] = False
    assert plans == 2
    assert torch.equal(second, fresh)


def test_eight_threads_get_the_single_threaded_results():
    model = _net()
    inputs = [_x(8), _x(5), _x(8) * 2]
    expected = [_nothing_kept(model, x) for x in inputs]
    for k, got in in_threads(lambda x: _samples(model, x), inputs):
        assert torch.equal(got, expected[k])


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.2, batch_first=True)
    return {
        "mlp": (_net(), _x()),
        "transformer": (
            nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval(),
            torch.randn(3, 4, 8),
        ),
        "lstm": (
            nn.LSTM(4, 8, num_layers=2, dropout=0.3, batch_first=True).eval(),
            torch.randn(3, 5, 4),
        ),
    }


@pytest.mark.parametrize("name", ["mlp", "transformer", "lstm"])
def test_the_plans_do_not_keep_the_model_alive(name):
    model, x = _models()[name]
    options = {"task": "regression", "progress": False, "n_samples": 4, "seed": 0}
    if name == "lstm":
        options["output_transform"] = lambda out: out[0].mean(1)
    elif name == "transformer":
        options["output_transform"] = lambda out: out.mean(1)
    mcdrop.predict_with_uncertainty(model, x, **options)
    key = id(model)
    assert _engine._FUNCTION_PLANS[key][1][0][1].kept  # a plan is kept...
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # ...and the model was freed all the same
    assert key not in _engine._FUNCTION_PLANS  # its plans went with it


def test_a_bert_model_is_freed_too():
    model = _bert("eager")
    ids = torch.randint(0, 30, (4, 6), generator=torch.Generator().manual_seed(0))
    mcdrop.predict_with_uncertainty(model, {"input_ids": ids}, n_samples=4, seed=0, progress=False)
    assert _engine._FUNCTION_PLANS[id(model)][1][0][1].kept
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


def test_at_most_sixteen_models_are_kept(planned):
    models = [_net() for _ in range(_engine._MAX_MODELS + 1)]
    x = _x()
    for model in models:
        _samples(model, x, n_samples=4)
    assert id(models[0]) not in _engine._FUNCTION_PLANS  # the least recently used went
    assert all(id(m) in _engine._FUNCTION_PLANS for m in models[1:])
    made = len(planned)
    _samples(models[1], x, n_samples=4)
    assert len(planned) == made
    _samples(models[0], x, n_samples=4)
    assert len(planned) == made + 1


def test_a_model_at_a_reused_address_gets_no_old_plan(planned):
    """A plan kept for a freed model is never taken by a new model that happens to get its id:
    the store checks its weak reference."""
    model, x = _net(), _x()
    _samples(model, x)
    key = id(model)
    other = copy.deepcopy(model)
    other.drop.p = 0.6
    dead = weakref.ref(_net())
    gc.collect()
    assert dead() is None
    _engine._FUNCTION_PLANS[id(other)] = (dead, _engine._FUNCTION_PLANS[key][1])
    assert torch.equal(_samples(other, x), _nothing_kept(other, x))
    assert len(planned) == 3


def test_models_whose_attributes_cannot_be_read_keep_no_plan(planned):
    """A TorchScript module's attributes and an uninitialised lazy parameter's shape raise when
    read: no plan is kept, and the call samples (or refuses) as a first call does, for the
    function and for a held MCDropout alike."""
    scripted = torch.jit.script(_net())
    x = _x()
    with pytest.warns(UserWarning, match="TorchScript"):
        first = _samples(scripted, x)
    held = mcdrop.MCDropout(scripted, n_samples=T, seed=SEED)
    assert torch.equal(held(x), first) and torch.equal(held(x), first)
    assert torch.equal(_samples(scripted, x), first)
    assert len(planned) == 4 and held._engine.kept == []
    lazy = nn.Sequential(nn.LazyLinear(8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3)).eval()
    for call in (lambda: _samples(lazy, x), lambda: mcdrop.MCDropout(lazy, n_samples=4)(x)):
        with pytest.raises(ValueError, match="lazy modules.*call the model once"):
            call()
