"""Adaptive ``n_samples``, autocast, ``torch.compile``, CUDA pass sizing and the benchmark script."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from strategy_models import DeepDropoutMLP, _assert_same_distribution, _mcdrop_probs, _naive_probs

import mcdrop

ROOT = Path(__file__).resolve().parents[2]


# -- adaptive T -----------------------------------------------------------------------------------


def test_adaptive_samples_stop_within_tolerance():
    model = DeepDropoutMLP().eval()
    x = torch.randn(5, 6)
    tol = 0.01
    result = mcdrop.predict_with_uncertainty(
        model, x, n_samples="auto", tolerance=tol, max_samples=5000, keep_samples=True, seed=0
    )
    T = result.n_samples
    assert 16 <= T < 5000
    assert result.samples.shape[0] == T
    assert result.standard_error_reached is not None and result.standard_error_reached <= tol
    # independent estimate from the kept samples: sqrt(var / (T - 1)), var with ddof=0
    probs = result.samples.double()
    independent = (probs.var(0, unbiased=False) / (T - 1)).sqrt()
    assert independent.max().item() == pytest.approx(result.standard_error_reached, rel=1e-6)
    torch.testing.assert_close(result.standard_error, independent)
    # it did not oversample much: the first T at which the error fell below tol
    running = [
        (probs[:t].var(0, unbiased=False) / (t - 1)).sqrt().max().item() for t in range(16, T + 1)
    ]
    first = 16 + next(i for i, se in enumerate(running) if se <= tol)
    assert T <= 1.5 * first + 16


def test_adaptive_samples_stop_at_max_samples():
    result = mcdrop.predict_with_uncertainty(
        DeepDropoutMLP().eval(), torch.randn(4, 6), n_samples="auto", tolerance=1e-6, max_samples=64
    )
    assert result.n_samples == 64
    assert result.standard_error_reached is not None and result.standard_error_reached > 1e-6


# -- amp and compile ------------------------------------------------------------------------------


def test_bf16_autocast_on_cpu_accumulates_in_float64():
    model = DeepDropoutMLP().eval()
    x = torch.randn(6, 6)
    result = mcdrop.predict_with_uncertainty(
        model, x, n_samples=400, amp="bf16", keep_samples=True, seed=3
    )
    assert result.mean.dtype == torch.float64 and result.variance.dtype == torch.float64
    reference = _naive_probs(model, x, 400, seed=4)
    # bf16 rounds the logits (~3 significant digits): compare within MC error plus that
    diff = (result.mean - reference.mean(0)).abs()
    assert diff.max() < 5 * (reference.var(0) / 200).sqrt().max() + 0.02


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_option_samples_like_eager(backend):
    model = DeepDropoutMLP().eval()
    x = torch.randn(6, 6)
    samples = _mcdrop_probs(
        model, x, 300, "replicate", seed=5, compile={"backend": backend, "fullgraph": True}
    )
    _assert_same_distribution(samples, _naive_probs(model, x, 300, seed=6))
    # flags restored, and the model still evaluates deterministically outside mcdrop
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
    # a second call reuses the compiled graph (a fresh wrapper, dynamo's cache) and still samples
    again = _mcdrop_probs(model, x, 50, "auto", seed=7, compile={"backend": backend})
    assert again.var(0).max() > 0


def test_bad_compile_option():
    with pytest.raises(TypeError, match="compile"):
        mcdrop.predict_with_uncertainty(
            DeepDropoutMLP().eval(), torch.randn(2, 6), n_samples=2, compile="yes"
        )


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("gcc") is None and shutil.which("cc") is None, reason="no C compiler"
)
@pytest.mark.skipif(
    os.environ.get("MCDROP_TEST_INDUCTOR") != "1",
    reason="inductor compiles for ~1 minute on a small CPU; set MCDROP_TEST_INDUCTOR=1",
)
def test_compile_true_with_inductor():
    model = DeepDropoutMLP().eval()
    x = torch.randn(6, 6)
    samples = _mcdrop_probs(model, x, 300, "replicate", seed=8, compile=True)
    _assert_same_distribution(samples, _naive_probs(model, x, 300, seed=9))


# -- GPU ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_memory_sized_chunks_and_bf16():
    model = DeepDropoutMLP().cuda().eval()
    x = torch.randn(64, 6)
    torch.cuda.reset_peak_memory_stats()
    user_peak = torch.empty(2**26, device="cuda")  # 256 MiB the user allocated and freed
    del user_peak
    peak = torch.cuda.max_memory_allocated()
    mc = mcdrop.MCDropout(model, n_samples=10_000, strategy="replicate")
    assert mc(x.cuda()).shape == (10_000, 64, 4)
    assert mc._engine is not None and mc._engine.planner.budget >= 64  # sized from free memory
    assert torch.cuda.max_memory_allocated() >= peak  # the user's peak counter was not reset
    reference = _mcdrop_probs(model, x, 500, "replicate", seed=1)
    for strategy in ("auto", "vmap", "loop"):
        samples = _mcdrop_probs(model, x, 500, strategy, seed=2)
        _assert_same_distribution(samples, reference)
    result = mcdrop.predict_with_uncertainty(model, x, n_samples=200, amp="bf16", seed=3)
    assert result.mean.dtype == torch.float64
    assert (result.mean - reference.mean(0)).abs().max() < 0.05
    mc = mcdrop.MCDropout(model, n_samples=200)
    assert mc(x.cuda()).shape == (200, 64, 4)
    assert mc.last_samples_per_pass is not None and mc.last_samples_per_pass >= 1


# -- benchmark script -------------------------------------------------------------------------------


def test_benchmark_script_quick_smoke(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_sampling.py"),
            "--quick",
            "--device",
            "cpu",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "naive loop" in proc.stdout and "deterministic" in proc.stdout
    data = json.loads(out.read_text())
    assert data["torch"] == torch.__version__
    rows = data["results"]
    assert {row["model"] for row in rows} == {"conv", "mlp", "transformer", "eager_transformer"}
    for row in rows:
        assert row["naive_loop_ms"] > 0 and row["deterministic_ms"] > 0
        assert row["auto_predict_ms"] > 0 and row["auto_strategy"] in ("vmap", "replicate", "loop")
