"""Out-of-memory back-off: fewer samples per pass, then fewer examples; nothing else retried."""

from __future__ import annotations

import logging

import pytest
import torch
from strategy_models import DeepDropoutMLP, DotDropout, _eval_check

import mcdrop
from mcdrop.sampling._strategies import Runner


def _fail_first_calls(monkeypatch, error: BaseException, n_failures: int = 1):
    calls: list[tuple[str, int, int]] = []
    original = Runner.run  # with a fixed strategy the first run is the first chunk

    def run(self, name, batch, k, **kw):
        if _eval_check(kw):
            return original(self, name, batch, k, **kw)
        calls.append((name, k, batch.size))
        if len(calls) <= n_failures:
            raise error
        return original(self, name, batch, k, **kw)

    monkeypatch.setattr(Runner, "run", run)
    return calls


@pytest.mark.parametrize("strategy", ["replicate", "vmap", "loop"])
def test_out_of_memory_on_first_chunk_halves_and_retries(monkeypatch, caplog, strategy):
    calls = _fail_first_calls(monkeypatch, torch.OutOfMemoryError("CUDA out of memory"))
    model = DotDropout(torch.tensor([1.0, -2.0, 0.5]), 0.4).eval()
    x = torch.randn(8, 3)
    with caplog.at_level(logging.INFO, logger="mcdrop"):
        mc = mcdrop.MCDropout(
            model, n_samples=100, strategy=strategy, batch_budget=8 * 64, task="regression"
        )
        samples = mc(x)
    assert samples.shape == (100, 8, 1)
    assert calls[0][1] == 64 and calls[1][1] == 32  # halved once, then kept
    assert all(k <= 32 for _, k, _ in calls[1:])
    assert mc.last_samples_per_pass == 32
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "out of memory with 64 samples" in m and "32 samples per pass" in m for m in warnings
    )
    assert not any(m.training for m in model.modules())


def test_out_of_memory_at_one_sample_splits_the_examples(monkeypatch, caplog):
    original = Runner.run
    sizes: list[tuple[int, int]] = []

    def run(self, name, batch, k, **kw):  # "memory" for at most 3 rows per pass
        if _eval_check(kw):
            return original(self, name, batch, k, **kw)
        sizes.append((k, batch.size))
        if k * batch.size > 3 and batch.size > 2:  # the 2-example probe passes fit
            raise torch.OutOfMemoryError("CUDA out of memory")
        return original(self, name, batch, k, **kw)

    monkeypatch.setattr(Runner, "run", run)
    model = DeepDropoutMLP().eval()
    x = torch.randn(10, 6)
    with caplog.at_level(logging.WARNING, logger="mcdrop"):
        result = mcdrop.predict_with_uncertainty(
            model, x, n_samples=6, strategy="replicate", keep_samples=True, seed=0
        )
    assert result.samples.shape == (6, 10, 4)
    assert torch.isfinite(result.mean).all() and (result.variance > 0).any()
    assert any("examples per pass" in r.getMessage() for r in caplog.records)
    assert all(k * b <= 3 for k, b in sizes[sizes.index((1, 2)) :])


def test_out_of_memory_with_one_example_and_one_sample_raises(monkeypatch):
    _fail_first_calls(monkeypatch, torch.OutOfMemoryError("CUDA out of memory"), n_failures=99)
    with pytest.raises(torch.OutOfMemoryError):
        mcdrop.predict_with_uncertainty(
            DeepDropoutMLP().eval(), torch.randn(1, 6), n_samples=4, strategy="loop"
        )


def test_other_runtime_errors_are_not_retried(monkeypatch, caplog):
    calls = _fail_first_calls(
        monkeypatch, RuntimeError("CUDA error: an illegal memory access was encountered")
    )
    model = DeepDropoutMLP().eval()
    with (
        caplog.at_level(logging.WARNING, logger="mcdrop"),
        pytest.raises(RuntimeError, match="illegal memory access"),
    ):
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 6), n_samples=8, strategy="replicate")
    assert len(calls) == 1
    assert not any("out of memory" in r.getMessage() for r in caplog.records)
    assert not any(m.training for m in model.modules())
