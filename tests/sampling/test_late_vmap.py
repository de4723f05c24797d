"""vmap entered at the first random call (``mcdrop.sampling._late_vmap``): the numbers of
``torch.func.vmap`` entered before the pass, the prefix outside vmap, and vmap from the start
wherever it cannot be entered late (a dropout inside the model's own vmap, on another thread)."""

from __future__ import annotations

import contextlib
import copy
import threading

import pytest
import torch
from strategy_models import DeepDropoutMLP, HeadDropout, TinyTransformer
from torch import nn
from torch._C._functorch import maybe_current_level
from torch.nn import functional as F

import mcdrop
from mcdrop.dropout import MaskedDropout
from mcdrop.dropout._twin import _twin
from mcdrop.sampling._inputs import _Batch
from mcdrop.sampling._strategies import Runner


class Sandwich(nn.Module):
    """A linear body, a dropout, a linear head; the subclasses' forwards differ."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(6, 16)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(16, 3)


class NoisyPrefix(Sandwich):
    """A random draw (not a dropout) before the dropout: vmap is entered there."""

    def forward(self, x):
        h = self.body(x)
        return self.head(self.drop(h + 0.1 * torch.randn_like(h)))


class Levels(Sandwich):
    """Notes functorch's level before and after its dropout."""

    def __init__(self):
        super().__init__()
        self.seen: list[object] = []

    def forward(self, x):
        h = self.body(x)
        self.seen.append(maybe_current_level())
        h = self.drop(h)
        self.seen.append(maybe_current_level())
        return self.head(h)


class InnerVmap(Sandwich):
    """Its dropout runs inside its own ``torch.func.vmap`` over the examples."""

    def __init__(self, swallow: bool = False):
        super().__init__()
        self.swallow = swallow

    def forward(self, x):
        h = self.body(x)
        if self.swallow:  # hostile: catches everything, mcdrop's own signal included, and
            try:  # falls back to a dropout of its own
                h = torch.func.vmap(self.drop, randomness="different")(h)
            except BaseException:
                h = self.drop(h)
        else:
            h = torch.func.vmap(self.drop, randomness="different")(h)
        return self.head(h)


@torch.compile(backend="eager")
def _compiled_block(h: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    return F.dropout(torch.relu(h), p, training)


class CompiledInside(Sandwich):
    """Its dropout runs inside a function compiled by dynamo."""

    def forward(self, x):
        return self.head(_compiled_block(self.body(x), 0.3, self.drop.training))


class UnseenRandom(nn.Module):
    """Random ops the mode never sees (an exported graph's aten calls, which draw from PyTorch's
    global generator) before a dropout that changes almost nothing."""

    def __init__(self, op: str):
        super().__init__()
        self.drop = nn.Dropout(0.001)
        self.op = op

    def forward(self, x):
        if self.op == "randn":
            h = x + torch.ops.aten.randn.default(list(x.shape))
        else:
            h = torch.ops.aten.native_dropout.default(x, 0.5, True)[0]
        return self.drop(h)


class Checkpointed(Levels):
    """Its dropout runs inside ``torch.utils.checkpoint`` (a dynamo-disabled function)."""

    def forward(self, x):
        h = self.body(x)
        self.seen.append(maybe_current_level())
        h = torch.utils.checkpoint.checkpoint(self.drop, h, use_reentrant=False)
        self.seen.append(maybe_current_level())
        return self.head(h)


class NoDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))

    def forward(self, x):
        return self.net(x)


class RaisesAfterDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        self.drop(x)
        raise RuntimeError("after the dropout")


def _runner(model: nn.Module, seed: int = 3) -> Runner:
    twin = _twin(model.eval())
    assert twin is not None
    for module in twin.modules():
        module.training = isinstance(module, nn.Dropout)
    return Runner(
        twin,
        device=torch.device("cpu"),
        amp=None,
        n_outputs=1,
        output_transform=None,
        masks=MaskedDropout(seed),
    )


def _late_and_vmap(model: nn.Module, x: torch.Tensor, k: int = 7, first: int = 2):
    batch = _Batch((x,), {}, None, x.shape[0])
    with torch.inference_mode():
        late = _runner(model).run("vmap", batch, k, first=first)
        # a recorded chunk (a plan's first) runs under torch.func.vmap from the start
        plain = _runner(model).run("vmap", batch, k, first=first, record=contextlib.nullcontext)
    return late[0], plain[0]


def _example(model: nn.Module) -> torch.Tensor:
    torch.manual_seed(0)
    if isinstance(model, TinyTransformer):
        return torch.randn(5, 4, 16)
    return torch.randn(5, 16 if isinstance(model, HeadDropout) else 6)


@pytest.mark.parametrize(
    "make",
    [
        lambda: HeadDropout(64),
        DeepDropoutMLP,
        TinyTransformer,
        NoisyPrefix,
        InnerVmap,
        NoDropout,
        lambda: InnerVmap(swallow=True),
        CompiledInside,
    ],
    ids=[
        "head",
        "deep",
        "transformer",
        "noise",
        "inner-vmap",
        "none",
        "inner-swallowed",
        "compiled",
    ],
)
def test_late_vmap_gives_the_numbers_of_vmap_from_the_start(make):
    torch.manual_seed(1)
    model = make()
    x = _example(model)
    for _ in range(2):  # (a compiled function: traced, then from its cache)
        late, plain = _late_and_vmap(model, x)
    assert late.shape == (7, *plain.shape[1:])
    assert torch.equal(late, plain)
    varied = bool((late.std(0) > 0).any())
    assert varied is not isinstance(model, NoDropout)  # the masks differ between samples
    assert maybe_current_level() is None  # vmap left


def test_the_prefix_runs_outside_vmap_and_the_rest_inside():
    model = Levels()
    x = torch.randn(5, 6)
    batch = _Batch((x,), {}, None, 5)
    with torch.inference_mode():
        runner = _runner(model)
        runner.run("vmap", batch, 4)
        late = list(runner.module.seen)
        runner.module.seen.clear()
        runner.run("vmap", batch, 4, record=contextlib.nullcontext)
        plain = list(runner.module.seen)
    assert late[0] is None and late[1] is not None
    assert plain[0] is not None and plain[1] == plain[0] == late[1]


@pytest.mark.parametrize("op", ["randn", "native_dropout"])
def test_random_ops_the_mode_never_sees_before_the_first_dropout_differ_between_samples(op):
    # Under vmap from the start each sample draws its own (from PyTorch's global generator, as
    # before); entered late they would run once, shared by every sample of the pass.
    x = torch.ones(4, 256)
    batch = _Batch((x,), {}, None, 4)
    model = UnseenRandom(op)
    with torch.inference_mode():
        late = _runner(model).run("vmap", batch, 8)[0]
        plain = _runner(model).run("vmap", batch, 8, record=contextlib.nullcontext)[0]
    for out in (late, plain):
        if op == "randn":  # N(0, 1) noise per sample: the spread across samples is about 1
            assert 0.8 < float(out.std(0).mean()) < 1.2
        else:  # two samples' masks agree on about half of the units (binomial, n = 1024)
            assert 0.4 < float((out[0] != out[1]).double().mean()) < 0.6
    assert maybe_current_level() is None


def test_a_dropout_inside_checkpoint_enters_late_without_running_the_pass_again():
    model = Checkpointed()
    x = torch.randn(5, 6)
    batch = _Batch((x,), {}, None, 5)
    with torch.inference_mode():
        runner = _runner(model)
        late = runner.run("vmap", batch, 4)
        seen = list(runner.module.seen)
        plain = _runner(model).run("vmap", batch, 4, record=contextlib.nullcontext)
    assert seen[0] is None and seen[1] is not None and len(seen) == 2  # one pass, vmap late
    assert torch.equal(late[0], plain[0])


def test_an_error_after_entering_leaves_vmap_and_the_next_pass_runs():
    batch = _Batch((torch.randn(5, 6),), {}, None, 5)
    runner = _runner(RaisesAfterDropout())
    with torch.inference_mode(), pytest.raises(RuntimeError, match="after the dropout"):
        runner.run("vmap", batch, 4)
    assert maybe_current_level() is None
    assert runner.masks is not None and runner.masks.before_first is None
    late, plain = _late_and_vmap(HeadDropout(32), torch.randn(5, 16))
    assert torch.equal(late, plain)


def test_a_kept_plans_calls_give_the_first_calls_numbers_on_many_threads():
    torch.manual_seed(2)
    model = HeadDropout(64).eval()
    x = torch.randn(6, 16)
    mc = mcdrop.MCDropout(model, n_samples=40, seed=5, progress=False)
    first = mc(x)  # planned: its first chunk under torch.func.vmap from the start
    assert mc._engine.kept and mc._engine.kept[0].plan.strategy == "vmap"
    fresh = mcdrop.MCDropout(model, n_samples=40, seed=5, progress=False)(x)
    results: list[torch.Tensor] = []

    def call() -> None:
        results.append(mc(x))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(first, fresh)
    assert len(results) == 6 and all(torch.equal(r, first) for r in results)


class _Sub(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.d = nn.Dropout(0.5)

    def forward(self, x):
        return self.d(self.a(x))


class NestedSampler(Sandwich):
    """Its forward calls another sampler (shared masks, on another model) before its dropout:
    that sampler's own random draws reach this call's mode underneath."""

    def __init__(self, sub: nn.Module):
        super().__init__()
        self.hidden = [mcdrop.MCDropout(sub, n_samples=4, seed=9, progress=False, masks="shared")]

    def forward(self, x):
        x = x + torch.tanh(self.body(x))[:, :6] + self.hidden[0](x).mean(0)
        return self.head(self.drop(self.body(x)))


def test_a_sampler_called_inside_the_forward_does_not_enter_this_calls_vmap():
    torch.manual_seed(7)
    sub = _Sub().eval()
    torch.manual_seed(1)
    model = NestedSampler(sub).eval()
    x = torch.randn(5, 6)
    options = {"n_samples": 12, "seed": 5, "strategy": "vmap", "progress": False}
    mc = mcdrop.MCDropout(model, batch_budget=20, **options)  # 3 chunks: the later ones late
    calls = [mc(x) for _ in range(3)]  # a new plan, then a kept one
    whole = mcdrop.MCDropout(model, batch_budget=1000, **options)(x)  # one chunk, never late
    assert all(torch.equal(c, whole) for c in calls)
    assert float(whole.std(0).mean()) > 0.01


def test_refused_passes_stop_trying_late_after_a_few():
    # Every late pass of this model is refused (its prefix draws from PyTorch's generator, as
    # another thread drawing from it would make any model's seem to): after 3 refusals in a row
    # the passes run under vmap from the start, without running the prefix first.
    x = torch.ones(4, 256)
    batch = _Batch((x,), {}, None, 4)
    runner = _runner(UnseenRandom("randn"))
    tries: list[int] = []
    real = runner._late_vmap

    def late(*args):
        tries.append(1)
        return real(*args)

    runner._late_vmap = late  # type: ignore[method-assign]
    with torch.inference_mode():
        for _ in range(6):
            out = runner.run("vmap", batch, 4)[0]
            assert 0.8 < float(out.std(0).mean()) < 1.2  # each sample its own noise
    assert len(tries) == 3 and runner.misses[0] == 3
    kept = copy.copy(runner)  # a kept plan's calls copy the runner: the count goes with it
    assert kept.misses is runner.misses
