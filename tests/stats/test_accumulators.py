"""Uncertainty measures and their streaming aggregation, against numpy/scipy references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.special import softmax
from scipy.stats import entropy

import mcdrop
from mcdrop.stats import Moments


@settings(max_examples=60, deadline=None)
@given(
    logits=arrays(
        np.float64,
        st.tuples(st.integers(1, 12), st.integers(1, 5), st.integers(2, 6)),
        elements=st.floats(-30, 30),
    ),
    chunk=st.integers(1, 7),
)
def test_information_decomposition_bounds(logits, chunk):
    C = logits.shape[-1]
    result = mcdrop.summarize_samples(torch.from_numpy(logits), chunk_size=chunk)
    pe, ee, mi = result.predictive_entropy, result.expected_entropy, result.mutual_information
    tol = 1e-6
    assert (mi >= 0).all()
    assert (mi <= pe + tol).all()
    assert (pe <= math.log(C) + tol).all()
    assert (ee >= -tol).all()
    # against scipy: entropy of the mean and mean entropy of float32 softmax samples
    probs = softmax(logits.astype(np.float32).astype(np.float64), axis=-1)
    np.testing.assert_allclose(pe, entropy(probs.mean(0), axis=-1), atol=1e-5)
    np.testing.assert_allclose(ee, entropy(probs, axis=-1).mean(0), atol=1e-5)
    assert (
        0 <= float(result.variation_ratio.min())
        and float(result.variation_ratio.max()) <= 1 - 1 / C + 1e-12
    )


@settings(max_examples=40, deadline=None)
@given(
    values=arrays(
        np.float64, st.tuples(st.integers(1, 40), st.integers(1, 3)), elements=st.floats(-1e3, 1e3)
    ),
    offset=st.sampled_from([0.0, 1e6, -1e8]),
    sizes=st.lists(st.integers(1, 9), min_size=1, max_size=12),
)
def test_chan_merge_equals_numpy(values, offset, sizes):
    data = torch.from_numpy(values + offset)
    moments = Moments()
    start = 0
    while start < data.shape[0]:
        step = sizes[start % len(sizes)]
        moments.update(data[start : start + step])
        start += step
    np.testing.assert_allclose(moments.mean, (values + offset).mean(0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(moments.variance, values.var(0), rtol=1e-6, atol=1e-6)


def test_probability_and_log_probability_samples():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(size=(9, 4, 3)))
    ref = mcdrop.summarize_samples(logits)
    probs = mcdrop.summarize_samples(torch.softmax(logits, -1), outputs="probs")
    logp = mcdrop.summarize_samples(torch.log_softmax(logits, -1), outputs="log_probs")
    for other in (probs, logp):
        np.testing.assert_allclose(other.mean, ref.mean, atol=1e-6)
        np.testing.assert_allclose(other.mutual_information, ref.mutual_information, atol=1e-6)
    # exact zeros in probabilities are fine (0 log 0 = 0)
    one_hot = torch.eye(3)[torch.tensor([[0, 1], [0, 2]])]  # (T=2, N=2, C=3)
    res = mcdrop.summarize_samples(one_hot, outputs="probs")
    np.testing.assert_allclose(res.expected_entropy, 0.0)
    np.testing.assert_allclose(res.predictive_entropy, [0.0, math.log(2)], atol=1e-12)
    np.testing.assert_allclose(res.mutual_information, [0.0, math.log(2)], atol=1e-12)
    np.testing.assert_allclose(res.variation_ratio, [0.0, 0.5])
    votes = mcdrop.summarize_samples(one_hot.bool(), outputs="probs")  # boolean one-hot votes
    np.testing.assert_allclose(votes.variation_ratio, [0.0, 0.5])
    np.testing.assert_allclose(votes.mean, res.mean)


def test_regression_summary():
    rng = np.random.default_rng(1)
    samples = torch.from_numpy(rng.normal(2.0, 3.0, size=(500, 6, 2)))
    log_var = torch.from_numpy(rng.normal(size=(500, 6, 2)))
    res = mcdrop.summarize_samples(samples, task="regression", log_variance=log_var)
    np.testing.assert_allclose(res.mean, samples.mean(0), atol=1e-12)
    np.testing.assert_allclose(res.epistemic_variance, samples.var(0, unbiased=False), rtol=1e-6)
    np.testing.assert_allclose(res.aleatoric_variance, log_var.exp().mean(0), rtol=1e-12)
    np.testing.assert_allclose(res.standard_error, samples.std(0) / math.sqrt(500), rtol=1e-6)
    tau = mcdrop.summarize_samples(samples, task="regression", tau=0.5)
    np.testing.assert_allclose(tau.aleatoric_variance, 2.0)


def test_summarize_bad_input():
    with pytest.raises(ValueError, match="`samples`"):
        mcdrop.summarize_samples(torch.zeros(0, 3, 2))
    with pytest.raises(ValueError, match="`class_dim`"):
        mcdrop.summarize_samples(torch.zeros(2, 3, 2), class_dim=0)
    with pytest.raises(ValueError, match="`class_dim`"):
        mcdrop.summarize_samples(torch.zeros(2, 3, 2), class_dim=4)
    with pytest.raises(ValueError, match="outputs='probs'.*sum to 1"):
        mcdrop.summarize_samples(torch.full((2, 3, 2), 0.2), outputs="probs")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mcdrop.summarize_samples(torch.full((2, 3, 2), 3.0), outputs="probs")
    with pytest.raises(ValueError, match="`task`"):
        mcdrop.summarize_samples(torch.zeros(2, 3, 2), task="ranking")


def test_single_class_is_an_error_and_binary_logits_use_the_sigmoid():
    rng = np.random.default_rng(2)
    z = torch.from_numpy(rng.normal(size=(400, 5, 1)))
    with pytest.raises(ValueError, match="binary_logits"):
        mcdrop.summarize_samples(z)
    res = mcdrop.summarize_samples(z, outputs="binary_logits")
    p = 1 / (1 + np.exp(-z.numpy()[..., 0]))  # (T, N) sigmoid, reference by hand
    np.testing.assert_allclose(res.mean[:, 1], p.mean(0), atol=1e-6)
    np.testing.assert_allclose(res.mean[:, 0], 1 - p.mean(0), atol=1e-6)
    np.testing.assert_allclose(res.variance[:, 1], p.var(0), atol=1e-6)
    bern = -(p * np.log(p) + (1 - p) * np.log(1 - p))
    np.testing.assert_allclose(res.expected_entropy, bern.mean(0), atol=1e-5)
    ones = (z.numpy()[..., 0] > 0).mean(0)  # share of samples voting class 1
    np.testing.assert_allclose(res.variation_ratio, 1 - np.maximum(ones, 1 - ones), atol=1e-12)
    with pytest.raises(ValueError, match="one logit"):
        mcdrop.summarize_samples(torch.zeros(3, 2, 2), outputs="binary_logits")


def test_low_precision_probabilities_are_accepted_and_renormalised():
    logits = torch.randn(8, 6, 10)
    probs = torch.softmax(logits, -1).to(torch.bfloat16)
    res = mcdrop.summarize_samples(probs, outputs="probs")
    np.testing.assert_allclose(res.mean.sum(-1), 1.0, atol=1e-12)
    ref = mcdrop.summarize_samples(logits)
    np.testing.assert_allclose(res.mean, ref.mean, atol=2e-2)


@settings(max_examples=40, deadline=None)
@given(
    shape=st.lists(st.integers(1, 4), min_size=3, max_size=5),
    class_axis=st.integers(0, 10),
    classes=st.sampled_from([2, 3, 16, 17, 40]),  # worked class-major up to 16, else in place
    outputs=st.sampled_from(["logits", "probs"]),
    chunk=st.integers(1, 5),
    data=st.data(),
)
def test_every_statistic_matches_numpy_for_any_class_dimension(
    shape, class_axis, classes, outputs, chunk, data
):
    """(T, N, ...) samples with the classes along any dimension after N (segmentation maps,
    token layouts): every statistic against a numpy computation along that axis."""
    cd = 1 + class_axis % (len(shape) - 2)  # class_dim of one sample (N, ...)
    shape[cd + 1] = classes
    logits = data.draw(arrays(np.float64, tuple(shape), elements=st.floats(-8, 8)))
    axis = cd + 1  # in the stacked samples
    probs = softmax(logits, axis=axis)
    looks_like_probs = (logits >= 0).all() and np.allclose(logits.sum(axis), 1, atol=1e-3)
    assume(outputs == "probs" or not looks_like_probs)  # refused: a second softmax would flatten
    given_values = logits if outputs == "logits" else probs
    res = mcdrop.summarize_samples(
        torch.from_numpy(given_values), outputs=outputs, class_dim=cd, chunk_size=chunk
    )
    T, C = shape[0], shape[axis]
    np.testing.assert_allclose(res.mean, probs.mean(0), atol=1e-12)
    np.testing.assert_allclose(res.variance, probs.var(0), atol=1e-12)
    if T > 1:
        np.testing.assert_allclose(
            res.standard_error, probs.std(0, ddof=1) / math.sqrt(T), atol=1e-9
        )
    else:  # one sample: unknown
        assert np.isinf(res.standard_error).all()
    np.testing.assert_allclose(res.predictive_entropy, entropy(probs.mean(0), axis=cd), atol=1e-9)
    np.testing.assert_allclose(res.expected_entropy, entropy(probs, axis=axis).mean(0), atol=1e-9)
    # the most probable class: the largest value given (softmax keeps their order exactly)
    votes = np.moveaxis(np.eye(C)[given_values.argmax(axis)], -1, axis).sum(0)  # (N, ..C.., ...)
    np.testing.assert_allclose(res.variation_ratio, 1 - votes.max(cd) / T, atol=1e-12)


def test_kept_samples_are_probabilities_in_the_outputs_layout():
    from mcdrop.stats import ClassificationAccumulator

    logits = torch.randn(5, 3, 4, 6)  # (T, N, C, L): classes along dim 1 of a sample
    acc = ClassificationAccumulator(outputs="logits", class_dim=1, keep_samples=True)
    acc.update(logits[:2])
    acc.update(logits[2:])
    state = acc.state()
    torch.testing.assert_close(state["samples"], torch.softmax(logits, 2), rtol=0, atol=1e-6)
    assert state["mean"].shape == (3, 4, 6) and state["mean"].is_contiguous()


def test_masked_classes_with_minus_infinite_logits_have_zero_probability_and_no_nan():
    logits = torch.tensor([[[0.0, 1.0, -math.inf]], [[1.0, 0.0, -math.inf]]])  # (T=2, N=1, C=3)
    res = mcdrop.summarize_samples(logits)
    p = softmax(np.array([[0.0, 1.0], [1.0, 0.0]]), axis=-1)  # the two unmasked classes
    np.testing.assert_allclose(res.mean[0], [*p.mean(0), 0.0], atol=1e-7)
    np.testing.assert_allclose(res.expected_entropy, entropy(p, axis=-1).mean(0), atol=1e-7)
    np.testing.assert_allclose(res.predictive_entropy, entropy(p.mean(0)), atol=1e-7)


def test_probabilities_given_as_logits_are_refused_and_only_they():
    """The "every row is a probability vector" flag, against its definition on the array."""
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=(6, 5))  # (T, N, C)
    with pytest.raises(ValueError, match="already returns probabilities"):
        mcdrop.summarize_samples(torch.from_numpy(probs), outputs="logits")
    for change in ("one negative entry", "one row off", "a NaN"):
        given = probs.copy()
        if change == "one negative entry":
            given[2, 1, 0] = -1e-6
        elif change == "one row off":
            given[5, 4] *= 1.01
        else:
            given[0, 0, 0] = np.nan
        looks = bool((given >= 0).all() and np.allclose(given.sum(-1), 1, atol=1e-3))
        assert not looks
        if change != "a NaN":
            mcdrop.summarize_samples(torch.from_numpy(given), outputs="logits")
