"""Options are validated once, up front, with errors that name the parameter and the value."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from conftest import MLP
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import mcdrop
from mcdrop.sampling._options import SamplingOptions


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seed": 2**70}, ValueError, r"`seed`.*2\*\*63 - 1.*1180591620717411303424"),
        ({"seed": -1}, ValueError, "`seed`.*>= 0"),
        ({"seed": 1.5}, TypeError, "`seed`"),
        ({"device": "gpu"}, ValueError, "`device`.*'gpu'"),
        ({"device": "cuda:7"}, ValueError, "`device`.*available"),
        ({"result_device": "nope"}, ValueError, "`result_device`.*'nope'"),
        ({"keep_samples": "no"}, TypeError, "`keep_samples`.*True or False.*'no'"),
        ({"detect_silent": 1}, TypeError, "`detect_silent`"),
        ({"distributed": "yes"}, TypeError, "`distributed`"),
        ({"progress": "loud"}, TypeError, "`progress`"),
        ({"strategy": "fastest"}, ValueError, "`strategy`"),
        ({"n_samples": 0}, ValueError, "`n_samples`.*>= 1"),
    ],
)
def test_bad_options_are_refused_before_anything_runs(kwargs, error, match):
    model = MLP().eval()
    flags = [m.training for m in model.modules()]
    with pytest.raises(error, match=match):
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 6), **kwargs)
    assert [m.training for m in model.modules()] == flags


def test_mcdropout_validates_once_at_construction():
    with pytest.raises(TypeError, match="`keep_samples`"):
        mcdrop.MCDropout(MLP(), n_samples=5, keep_samples="no")
    with pytest.raises(TypeError, match="unknown.*'samples'"):
        mcdrop.MCDropout(MLP(), samples=5)


def test_mcdropout_calls_validate_their_overrides_every_call():
    # The wrapper's own options are validated once and used again while a call's options are
    # the same values of the same types: True is not 1, a new list is looked at again.
    mc = mcdrop.MCDropout(MLP().eval(), n_samples=8, seed=1)
    x = torch.randn(4, 6)
    a, b = mc.predict_with_uncertainty(x), mc.predict_with_uncertainty(x)
    torch.testing.assert_close(a.mean, b.mean, rtol=0, atol=0)
    mc.predict_with_uncertainty(x, seed=1)
    with pytest.raises(TypeError, match="`seed`.*True"):
        mc.predict_with_uncertainty(x, seed=True)
    with pytest.raises(TypeError, match="`keep_samples`"):
        mc.predict_with_uncertainty(x, keep_samples=1)
    c = mc.predict_with_uncertainty(x, seed=2)
    assert c.n_samples == 8 and not torch.equal(c.mean, a.mean)
    mc.options["seed"] = 2  # the wrapper's options changed in place: taken as they are now
    torch.testing.assert_close(mc.predict_with_uncertainty(x).mean, c.mean, rtol=0, atol=0)


def test_a_list_option_changed_in_place_between_calls_is_read_again():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 16), nn.Dropout(0.5)
    ).eval()
    x = torch.randn(4, 6)
    names = ["2"]
    mc = mcdrop.MCDropout(net, n_samples=8, seed=0, exclude=names)
    first = mc.predict_with_uncertainty(x)
    names[0] = "4"  # now the other dropout is left out
    for result in (mc.predict_with_uncertainty(x), mc.predict_with_uncertainty(x, exclude=names)):
        expected = mcdrop.predict_with_uncertainty(net, x, n_samples=8, seed=0, exclude=["4"])
        torch.testing.assert_close(result.mean, expected.mean, rtol=0, atol=0)
        assert not torch.equal(result.mean, first.mean)


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_every_seed_in_range_is_accepted(seed):
    assert mcdrop.sampling._rng.seed_from(seed, None) == seed


def test_options_are_frozen():
    options = SamplingOptions.create(n_samples=5)
    with pytest.raises(AttributeError):
        options.n_samples = 6  # type: ignore[misc]


def test_keep_samples_too_large_is_refused_up_front():
    with pytest.raises(ValueError, match="`keep_samples=True`.*GiB.*n_samples"):
        mcdrop.predict_with_uncertainty(
            MLP().eval(), torch.randn(64, 6), n_samples=10**9, keep_samples=True
        )


def test_single_sample_warns_that_spreads_are_zero():
    with pytest.warns(UserWarning, match="n_samples=1"):
        mcdrop.predict_with_uncertainty(MLP().eval(), torch.randn(3, 6), n_samples=1)


def test_long_runs_without_a_terminal_say_how_long(monkeypatch, caplog):
    from mcdrop.sampling import _progress as driver

    monkeypatch.setattr(driver, "_ANNOUNCE_AFTER_S", 0.0)
    monkeypatch.setattr(driver, "_interactive", lambda: False)
    with caplog.at_level(logging.WARNING, logger="mcdrop"):
        mcdrop.predict_with_uncertainty(MLP().eval(), torch.randn(8, 6), n_samples=40, batch_size=4)
    lines = [r.getMessage() for r in caplog.records if "samples in all" in r.getMessage()]
    assert len(lines) == 1 and "80 samples in all" in lines[0]


def test_training_mode_warning_points_at_the_callers_line():
    model = MLP().train()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 6), n_samples=3)
    mine = [w for w in caught if "training mode" in str(w.message)]
    assert mine and mine[0].filename == __file__


class ZeroHead(nn.Module):
    def __init__(self, p: float = 0.3):
        super().__init__()
        self.body = nn.Linear(6, 16)
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(16, 3)
        nn.init.zeros_(self.head.weight)

    def forward(self, x):
        return self.head(self.drop(self.body(x)))


def test_constant_outputs_and_p_one_get_the_hint_that_fits():
    with pytest.raises(ValueError, match="ZeroHead.*same for every example.*zero-initialised"):
        mcdrop.predict_with_uncertainty(ZeroHead().eval(), torch.randn(4, 6), n_samples=5)
    with pytest.raises(ValueError, match="p = 1.*drop"):
        mcdrop.predict_with_uncertainty(ZeroHead(p=1.0).eval(), torch.randn(4, 6), n_samples=5)


def test_every_option_is_declared_once_with_its_default_check_and_doc():
    """The signature, the defaults and the parameter docs of predict_with_uncertainty all come
    from the one declaration, so they cannot drift apart."""
    import dataclasses
    import inspect
    import json

    fields = dataclasses.fields(SamplingOptions)
    signature = inspect.signature(mcdrop.predict_with_uncertainty)
    assert list(signature.parameters) == ["model", "inputs", "targets"] + [f.name for f in fields]
    doc = mcdrop.predict_with_uncertainty.__doc__
    for field in fields:
        head = field.metadata["doc"].splitlines()[0]
        assert head.startswith(f"{field.name} : ") and f"\n{head}\n" in doc
        assert signature.parameters[field.name].default == field.default
        if "default=" in head:
            written = head.split("default=")[1]
            assert written in (repr(field.default), json.dumps(field.default)), field.name
        else:
            assert field.default is None and head.endswith("optional"), field.name
        field.metadata["check"](field.name, field.default)  # every default passes its check
    defaults = SamplingOptions()
    assert defaults.n_samples == 100 and defaults.result_device == torch.device("cpu")
    assert defaults.compile is None and defaults.amp is None  # stored normalised
    with pytest.raises(TypeError, match=r"unknown \['samples'\]"):
        mcdrop.predict_with_uncertainty(MLP().eval(), torch.randn(4, 6), samples=3)
