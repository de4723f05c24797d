"""The torchmetrics objects name the arguments of ``update(preds, target)`` (issue 25, group 5)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torchmetrics")

import mcdrop
from mcdrop.torchmetrics import Accuracy, CalibrationError, GaussianNLL


def _probs(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3).softmax(-1)


@pytest.mark.parametrize("metric", [Accuracy, CalibrationError], ids=lambda m: m.__name__)
@pytest.mark.parametrize(
    ("preds", "target", "message"),
    [
        (_probs(), torch.tensor([0, 1, 5, 2]), r"`target` to hold labels in \[0, 2\], but got 5"),
        (_probs(), torch.tensor([0, 1, 2]), r"`target` to have 4 labels"),
        (torch.rand(4, 3) + 1, torch.tensor([0, 1, 2, 2]), r"`preds` to hold probabilities"),
    ],
)
def test_classification_errors_name_preds_and_target(metric, preds, target, message):
    with pytest.raises(ValueError, match=message):
        metric().update(preds, target)


def test_errors_from_a_result_name_its_fields():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Dropout(0.5)).eval()
    result = mcdrop.predict_with_uncertainty(
        model, torch.randn(4, 4), targets=torch.tensor([0, 1, 2, 7]), n_samples=5
    )
    with pytest.raises(ValueError, match=r"`preds.targets` to hold labels in \[0, 2\]"):
        Accuracy().update(result)


@pytest.mark.parametrize(
    ("preds", "target", "message"),
    [
        (
            (torch.zeros(4), torch.ones(4)),
            torch.zeros(5),
            r"`preds\[0\]` to have the shape of `target`",
        ),
        ((torch.zeros(4), -torch.ones(4)), torch.zeros(4), r"`preds\[1\]` to be > 0"),
        (
            torch.zeros(4),
            torch.zeros(4),
            r"`preds` to be a RegressionResult or a \(mean, variance\)",
        ),
    ],
)
def test_gaussian_nll_errors_name_preds_and_target(preds, target, message):
    with pytest.raises((ValueError, TypeError), match=message):
        GaussianNLL().update(preds, target)
