"""What users pass as ``inputs`` and what models return: read correctly, or refused clearly."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mcdrop
from mcdrop.sampling._inputs import check_output, iter_batches
from mcdrop.stats import _accumulators as uncertainty

STRATEGIES = ["auto", "loop", "replicate", "vmap"]


class Head(nn.Module):
    """Linear classifier with dropout; ``post`` turns its logits into the tested output."""

    def __init__(self, post=None, d_in: int = 5, n_classes: int = 3):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.lin = nn.Linear(d_in, n_classes)
        self.post = post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(self.drop(x))
        return out if self.post is None else self.post(out)


def _run(model, inputs, **kwargs):
    kwargs.setdefault("n_samples", 4)
    kwargs.setdefault("seed", 0)
    return mcdrop.predict_with_uncertainty(model.eval(), inputs, progress=False, **kwargs)


# ------------------------------------------------------------------------------------------
# group 1: model outputs
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_probabilities_with_outputs_logits_are_refused(strategy):
    model = Head(lambda z: torch.softmax(z, 1))
    x = torch.randn(8, 5)
    with pytest.raises(ValueError, match=r"outputs='probs'") as info:
        _run(model, x, strategy=strategy)
    assert "outputs='logits'" in str(info.value)
    right = _run(model, x, strategy=strategy, outputs="probs", n_samples=50, keep_samples=True)
    # the mean is the average of the model's own probabilities: no second softmax
    torch.testing.assert_close(right.mean, right.samples.double().mean(0))


def test_logits_that_happen_to_be_positive_are_not_mistaken_for_probabilities():
    model = Head(lambda z: z.abs() + 0.5)  # positive, rows sum to more than 1
    result = _run(model, torch.randn(8, 5))
    assert result.mean.shape == (8, 3)


def test_summarize_samples_refuses_probabilities_as_logits():
    probs = torch.softmax(torch.randn(10, 4, 3), -1)
    with pytest.raises(ValueError, match="outputs='probs'"):
        mcdrop.summarize_samples(probs)
    mcdrop.summarize_samples(torch.log(probs))  # log-probabilities are valid logits


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 6), st.integers(2, 6), st.floats(0.1, 20.0), st.booleans())
def test_probability_check_flags_exactly_probability_rows(n, c, scale, as_probs):
    generator = torch.Generator().manual_seed(n * 100 + c)
    logits = torch.randn(3, n, c, generator=generator, dtype=torch.float64) * scale
    raw = torch.softmax(logits, -1) if as_probs else logits
    acc = uncertainty.ClassificationAccumulator(outputs="logits", class_dim=1, keep_samples=False)
    acc.update(raw)
    rows_are_probs = bool((raw >= 0).all()) and bool(((raw.sum(-1) - 1).abs() <= 1e-3).all())
    if rows_are_probs:
        with pytest.raises(ValueError, match="outputs='probs'"):
            acc.state()
    else:
        acc.state()
    assert rows_are_probs == as_probs  # random logits are never probability rows


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize(
    ("post", "dtype"),
    [(lambda z: z.argmax(1, keepdim=True), "int64"), (lambda z: z > 0, "bool")],
    ids=["argmax", "threshold"],
)
def test_integer_and_bool_outputs_are_refused(strategy, post, dtype):
    with pytest.raises(TypeError, match=f"dtype torch.{dtype}"):
        _run(Head(post), torch.randn(8, 5), strategy=strategy)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_outputs_without_the_batch_dimension_are_refused(strategy, task):
    model = Head(lambda z: z.mean(0, keepdim=True))  # (1, C) for 8 inputs
    with pytest.raises(ValueError, match=r"batch dimension.*\(1, 3\)"):
        _run(model, torch.randn(8, 5), strategy=strategy, task=task)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_scalar_output_is_not_blamed_on_class_dim(strategy):
    with pytest.raises(ValueError, match="scalar") as info:
        _run(Head(lambda z: z.sum()), torch.randn(8, 5), strategy=strategy)
    assert "class_dim" not in str(info.value)


@settings(max_examples=100, deadline=None)
@given(
    st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool]),
    st.lists(st.integers(0, 4), max_size=3),
    st.one_of(st.none(), st.integers(0, 4)),
)
def test_output_validator(dtype, shape, batch_size):
    tensor = torch.zeros(shape, dtype=dtype)
    if not dtype.is_floating_point:
        with pytest.raises(TypeError, match="floating-point"):
            check_output(tensor, batch_size)
    elif not shape:
        with pytest.raises(ValueError, match="scalar"):
            check_output(tensor, batch_size)
    elif batch_size is not None and shape[0] != batch_size:
        with pytest.raises(ValueError, match="batch dimension"):
            check_output(tensor, batch_size)
    else:
        check_output(tensor, batch_size)


class TokenHead(nn.Module):
    """(N, L, C) token logits."""

    def __init__(self, length: int = 4, n_classes: int = 7):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.lin = nn.Linear(5, length * n_classes)
        self.shape = (length, n_classes)

    def forward(self, x):
        return self.lin(self.drop(x)).view(x.shape[0], *self.shape)


def test_token_outputs_say_what_class_dim_assumed_once(monkeypatch):
    monkeypatch.setattr(uncertainty, "_TOKEN_LAYOUTS_NOTED", set())
    model, x = TokenHead(), torch.randn(6, 5)
    with pytest.warns(UserWarning, match=r"4 entries along dim 1 are taken as the classes") as rec:
        result = _run(model, x)
    assert "class_dim=-1" in str(rec[0].message)
    assert result.mean.shape == (6, 4, 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run(model, x)  # shown once per shape
        monkeypatch.setattr(uncertainty, "_TOKEN_LAYOUTS_NOTED", set())
        tokens = _run(model, x, class_dim=-1)  # the per-token reading: no note
    assert tokens.mean.shape == (6, 4, 7)
    torch.testing.assert_close(tokens.mean.sum(-1), torch.ones(6, 4, dtype=torch.float64))


# ------------------------------------------------------------------------------------------
# group 2: batches
# ------------------------------------------------------------------------------------------


class Masked(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.lin = nn.Linear(5, 3)

    def forward(self, x, mask=None):
        if mask is not None:
            x = x * mask
        return self.lin(self.drop(x))


@pytest.mark.parametrize("mask_dtype", [torch.float32, torch.bool])
def test_a_loader_of_input_and_mask_pairs_is_refused(mask_dtype):
    x = torch.randn(12, 5)
    mask = (torch.rand(12, 5) > 0.5).to(mask_dtype)
    loader = DataLoader(TensorDataset(x, mask), batch_size=4)
    with pytest.raises(ValueError, match=r"target_key=1.*target_key=None"):
        _run(Masked(), loader)
    # the fix the message names: both elements are model inputs
    batches, _, _ = iter_batches(loader, batch_size=4, target_key=None)
    first = next(batches)
    assert len(first.args) == 2 and first.targets is None


def test_integer_labels_are_targets():
    x, y = torch.randn(12, 5), torch.arange(12) % 3
    model = Masked()
    result = _run(model, DataLoader(TensorDataset(x, y), batch_size=5))
    assert torch.equal(result.targets, y)
    pairs = [(x[i : i + 5], y[i : i + 5]) for i in range(0, 12, 5)]
    by_pairs = _run(model, pairs)
    assert torch.equal(by_pairs.targets, y)
    direct = _run(model, x, batch_size=5)  # the same batches, no targets: the same draws
    torch.testing.assert_close(by_pairs.mean, direct.mean)


def test_token_ids_with_an_attention_mask_are_ambiguous():
    ids = torch.randint(0, 10, (6, 4))
    mask = torch.ones(6, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match="target_key"):
        next(iter_batches([(ids, mask)], batch_size=6)[0])


class HFClassifier(nn.Module):
    """Takes keyword arguments like a Hugging Face model; refuses ``labels``."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.5)
        self.emb = nn.Embedding(10, 3)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1)
        return {"logits": self.drop(h.mean(1))}


def test_hugging_face_labels_become_targets_and_stay_out_of_the_model():
    ids = torch.randint(0, 10, (9, 4))
    mask = torch.ones(9, 4, dtype=torch.int64)
    labels = torch.arange(9) % 3
    batches = [
        {
            "input_ids": ids[i : i + 3],
            "attention_mask": mask[i : i + 3],
            "labels": labels[i : i + 3],
        }
        for i in range(0, 9, 3)
    ]
    model = HFClassifier()
    result = _run(model, batches)
    assert torch.equal(result.targets, labels)
    whole = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    direct = _run(model, whole, batch_size=3)
    assert torch.equal(direct.targets, labels)
    torch.testing.assert_close(direct.mean, result.mean)
    with pytest.raises(ValueError, match="both"):
        _run(model, whole, targets=labels)


def test_a_list_is_an_iterable_of_batches_and_a_tuple_positional_arguments():
    x1, x2 = torch.randn(3, 5), torch.randn(4, 5)
    result = _run(Masked(), [x1, x2])
    assert result.mean.shape == (7, 3)
    batches, n_batches, _ = iter_batches([x1, x2], batch_size=100)
    assert n_batches == 2 and [b.size for b in batches] == [3, 4]
    mask = torch.ones(3, 5)
    batches, _, _ = iter_batches((x1, mask), batch_size=100)
    (only,) = list(batches)
    assert len(only.args) == 2 and only.targets is None


def test_target_key_picks_targets_by_position_or_key():
    x, mask, y = torch.randn(6, 5), torch.ones(6, 5), torch.randn(6)
    (batch,) = iter_batches([(x, mask, y)], batch_size=6, target_key=-1)[0]
    assert len(batch.args) == 2 and torch.equal(batch.targets, y)
    (batch,) = iter_batches([(x, y)], batch_size=6, target_key=1)[0]
    assert batch.args[0] is x and torch.equal(batch.targets, y)
    (batch,) = iter_batches([{"x": x, "label": y}], batch_size=6, target_key="label")[0]
    assert list(batch.kwargs) == ["x"] and torch.equal(batch.targets, y)
    (batch,) = iter_batches({"x": x, "labels": y}, batch_size=6, target_key=None)[0]
    assert sorted(batch.kwargs) == ["labels", "x"] and batch.targets is None
    with pytest.raises(ValueError, match="key 'label'"):
        next(iter_batches([{"x": x}], batch_size=6, target_key="label")[0])
    with pytest.raises(ValueError, match="position 2"):
        next(iter_batches([(x, y)], batch_size=6, target_key=2)[0])
    with pytest.raises(TypeError, match="target_key"):
        iter_batches(x, batch_size=6, target_key=True)
    with pytest.raises(ValueError, match="Tensor"):
        iter_batches(x, batch_size=6, target_key=1)


_dtypes = st.sampled_from([torch.float32, torch.int64, torch.bool, torch.uint8])


@settings(max_examples=150, deadline=None)
@given(
    _dtypes,
    st.lists(st.integers(1, 3), min_size=0, max_size=2),
    _dtypes,
    st.lists(st.integers(1, 3), min_size=0, max_size=2),
    st.booleans(),
)
def test_pairs_split_only_for_recognisable_targets(dx, sx, dy, sy, same_rows):
    b = 4
    x = torch.zeros((b, *sx), dtype=dx)
    y = torch.zeros((b if same_rows else b + 1, *sy), dtype=dy)
    integer = dy in (torch.int64, torch.uint8)
    like_input = x.shape == y.shape and dx in (torch.int64, torch.uint8)
    recognisable = integer and same_rows and not like_input
    batches = iter_batches([(x, y)], batch_size=b)[0]
    if recognisable:
        (batch,) = list(batches)
        assert batch.args == (x,) and torch.equal(batch.targets, y)
    else:
        with pytest.raises(ValueError, match="target_key"):
            next(batches)


def test_a_hugging_face_model_gets_no_labels_and_the_result_keeps_them():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=3,
    )
    model = transformers.BertForSequenceClassification(config)
    ids = torch.randint(0, 50, (6, 8))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids[:, 0] % 3}
    seen = []
    model.register_forward_pre_hook(lambda m, a, kw: seen.append(sorted(kw)), with_kwargs=True)
    result = _run(model, [batch], n_samples=3)
    assert torch.equal(result.targets, batch["labels"])
    assert seen and all("labels" not in keys for keys in seen)


class _Wrapped:
    """A loader's wrapper that is not a DataLoader (as some trainers hand out)."""

    def __init__(self, loader):
        self.loader, self.dataset = loader, loader.dataset

    def __iter__(self):
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)


def test_examples_of_a_data_loader_count_what_it_yields():
    """The call's size (the CUDA ``auto`` rule, the keep_samples memory check) counts the
    examples a loader yields, not the dataset it reads from."""
    from torch.utils.data import DataLoader, IterableDataset, SubsetRandomSampler, TensorDataset

    from mcdrop.sampling._inputs import iter_batches

    data = TensorDataset(torch.randn(10, 3))

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(torch.randn(7, 3))

    cases = [
        (DataLoader(data, batch_size=4), 10),
        (DataLoader(data, batch_size=4, drop_last=True), 8),
        (DataLoader(data, batch_size=4, sampler=SubsetRandomSampler(range(6))), 6),
        (DataLoader(data, batch_size=None), None),  # items are batches: unknown
        (DataLoader(Stream(), batch_size=4), None),
        ([torch.randn(4, 3), torch.randn(2, 3)], None),
        (_Wrapped(DataLoader(data, batch_size=4)), 10),  # a wrapper: its dataset's length
    ]
    for loader, expected in cases:
        _, _, n_examples = iter_batches(loader, batch_size=8, targets=None, target_key=None)
        assert n_examples == expected, loader
    yielded = sum(len(batch[0]) for batch in DataLoader(data, batch_size=4, drop_last=True))
    assert yielded == 8


# -- NumPy arrays are inputs like tensors ------------------------------------------------------
def test_numpy_arrays_are_taken_as_tensors_everywhere():
    """An array, a dict or tuple of arrays, a list of array batches and a DataLoader-free pair
    give exactly the numbers of the same data as tensors (``torch.as_tensor``)."""
    import numpy as np

    model = Head().eval()
    x = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
    y = np.arange(12) % 3
    tx, ty = torch.as_tensor(x), torch.as_tensor(y)
    reference = _run(model, tx, targets=ty)
    for inputs, kwargs in [(x, {"targets": y}), ((x,), {"targets": y})]:
        result = _run(model, inputs, **kwargs)
        assert torch.equal(result.mean, reference.mean)
        assert torch.equal(result.targets, reference.targets)
    pairs = _run(model, [(x[:6], y[:6]), (x[6:], y[6:])])  # (inputs, targets) pairs of arrays
    tensor_pairs = _run(model, [(tx[:6], ty[:6]), (tx[6:], ty[6:])])
    assert torch.equal(pairs.mean, tensor_pairs.mean)
    assert torch.equal(pairs.targets, ty)

    class Keyword(Head):
        def forward(self, features):  # type: ignore[override]
            return super().forward(features)

    keyword = Keyword().eval()
    keyword.load_state_dict(model.state_dict())
    assert torch.equal(_run(keyword, {"features": x}).mean, reference.mean)
    mc = mcdrop.MCDropout(model, n_samples=4, seed=0)
    assert torch.equal(mc(x), mcdrop.MCDropout(model, n_samples=4, seed=0)(torch.as_tensor(x)))


def test_other_array_types_are_told_to_convert():
    with pytest.raises(TypeError, match=r"torch\.as_tensor"):
        _run(Head(), {"x": [[1.0] * 5] * 3})


# -- a regressor called as a classifier ---------------------------------------------------------
class OneOutput(nn.Module):
    def __init__(self, flat: bool):
        super().__init__()
        self.drop, self.lin, self.flat = nn.Dropout(0.2), nn.Linear(5, 1), flat

    def forward(self, x):
        out = self.lin(self.drop(x))
        return out.squeeze(1) if self.flat else out


@pytest.mark.parametrize("flat", [False, True], ids=["(N, 1)", "(N,)"])
def test_a_one_output_model_without_task_is_told_about_task_regression(flat):
    model = OneOutput(flat).eval()
    with pytest.raises(ValueError, match=r"task='regression'") as caught:
        _run(model, torch.randn(6, 5))
    if not flat:
        assert "binary_logits" in str(caught.value)  # the binary classifier's way stays named
    result = _run(model, torch.randn(6, 5), task="regression")
    assert result.mean.shape == ((6,) if flat else (6, 1))
