"""mcdrop.report: the report of mcdrop report, as a library function (no files unless asked)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import mcdrop
from mcdrop.metrics import evaluate


def _result(n=120, c=4, t=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(t, n, c, generator=gen, dtype=torch.float64) * 2
    y = torch.randint(0, c, (n,), generator=gen)
    return mcdrop.summarize_samples(logits, targets=y), logits.mean(0).softmax(1).numpy()


def test_report_returns_metrics_table_and_figures_without_writing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result, other = _result()
    rep = mcdrop.report(result, compare={"plain": other})
    assert list(rep.metrics) == ["MC dropout", "plain"]
    assert rep.metrics["MC dropout"] == evaluate(result)
    assert rep.metrics["plain"] == evaluate(other, result.targets)
    assert set(rep.figures) == {"reliability", "accuracy_rejection", "uncertainty_hist"}
    assert rep.table().splitlines()[0].split() == ["model", "accuracy", "nll", "brier", "ece"]
    assert list(tmp_path.iterdir()) == []
    files = rep.save(tmp_path / "out")
    payload = json.loads((tmp_path / "out" / "report.json").read_text())
    assert payload["files"] == files
    assert payload["metrics"]["plain"]["nll"] == pytest.approx(rep.metrics["plain"]["nll"])


def test_report_errors_are_value_errors():
    result, _ = _result()
    with pytest.raises(ValueError, match="expected 120 targets"):
        mcdrop.report(result, np.zeros(5, dtype=int))
    bare = mcdrop.summarize_samples(torch.randn(4, 10, 3))
    with pytest.raises(ValueError, match="Expected `targets` to be given"):
        mcdrop.report(bare)
    with pytest.raises(TypeError, match="Expected `result`"):
        mcdrop.report(np.zeros((3, 2)), [0, 1, 0])
