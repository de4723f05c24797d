"""No pass of mcdrop writes into the model's own tensors (mcdrop.dropout._writes).

Each check compares the model afterwards with a deep copy taken before, bit for bit, and with
its tensors' version counters (an in-place write bumps them even when it writes equal values).
"""

from __future__ import annotations

import copy
import types
import warnings

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
            elif kind == "in a list":
                m.tensors[0].add_(1)
            elif kind == "init by keyword":
                nn.init.normal_(tensor=m.n)
            elif kind == "batch norm statistics":
                F.batch_norm(m.one, m.n, m.n + 1, training=True)
            elif kind == "empty resize_":
                m.empty.resize_(3)
            elif kind == "sparse":
                m.sparse.mul_(2)
            elif kind == "custom op":
                torch.ops.mcdrop_tests.bump(m.n)
            elif kind == "native batch norm":  # (three channels, as the statistics)
                torch.native_batch_norm(m.one, None, None, m.n, m.n + 1, True, 0.1, 0.1)
            elif kind == "aten batch norm":
                x = m.one
                torch.ops.aten.native_batch_norm.default(x, None, None, m.n, m.n, True, 0.1, 0.1)
            elif kind == "statistics update":
                torch.batch_norm_update_stats(m.one, m.n, m.n + 1, 0.1)
            elif kind == "in a namespace":
                m.ns.counts["calls"].add_(1)
            elif kind == "in a long list":
                m.many[69].add_(1)
            elif kind == "gradient":
                m.lin.bias.grad.add_(1)
            elif kind == "torch function off":  # not seen before: found when the call ends
                with torch._C.DisableTorchFunction():
                    m.n.add_(1)

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
    "in a list",
    "init by keyword",
    "batch norm statistics",
    "empty resize_",
    "sparse",
    "custom op",
    "native batch norm",
    "aten batch norm",
    "statistics update",
    "in a namespace",
    "in a long list",
    "gradient",
    "torch function off",
]


@torch.library.custom_op("mcdrop_tests::bump", mutates_args=("buf",))
def _bump(buf: torch.Tensor) -> None:
    buf.add_(1)


class Writer(nn.Module):
    """Eval-mode forward that writes one of its own tensors in place (``when`` says on which
    calls: always, or once its attribute ``armed`` is set)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(8, 3)
        self.register_buffer("n", torch.zeros(3))
        self.register_buffer("empty", torch.zeros(0))
        self.register_buffer("sparse", torch.eye(3).to_sparse())
        self.t = torch.zeros(3)
        self.tensors = [torch.zeros(3)]
        self.ns = types.SimpleNamespace(counts={"calls": torch.zeros(3)})
        self.many = [torch.zeros(1) for _ in range(70)]
        self.lin.bias.grad = torch.zeros(8)
        self.one = torch.ones(2, 3)  # an input of three channels, as `n`
        self.write = _writes(kind)
        self.armed = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.armed:
            self.write(self)
        return self.head(self.drop(torch.relu(self.lin(x)))) + self.n.sum()


def _state(model: nn.Module) -> dict[str, tuple[torch.Tensor, int]]:
    tensors = dict(model.state_dict(keep_vars=True))
    for n, m in model.named_modules():
        if isinstance(m, Writer):
            tensors.update({f"{n}.t": m.t, f"{n}.tensors[0]": m.tensors[0]})
            tensors.update({f"{n}.ns": m.ns.counts["calls"], f"{n}.many": m.many[69]})
            tensors[f"{n}.lin.bias.grad"] = m.lin.bias.grad
    return {
        k: ((v.to_dense() if v.is_sparse else v).detach().clone(), v._version)
        for k, v in tensors.items()
    }


def _unchanged(model: nn.Module, before: dict[str, tuple[torch.Tensor, int]]) -> None:
    after = _state(model)
    assert after.keys() == before.keys()
    for key, (value, version) in before.items():
        assert after[key][0].shape == value.shape and torch.equal(after[key][0], value), key
        assert after[key][1] == version, key


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("strategy", ["auto", "vmap", "replicate", "loop"])
def test_a_forward_that_writes_its_own_tensors_is_refused_before_it_writes(kind, strategy):
    model = Writer(kind).eval()
    before = _state(model)
    name = {
        "parameter": "lin.bias",
        "attribute": "t",
        "in a list": r"tensors\[0\]",
        "empty resize_": "empty",
        "sparse": "sparse",
        "in a namespace": r"ns.counts\['calls'\]",
        "in a long list": r"many\[69\]",
        "gradient": "lin.bias.grad",
    }.get(kind, "n")
    if kind == "torch function off":  # written, and said so: not silent
        with pytest.raises(
            ModelWriteError, match=rf"`{name}` was written in place during the call"
        ):
            mcdrop.predict_with_uncertainty(model, X, n_samples=8, seed=0, strategy=strategy)
        return
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


class Swallows(Writer):
    """Catches the refusal of its write, then goes on (``fail=False``) or raises another error."""

    def __init__(self, fail: bool) -> None:
        super().__init__("add_")
        self.fail = fail

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            self.write(self)
        except Exception:
            if self.fail:
                raise RuntimeError("state update failed") from None
        return self.head(self.drop(self.lin(x)))


@pytest.mark.parametrize("fail", [False, True])
def test_a_refusal_the_forward_catches_is_raised_when_the_call_ends(fail):
    # Nothing was written, but the samples would be those of a forward without the write (not
    # the model's), or the error would be one the write's refusal led to: the refusal is raised.
    model = Swallows(fail).eval()
    before = _state(model)
    for call in (
        lambda: mcdrop.predict_with_uncertainty(model, X, n_samples=8, seed=0),
        lambda: mcdrop.MCDropout(model, n_samples=8, seed=0)(X),
        lambda: mcdrop.dropout_sites(model, example_inputs=X),
    ):
        with pytest.raises(ModelWriteError, match="writes `n` in place") as info:
            call()
        if fail:
            assert isinstance(info.value.__cause__, RuntimeError)
    _unchanged(model, before)


def test_embedding_max_norm_renormalises_the_models_weight_and_is_refused():
    # nn.Embedding(max_norm=...) rescales its weight in place in eval mode too (PyTorch's
    # kernel, inside F.embedding): sampling would rescale the model's.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 8, max_norm=1.0), nn.Dropout(0.5), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight.mul_(5)
    model.eval()
    before = _state(model)
    ids = torch.randint(0, 10, (6,))
    for call in (
        lambda: mcdrop.predict_with_uncertainty(model, ids, n_samples=8, seed=0),
        lambda: mcdrop.dropout_sites(model, example_inputs=ids),
    ):
        with pytest.raises(ModelWriteError, match=r"writes `0.weight` in place \(embedding\)"):
            call()
    _unchanged(model, before)


@pytest.mark.parametrize("max_norm", [None, 0.0, 1.0])
def test_an_embedding_is_a_write_exactly_when_pytorch_renormalises_its_weight(max_norm):
    from mcdrop.dropout._writes import written

    weight = torch.randn(10, 4) * 5
    ids = torch.tensor([1, 2])
    version = weight._version
    with torch.no_grad():
        F.embedding(ids, weight, max_norm=max_norm)  # PyTorch itself: does it write the weight?
    renormalised = weight._version != version
    assert renormalised == (max_norm is not None)
    for args, kwargs in (
        ((ids, weight), {"max_norm": max_norm}),
        ((ids, weight, None, max_norm), {}),
    ):
        assert [t is weight for t in written(F.embedding, args, kwargs)] == [True] * renormalised


def test_the_message_names_the_tensor_written_and_the_property_set():
    class Views(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            flat = torch.zeros(6)
            self.register_buffer("a", flat[:3])
            self.register_buffer("b", flat[3:])
            self.lin = nn.Linear(8, 3)
            self.drop = nn.Dropout(0.5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.b.add_(1)  # the same memory as `a`: named `b`
            return self.lin(self.drop(x))

    with pytest.raises(ModelWriteError, match=r"writes `b` in place \(add_\)"):
        mcdrop.predict_with_uncertainty(Views().eval(), X, n_samples=4, seed=0)

    class Grad(Writer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.lin.weight.grad = None
            return self.head(self.drop(self.lin(x)))

    with pytest.raises(ModelWriteError, match=r"writes `lin.weight` in place \(sets .grad\)"):
        mcdrop.predict_with_uncertainty(Grad("add_").eval(), X, n_samples=4, seed=0)


def test_objects_posing_as_functions_are_called_as_they_are():
    from unittest import mock

    from mcdrop.dropout._writes import written

    class Named:
        @property
        def __name__(self) -> str:
            raise RuntimeError("no name")

    buffer = torch.zeros(3)
    for func in (mock.Mock(), Named(), mock.Mock(__name__=123)):
        assert written(func, (buffer,), {}) == []
    assert written(torch.Tensor.add_, (buffer, 1), {})[0] is buffer
    assert written(torch.add, (buffer, 1), {"out": buffer})[0] is buffer


def _flatten_on_the_cpu(weights, *args):  # type: ignore[no-untyped-def]
    """What cuDNN's ``_cudnn_rnn_flatten_weight`` does (the weights moved into one new flat
    buffer, values kept), as a CPU kernel for the test: on CUDA ``flatten_parameters()`` runs it."""
    flat = torch.cat([w.detach().reshape(-1) for w in weights])
    offset = 0
    for w in weights:
        w.set_(flat.untyped_storage(), offset, w.shape)
        offset += w.numel()
    return flat


_ATEN_CPU = torch.library.Library("aten", "IMPL")
_ATEN_CPU.impl("_cudnn_rnn_flatten_weight", _flatten_on_the_cpu, "CPU")


class Flattens(nn.Module):
    """A forward that moves its layer's weights into one flat buffer first, as an LSTM's
    ``flatten_parameters()`` does on CUDA; then (``hidden``) writes one where mcdrop's mode cannot
    see it."""

    def __init__(self, hidden: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 8)
        self.drop = nn.Dropout(0.5)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._cudnn_rnn_flatten_weight(
            [self.lin.weight, self.lin.bias], 0, 8, 0, 8, 0, 1, False, False
        )
        if self.hidden:
            with torch.no_grad(), torch._C.DisableTorchFunction():
                self.lin.bias.add_(1)
        return self.lin(self.drop(x))


def test_weights_moved_with_their_values_kept_as_cudnn_flattens_them_are_allowed():
    torch.manual_seed(0)
    model = Flattens().eval()
    plain = nn.Sequential()  # the same numbers without the move
    plain.lin, plain.drop = copy.deepcopy(model.lin), nn.Dropout(0.5)
    plain.forward = lambda x: plain.lin(plain.drop(x))  # type: ignore[method-assign]
    values = {k: v.clone() for k, v in model.state_dict().items()}
    a = mcdrop.predict_with_uncertainty(model, X, n_samples=8, seed=0, strategy="loop")
    b = mcdrop.predict_with_uncertainty(plain.eval(), X, n_samples=8, seed=0, strategy="loop")
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, values[key]), key
    # A write after the move, which the mode does not see, is still found at the call's end.
    hidden = Flattens(hidden=True).eval()
    with pytest.raises(ModelWriteError, match="`lin.bias` was written in place during the call"):
        mcdrop.predict_with_uncertainty(hidden, X, n_samples=8, seed=0, strategy="loop")


@torch.library.custom_op("mcdrop_tests::batch_norm", mutates_args=())
def _own_batch_norm(x: torch.Tensor, statistics: torch.Tensor) -> torch.Tensor:
    return x - statistics.mean()


@torch.library.custom_op("mcdrop_tests::_cudnn_rnn_flatten_weight", mutates_args=("weights",))
def _own_flatten(weights: list[torch.Tensor]) -> None:
    for w in weights:  # (changes the values: a write whatever its name)
        w.add_(1)


def test_another_librarys_operators_are_not_taken_for_atens_of_the_same_name():
    class Own(nn.Module):
        def __init__(self, flatten: bool) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 8)
            self.drop = nn.Dropout(0.5)
            self.register_buffer("stats", torch.zeros(8))
            self.flatten = flatten

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.flatten:
                torch.ops.mcdrop_tests._cudnn_rnn_flatten_weight([self.lin.bias])
            for i in range(6):  # (positions 3 to 5 of ATen's batch_norm: buffers, True)
                x = torch.ops.mcdrop_tests.batch_norm(x, self.stats) + 0 * i
            return self.lin(self.drop(x))

    mcdrop.predict_with_uncertainty(Own(False).eval(), X, n_samples=4, seed=0)  # pure: runs
    model = Own(True).eval()
    before = _state(model)
    with pytest.raises(ModelWriteError, match=r"writes `lin.bias` in place"):
        mcdrop.predict_with_uncertainty(model, X, n_samples=4, seed=0)
    _unchanged(model, before)


def test_a_traced_model_that_writes_its_buffer_is_found_when_the_call_ends():
    class Counts(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, 3)
            self.drop = nn.Dropout(0.5)
            self.register_buffer("n", torch.zeros(3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.n.add_(1)
            return self.lin(self.drop(x)) + self.n

    with warnings.catch_warnings():  # (tracing; TorchScript: its own flags, PyTorch's RNG)
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Counts().train(), X, check_trace=False).eval()
        with pytest.raises(ModelWriteError, match="`n` was written in place during the call"):
            mcdrop.predict_with_uncertainty(traced, X, n_samples=4, seed=0)


ARMED = {"on": False}


class HiddenWriter(nn.Module):
    """Writes, once armed and where mcdrop's mode cannot see it, a parameter's gradient, a
    tensor deep in a dict too long for the fingerprint to walk, or one in a set."""

    def __init__(self, where: str) -> None:
        super().__init__()
        self.lin = nn.Linear(8, 3)
        self.drop = nn.Dropout(0.5)
        self.lin.weight.grad = torch.zeros(3, 8)
        if where == "long dict":  # (then no plan is kept: nothing the fingerprint cannot see)
            self.big = {i: [torch.zeros(1)] for i in range(70)}
        self.held = {torch.zeros(1)}
        self.where = where

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (a global: nothing the fingerprint sees; in eval mode: in the sampling passes, not in
        # the training-mode probe's, which has a guard of its own)
        if ARMED["on"] and not self.training:
            if self.where == "gradient":
                target = self.lin.weight.grad
            elif self.where == "set":
                target = next(iter(self.held))
            else:
                target = self.big[65][0]
            with torch.no_grad(), torch._C.DisableTorchFunction():
                target.add_(1)
        return self.lin(self.drop(x))


@pytest.mark.parametrize("where", ["gradient", "long dict", "set"])
def test_hidden_writes_on_a_kept_plan_are_found_wherever_the_tensor_is(where):
    model = HiddenWriter(where).eval()
    ARMED["on"] = False
    mc = mcdrop.MCDropout(model, n_samples=4, seed=0, strategy="loop")
    mc(X), mc(X)
    assert mc._engine.plans_made == 1 or where == "long dict"  # (the second on the kept plan)
    ARMED["on"] = True
    name = {"gradient": "lin.weight.grad", "long dict": r"big\[65\]\[0\]", "set": r"held\[0\]"}
    with pytest.raises(ModelWriteError, match=rf"`{name[where]}` was written in place"):
        mc(X)
    with pytest.raises(ModelWriteError, match="was written in place"):
        mcdrop.predict_with_uncertainty(model, X, n_samples=4, seed=0, strategy="loop")
    ARMED["on"] = False


def test_a_tensor_in_a_set_or_as_a_dict_key_is_refused_before_it_is_written():
    class Keys(Writer):
        def __init__(self) -> None:
            super().__init__("add_")
            self.held = {torch.zeros(2)}
            self.keyed = {torch.zeros(2): "a"}

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            next(iter(self.held if self.armed else self.keyed)).add_(1)
            return self.head(self.drop(self.lin(x)))

    model = Keys().eval()
    with pytest.raises(ModelWriteError, match=r"writes `held\[0\]` in place"):
        mcdrop.predict_with_uncertainty(model, X, n_samples=4, seed=0)
    model.armed = False
    with pytest.raises(ModelWriteError, match=r"writes `keyed.keys\(\)\[0\]` in place"):
        mcdrop.predict_with_uncertainty(model, X, n_samples=4, seed=0)
