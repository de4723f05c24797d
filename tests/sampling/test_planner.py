"""The planner: the ``auto`` rule and pass sizes, plain arithmetic tested without a model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mcdrop.sampling import _planner as planner
from mcdrop.sampling._planner import Planner, Profile

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_auto_rule_prefers_prefix_sharing_only_for_prefix_heavy_models_on_the_cpu():
    heavy = Profile(prefix_flops=90, total_flops=100)
    light = Profile(prefix_flops=10, total_flops=100)
    rnn = Profile(prefix_flops=90, total_flops=100, vmap_unsafe=("torch.lstm",))
    assert planner.candidates("auto", heavy, CPU) == ["vmap", "replicate", "loop"]
    assert planner.candidates("auto", light, CPU) == ["replicate", "loop"]
    assert planner.candidates("auto", rnn, CPU) == ["replicate", "loop"]
    assert planner.candidates("auto", Profile(), CPU) == ["replicate", "loop"]  # nothing measured
    assert planner.candidates("loop", heavy, CPU) == ["loop"]


def test_auto_rule_on_cuda_prefers_vmap_for_small_calls_where_it_draws_a_mask_per_sample():
    """vmap needs no examples-interact check (about 1.3 ms per call), which outweighs its slower
    dropout only while the call's work is small."""
    light = Profile(prefix_flops=10, total_flops=100, flops_per_row=1e6)
    limit = int(planner.CUDA_SMALL_CALL_FLOPS / 1e6)
    assert planner.candidates("auto", light, CUDA, rows=limit) == ["vmap", "replicate", "loop"]
    assert planner.candidates("auto", light, CUDA, rows=limit + 1) == ["replicate", "loop"]
    assert planner.candidates("auto", light, CUDA, rows=None) == ["replicate", "loop"]  # unknown
    assert planner.candidates("auto", light, CPU, rows=1) == ["replicate", "loop"]
    unmeasured = Profile()  # no FLOPs counted: the size of the call is unknown
    assert planner.candidates("auto", unmeasured, CUDA, rows=1) == ["replicate", "loop"]
    fused = dataclasses.replace(light, vmap_unsafe=("F.scaled_dot_product_attention",))
    assert planner.candidates("auto", fused, CUDA, rows=1) == ["replicate", "loop"]
    assert planner.candidates("replicate", light, CUDA, rows=1) == ["replicate"]
    # torch.compile does not compile inside vmap: a compiled pass stays a replicated one
    assert planner.candidates("auto", light, CUDA, compiled=True, rows=1) == ["replicate", "loop"]
    heavy = Profile(prefix_flops=90, total_flops=100, flops_per_row=1e12)
    assert planner.candidates("auto", heavy, CUDA, compiled=True, rows=10**6)[0] == "vmap"


def test_auto_rule_never_replicates_dropout_on_a_weight():
    """One weight mask per pass would be shared by every copy of a replicated batch."""
    weights = Profile(prefix_flops=10, total_flops=100, replicate_unsafe=("lin",))
    both = Profile(replicate_unsafe=("rnn",), vmap_unsafe=("torch.lstm",))
    for device in (CPU, CUDA):
        assert planner.candidates("auto", weights, device) == ["vmap", "loop"]
        assert planner.candidates("auto", both, device) == ["loop"]


@given(st.integers(0, 10**12), st.integers(0, 10**12))
def test_vmap_scale_is_between_1_and_the_cap_and_grows_with_the_prefix(prefix, extra):
    profile = Profile(prefix_flops=prefix, total_flops=prefix + extra)
    scale = planner.vmap_scale(profile)
    assert 1 <= scale <= planner.MAX_VMAP_SCALE
    more = Profile(prefix_flops=prefix + extra, total_flops=prefix + extra)
    assert planner.vmap_scale(more) >= scale


@given(
    budget=st.integers(1, 10_000),
    scale=st.integers(1, 16),
    batch=st.integers(1, 5_000),
    remaining=st.integers(1, 10_000),
)
def test_pass_sizes_respect_the_budget_and_the_remaining_samples(budget, scale, batch, remaining):
    plan = Planner(budget, scale=scale)
    examples = plan.examples_per_pass(batch)
    k = plan.samples_per_pass(batch, remaining)
    assert 1 <= examples <= batch and 1 <= k <= remaining
    assert k * examples <= max(budget * scale, examples)  # one sample always runs


def test_back_off_halves_samples_then_examples_then_raises():
    plan = Planner(64)
    assert plan.samples_per_pass(8, 100) == 8
    plan.back_off(8, 8)
    assert plan.samples_per_pass(8, 100) == 4
    plan.back_off(4, 8)
    plan.back_off(2, 8)
    assert plan.samples_per_pass(8, 100) == 1
    plan.back_off(1, 8)
    assert plan.examples_per_pass(8) == 4
    plan.back_off(1, 8)
    plan.back_off(1, 8)
    assert plan.examples_per_pass(8) == 1
    with pytest.raises(torch.OutOfMemoryError):
        plan.back_off(1, 8)


def test_rows_that_fit_a_fraction_of_capacity_and_at_most_one_pass_budget():
    assert planner.rows_that_fit(1000.0, 7.0) == int(planner.MEMORY_FRACTION * 1000 / 7)
    assert planner.rows_that_fit(1.0, 1e9) == 1
    assert planner.rows_that_fit(1e18, 1.0) == planner.MAX_MEMORY_ROWS
    per_row = 1e6  # a large card: the pass budget binds, not the capacity
    assert planner.rows_that_fit(1e12, per_row) == int(planner.GPU_PASS_BYTES / per_row)


def test_cpu_passes_are_capped_by_activation_bytes():
    big = Profile(bytes_per_row=planner.CPU_PASS_BYTES / 64)
    small = Profile(bytes_per_row=1024.0)
    assert planner.cpu_rows(big, 16) == 64
    assert planner.cpu_rows(small, 16) == planner.DEFAULT_CPU_BUDGET
    assert planner.cpu_rows(Profile(bytes_per_row=planner.CPU_PASS_BYTES * 10), 16) == 16
    assert planner.cpu_rows(Profile(), 16) == planner.DEFAULT_CPU_BUDGET  # nothing measured


# -- CUDA pass sizing, with the CUDA reads replaced (the GPU tests measure it for real) ---------


def test_cuda_pass_size_is_measured_once_per_key_and_an_out_of_memory_is_not_kept(monkeypatch):
    import mcdrop
    from mcdrop.sampling import _engine as driver
    from mcdrop.sampling import _memory as memory

    runs: list[int] = []

    def pass_bytes(run, device):
        runs.append(1)
        return 65536 * 2 * 8, run()  # 64 KiB per row for 2 samples of 8 examples

    monkeypatch.setattr(memory, "pass_bytes", pass_bytes)
    monkeypatch.setattr(memory, "capacity", lambda device: 10 * 2**30)
    driver._BUDGETS.clear()
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Dropout(0.3)).eval()
    x = torch.randn(8, 3)
    out_bytes = 4 * 8 * 5  # five float64 temporaries per output element, 4 outputs per row
    expected = planner.rows_that_fit(10 * 2**30, 65536 + out_bytes)
    assert 1 < expected < planner.MAX_MEMORY_ROWS  # the 1 GiB pass cap decides
    for _ in range(2):
        mc = mcdrop.MCDropout(model, n_samples=5)
        assert mc._engine is None
        mc._engine = driver.Engine(model, mc._sampling)
        mc._engine.memory_sized = True
        mc(x)
        assert mc._engine.planner.budget == expected
    assert len(runs) == 1  # the second engine reused the measurement
    mc(torch.randn(16, 3))  # other inputs: measured for them, as a new engine would
    assert len(runs) == 2

    def out_of_memory(run, device):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(memory, "pass_bytes", out_of_memory)
    driver._BUDGETS.clear()
    mc = mcdrop.MCDropout(model, n_samples=5)
    mc._engine = driver.Engine(model, mc._sampling)
    mc._engine.memory_sized = True
    mc(x)
    assert mc._engine.planner.budget == 4 and not driver._BUDGETS  # row-wise, not kept
