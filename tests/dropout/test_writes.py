"""No pass of mcdrop writes into the model's own tensors (mcdrop.dropout._writes).

Each check compares the model afterwards with a deep copy taken before, bit for bit, and with
its tensors' version counters (an in-place write bumps them even when it writes equal values).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import mcdrop
from mcdrop.dropout import ModelWriteError

torch.manual_seed(0)
X = torch.randn(6, 8)


def _writes(kind: str):  # type: ignore[no-untyped-def]
    """The in-place write of ``kind`` into the module's buffer ``n``, parameter or attribute."""

    def write(m: nn.Module) -> None:
        with torch.no_grad():
            if kind == "iadd":
                m.n += 1
            elif kind == "add_":
                m.n.add_(1)
            elif kind == "setitem":
                m.n[0] = 5.0
            elif kind == "view":
                m.n[1:].mul_(2)
            elif kind == "data":
                m.n.data.add_(1)
            elif kind == "data set":
                m.n.data = m.n.data + 1
            elif kind == "copy_":
                m.n.copy_(m.n + 1)
            elif kind == "out":
                torch.add(m.n, 1, out=m.n)
            elif kind == "aten":
                torch.ops.aten.add_.Tensor(m.n, torch.ones_like(m.n))
            elif kind == "relu inplace":
                F.relu(m.n, inplace=True)
            elif kind == "positional inplace":
                F.leaky_relu(m.n, 0.1, True)
            elif kind == "parameter":
                m.lin.bias.add_(1)
            elif kind == "attribute":
                m.t.add_(1)

    return write


KINDS = [
    "iadd",
    "add_",
    "setitem",
    "view",
    "data",
    "data set",
    "copy_",
    "out",
    "aten",
    "relu inplace",
    "positional inplace",
    "parameter",
    "attribute",
]


class Writer(nn.Module):
    """Eval-mode forward that writes one of its own tensors in place (``when`` says on which
    calls: always, or once its attribute ``armed`` is set)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 3)
        self.register_buffer("n", torch.zeros(3))
        self.t = torch.zeros(3)
        self.write = _writes(kind)
        self.armed = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            self.write(self)
        return self.head(self.drop(torch.relu(self.lin(x)))) + self.n.sum()


def _state(model: nn.Module) -> dict[str, tuple[torch.Tensor, int]]:
    tensors = dict(model.state_dict(keep_vars=True))
    tensors.update({f"{n}.t": m.t for n, m in model.named_modules() if hasattr(m, "t")})
    return {k: (v.detach().clone(), v._version) for k, v in tensors.items()}


def _unchanged(model: nn.Module, before: dict[str, tuple[torch.Tensor, int]]) -> None:
    after = _state(model)
    assert after.keys() == before.keys()
    for key, (value, version) in before.items():
        assert torch.equal(after[key][0], value), key
        assert after[key][1] == version, key


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strategy", ["auto", "vmap", "replicate", "loop"])
def test_a_forward_that_writes_its_own_tensors_is_refused_before_it_writes(kind, strategy):
    model = Writer(kind).eval()
    before = _state(model)
    name = {"parameter": "lin.bias", "attribute": "t"}.get(kind, "n")
    with pytest.raises(ModelWriteError, match=rf"writes `{name}` in place") as info:
        mcdrop.predict_with_uncertainty(model, X, n_samples=8, seed=0, strategy=strategy)
    assert isinstance(info.value, ValueError)
    _unchanged(model, before)


@pytest.mark.parametrize("kind", ["add_", "parameter"])
def test_shared_masks_and_the_sites_refuse_it_too(kind):
    model = Writer(kind).eval()
    before = _state(model)
    with pytest.raises(ModelWriteError):
        mcdrop.predict_with_uncertainty(model, X, n_samples=8, seed=0, masks="shared")
    with pytest.raises(ModelWriteError):
        mcdrop.dropout_sites(model, example_inputs=X)
    with pytest.raises(ModelWriteError):
        mcdrop.MCDropout(model, n_samples=4, seed=0)(X)
    _unchanged(model, before)


def test_a_kept_plan_whose_forward_starts_writing_is_refused():
    # The switch is module state the fingerprint sees, and a global it does not: either way
    # the next call refuses before the write, and the model is left as it was.
    model = Writer("add_").eval()
    model.armed = False
    mc = mcdrop.MCDropout(model, n_samples=8, seed=0)
    first = mc(X)
    before = _state(model)
    model.armed = True
    with pytest.raises(ModelWriteError):
        mc(X)
    _unchanged(model, before)
    model.armed = False
    torch.testing.assert_close(mc(X), first, rtol=0, atol=0)

    armed = {"on": False}

    class Global(Writer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if armed["on"]:
                self.write(self)
            return self.head(self.drop(self.lin(x))) + self.n.sum()

    model = Global("add_").eval()
    mc = mcdrop.MCDropout(model, n_samples=8, seed=0)
    mc(X)
    before = _state(model)
    armed["on"] = True
    with pytest.raises(ModelWriteError):
        mc(X)
    with pytest.raises(ModelWriteError):
        mc.predict_with_uncertainty(X)
    _unchanged(model, before)


class CountingDropout(nn.Module):
    """A dropout module that counts its calls in a buffer: it samples, so its twin writes a copy
    of the buffer (training mode probes and samples it), never the model's."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.dropout(x, 0.5, self.training)


def test_writes_to_activations_and_to_the_twins_own_copies_run():
    # In-place ReLU writes activations: the same numbers as out of place, seed for seed.
    torch.manual_seed(1)
    a = nn.Sequential(nn.Linear(8, 16), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(16, 3))
    b = copy.deepcopy(a)
    b[1] = nn.ReLU()
    before = _state(a)
    for strategy in ("vmap", "replicate", "loop"):
        ra = mcdrop.predict_with_uncertainty(a.eval(), X, n_samples=16, seed=3, strategy=strategy)
        rb = mcdrop.predict_with_uncertainty(b.eval(), X, n_samples=16, seed=3, strategy=strategy)
        torch.testing.assert_close(ra.mean, rb.mean, rtol=0, atol=0)
    _unchanged(a, before)
    # A sampling module's own buffer: its twin holds a copy.
    model = nn.Sequential(nn.Linear(8, 16), CountingDropout(), nn.Linear(16, 3)).eval()
    before = _state(model)
    result = mcdrop.predict_with_uncertainty(model, X, n_samples=16, seed=0, strategy="loop")
    assert result.mutual_information.max() > 0
    _unchanged(model, before)


def test_the_refusal_is_not_swallowed_by_a_forward_that_catches_errors():
    class Catches(Writer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            try:
                self.write(self)
            except Exception:
                pass
            return self.head(self.drop(self.lin(x)))

    model = Catches("add_").eval()
    before = _state(model)
    # The forward swallows the refusal: nothing was written, but the samples would be those of
    # a forward without the write (not the model's): raised when the call ends.
    for call in (
        lambda: mcdrop.predict_with_uncertainty(model, X, n_samples=8, seed=0),
        lambda: mcdrop.MCDropout(model, n_samples=8, seed=0)(X),
        lambda: mcdrop.dropout_sites(model, example_inputs=X),
    ):
        with pytest.raises(ModelWriteError, match="writes `n` in place"):
            call()
    _unchanged(model, before)
