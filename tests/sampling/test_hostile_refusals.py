"""Refused before anything runs, with the reason named (issue 25, group 5)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mcdrop


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 3)).eval()


def _meta_model() -> nn.Module:
    with torch.device("meta"):
        return _model()


@pytest.mark.parametrize(
    "call",
    [
        lambda m, x: mcdrop.predict_with_uncertainty(m, x, n_samples=5),
        lambda m, x: mcdrop.predict_with_uncertainty(m, x, n_samples=5, detect_silent=False),
        lambda m, x: mcdrop.MCDropout(m, n_samples=5)(x),
        lambda m, x: mcdrop.dropout_sites(m, example_inputs=x),
    ],
    ids=["predict", "unprobed", "mcdropout", "sites"],
)
def test_a_model_on_the_meta_device_is_refused_naming_it(call):
    with pytest.raises(ValueError, match=r"meta device \(`0.weight` is a meta tensor.*to_empty"):
        call(_meta_model(), torch.randn(4, 4))


def test_a_meta_model_can_still_list_its_sites_without_inputs():
    assert [s.name for s in mcdrop.dropout_sites(_meta_model())] == ["1"]


@pytest.mark.parametrize(
    ("inputs", "name"),
    [
        (torch.randn(4, 4, device="meta"), "`inputs`"),
        ({"input": torch.randn(4, 4, device="meta")}, "`input`"),
    ],
)
def test_inputs_on_the_meta_device_are_refused_naming_them(inputs, name):
    with pytest.raises(
        ValueError, match=rf"Expected {name} on a real device.*meta tensor \(4, 4\)"
    ):
        mcdrop.predict_with_uncertainty(_model(), inputs, n_samples=5)


def test_mcdropout_on_an_empty_batch_says_so():
    with pytest.raises(ValueError, match=r"empty batch \(Tensor\(0, 4\)\)"):
        mcdrop.MCDropout(_model(), n_samples=5)(torch.randn(0, 4))


def test_the_meta_device_as_an_option_is_refused():
    with pytest.raises(ValueError, match="`device`.*'meta'"):
        mcdrop.predict_with_uncertainty(_model(), torch.randn(4, 4), n_samples=5, device="meta")
