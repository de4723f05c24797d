"""The plan of a call is a value made by a pure function: no model, no clock, no state.

Each expectation is the documented ``auto`` rule (:mod:`mcdrop.sampling._planner`) worked out by
hand for a profile built here, not read back from the code.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from mcdrop.sampling import _planner as planner
from mcdrop.sampling._options import SamplingOptions
from mcdrop.sampling._planner import Fallback, Plan, Planner, Profile, make_plan

CPU = torch.device("cpu")
CUDA = torch.device("cuda")  # a descriptor: no CUDA needed to plan for one

HEAD = Profile(prefix_flops=900, total_flops=1000, bytes_per_row=1024.0, flops_per_row=1000.0)
DEEP = Profile(prefix_flops=100, total_flops=1000, bytes_per_row=1024.0, flops_per_row=1000.0)
FUSED = dataclasses.replace(HEAD, vmap_unsafe=("torch.lstm",))
WEIGHTS = dataclasses.replace(DEEP, replicate_unsafe=("head",))


def _options(**kw) -> SamplingOptions:
    return SamplingOptions(**kw)


@pytest.mark.parametrize(
    ("profile", "order"),
    [
        (HEAD, ("vmap", "replicate", "loop")),  # 90 % before the first dropout: share it
        (DEEP, ("replicate", "loop")),  # 10 %: nothing worth sharing
        (FUSED, ("replicate", "loop")),  # an RNN kernel draws one mask per vmap pass
        (WEIGHTS, ("vmap", "loop")),  # DropConnect: one weight mask per replicated pass
        (dataclasses.replace(WEIGHTS, vmap_unsafe=("torch.gru",)), ("loop",)),
    ],
)
def test_auto_orders_the_candidates_by_the_rule(profile, order):
    plan = make_plan(profile, _options(), CPU, first_rows=8)
    assert plan.candidates == order
    assert plan.strategy == order[0]
    assert plan.can_fall_back == (len(order) > 1)
    assert plan.fallbacks == ()
    assert plan.reason.startswith("auto")


def test_an_explicit_strategy_is_the_only_candidate():
    for strategy in ("loop", "replicate", "vmap"):
        plan = make_plan(DEEP, _options(strategy=strategy), CPU, first_rows=8)
        assert (plan.strategy, plan.candidates, plan.can_fall_back) == (
            strategy,
            (strategy,),
            False,
        )
        assert strategy in plan.reason


def test_an_explicit_strategy_that_cannot_sample_the_model_is_refused():
    with pytest.raises(ValueError, match="other than 'vmap'.*torch.lstm"):
        make_plan(FUSED, _options(strategy="vmap"), CPU)
    with pytest.raises(ValueError, match="other than 'replicate'.*head.*DropConnect"):
        make_plan(WEIGHTS, _options(strategy="replicate"), CPU)


def test_fallbacks_never_come_back_and_the_last_candidate_stays():
    first = make_plan(HEAD, _options(), CPU, first_rows=8)
    after_vmap = make_plan(HEAD, _options(), CPU, first_rows=8, fallbacks=first.falling_back("x"))
    assert after_vmap.strategy == "replicate"
    assert after_vmap.candidates == ("replicate", "loop")
    assert after_vmap.fallbacks == (Fallback("vmap", "x"),)
    both = make_plan(HEAD, _options(), CPU, fallbacks=after_vmap.falling_back("y"))
    assert both.candidates == ("loop",) and not both.can_fall_back
    assert [f.strategy for f in both.fallbacks] == ["vmap", "replicate"]
    assert "vmap and replicate fell back" in both.reason
    # a new profile (the twin's check changed the sites) keeps what fell back out
    replanned = make_plan(DEEP, _options(), CPU, fallbacks=(Fallback("replicate", "z"),))
    assert replanned.candidates == ("loop",)
    everything = tuple(Fallback(s, "gone") for s in ("vmap", "replicate", "loop"))
    assert make_plan(HEAD, _options(), CPU, fallbacks=everything).candidates == ("loop",)


def test_rows_per_pass_on_the_cpu():
    vmap = make_plan(HEAD, _options(), CPU, first_rows=8)
    assert vmap.rows == planner.DEFAULT_CPU_BUDGET
    # a vmap pass holds more rows: only the 10 % after the dropout runs per sample
    assert vmap.scale == 10
    heavy = dataclasses.replace(DEEP, bytes_per_row=planner.CPU_PASS_BYTES / 64)
    replicate = make_plan(heavy, _options(), CPU, first_rows=8)
    assert (replicate.strategy, replicate.rows, replicate.scale) == ("replicate", 64, 1)
    huge = dataclasses.replace(DEEP, bytes_per_row=planner.CPU_PASS_BYTES * 4.0)
    assert make_plan(huge, _options(), CPU, first_rows=8).rows == 8  # at least the first batch
    given = make_plan(heavy, _options(batch_budget=5), CPU, first_rows=8)
    assert given.rows == 5


def test_rows_per_pass_on_cuda_come_from_the_measurement():
    assert make_plan(DEEP, _options(), CUDA).rows == planner.DEFAULT_CUDA_BUDGET
    assert make_plan(DEEP, _options(), CUDA, measured_rows=3000).rows == 3000
    assert make_plan(DEEP, _options(batch_budget=7), CUDA, measured_rows=3000).rows == 7


def test_a_small_cuda_call_takes_vmap_without_the_interact_check():
    small = planner.CUDA_SMALL_CALL_FLOPS / DEEP.flops_per_row  # rows that reach the bound
    assert make_plan(DEEP, _options(), CUDA, call_rows=int(small)).strategy == "vmap"
    assert make_plan(DEEP, _options(), CUDA, call_rows=int(small) + 1).strategy == "replicate"
    assert make_plan(DEEP, _options(), CUDA, call_rows=None).strategy == "replicate"
    compiled = make_plan(DEEP, _options(), CUDA, call_rows=10, compiled=True)
    assert compiled.strategy == "replicate"  # torch.compile does not compile inside vmap
    assert make_plan(DEEP, _options(), CPU, call_rows=10).strategy == "replicate"


def test_a_plan_is_a_frozen_value():
    plan = make_plan(HEAD, _options(), CPU, first_rows=8)
    assert plan == make_plan(HEAD, _options(), CPU, first_rows=8)
    assert hash(plan) == hash(make_plan(HEAD, _options(), CPU, first_rows=8))
    with pytest.raises(dataclasses.FrozenInstanceError):
        plan.strategy = "loop"  # type: ignore[misc]


def test_the_planner_adopts_a_plan_and_only_a_fallback_clears_the_caps():
    sizes = Planner(budget=100, sample_cap=4, example_cap=2)
    plan = Plan("vmap", ("vmap", "loop"), rows=64, scale=3, reason="r")
    sizes.adopt(plan)
    assert (sizes.budget, sizes.scale, sizes.sample_cap, sizes.example_cap) == (64, 3, 4, 2)
    sizes.adopt(dataclasses.replace(plan, strategy="loop", scale=1), fresh=True)
    assert (sizes.budget, sizes.scale, sizes.sample_cap, sizes.example_cap) == (64, 1, None, None)


profiles = st.builds(
    Profile,
    prefix_flops=st.integers(0, 10**6),
    total_flops=st.integers(0, 10**6),
    vmap_unsafe=st.sampled_from([(), ("torch.lstm",)]),
    replicate_unsafe=st.sampled_from([(), ("head",)]),
    bytes_per_row=st.floats(0.0, 1e9),
    flops_per_row=st.floats(0.0, 1e9),
)


@given(
    profile=profiles,
    device=st.sampled_from([CPU, CUDA]),
    dropped=st.lists(st.sampled_from(["vmap", "replicate"]), max_size=2),  # loop is last
    call_rows=st.none() | st.integers(1, 10**7),
    first_rows=st.integers(1, 4096),
    budget=st.none() | st.integers(1, 10**5),
)
def test_every_auto_plan_keeps_the_rules_invariants(
    profile, device, dropped, call_rows, first_rows, budget
):
    fallbacks = tuple(Fallback(s, "r") for s in dropped)
    options = _options(batch_budget=budget)
    plan = make_plan(
        profile, options, device, call_rows=call_rows, first_rows=first_rows, fallbacks=fallbacks
    )
    again = make_plan(
        profile, options, device, call_rows=call_rows, first_rows=first_rows, fallbacks=fallbacks
    )
    assert plan == again  # pure
    assert plan.candidates and plan.strategy == plan.candidates[0]
    assert plan.candidates[-1] == "loop"  # the reference always stays
    assert set(plan.candidates).isdisjoint(dropped)
    if profile.vmap_unsafe:
        assert "vmap" not in plan.candidates
    if profile.replicate_unsafe:
        assert "replicate" not in plan.candidates
    assert plan.rows >= 1 and plan.scale >= 1
    assert plan.scale == 1 or plan.strategy == "vmap"
    if budget is not None:
        assert plan.rows == budget
