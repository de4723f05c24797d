"""The twin reaches every module the forward reaches, or the probe refuses (issue 25, group 1).

Each model holds a dropout that its forward reaches some other way than a registered attribute:
through a container, a plain object, a closure, a traced graph. Before, such a dropout ran as the
user's own module in eval mode and never sampled, silently. The reference is training mode itself
(``model.train()`` on a copy): MC dropout's spread must agree with it within Monte Carlo error.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import threading
import types
import weakref

import pytest
import torch
from torch import nn

import mcdrop

T = 400


def _snapshot(model: nn.Module):
    return (
        {name: module.training for name, module in model.named_modules()},
        {
            name: (dict(m._forward_hooks), dict(m._forward_pre_hooks))
            for name, m in model.named_modules()
        },
        {key: value.clone() for key, value in model.state_dict().items()},
        [p.requires_grad for p in model.parameters()],
        {name: sorted(vars(m)) for name, m in model.named_modules()},
    )


def _assert_untouched(model: nn.Module, before) -> None:
    after = _snapshot(model)
    assert after[0] == before[0] and after[1] == before[1]
    assert after[3] == before[3] and after[4] == before[4]
    assert before[2].keys() == after[2].keys()
    assert all(torch.equal(before[2][k], after[2][k]) for k in before[2])


def _training_reference(model: nn.Module, x: torch.Tensor, n: int = T) -> torch.Tensor:
    """``n`` passes in training mode (the model's own ``train()``), norms in eval; the model
    itself, as a copy would miss a module shared through a closure or a global, then back to
    eval."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._NormBase):
            module.eval()
    try:
        with torch.no_grad():
            return torch.stack([model(x) for _ in range(n)])
    finally:
        model.eval()


def _spread(samples: torch.Tensor) -> float:
    return float(samples.var(0).mean())


def _check_against_training(model: nn.Module, x: torch.Tensor) -> None:
    before = _snapshot(model)
    samples = mcdrop.MCDropout(model, n_samples=T, seed=0)(x)
    _assert_untouched(model, before)
    torch.manual_seed(1)
    reference = _training_reference(model, x)
    ratio = _spread(samples) / _spread(reference)
    assert 0.85 < ratio < 1.18, ratio  # the missed dropout gave 0.3x-0.6x


class _Base(nn.Module):
    """Two dropouts: ``drop`` registered and also reached through ``held``, and ``other``."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 32)
        self.drop = nn.Dropout(0.5)
        self.other = nn.Dropout(0.1)
        self.b = nn.Linear(32, 3)
        with torch.no_grad():
            self.b.weight.mul_(4)

    def held(self) -> nn.Module:
        raise NotImplementedError

    def forward(self, x):
        return self.b(self.held()(self.other(torch.relu(self.a(x)))))


_NT = collections.namedtuple("_NT", "first drop")


class _Slotted:
    __slots__ = ("drop",)

    def __init__(self, drop):
        self.drop = drop


@dataclasses.dataclass(frozen=True)
class _Frozen:
    name: str
    drop: nn.Module


class InOrderedDict(_Base):
    def __init__(self):
        super().__init__()
        self.table = collections.OrderedDict(x=1, drop=self.drop)

    def held(self):
        return self.table["drop"]


class InNamedTuple(_Base):
    def __init__(self):
        super().__init__()
        self.pair = _NT(0, self.drop)

    def held(self):
        return self.pair.drop


class InNamespace(_Base):
    def __init__(self):
        super().__init__()
        self.ns = types.SimpleNamespace(drop=self.drop, size=3)

    def held(self):
        return self.ns.drop


class InSlots(_Base):
    def __init__(self):
        super().__init__()
        self.box = _Slotted(self.drop)

    def held(self):
        return self.box.drop


class InFrozenDataclass(_Base):
    def __init__(self):
        super().__init__()
        self.spec = _Frozen("d", self.drop)

    def held(self):
        return self.spec.drop


class NestedThreeDeep(_Base):
    def __init__(self):
        super().__init__()
        self.deep = [[[self.drop]]]

    def held(self):
        return self.deep[0][0][0]


class InDefaultDictOfTuples(_Base):
    def __init__(self):
        super().__init__()
        self.groups = collections.defaultdict(list, {"g": [({"d": self.drop},)]})

    def held(self):
        return self.groups["g"][0][0]["d"]


class InClosure(_Base):
    def __init__(self):
        super().__init__()
        drop = self.drop
        self.apply_drop = lambda h: drop(h)

    def held(self):
        return self.apply_drop


class InDequeAndWeakref(_Base):
    def __init__(self):
        super().__init__()
        self.recent = collections.deque([self.drop], maxlen=2)
        self.ref = weakref.ref(self.drop)

    def held(self):
        return self.ref() if self.recent[0] is self.ref() else None


CONTAINERS = [
    InOrderedDict,
    InNamedTuple,
    InNamespace,
    InSlots,
    InFrozenDataclass,
    NestedThreeDeep,
    InDefaultDictOfTuples,
    InClosure,
    InDequeAndWeakref,
]


@pytest.mark.parametrize("cls", CONTAINERS, ids=lambda c: c.__name__)
def test_a_dropout_reached_through_any_container_samples_like_training(cls):
    torch.manual_seed(0)
    model = cls().eval()
    x = torch.randn(16, 5)
    names = [s.name for s in mcdrop.dropout_sites(model, example_inputs=x[:2])]
    assert names == ["drop", "other"]
    _check_against_training(model, x)
    held = model.held()
    assert held is model.drop or held.__closure__[0].cell_contents is model.drop  # not replaced


class SlottedModule(nn.Module):
    """An nn.Module subclass that keeps attributes in ``__slots__`` (and a module in one)."""

    __slots__ = ("__shift", "alias", "scale")

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 32)
        self.drop = nn.Dropout(0.4)
        self.b = nn.Linear(32, 3)
        self.scale = 3.0
        self.__shift = 0.5
        object.__setattr__(self, "alias", self.drop)  # a slot, not a registered child

    def forward(self, x):
        return self.b(self.alias(torch.relu(self.a(x)))) * self.scale + self.__shift


def test_an_nn_module_with_slots_keeps_them_in_the_twin():
    torch.manual_seed(0)
    model = SlottedModule().eval()
    x = torch.randn(16, 5)
    _check_against_training(model, x)
    assert model.alias is model.drop and model.scale == 3.0


def _eager() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(5, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3), nn.Dropout(0.2)
    )


def test_an_fx_graph_samples_its_dropout_modules_like_the_eager_model():
    eager = _eager().eval()
    traced = torch.fx.symbolic_trace(eager)
    x = torch.randn(8, 5)
    before = _snapshot(traced)
    got = mcdrop.MCDropout(traced, n_samples=50, seed=0)(x)
    want = mcdrop.MCDropout(eager, n_samples=50, seed=0)(x)
    torch.testing.assert_close(got, want)  # same modules, same order, same draws
    _assert_untouched(traced, before)
    assert [s.name for s in mcdrop.dropout_sites(traced, example_inputs=x)] == ["2", "4"]


def _exported(model: nn.Module, x: torch.Tensor) -> nn.Module:
    batch = torch.export.Dim("batch")
    return torch.export.export(model, (x,), dynamic_shapes=({0: batch},)).module()


def test_a_graph_exported_in_training_mode_samples_its_dropout():
    eager = _eager()
    x = torch.randn(16, 5)
    graph = _exported(copy.deepcopy(eager).train(), x)
    samples = mcdrop.MCDropout(graph, n_samples=T, seed=0)(x)
    reference = _training_reference(eager, x)
    ratio = _spread(samples) / _spread(reference)
    assert 0.85 < ratio < 1.18, ratio


class FunctionalDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 16), nn.Linear(16, 3)

    def forward(self, x):
        h = torch.nn.functional.dropout(torch.relu(self.a(x)), 0.3, self.training)
        return self.b(h)


@pytest.mark.parametrize("how", ["export", "fx"])
def test_a_graph_traced_in_eval_mode_that_baked_dropout_out_is_refused(how):
    x = torch.randn(4, 5)
    if how == "export":
        graph = _exported(_eager().eval(), x)
    else:
        graph = torch.fx.symbolic_trace(FunctionalDropout().eval())
    with pytest.raises(ValueError, match="traced in eval mode.*training=False.*training mode"):
        mcdrop.predict_with_uncertainty(graph, x, n_samples=5)


def test_an_export_with_a_fixed_batch_size_is_refused_naming_dynamic_shapes():
    x = torch.randn(8, 5)
    graph = torch.export.export(_eager().train(), (x,)).module()
    with pytest.raises(ValueError, match="fixes the batch size.*dynamic"):
        mcdrop.predict_with_uncertainty(graph, x, n_samples=5)


_GLOBAL: dict[str, nn.Module] = {}


class ThroughAGlobal(_Base):
    def __init__(self):
        super().__init__()
        _GLOBAL["drop"] = self.drop

    def held(self):
        return _GLOBAL["drop"]


class _Registry:
    """An object mcdrop cannot copy: ``copy.copy`` hands back the same object."""

    def __init__(self, **modules):
        self.__dict__.update(modules)

    def __copy__(self):
        return self


class ThroughAnUncopyableObject(_Base):
    def __init__(self):
        super().__init__()
        self.registry = _Registry(drop=self.drop)

    def held(self):
        return self.registry.drop


@pytest.mark.parametrize(
    ("cls", "where"),
    [
        (ThroughAGlobal, "`drop` \\(reached from outside its attributes\\)"),
        (ThroughAnUncopyableObject, "`drop` \\(reached through `<model>.registry`\\)"),
    ],
)
def test_a_model_module_running_inside_the_twin_is_refused_by_name(cls, where):
    torch.manual_seed(0)
    model = cls().eval()
    before = _snapshot(model)
    with pytest.raises(ValueError, match=f"ran the model's own {where}"):
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 5), n_samples=5)
    with pytest.raises(ValueError, match="ran the model's own"):
        mcdrop.dropout_sites(model, example_inputs=torch.randn(2, 5))
    _assert_untouched(model, before)


def test_without_a_probe_an_uncopyable_reference_to_a_site_is_refused():
    model = ThroughAnUncopyableObject().eval()
    with pytest.raises(ValueError, match="`<model>.registry` holds the model's own `drop`"):
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 5), n_samples=5, detect_silent=False)


class HookedByMethod(nn.Module):
    """A forward hook that is a method of the model: it runs on the twin, not on the model."""

    def __init__(self):
        super().__init__()
        self.a, self.drop, self.b = nn.Linear(5, 16), nn.Dropout(0.3), nn.Linear(16, 3)
        self.b.register_forward_hook(self._record)
        self.calls = 0

    def _record(self, module, inputs, output):
        self.calls += 1

    def forward(self, x):
        return self.b(self.drop(self.a(x)))


def test_a_hook_that_is_a_method_of_the_model_writes_to_the_twin():
    model = HookedByMethod().eval()
    mcdrop.predict_with_uncertainty(model, torch.randn(4, 5), n_samples=5)
    assert model.calls == 0  # before, the twin ran the model's own method: 1 per pass
    model(torch.randn(2, 5))
    assert model.calls == 1


def test_other_threads_see_the_eval_model_while_odd_models_are_sampled():
    models = [InOrderedDict().eval(), InClosure().eval(), SlottedModule().eval()]
    x = torch.randn(8, 5)
    with torch.no_grad():
        expected = [m(x) for m in models]
    before = [_snapshot(m) for m in models]
    stop, errors, mismatches = threading.Event(), [], []

    def sample():
        try:
            while not stop.is_set():
                for m in models:
                    mcdrop.predict_with_uncertainty(m, x, n_samples=20, strategy="loop")
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        for _ in range(60):
            for m, want in zip(models, expected, strict=True):
                with torch.no_grad():
                    if not torch.equal(m(x), want):
                        mismatches.append(type(m).__name__)
    finally:
        stop.set()
        thread.join()
    assert not errors and not mismatches
    for m, snap in zip(models, before, strict=True):
        _assert_untouched(m, snap)


_INTERRUPTS = [1]


class InterruptedOnce(_Base):
    """Raises KeyboardInterrupt in the first forward it runs (the probe): a user's Ctrl-C."""

    def held(self):
        if _INTERRUPTS:
            _INTERRUPTS.pop()
            raise KeyboardInterrupt
        return self.table["drop"]

    def __init__(self):
        super().__init__()
        self.table = collections.OrderedDict(drop=self.drop)


def test_an_interrupt_inside_the_probe_leaves_the_model_and_the_next_call_intact():
    torch.manual_seed(0)
    model = InterruptedOnce().eval()
    before = _snapshot(model)
    x = torch.randn(16, 5)
    with pytest.raises(KeyboardInterrupt):
        mcdrop.predict_with_uncertainty(model, x, n_samples=5)
    _assert_untouched(model, before)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    _check_against_training(model, x)
