"""The plan MCDropout keeps between calls: every change to the model, its inputs or torch's modes
between two calls takes effect on the second call (silent reuse of the first call's plan fails
these tests), and a plan that stands is used again (one probe).

Each change is checked three ways: the second call equals a fresh ``MCDropout`` on the changed
model with the same seed (bit for bit), it differs from the first call where the change changes
the outputs, and where it makes sense it agrees with the training-mode reference (the changed
model in ``train()`` with its norm layers in eval, a plain loop) within Monte Carlo error.
"""

from __future__ import annotations

import copy
import threading
import types

import pytest
import torch
from strategy_models import _assert_same_distribution, in_threads
from torch import nn
from torch.nn import functional as F

import mcdrop

T = 256
SEED = 7


class Net(nn.Module):
    """Linear body, BatchNorm, dropout, linear head: every kind of change has a target."""

    def __init__(self, p: float = 0.3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU())
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(x)))


def _net() -> Net:
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        model.head.weight.mul_(3)  # outputs that vary enough to tell plans apart
    return model


def _x(n: int = 8, d: int = 6) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(3))


def _fresh(model: nn.Module, *args, **options) -> torch.Tensor:
    return mcdrop.MCDropout(model, n_samples=T, seed=SEED, **options)(*args)


def _reference(model: nn.Module, x: torch.Tensor, n: int = 2000) -> torch.Tensor:
    """Training-mode samples of a copy of ``model``: ``train()``, norm layers in eval, a loop."""
    ref = copy.deepcopy(model).train()
    for module in ref.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.eval()
    with torch.no_grad():
        return torch.stack([ref(x) for _ in range(n)])


def _changed(mutate, model=None, x=None, **options):
    """(first call, second call after ``mutate(model)``, fresh MCDropout on the changed model,
    plans made by the wrapper)."""
    model = _net() if model is None else model
    x = _x() if x is None else x
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED, **options)
    first = mc(x)
    assert torch.equal(mc(x), first)  # the kept plan: same seed, same numbers
    assert mc._engine.plans_made == 1
    mutate(model)
    second = mc(x)
    return first, second, _fresh(model, x, **options), mc._engine.plans_made


def test_plan_is_kept_and_used_by_forward_and_predict():
    model, x = _net(), _x()
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    samples = [mc(x) for _ in range(3)]
    result = mc.predict_with_uncertainty(x)
    assert mc._engine.plans_made == 1
    assert all(torch.equal(s, samples[0]) for s in samples)
    fresh = mcdrop.predict_with_uncertainty(model, x, n_samples=T, seed=SEED)
    assert torch.equal(result.mean, fresh.mean)
    assert torch.equal(result.mutual_information, fresh.mutual_information)
    # other options: another engine, its own plan
    other = mc.predict_with_uncertainty(x, strategy="loop")
    assert other.sampling.strategy == "loop"


def test_submodule_replaced():
    def mutate(model):
        model.drop = nn.Dropout(0.6).eval()

    first, second, fresh, plans = _changed(mutate)
    assert torch.equal(second, fresh) and not torch.equal(first, second)
    assert plans == 2
    _assert_same_distribution(second, _reference(_mutated(mutate), _x()))


def test_dropout_replaced_by_identity_is_refused_on_the_next_call():
    model, x = _net(), _x()
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    mc(x)
    model.drop = nn.Identity().eval()
    with pytest.raises(ValueError, match="no dropout"):
        mc(x)


def _mutated(mutate) -> Net:
    model = _net()
    mutate(model)
    return model


@pytest.mark.parametrize("p", [0.15, 0.6])
def test_dropout_rate_changed(p):
    def mutate(model):
        model.drop.p = p

    first, second, fresh, plans = _changed(mutate)
    assert torch.equal(second, fresh) and not torch.equal(first, second)
    assert plans == 2
    _assert_same_distribution(second, _reference(_mutated(mutate), _x()))


class TensorRate(Net):
    """The rate held in a tensor, read at every forward: updated in place, it changes nothing
    the fingerprint holds (same tensor); the recording of the first chunk sees the new rate."""

    def __init__(self):
        super().__init__()
        self.rate = torch.tensor(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.dropout(self.body(x), float(self.rate), self.training)
        return self.head(h)


def test_rate_held_in_a_tensor_updated_in_place():
    torch.manual_seed(0)
    model = TensorRate().eval()
    with torch.no_grad():
        model.head.weight.mul_(3)

    def mutate(m):
        m.rate.fill_(0.6)

    first, second, fresh, plans = _changed(mutate, model)
    assert torch.equal(second, fresh) and not torch.equal(first, second)
    assert plans == 2  # the kept plan was found stale by its first chunk
    _assert_same_distribution(second, _reference(model, _x()))


def test_a_plan_per_batch_size_is_kept():
    model = _net()
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    sizes = [8, 5, 8, 5, 3, 8]
    got = [mc(_x(n)) for n in sizes]
    assert mc._engine.plans_made == 3
    for n, samples in zip(sizes, got, strict=True):
        assert torch.equal(samples, _fresh(model, _x(n)))
    model.drop.p = 0.5  # the plans of the old model go with the first call that sees it
    mc(_x(8))
    assert len(mc._engine.kept) == 1


class FloatAttention(nn.Module):
    """Attention dropout held in a float attribute (Hugging Face's eager attention)."""

    def __init__(self, d: int = 8, p: float = 0.1):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.attention_dropout = p
        self.head = nn.Linear(d, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, -1)
        w = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
        w = F.dropout(w, p=self.attention_dropout if self.training else 0.0, training=self.training)
        return self.head((w @ v).mean(1))


def test_attention_dropout_float_changed():
    torch.manual_seed(0)
    model = FloatAttention().eval()
    x = torch.randn(6, 5, 8)

    def mutate(m):
        m.attention_dropout = 0.5

    first, second, fresh, plans = _changed(mutate, model, x)
    assert torch.equal(second, fresh) and not torch.equal(first, second)
    assert plans == 2
    _assert_same_distribution(second, _reference(model, x))


def _bert(implementation: str):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.4,
        classifier_dropout=0.0,
        attn_implementation=implementation,
    )
    model = transformers.BertForSequenceClassification(config).eval()
    with torch.no_grad():
        model.classifier.weight.mul_(20)
    return model


@pytest.mark.parametrize(("before", "after"), [("eager", "sdpa"), ("sdpa", "eager")])
def test_attn_implementation_switched(before, after):
    model = _bert(before)
    ids = torch.randint(0, 30, (4, 6), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids}
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED, outputs="logits")
    mc(**inputs)
    strategy = mc.last_strategy
    model.config._attn_implementation = after
    second = mc(**inputs)
    assert mc._engine.plans_made == 2
    fresh = mcdrop.MCDropout(model, n_samples=T, seed=SEED, outputs="logits")
    assert torch.equal(second, fresh(**inputs))
    # vmap cannot give fused attention a mask per sample: sdpa never samples with vmap
    assert mc.last_strategy == fresh.last_strategy
    assert "vmap" not in {mc.last_strategy if after == "sdpa" else strategy}
    ref = copy.deepcopy(model).train()
    with torch.no_grad():
        reference = torch.stack([ref(**inputs).logits for _ in range(400)])
    _assert_same_distribution(second, reference)


def test_parameter_replaced():
    def mutate(model):
        model.head.weight = nn.Parameter(torch.randn(3, 16) * 3)

    torch.manual_seed(5)
    model = _net()
    first, second, fresh, plans = _changed(mutate, model)
    assert torch.equal(second, fresh) and not torch.equal(first, second)
    assert plans == 2
    _assert_same_distribution(second, _reference(model, _x()))


@pytest.mark.parametrize("how", ["mul_", "load_state_dict"])
def test_parameter_updated_in_place_is_used_without_a_new_plan(how):
    model = _net()
    state = {k: v * 2 for k, v in model.state_dict().items() if "head" in k}

    def mutate(m):
        with torch.no_grad():
            if how == "mul_":
                m.head.weight.mul_(2)
                m.head.bias.mul_(2)
            else:
                m.load_state_dict(state, strict=False)

    first, second, fresh, plans = _changed(mutate, model)
    assert plans == 1  # the plan is kept...
    assert torch.equal(second, fresh) and not torch.equal(first, second)  # ...the values used
    # the head is linear after the dropout: twice the weights and bias, twice the outputs
    torch.testing.assert_close(second, 2 * first)


def test_buffer_updated_in_place_is_used():
    model = _net()

    def mutate(m):
        m.body[1].running_mean.add_(1.0)

    first, second, fresh, plans = _changed(mutate, model)
    assert plans == 1
    assert torch.equal(second, fresh) and not torch.equal(first, second)


def test_module_put_in_train_mode_warns_again_and_keeps_norms_in_eval():
    model, x = _net(), _x()
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    first = mc(x)
    model.body.train()
    with pytest.warns(UserWarning, match="is in training mode"):
        second = mc(x)
    assert mc._engine.plans_made == 2
    assert torch.equal(second, first)  # batch norm stays in eval: the same numbers
    assert model.body[1].training and not model.drop.training  # the model is untouched


def test_forward_replaced_on_an_instance():
    model, x = _net(), _x()

    def without_head_dropout(self, x):
        return self.head(self.body(x)) + self.drop(torch.ones_like(x[:, :3]))

    def mutate(m):
        m.forward = types.MethodType(without_head_dropout, m)

    first, second, fresh, plans = _changed(mutate, model, x)
    assert torch.equal(second, fresh) and not torch.equal(first, second)
    assert plans == 2
    _assert_same_distribution(second, _reference(model, x))


@pytest.mark.parametrize("where", ["module", "global"])
def test_hook_added(where):
    model, x = _net(), _x()
    handles = []

    def double(module, args, output):
        return output * 2 if module is model.body or module.__class__ is nn.Sequential else output

    def mutate(m):
        if where == "module":
            handles.append(m.body.register_forward_hook(lambda _m, _a, out: out * 2))
        else:
            handles.append(nn.modules.module.register_module_forward_hook(double))

    try:
        first, second, fresh, plans = _changed(mutate, model, x)
        assert plans == 2
        assert torch.equal(second, fresh) and not torch.equal(first, second)
        _assert_same_distribution(second, _reference(model, x))
    finally:
        for handle in handles:
            handle.remove()


class Branchy(nn.Module):
    """Another dropout for wide inputs, and another for a negative first value (a branch on
    the values, which only the recording of the first chunk can see)."""

    def __init__(self):
        super().__init__()
        self.narrow, self.wide = nn.Dropout(0.1), nn.Dropout(0.7)
        self.negative = nn.Dropout(0.5)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] > 4:
            h = self.wide(x[..., :4])
        elif x[0, 0] < 0:
            h = self.negative(x)
        else:
            h = self.narrow(x)
        return self.head(h * 3)


@pytest.mark.parametrize("second_x", ["wider", "negative"])
def test_input_that_takes_another_branch(second_x):
    torch.manual_seed(0)
    model = Branchy().eval()
    x = _x(8, 4).abs()
    y = _x(8, 8) if second_x == "wider" else torch.cat([-x[:1], x[1:]])
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    mc(x)
    second = mc(y)
    assert mc._engine.plans_made == 2  # "negative": the recording found the kept plan stale
    assert torch.equal(second, _fresh(model, y))
    assert {s.name for s in mcdrop.dropout_sites(model, example_inputs=y)} == (
        {"wide"} if second_x == "wider" else {"negative"}
    )
    _assert_same_distribution(second, _reference(model, y))
    again = mc(x)  # back to the first branch
    assert torch.equal(again, _fresh(model, x))


def test_dtype_change():
    model, x = _net(), _x()
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    mc(x)
    model.double()  # same parameter objects, another dtype
    second = mc(x.double())
    assert second.dtype == torch.float64 and mc._engine.plans_made == 2
    assert torch.equal(second, _fresh(model, x.double()))


def test_model_moved_to_meta_is_refused_on_the_next_call():
    model, x = _net(), _x()
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    mc(x)
    model.to("meta")
    with pytest.raises(ValueError, match="meta"):
        mc(x)


def test_grad_inference_and_deterministic_modes_give_the_same_numbers():
    model, x = _net(), _x()
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    first = mc(x)
    with torch.no_grad():
        assert torch.equal(mc(x), first)
    with torch.inference_mode():
        assert torch.equal(mc(x), first)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        assert torch.equal(mc(x), first)
    finally:
        torch.use_deterministic_algorithms(previous)
    assert torch.equal(mc(x), first)


def test_eight_threads_get_the_single_threaded_results():
    model = _net()
    inputs = [_x(8), _x(5), _x(8) * 2]
    single = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    expected = [single(x) for x in inputs]
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    results = in_threads(mc, inputs)
    assert len(results) == 48
    for k, got in results:
        assert torch.equal(got, expected[k])


# -- bad input: the model changed by another thread while a call runs ---------------------------

_GATE: list[tuple[threading.Event, threading.Event]] = []


class Blocking(Net):
    """Blocks its forward once, where a test arms it (a module global the fingerprint cannot
    see): another thread changes the model meanwhile."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if _GATE:
            entered, release = _GATE.pop()
            entered.set()
            assert release.wait(30)
        return super().forward(x)


def _blocking() -> Blocking:
    torch.manual_seed(0)
    model = Blocking().eval()
    with torch.no_grad():
        model.head.weight.mul_(3)
    return model


@pytest.mark.parametrize("when", ["first call (probe)", "kept plan (first chunk)"])
def test_model_replaced_while_a_call_runs_finishes_on_a_consistent_plan(when):
    model, x = _blocking(), _x()
    old = mcdrop.MCDropout(copy.deepcopy(model), n_samples=T, seed=SEED)(x)
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    if when.startswith("kept"):
        assert torch.equal(mc(x), old)
    # made before: a module's initialisation draws from PyTorch's global generator, which the
    # call in the other thread is drawing from
    drop, head = nn.Dropout(0.7).eval(), nn.Linear(16, 3).eval()
    entered, release = threading.Event(), threading.Event()
    _GATE.append((entered, release))
    out: list[torch.Tensor] = []
    caller = threading.Thread(target=lambda: out.append(mc(x)))
    caller.start()
    try:
        assert entered.wait(30)
        model.drop = drop  # another thread changes the model mid-call
        model.head = head
    finally:
        release.set()
        caller.join()
        _GATE.clear()
    assert torch.equal(out[0], old)  # the call finished on the model it started with
    new = mc(x)  # the next call plans for the changed model
    assert torch.equal(new, _fresh(model, x))
    assert not torch.equal(new, old)


# -- what the fingerprint cannot see (a hostile review) -------------------------------------------
_MIX = {"on": False}


class _Mixing(nn.Module):
    """A module-level flag (invisible to the fingerprint) makes the examples of a pass interact."""

    def __init__(self):
        super().__init__()
        self.d, self.l1 = nn.Dropout(0.3), nn.Linear(4, 64)
        self.l2, self.l3 = nn.Linear(64, 64), nn.Linear(64, 3)

    def post(self, h):
        return h

    def forward(self, x):
        h = self.post(self.l1(self.d(x)))
        if _MIX["on"]:
            h = h - h.mean(0, keepdim=True)
        return self.l3(self.l2(h).relu())


def _kept_then_fresh(model, mutate, x):
    mc = mcdrop.MCDropout(model, n_samples=8, seed=3)
    before = mc(x)
    chosen = mc.last_strategy
    mutate()
    after = mc(x)
    fresh = mcdrop.MCDropout(model, n_samples=8, seed=3)(x)
    return chosen, before, after, fresh


def test_a_kept_replicate_plan_checks_the_examples_again():
    torch.manual_seed(0)
    try:
        chosen, before, after, fresh = _kept_then_fresh(
            _Mixing().eval(), lambda: _MIX.update(on=True), torch.randn(5, 4)
        )
    finally:
        _MIX["on"] = False
    assert chosen == "replicate"
    assert not torch.equal(before, after)
    assert torch.equal(after, fresh)


def test_a_patched_helper_method_is_in_the_fingerprint():
    class Patched(_Mixing):
        pass

    def patch():
        Patched.post = lambda self, h: h - h.mean(0, keepdim=True)

    torch.manual_seed(0)
    chosen, before, after, fresh = _kept_then_fresh(Patched().eval(), patch, torch.randn(5, 4))
    assert chosen == "replicate"
    assert torch.equal(after, fresh) and not torch.equal(before, after)


class _ListRate(nn.Module):
    """A rate in a list too long to walk: the twin holds a copy, so it must not be reused."""

    def __init__(self, n: int):
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 16), nn.Linear(16, 3)
        self.rates = [0.1] * n
        self.rates_of = {f"k{i}": [0.1] for i in range(n)}  # unplain values

    def forward(self, x):
        p = max(self.rates[7], self.rates_of["k7"][0])
        return self.l2(F.dropout(self.l1(x).relu(), p, self.training))


@pytest.mark.parametrize("where", ["list", "dict of lists"])
def test_a_rate_in_a_long_container_changed_in_place_takes_effect(where):
    torch.manual_seed(0)
    model = _ListRate(100).eval()

    def mutate():
        if where == "list":
            model.rates[7] = 0.9
        else:
            model.rates_of["k7"][0] = 0.9

    _, before, after, fresh = _kept_then_fresh(model, mutate, torch.randn(5, 4))
    assert not torch.equal(before, after)
    assert torch.equal(after, fresh)


def test_a_wrapper_that_kept_a_plan_can_be_copied_and_pickled():
    """``copy.deepcopy`` of a wrapper after a call failed (the kept plans hold a lock): a copy
    keeps no plan, plans afresh, and draws what the original draws with the same seed."""
    import io
    import pickle

    model, x = _net(), _x()
    mc = mcdrop.MCDropout(model, n_samples=T, seed=SEED)
    first = mc(x)
    assert mc._engine is not None and mc._engine.kept
    twin = copy.deepcopy(mc)
    assert twin._engine is None and twin.model is not mc.model
    assert torch.equal(twin(x), first) and torch.equal(mc(x), first)
    buffer = io.BytesIO()
    torch.save(mc, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert torch.equal(loaded(x), first)
    assert torch.equal(pickle.loads(pickle.dumps(mc))(x), first)
    assert mc._engine.kept  # the original keeps its plan
    mc.compile(backend="eager")  # nn.Module's own copies leave the compiled call out
    copied = copy.deepcopy(mc)
    with torch.no_grad():
        copied.model.head.weight.mul_(2.0)
    assert "_compiled_call_impl" not in vars(copied)
    assert torch.allclose(copied(x), 2 * first - mc.model.head.bias)  # the copy's own model
    assert torch.equal(pickle.loads(pickle.dumps(mc)).model.head.weight, model.head.weight)


class _SwapsItsParameters(nn.Module):
    """A forward that, once per twin (an attribute of its own says when), registers its two
    parameters again under each other's names: ``{p1: A, p2: B}`` becomes ``{p2: A, p1: B}``."""

    def __init__(self):
        super().__init__()
        self.p1 = nn.Parameter(torch.full((4,), 1.0))
        self.p2 = nn.Parameter(torch.full((4,), 10.0))
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not getattr(self, "_swapped", False):
            a, b = self.p1, self.p2
            del self.p1, self.p2
            self.p2, self.p1 = a, b
            self._swapped = True
        return self.drop(x) * self.p1


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_a_registry_the_twins_forward_permuted_is_taken_again_from_the_model(strategy):
    """A kept call starts from the model's parameters under the model's names, even when the
    twin's own forward re-registered the same objects under each other's names (a registry
    checked by its keys as a set and its values by position was taken for the model's)."""
    model, x = _SwapsItsParameters().eval(), torch.ones(3, 4)
    mc = mcdrop.MCDropout(model, n_samples=8, seed=SEED, strategy=strategy)
    mc(x)
    second = mc(x)
    assert mc._engine.plans_made == 1
    assert torch.equal(second, _fresh_n(model, x, 8, strategy=strategy))
    assert set(second.unique().tolist()) == {0.0, 20.0}  # p1 = 10 after the swap, scaled by 2
    assert list(model._parameters) == ["p1", "p2"] and float(model.p1[0]) == 1.0


def _fresh_n(model: nn.Module, x: torch.Tensor, n: int, **options) -> torch.Tensor:
    return mcdrop.MCDropout(model, n_samples=n, seed=SEED, **options)(x)


class _ReordersItsBuffers(nn.Module):
    """A forward that uses its first buffer and moves it to the end of its registry: the same
    keys and objects in another order (a module may build a list from ``self.buffers()``)."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.register_buffer("a", torch.full((64,), 1.0))
        self.register_buffer("b", torch.full((64,), 10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = next(iter(self._buffers.values()))
        self._buffers.move_to_end(next(iter(self._buffers)))
        return self.drop(x) * first


class _AllEqual(nn.Module):
    def __init__(self, v: float):
        super().__init__()
        self.v = v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.v

    def __eq__(self, other: object) -> bool:  # every instance equal to every other
        return isinstance(other, _AllEqual)

    def __hash__(self) -> int:
        return 0


class _ReplacesItsChild(nn.Module):
    """A forward that replaces its child by a new module of a class whose instances all compare
    equal (1 and 2 in turn on the twin)."""

    def __init__(self):
        super().__init__()
        self.drop, self.e = nn.Dropout(0.5), _AllEqual(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.e(self.drop(x))
        self.e = _AllEqual(3.0 - self.e.v)
        return y


@pytest.mark.parametrize("model", [_ReordersItsBuffers, _ReplacesItsChild])
def test_every_kept_call_starts_from_the_model_whatever_the_forward_did_to_the_twin(model):
    """A registry the twin's forward reordered (same keys, same objects) and a child it replaced
    by one that compares equal are the model's again at the next call: every kept call gives
    the numbers of a fresh wrapper (they alternated when the registry was compared by key and
    the children by ``==``)."""
    model, x = model().eval(), torch.ones(2, 64)
    mc = mcdrop.MCDropout(model, n_samples=3, seed=SEED, strategy="loop")
    calls = [mc(x) for _ in range(4)]
    fresh = mcdrop.MCDropout(model, n_samples=3, seed=SEED, strategy="loop")(x)
    assert all(torch.equal(call, fresh) for call in calls[1:])
    assert list(model._buffers) in (["a", "b"], [])
