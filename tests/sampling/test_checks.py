"""The output checks of every call (``_checks.OutputChecks``): NaN/Inf anywhere, and "dropout
changed nothing" across all the samples of a batch, however the samples are split into chunks,
against the naive definitions on the concatenated samples."""

from __future__ import annotations

import itertools
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mcdrop.sampling._checks import OutputChecks

_SPECIAL = [math.nan, math.inf, -math.inf]


@st.composite
def _chunks(draw):
    t = draw(st.integers(1, 7))
    b = draw(st.integers(1, 4))
    c = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.bfloat16]))
    base = torch.tensor(
        draw(st.lists(st.sampled_from([-1.0, 0.0, 2.5]), min_size=b * c, max_size=b * c))
    ).reshape(b, c)
    samples = base.expand(t, b, c).clone()
    for _ in range(draw(st.integers(0, 3))):  # a few samples differ, or hold NaN / Inf
        i, j, k = (
            draw(st.integers(0, t - 1)),
            draw(st.integers(0, b - 1)),
            draw(st.integers(0, c - 1)),
        )
        samples[i, j, k] = draw(st.sampled_from([3.0, -0.0, *_SPECIAL]))
    cuts = sorted(set(draw(st.lists(st.integers(1, t - 1), max_size=3)))) if t > 1 else []
    edges = [0, *cuts, t]
    return samples.to(dtype), [samples[a:z].to(dtype) for a, z in itertools.pairwise(edges)]


@settings(max_examples=300, deadline=None)
@given(_chunks())
def test_flags_equal_the_naive_definitions_however_the_samples_are_chunked(case):
    samples, chunks = case
    checks = OutputChecks(check_variation=True)
    for chunk in chunks:
        checks.update((chunk,))
    finite = bool(torch.isfinite(samples).all())
    assert bool(checks.finite) == finite
    if finite:  # (with a NaN or an Inf the call raises for it first)
        varied = bool((samples != samples[:1]).any())
        assert bool(checks.varied) == varied


def test_a_second_output_that_is_not_finite_is_caught():
    checks = OutputChecks(check_variation=True)
    means = torch.randn(4, 3, 2)
    log_var = torch.zeros(4, 3, 2)
    log_var[2, 1, 0] = math.inf
    checks.update((means, log_var))
    assert not bool(checks.finite)


def test_integer_outputs_take_the_plain_path():
    checks = OutputChecks(check_variation=True)
    checks.update((torch.tensor([[1, 2]]),))
    checks.update((torch.tensor([[1, 3]]),))
    assert bool(checks.finite) and bool(checks.varied)
