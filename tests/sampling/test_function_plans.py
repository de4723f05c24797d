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
import functools
import gc
import operator
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
from torch.nn import functional as F

import mcdrop
from mcdrop.sampling import _engine, _run


def _counted(monkeypatch, owner, name: str) -> list[None]:
    """A list that grows by one at every call of ``owner.name``."""
    made: list[None] = []
    real = getattr(owner, name)

    def counting(*args, **kwargs):
        made.append(None)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return made


@pytest.fixture
def planned(monkeypatch):
    """A list that grows by one at every plan made from scratch (a twin built and probed)."""
    return _counted(monkeypatch, _engine, "sampling_twin")


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


class _Pooled(nn.Module):
    """A sequence model's output pooled over the sequence: one row per example (regression)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        return (out[0] if isinstance(out, tuple) else out).mean(1)


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.2, batch_first=True)
    encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    lstm = nn.LSTM(4, 8, num_layers=2, dropout=0.3, batch_first=True)
    return {
        "mlp": (_net(), _x()),
        "transformer": (_Pooled(encoder).eval(), torch.randn(3, 4, 8)),
        "lstm": (_Pooled(lstm).eval(), torch.randn(3, 5, 4)),
    }


@pytest.mark.parametrize("name", ["mlp", "transformer", "lstm"])
def test_the_plans_do_not_keep_the_model_alive(name):
    model, x = _models()[name]
    options = {"task": "regression", "progress": False, "n_samples": 4, "seed": 0}
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


# -- found by the hostile review of the kept plans -------------------------------------------------


class _Head:
    """A callable helper (not a module) holding a submodule and a plain value: the twin holds
    a copy of it (pointing at the twin's submodule)."""

    def __init__(self, lin: nn.Module, temperature: float) -> None:
        self.lin, self.temperature = lin, temperature

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) / self.temperature


class Helped(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3))
        self.lin = nn.Linear(16, 3)
        self.head = _Head(self.lin, 1.0)
        self.cfg = {"heads": {"main": {"layer": self.lin, "scale": 1.0}}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = self.cfg["heads"]["main"]
        return self.head(self.body(x)) * main["scale"]


@pytest.mark.parametrize("where", ["helper object", "dict three levels down"])
@pytest.mark.parametrize("caller", ["function", "MCDropout"])
def test_a_value_the_twin_copied_changed_in_place_takes_effect(planned, where, caller):
    """Below what the fingerprint looks into: the kept twin takes its copies again."""
    torch.manual_seed(0)
    model, x = Helped().eval(), _x()

    def mutate(m):
        if where == "helper object":
            m.head.temperature = 5.0
        else:
            m.cfg["heads"]["main"]["scale"] = 3.0

    if caller == "function":
        first, second, fresh, _ = _changed(planned, mutate, model, x)
    else:
        mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
        first = mc(x)
        mutate(model)
        second, fresh = mc(x), _nothing_kept(model, x)
    assert torch.equal(second, fresh) and not torch.equal(first, second)


class Stateful(nn.Module):
    """A forward that writes its own attributes: a list it appends to, a counter."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
        self.seen: list[torch.Tensor] = []
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.seen.append(x)
        return self.body(x) * len(self.seen) / self.calls  # 1 while the two agree


def test_what_forward_writes_does_not_carry_over_between_calls(planned):
    torch.manual_seed(0)
    model, x = Stateful().eval(), _x()
    calls = [_samples(model, x, strategy="loop") for _ in range(6)]
    assert model.seen == [] and model.calls == 0  # the model is never written
    assert len(planned) == 1
    for later in calls[2:]:  # every kept call starts from the model's state: the same numbers
        assert torch.equal(later, calls[1])
    kept = _engine._FUNCTION_PLANS[id(model)][1][0][1].kept[0]
    # one call's passes, not six calls' (no training-mode probe: no flag it flips was read)
    assert len(kept.twin.module.seen) == T


def test_a_list_option_changed_in_place_changes_nothing_validated(planned):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3), nn.Linear(8, 8), nn.Dropout(0.3))
    model = nn.Sequential(*model, nn.Linear(8, 3)).eval()
    excluded = ["1"]
    first = _samples(model, _x(), exclude=excluded)
    excluded[:] = ["3"]
    assert torch.equal(
        _samples(model, _x(), exclude=excluded), _nothing_kept(model, _x(), exclude=["3"])
    )
    assert not torch.equal(first, _nothing_kept(model, _x(), exclude=["3"]))
    assert mcdrop.MCDropout(model, exclude=excluded)._sampling.exclude == ("3",)


_ROUTE = {"a": True}


class _AlwaysOn(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.lin(x), 0.5, training=True)  # on in eval mode too


class Routed(nn.Module):
    """A module global routes the always-on dropout through ``a`` or through ``b``: the same
    function and rate, another module."""

    def __init__(self):
        super().__init__()
        self.inp, self.a, self.b, self.out = (
            nn.Linear(6, 8),
            _AlwaysOn(),
            _AlwaysOn(),
            nn.Linear(8, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(self.a(h) if _ROUTE["a"] else self.b(h))


def test_a_call_that_moves_to_an_excluded_module_makes_a_new_plan(planned):
    torch.manual_seed(0)
    model, x = Routed().eval(), _x()
    _samples(model, x, exclude=["b"])
    _ROUTE["a"] = False
    try:
        for call in (
            lambda: _samples(model, x, exclude=["b"]),
            lambda: _nothing_kept(model, x, exclude=["b"]),
        ):
            with pytest.raises(ValueError, match="Found no dropout"):
                call()
    finally:
        _ROUTE["a"] = True
    assert len(planned) == 3


_TRANSPOSE = [False]


class Square(nn.Module):
    """A module global transposes a square dropout input (6 examples x 6 units)."""

    def __init__(self):
        super().__init__()
        self.a, self.d, self.o = nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        h = self.d(h.t().contiguous()).t() if _TRANSPOSE[0] else self.d(h)
        return self.o(h)


@pytest.mark.parametrize("strategy", ["loop", "vmap", "replicate"])
def test_shared_masks_of_an_ambiguous_layout_are_not_kept(planned, strategy):
    torch.manual_seed(0)
    model, x = Square().eval(), torch.randn(6, 4)
    options = {"masks": "shared", "strategy": strategy}
    _samples(model, x, **options)
    _TRANSPOSE[0] = True
    try:
        second = _samples(model, x, **options)
        assert torch.equal(second, _nothing_kept(model, x, **options))
    finally:
        _TRANSPOSE[0] = False
    if strategy != "replicate":  # (replicate: 6 x T rows, not square; the shape shows the move)
        assert not _engine._FUNCTION_PLANS[id(model)][1][0][1].kept  # nothing kept: ambiguous


class _Wrapper(nn.Module):
    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner
        self.registry = [self]  # a list holding the model: no weak reference to a list

    def forward(self, x: torch.Tensor, extra: object = None) -> torch.Tensor:
        return self.inner(x)


def test_an_object_input_and_a_model_that_refers_to_itself_are_freed():
    model = _Wrapper(_net()).eval()
    big = torch.zeros(1000)
    box = types.SimpleNamespace(big=big)  # an input leaf that takes no weak reference
    inputs = {"x": _x(), "extra": box}
    mcdrop.predict_with_uncertainty(model, inputs, n_samples=4, seed=0, progress=False)
    assert _engine._FUNCTION_PLANS[id(model)][1][0][1].kept
    input_ref = weakref.ref(big)
    del inputs, box, big
    gc.collect()
    assert input_ref() is None  # the model lives on; the plan did not keep the input
    refs = [weakref.ref(model), weakref.ref(model.inner.head.weight)]
    del model
    gc.collect()
    gc.collect()  # the twin's own cycle (its copy of `registry` points at the twin) goes next
    assert all(ref() is None for ref in refs)


def test_a_function_option_keeps_no_plan(planned):
    model, x = _net(), _x()
    for _ in range(2):
        _samples(model, x, output_transform=lambda out: out)
    assert len(planned) == 2 and id(model) not in _engine._FUNCTION_PLANS


# -- found by the second hostile review -------------------------------------------------------------


class _Calls:
    """A callable helper holding a module that is not in the model's tree (yet)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class Outsider(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.out = nn.Linear(6, 16), nn.Linear(16, 3)
        self.drop1, self.drop2 = nn.Dropout(0.2), nn.Dropout(0.5)
        self.helper = _Calls(nn.Dropout(0.5).eval())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.helper(self.drop1(self.lin(x))))


@pytest.mark.parametrize("masks", ["independent", "shared"])
@pytest.mark.parametrize("caller", ["function", "MCDropout"])
def test_a_helper_pointed_at_a_module_of_the_model_takes_effect(planned, masks, caller):
    """The helper's identity does not change; the twin must not run the model's own module."""
    torch.manual_seed(0)
    model, x = Outsider().eval(), _x()
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED, masks=masks)
    call = (lambda: _samples(model, x, masks=masks)) if caller == "function" else (lambda: mc(x))
    first = call()
    call()
    model.helper.module = model.drop2  # in place: now a dropout of the model's tree
    second = call()
    assert torch.equal(second, _nothing_kept(model, x, masks=masks))
    assert not torch.equal(first, second)


_GATE_ON = [False]


class _Gated(nn.Module):
    """A functional dropout gated by a module global: off, it is a call with rate 0."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.lin(x), 0.3, training=self.training and _GATE_ON[0])


class GatedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.d, self.a, self.out = (
            nn.Linear(6, 8),
            nn.Dropout(0.2),
            _Gated(),
            nn.Linear(8, 3),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(self.d(self.inp(x))))


@pytest.mark.parametrize("masks", ["independent", "shared"])
def test_a_dropout_a_module_global_turns_on_is_sampled(planned, masks):
    """A call with rate 0 from code that is not PyTorch's: only a training-mode probe can tell
    whether training would sample it, so no plan is kept."""
    torch.manual_seed(0)
    model, x = GatedNet().eval(), _x()
    _samples(model, x, masks=masks)
    _GATE_ON[0] = True
    try:
        second = _samples(model, x, masks=masks)
        fresh = _nothing_kept(model, x, masks=masks)
        assert torch.equal(second, fresh)
        assert {s.name for s in mcdrop.dropout_sites(model, example_inputs=x)} == {"d", "a"}
    finally:
        _GATE_ON[0] = False
    assert len(planned) == 3
    _assert_same_distribution(
        _samples(model, x, masks=masks, n_samples=T), _reference(model, x)
    )  # the gate off again: the reference samples `d` only


# -- found by the third hostile review: gates that only training mode opens --------------------------

_GLOBAL_GATE = [False]


def _after_the_gate_opens(model, x, first, call=None, **options) -> None:
    """Open the module global ``_GLOBAL_GATE``: the next call (``call``, else the function with
    ``options``) gives what a call with nothing kept gives, and not ``first``; shut again."""
    _GLOBAL_GATE[0] = True
    try:
        second = _samples(model, x, **options) if call is None else call()
        fresh = _nothing_kept(model, x, **options)
        assert torch.equal(second, fresh) and not torch.equal(first, second)
    finally:
        _GLOBAL_GATE[0] = False


class _GateCfg:
    class model:
        class reg:
            on = False


class _TrainingGated(nn.Module):
    """``if self.training and <gate>``: in eval mode (the twin's, for a module that does not
    sample) no call at all, whatever the gate says."""

    use_dropout = False  # a class attribute

    def __init__(self, how: str):
        super().__init__()
        self.how, self.lin, self.cfg = how, nn.Linear(8, 8), _GateCfg()

    def gate(self) -> bool:
        if self.how == "class attribute":
            return type(self).use_dropout
        if self.how == "config three levels down":
            return self.cfg.model.reg.on
        return _GLOBAL_GATE[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lin(x)
        if self.training and self.gate():
            x = F.dropout(x, 0.3)
        return x


class TrainingGatedNet(nn.Module):
    def __init__(self, how: str):
        super().__init__()
        self.inp, self.d = nn.Linear(6, 8), nn.Dropout(0.2)
        self.a, self.out = _TrainingGated(how), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.a(self.d(self.inp(x))))


def _open_gate(model: nn.Module, how: str, on: bool) -> None:
    if how == "class attribute":
        type(model.a).use_dropout = on
    elif how == "config three levels down":
        model.a.cfg.model.reg.on = on
    else:
        _GLOBAL_GATE[0] = on


@pytest.mark.parametrize("how", ["class attribute", "config three levels down", "module global"])
@pytest.mark.parametrize("caller", ["function", "MCDropout"])
def test_a_dropout_only_training_mode_reaches_is_sampled_once_its_gate_opens(planned, how, caller):
    torch.manual_seed(0)
    model, x = TrainingGatedNet(how).eval(), _x()
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    call = (lambda: _samples(model, x)) if caller == "function" else (lambda: mc(x))
    first = call()
    assert torch.equal(call(), first) and len(planned) == 1  # kept while nothing changes
    _open_gate(model, how, True)
    try:
        second = call()
        assert torch.equal(second, _nothing_kept(model, x)) and not torch.equal(first, second)
        assert {s.name for s in mcdrop.dropout_sites(model, example_inputs=x)} == {"d", "a"}
    finally:
        _open_gate(model, how, False)


class _ParentGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp, self.always, self.drop = nn.Linear(6, 8), nn.Dropout(0.2), nn.Dropout(0.5)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.always(self.inp(x))
        if self.training and _GLOBAL_GATE[0]:
            h = self.drop(h)
        return self.out(h)


def test_a_child_dropout_its_parent_gates_in_training_mode_is_sampled(planned):
    torch.manual_seed(0)
    model, x = _ParentGate().eval(), _x()
    first = _samples(model, x)
    _after_the_gate_opens(model, x, first)


def test_a_function_patched_into_a_pytorch_class_is_the_users(planned, monkeypatch):
    def linear_with_gate(self, x):
        return F.dropout(
            F.linear(x, self.weight, self.bias), 0.3, self.training and _GLOBAL_GATE[0]
        )

    monkeypatch.setattr(nn.Linear, "forward", linear_with_gate)
    torch.manual_seed(0)
    model, x = _net(), _x()
    first = _samples(model, x)
    _after_the_gate_opens(model, x, first)


_TRAINING = "".join(["train", "ing"])  # a flag read without naming it


class _HiddenGate(nn.Module):
    """Gates that only training mode opens, read in ways no scan of the code would catch."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.lin = how, nn.Linear(8, 8)

    @property
    def in_training(self) -> bool:
        return bool(getattr(self, _TRAINING))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lin(x)
        if self.how == "getattr":
            opened = operator.attrgetter(_TRAINING)(self) and _GLOBAL_GATE[0]
        else:
            opened = self.in_training and _GLOBAL_GATE[0]
        return F.dropout(x, 0.3) if opened else x


@pytest.mark.parametrize("how", ["getattr", "property"])
def test_every_kept_call_probes_training_mode_again(planned, how):
    torch.manual_seed(0)
    model = TrainingGatedNet("module global")
    model.a = _HiddenGate(how)
    model, x = model.eval(), _x()
    first = _samples(model, x)
    assert torch.equal(_samples(model, x), first) and len(planned) == 1
    _after_the_gate_opens(model, x, first)


def test_a_kept_plan_holds_no_masks_of_the_call_that_made_it():
    """Shared masks cache their hashes per call (up to 192 MiB on the device): a kept plan
    keeps none of them, for the function and for MCDropout (every call draws with its own)."""
    model, x = _net(), _x()
    for strategy in ("loop", "vmap"):
        options = {"masks": "shared", "strategy": strategy}
        first = _samples(model, x, **options)
        held = mcdrop.MCDropout(model, n_samples=T, seed=SEED, **options)
        assert torch.equal(held(x), first)
        plans = [p for _, p in _engine._FUNCTION_PLANS[id(model)][1]]
        for kept in [k for p in plans for k in p.kept] + held._engine.kept:
            masks = kept.runner.masks
            assert not masks.grids and not masks.chunk_keeps
            assert masks.grid_bytes == 0 and masks.chunk_bytes == 0
        assert torch.equal(_samples(model, x, **options), first)  # and the plans still serve
        assert torch.equal(held(x), first)


@pytest.fixture
def probes(monkeypatch):
    """A list that grows by one at every training-mode probe of a kept plan."""
    return _counted(monkeypatch, _run, "training_calls")


class _OwnLookup(_TrainingGated):
    """A class of its own attribute lookup: its flag is not watched."""

    def __getattr__(self, name: str):
        return super().__getattr__(name)


@pytest.mark.parametrize("caller", ["function", "MCDropout"])
def test_a_kept_call_probes_training_mode_only_when_a_flag_it_flips_is_read(probes, caller):
    """No module the twin runs in eval reads its flag: no probe. ``if self.training and FLAG``
    in such a module: a probe at every kept call (the gate tests above check what it finds)."""
    torch.manual_seed(0)
    x = _x()
    for model, reads in [(_net(), False), (TrainingGatedNet("module global").eval(), True)]:
        held = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
        call = functools.partial(_samples, model, x) if caller == "function" else held
        first = call() if caller == "function" else call(x)
        before = len(probes)  # the first call's own (the baseline kept with the plan)
        for _ in range(3):
            assert torch.equal(call() if caller == "function" else call(x), first)
        assert len(probes) - before == (3 if reads else 0)
        assert torch.equal(first, _nothing_kept(model, x))


def test_the_twin_is_watched_never_the_model():
    torch.manual_seed(0)
    model, x = TrainingGatedNet("module global").eval(), _x()
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    mc(x)
    (kept,) = mc._engine.kept
    assert kept.flags is not None
    twin = kept.twin.module
    for module in model.modules():  # the model's modules keep their flag where nn.Module does
        assert type(module._parameters) is dict and vars(module)["training"] is False
    assert type(twin.a) is _TrainingGated and type(twin.inp) is nn.Linear  # classes unchanged
    assert "_TrainingGated" not in {c.__name__ for c in _TrainingGated.__subclasses__()}
    assert "training" not in vars(twin.a)
    assert twin.a.training is False and "training" in vars(twin.d) and twin.d.training  # a site
    assert dict(twin.named_parameters()).keys() == dict(model.named_parameters()).keys()
    mc(x)
    assert "training" not in vars(twin.a) and twin.a.training is False  # watched again


def test_a_class_that_cannot_be_watched_is_probed_at_every_call(probes):
    torch.manual_seed(0)
    model = TrainingGatedNet("module global")
    model.a = _OwnLookup("module global")
    model, x = model.eval(), _x()
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    first = mc(x)
    assert mc._engine.kept[0].flags is None
    before = len(probes)
    assert torch.equal(mc(x), first) and len(probes) == before + 1
    _after_the_gate_opens(model, x, first, lambda: mc(x))


def test_a_global_hook_that_reads_a_flag_is_seen(planned):
    """A global forward hook (registered before the plan) gating dropout on the flag of the
    head, which the twin runs in eval."""
    torch.manual_seed(0)
    model, x = _net(), _x()

    def hook(module, args, output):
        if getattr(module, "out_features", 0) == 3 and module.training and _GLOBAL_GATE[0]:
            return F.dropout(output, 0.4)
        return None

    handle = nn.modules.module.register_module_forward_hook(hook)
    try:
        first = _samples(model, x)
        assert torch.equal(_samples(model, x), first) and len(planned) == 1
        _after_the_gate_opens(model, x, first)
    finally:
        handle.remove()


class _ByClass(nn.Module):
    """A forward that tells its children apart by their exact class."""

    def __init__(self):
        super().__init__()
        self.a, self.act, self.d = nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3)
        self.b = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        for child in self.children():
            if type(child) is nn.ReLU:
                h = child(h) * 2.0
        return self.b(self.d(h))


_REGISTRY: dict[str, type] = {}


class _Registered(nn.Module):
    """Classes that register themselves by name as they are defined."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls


class _Encoder(_Registered):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x)


def test_classes_are_never_made_nor_told_apart_otherwise(planned):
    """Watching changes no module's class: a forward that checks ``type(child) is nn.ReLU``
    computes what it computes with nothing kept, and no class is made (a registry filled by
    ``__init_subclass__`` keeps the user's class)."""
    torch.manual_seed(0)
    model, x = _ByClass().eval(), _x()
    first = _samples(model, x)
    assert torch.equal(_samples(model, x), first) and len(planned) == 1
    assert torch.equal(first, _nothing_kept(model, x))
    encoder = nn.Sequential(_Encoder(), nn.Dropout(0.3), nn.Linear(8, 3)).eval()
    _samples(encoder, x)
    _samples(encoder, x)
    assert _REGISTRY == {"_Encoder": _Encoder} and _Encoder.__subclasses__() == []


_POOL: list = []


class _ElsewhereGated(nn.Module):
    """The gate is decided on a worker thread (a pool's 'policy'), the dropout runs here."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def policy(self) -> bool:
        return self.training and _GLOBAL_GATE[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lin(x)
        return F.dropout(x, 0.5) if _POOL[0].submit(self.policy).result() else x


def test_a_flag_read_on_another_thread_is_seen(planned):
    from concurrent.futures import ThreadPoolExecutor

    torch.manual_seed(0)
    model = TrainingGatedNet("module global")
    model.a = _ElsewhereGated()
    model, x = model.eval(), _x()
    with ThreadPoolExecutor(1) as pool:
        _POOL[:] = [pool]
        first = _samples(model, x, strategy="loop")
        _after_the_gate_opens(model, x, first, strategy="loop")


class _DictGated(_TrainingGated):
    """The flag read straight from the instance dictionary."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lin(x)
        return F.dropout(x, 0.3) if self.__dict__["training"] and _GLOBAL_GATE[0] else x


def test_a_flag_read_from_the_instance_dictionary_makes_a_new_plan(planned):
    """Not noted, but a watched flag is not there: the kept call raises and plans afresh."""
    torch.manual_seed(0)
    model = TrainingGatedNet("module global")
    model.a = _DictGated("module global")
    model, x = model.eval(), _x()
    first = _samples(model, x)
    _after_the_gate_opens(model, x, first)


class _Freezing(nn.Module):
    """A ``train()`` that reads a global: which sub-network training mode switches on."""

    def __init__(self):
        super().__init__()
        self.enc = _TrainingGated("module global")
        self.enc.forward = types.MethodType(
            lambda self, x: F.dropout(self.lin(x), 0.5, self.training), self.enc
        )
        self.inp, self.d, self.out = nn.Linear(6, 8), nn.Dropout(0.2), nn.Linear(8, 3)

    def train(self, mode: bool = True):
        super().train(mode)
        if _GLOBAL_GATE[0]:
            self.enc.eval()  # a frozen encoder: no dropout in it
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.d(self.enc(self.inp(x))))


def test_a_train_override_that_reads_a_global_takes_effect(planned):
    torch.manual_seed(0)
    model, x = _Freezing().eval(), _x()
    first = _samples(model, x)
    assert torch.equal(_samples(model, x), first) and len(planned) == 1
    _after_the_gate_opens(model, x, first)


class _FrozenBackbone(nn.Module):
    """``forward`` keeps its backbone in eval (its flags assigned at every call)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.gated, self.d, self.out = _TrainingGated("module global"), nn.Dropout(0.2), None
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.backbone.eval()
        return self.out(self.d(self.gated(self.backbone(x))))


def test_a_forward_that_assigns_flags_keeps_its_plan(planned, probes):
    torch.manual_seed(0)
    model, x = _FrozenBackbone().eval(), _x()
    first = _samples(model, x)
    for _ in range(3):
        assert torch.equal(_samples(model, x), first)
    assert len(planned) == 1 and torch.equal(first, _nothing_kept(model, x))
    assert all(vars(m)["training"] is False for m in model.modules())  # the model's, untouched
    _after_the_gate_opens(model, x, first)  # the gate after the assigned flags: watched


_SCHEDULE = {"freeze": False}


class _Encoder8(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.d = nn.Linear(6, 8), nn.Dropout(0.4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d(self.lin(x))


class _Scheduled(nn.Module):
    """``train()`` freezes the encoder by a schedule three levels down that holds the encoder
    (the twin copies it), or by a global it reads once and caches on itself."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.enc, self.drop, self.head = how, _Encoder8(), nn.Dropout(0.2), None
        self.head = nn.Linear(8, 3)
        self.sched = {"stages": [{"freeze": False, "mod": self.enc}]}

    def train(self, mode: bool = True):
        super().train(mode)
        if self.how == "cached global":
            if mode and not hasattr(self, "_freeze"):
                self._freeze = _SCHEDULE["freeze"]  # (a train() writing attributes: warned)
            if mode and self._freeze:
                self.enc.eval()
        else:
            for stage in self.sched["stages"]:
                if mode and stage["freeze"]:
                    stage["mod"].eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.enc(x)))


@pytest.mark.filterwarnings("ignore:.*changes attributes besides the training flags")
@pytest.mark.parametrize("how", ["schedule three levels down", "cached global"])
def test_what_a_train_override_reads_is_read_again_at_every_call(planned, how):
    """Found by the third review on a throwaway twin kept between calls (it held the copied
    schedule and what ``train()`` wrote on an earlier call): a new one every call."""
    torch.manual_seed(0)
    model, x = _Scheduled(how).eval(), _x()
    first = _samples(model, x, strategy="loop")
    if how == "cached global":
        _SCHEDULE["freeze"] = True
    else:
        model.sched["stages"][0]["freeze"] = True
    try:
        second = _samples(model, x, strategy="loop")
        fresh = _nothing_kept(model, x, strategy="loop")
        assert torch.equal(second, fresh) and not torch.equal(first, second)
    finally:
        _SCHEDULE["freeze"] = False


class _Doubling(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2.0 if self.training else x


class _Leftover(nn.Module):
    """``forward`` uses ``sub``, then leaves it in training mode."""

    def __init__(self):
        super().__init__()
        self.lin, self.sub, self.drop, self.head = (
            nn.Linear(6, 8),
            _Doubling(),
            nn.Dropout(0.2),
            None,
        )
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.sub(self.lin(x))
        self.sub.train()
        return self.head(self.drop(h))


@pytest.mark.parametrize("strategy", ["loop", "vmap", "replicate"])
def test_a_flag_a_forward_leaves_set_does_not_carry_over(planned, strategy):
    """Same seed, same numbers: every kept call starts from the flags the plan set, not those
    the previous call's forward left (nor those its own checks left: a kept ``replicate`` plan
    runs the examples-interact check's passes first, found by the fourth review)."""
    torch.manual_seed(0)
    model, x = _Leftover().eval(), _x()
    first = _samples(model, x, strategy=strategy)
    for _ in range(2):
        assert torch.equal(_samples(model, x, strategy=strategy), first)
    assert len(planned) == 1 and vars(model.sub)["training"] is False


def test_a_flag_a_forward_leaves_set_with_compile_or_shared_masks(planned):
    """Found by the fourth review: with ``compile=`` (no counted first chunk) the kept flags were
    those the call left; with shared masks the passes that find the layouts ran the forward
    before the first chunk, so a fresh call's numbers depended on the layouts already cached."""
    from mcdrop.sampling import _shared

    torch.manual_seed(0)
    model, x = _Leftover().eval(), _x()
    options = {"compile": {"backend": "eager"}, "strategy": "loop"}
    first = _samples(model, x, **options)
    assert torch.equal(_samples(model, x, **options), first)
    assert torch.equal(first, _nothing_kept(model, x, **options))
    options = {"masks": "shared", "strategy": "loop"}
    _shared._LAYOUTS.clear()
    cold = _nothing_kept(model, x, **options)  # finds the layouts (two passes of the twin)
    warm = _nothing_kept(model, x, **options)  # takes them from the cache
    assert torch.equal(cold, warm) and torch.equal(_samples(model, x, **options), cold)
    assert torch.equal(_samples(model, x, **options), cold)


class _OwnGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.lin(x), 0.4, self.training)


class _ChildGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.d = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.d(x) if self.training else x


class _GatedLeftover(_Leftover):
    """``_Leftover`` with a dropout its parent gates (the twin's check switches the parent on)
    and a functional dropout gated on its own module's flag."""

    def __init__(self):
        super().__init__()
        self.gate, self.fg = _ChildGate(), _OwnGate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fg(self.gate(self.sub(self.lin(x))))
        self.sub.train()
        return self.head(self.drop(h))


def test_auto_decides_the_same_whatever_the_layouts_cache_holds(planned):
    """Found by the fifth review: with shared masks, the examples-interact check of ``auto``
    ran after the layouts' passes had left a flag set, so a first call (layouts found) picked
    another strategy than a later one (layouts cached), and the same seed gave other numbers."""
    from mcdrop.sampling import _shared

    torch.manual_seed(0)
    model, x = _GatedLeftover().eval(), _x()
    _shared._LAYOUTS.clear()
    cold = mcdrop.MCDropout(model, n_samples=8, seed=SEED, masks="shared")
    first = cold(x)
    warm = mcdrop.MCDropout(model, n_samples=8, seed=SEED, masks="shared")
    assert torch.equal(warm(x), first) and warm.last_strategy == cold.last_strategy
    assert torch.equal(cold(x), first)
