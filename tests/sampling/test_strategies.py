"""Sampling strategies, the ``auto`` probe, out-of-memory back-off, adaptive T and compile.

Every strategy must give the distribution of a plain Python loop of ``T`` passes; the checks
are two-sample z-scores within Monte Carlo error (fixed seeds, 5 sigma: they cannot flake).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FusedClassifier
from torch import nn
from torch.nn import functional as F

import mcdrop
from mcdrop.dropout._probe import NoDropout
from mcdrop.sampling import _driver as driver
from mcdrop.sampling._strategies import Runner

ROOT = Path(__file__).resolve().parents[2]


class DeepDropoutMLP(nn.Module):
    """Dropout after every hidden layer: no deterministic prefix to share."""

    def __init__(self, p: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(6, 32),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(32, 32),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(32, 4),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyTransformer(nn.Module):
    """Encoder classifier with attention and feed-forward dropout (vmap cannot run it)."""

    def __init__(self, d: int = 16, p: float = 0.2):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=p, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(d, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


class HeadDropout(nn.Module):
    """A heavy deterministic body and dropout only in the head: prefix sharing pays."""

    def __init__(self, width: int = 512):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(16, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
        )
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(x)))


class InplaceDropout(nn.Module):
    """In-place dropout on an activation that vmap leaves unbatched: vmap refuses it."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 32)
        self.drop = nn.Dropout(0.3, inplace=True)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


class DotDropout(nn.Module):
    """y = w . dropout(x): mean w.x, variance p/(1-p) sum w_i^2 x_i^2."""

    def __init__(self, w: torch.Tensor, p: float):
        super().__init__()
        self.drop = nn.Dropout(p)
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(x) @ self.w.unsqueeze(1)


def _naive_probs(model: nn.Module, x: torch.Tensor, T: int, seed: int) -> torch.Tensor:
    """What a user writes by hand: dropout modules on, a Python loop of T passes."""
    model.eval()
    for module in model.modules():
        if isinstance(module, (nn.Dropout, nn.MultiheadAttention, nn.TransformerEncoderLayer)):
            module.train()
    torch.manual_seed(seed)
    with torch.no_grad():
        probs = torch.stack([torch.softmax(model(x), -1) for _ in range(T)]).double()
    model.eval()
    return probs


def _assert_same_distribution(a: torch.Tensor, b: torch.Tensor, sigmas: float = 5.0) -> None:
    """Two-sample z-scores of the mean and the variance of samples (T, ...) along dim 0."""
    a, b = a.double(), b.double()
    ta, tb = a.shape[0], b.shape[0]
    floor = 1e-12
    z_mean = (a.mean(0) - b.mean(0)) / (a.var(0) / ta + b.var(0) / tb + floor).sqrt()
    assert z_mean.abs().max() < sigmas, f"means differ: max |z| = {z_mean.abs().max():.2f}"

    def var_and_se(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sq = (s - s.mean(0)) ** 2
        return sq.mean(0), sq.std(0) / math.sqrt(s.shape[0])

    va, sa = var_and_se(a)
    vb, sb = var_and_se(b)
    z_var = (va - vb) / (sa**2 + sb**2 + floor).sqrt()
    assert z_var.abs().max() < sigmas, f"variances differ: max |z| = {z_var.abs().max():.2f}"


def _mcdrop_probs(model: nn.Module, x: torch.Tensor, T: int, strategy: str, **kw) -> torch.Tensor:
    result = mcdrop.predict_with_uncertainty(
        model, x, n_samples=T, strategy=strategy, keep_samples=True, progress=False, **kw
    )
    assert result.n_samples == T
    return result.samples


# -- each strategy against a naive loop -------------------------------------------------------


@pytest.mark.parametrize("strategy", ["loop", "replicate", "vmap", "auto"])
def test_strategy_matches_naive_loop_dropout_everywhere(strategy):
    model = DeepDropoutMLP().eval()
    x = torch.randn(6, 6)
    T = 400
    reference = _naive_probs(model, x, T, seed=11)
    # a small budget: several chunks with an uneven last one
    samples = _mcdrop_probs(model, x, T, strategy, seed=12, batch_budget=6 * 48)
    _assert_same_distribution(samples, reference)


@pytest.mark.parametrize("strategy", ["loop", "replicate", "auto"])
def test_strategy_matches_naive_loop_transformer(strategy):
    model = TinyTransformer().eval()
    x = torch.randn(4, 5, 16)
    T = 200
    reference = _naive_probs(model, x, T, seed=21)
    samples = _mcdrop_probs(model, x, T, strategy, seed=22)
    _assert_same_distribution(samples, reference)


def test_strategy_matches_naive_loop_head_dropout():
    model = HeadDropout(width=32).eval()
    x = torch.randn(6, 16)
    reference = _naive_probs(model, x, 400, seed=31)
    for strategy in ("vmap", "replicate", "auto"):
        _assert_same_distribution(_mcdrop_probs(model, x, 400, strategy, seed=32), reference)


@pytest.mark.parametrize("strategy", ["auto", "loop", "replicate", "vmap"])
def test_closed_form_through_mcdropout_forward(strategy):
    """MCDropout.forward with several chunks per call (batch_budget) for every strategy."""
    p = 0.3
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, -1.0, 4.0], [0.5, 0.0, 3.0, -2.0]], dtype=torch.float64)
    T = 6000
    mc = mcdrop.MCDropout(
        DotDropout(w, p).eval(), n_samples=T, strategy=strategy, batch_budget=2 * 700, seed=4
    )
    samples = mc(x).squeeze(-1)  # (T, 2)
    assert samples.shape == (T, 2)
    mean_true = x @ w
    var_true = p / (1 - p) * (w**2 * x**2).sum(1)
    z_mean = (samples.mean(0) - mean_true) / (var_true / T).sqrt()
    assert z_mean.abs().max() < 5
    sq = (samples - samples.mean(0)) ** 2
    z_var = (sq.mean(0) - var_true) / (sq.std(0) / math.sqrt(T))
    assert z_var.abs().max() < 5
    if mc.last_strategy != "vmap":  # auto may let a vmap pass hold more (shared prefix)
        assert mc.last_samples_per_pass == 700
    if strategy != "auto":
        assert mc.last_strategy == strategy


# -- auto ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_cls", [InplaceDropout, TinyTransformer])
def test_auto_falls_back_when_vmap_cannot_run_the_model(model_cls, caplog):
    model = model_cls().eval()
    x = torch.randn(5, 6) if model_cls is InplaceDropout else torch.randn(5, 7, 16)
    with pytest.raises(ValueError, match="`strategy`.*'vmap'.*'auto'"):  # named, with the reason
        mcdrop.predict_with_uncertainty(model, x, n_samples=8, strategy="vmap")
    assert not any(m.training for m in model.modules())
    with caplog.at_level(logging.INFO, logger="mcdrop"):
        mc = mcdrop.MCDropout(model, n_samples=300, seed=1)
        samples = torch.softmax(mc(x), -1)
    assert mc.last_strategy in ("replicate", "loop")
    if model_cls is InplaceDropout:  # prefix-heavy: vmap was tried first and refused
        fallback = [r.getMessage() for r in caplog.records if "does not work" in r.getMessage()]
        assert fallback and "'vmap'" in fallback[0] and "falling back" in fallback[0]
        assert "randomness" in fallback[0] or "vmap" in fallback[0].split("(", 1)[1]
    _assert_same_distribution(samples, _naive_probs(model, x, 300, seed=2))


class HostCheckAfterDropout(nn.Module):
    """Prefix-heavy (auto tries vmap first), but a host-side check after the dropout makes vmap
    fail only after it has drawn the masks."""

    def __init__(self):
        super().__init__()
        self.body, self.drop, self.head = nn.Linear(6, 64), nn.Dropout(0.3), nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(torch.relu(self.body(x)))
        if not bool(torch.isfinite(h).all()):  # data-dependent: vmap cannot run it
            raise ValueError("non-finite activations")
        return self.head(h)


def test_auto_gives_the_numbers_of_the_strategy_it_settles_on():
    """A candidate that fails after drawing random numbers is rerun from the same random state:
    auto then equals the strategy it falls back to, whatever it tried first."""
    torch.manual_seed(0)
    model = HostCheckAfterDropout().eval()
    x = torch.randn(5, 6)
    auto = mcdrop.MCDropout(model, n_samples=40, seed=3)
    samples = auto(x)
    assert auto.last_strategy == "replicate"
    fixed = mcdrop.MCDropout(model, n_samples=40, strategy="replicate", seed=3)(x)
    assert torch.equal(samples, fixed)
    result = mcdrop.predict_with_uncertainty(model, x, n_samples=40, seed=3, progress=False)
    same = mcdrop.predict_with_uncertainty(
        model, x, n_samples=40, strategy="replicate", seed=3, progress=False
    )
    assert torch.equal(result.mean, same.mean)


class _Counted(nn.Module):
    """Convolution, linear layers and a matrix product: ops with a FLOP formula."""

    def __init__(self):
        super().__init__()
        self.conv, self.proj, self.head = nn.Conv2d(3, 4, 3), nn.Linear(36, 16), nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.conv(x).flatten(2).transpose(1, 2).reshape(x.shape[0], 4, 36))
        return self.head((h @ h.transpose(1, 2)).mean(-1, keepdim=True) * h).mean(1)


class _Attention(nn.Module):
    def forward(self, q: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.scaled_dot_product_attention(q, q, q)


def test_probe_flops_match_torch_flop_counter_and_say_when_a_kernel_is_not_counted():
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    from mcdrop.dropout import _probe

    def probe(model: nn.Module, *args: torch.Tensor) -> _probe.Trace:
        with torch.inference_mode():
            return _probe.trace(dict(model.named_modules()), lambda: model(*args), flops=True)

    model, x = _Counted().eval(), torch.randn(2, 3, 8, 8)
    with FlopCounterMode(display=False) as reference, torch.no_grad():
        model(x)
    trace = probe(model, x)
    assert trace.total_flops == reference.get_total_flops() > 0 and trace.flops_complete
    q = torch.randn(2, 3, 5, 8)  # (B, heads, L, d): torch's counter misses the CPU kernel
    assert probe(_Attention(), q).total_flops == sdpa_flop_count(q.shape, q.shape, q.shape)


def test_probe_counts_the_rnn_kernels_flops_in_closed_form(monkeypatch):
    """2 x tokens x gates x H x (input + H) per layer and direction, for padded and packed
    sequences and for the cells (torch's own counter has no formula for them)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    from mcdrop.dropout import _probe

    def flops(model: nn.Module, *args: object) -> int:
        with torch.inference_mode():
            trace = _probe.trace(dict(model.named_modules()), lambda: model(*args), flops=True)
        assert trace.flops_complete
        return trace.total_flops

    def closed_form(tokens: int, gates: int, d_in: int, h: int, layers: int, dirs: int) -> int:
        per_token = sum(gates * h * ((h * dirs if i else d_in) + h) for i in range(layers))
        return 2 * tokens * dirs * per_token

    lstm = nn.LSTM(6, 32, num_layers=2, bidirectional=True, batch_first=True).eval()
    assert flops(lstm, torch.randn(2, 5, 6)) == closed_form(10, 4, 6, 32, 2, 2)
    packed = pack_padded_sequence(torch.randn(3, 5, 6), [5, 3, 2], batch_first=True)
    assert flops(lstm, packed) == closed_form(10, 4, 6, 32, 2, 2)  # 5 + 3 + 2 tokens
    assert flops(nn.GRU(6, 16).eval(), torch.randn(4, 2, 6)) == closed_form(8, 3, 6, 16, 1, 1)
    assert flops(nn.RNN(6, 16).eval(), torch.randn(4, 2, 6)) == closed_form(8, 1, 6, 16, 1, 1)
    assert flops(nn.LSTMCell(6, 16).eval(), torch.randn(3, 6)) == closed_form(3, 4, 6, 16, 1, 1)
    assert flops(nn.GRUCell(6, 16).eval(), torch.randn(3, 6)) == closed_form(3, 3, 6, 16, 1, 1)
    # a heavy kernel without a formula leaves the count incomplete (the size of a call unknown)
    monkeypatch.setattr(_probe, "_UNCOUNTED", {torch.ops.aten.relu})
    with torch.inference_mode():
        trace = _probe.trace({}, lambda: torch.relu(torch.randn(3)), flops=True)
    assert not trace.flops_complete


class LSTMEncoder(nn.Module):
    """An LSTM encoder and a dropout head: nearly all the FLOPs come before the dropout."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 64, num_layers=2, batch_first=True)
        self.drop, self.head = nn.Dropout(0.5), nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(self.drop(out[:, -1]))


def test_auto_shares_an_rnn_encoder_before_a_dropout_head():
    torch.manual_seed(0)
    model = LSTMEncoder().eval()
    with torch.no_grad():
        model.head.weight.mul_(8.0)  # random-init heads are near-constant
    x = torch.randn(6, 12, 8)
    mc = mcdrop.MCDropout(model, n_samples=300, seed=1)
    samples = torch.softmax(mc(x), -1)
    assert mc.last_strategy == "vmap"  # the encoder runs once for all samples
    _assert_same_distribution(samples, _naive_probs(model, x, 300, seed=2))


class OutOfMemoryThenFailsUnderVmap(nn.Module):
    """Under vmap: first a (simulated) out-of-memory error, then an error only vmap hits."""

    def __init__(self):
        super().__init__()
        self.body, self.drop = nn.Linear(64, 256), nn.Dropout(0.3)
        self.mid = nn.Sequential(nn.Linear(256, 16), nn.ReLU(), nn.Dropout(0.3))
        self.head = nn.Linear(16, 3)
        self.vmap_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._C._functorch import is_batchedtensor

        h = self.drop(torch.relu(self.body(x)))
        if is_batchedtensor(h):
            self.vmap_calls += 1
            if self.vmap_calls == 1:
                raise torch.OutOfMemoryError("simulated")
            raise RuntimeError("vmap-only failure")
        return self.head(self.mid(h))


def test_a_dropped_candidates_out_of_memory_cap_does_not_carry_over(monkeypatch):
    """The fallback starts as if chosen first (same numbers as the fixed strategy), and only a
    seeded call rewinds the generators (without a seed other threads would get the same numbers
    again)."""
    torch.manual_seed(0)
    x = torch.randn(9, 64)
    model = OutOfMemoryThenFailsUnderVmap().eval()
    auto = mcdrop.MCDropout(model, n_samples=100, seed=1)
    samples = auto(x)
    assert auto.last_strategy == "replicate" and auto._engine.planner.sample_cap is None
    fixed = mcdrop.MCDropout(model, n_samples=100, seed=1, strategy="replicate")
    assert torch.equal(samples, fixed(x))
    rewinds = []
    monkeypatch.setattr(
        driver, "rng_state", lambda device: rewinds.append(device) or (lambda: None)
    )
    model.vmap_calls = 1  # the next vmap attempt fails at once
    mcdrop.MCDropout(model, n_samples=10)(x)
    assert rewinds == []
    mcdrop.MCDropout(model, n_samples=10, seed=2)(x)
    assert len(rewinds) == 1


def test_auto_picks_prefix_sharing_on_a_prefix_heavy_model_without_timing(caplog):
    model = HeadDropout().eval()
    x = torch.randn(32, 16)
    with caplog.at_level(logging.INFO, logger="mcdrop"):
        mc = mcdrop.MCDropout(model, n_samples=64, seed=0)
        mc(x)
    assert mc.last_strategy == "vmap"
    messages = [r.getMessage() for r in caplog.records]
    assert any("FLOPs before the first dropout" in m for m in messages)
    assert not any(" ms" in m for m in messages)  # nothing was timed


class DropoutFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2)
        self.body = nn.Sequential(nn.Linear(16, 256), nn.ReLU(), nn.Linear(256, 4))

    def forward(self, x):
        return self.body(self.drop(x))


def test_auto_does_not_pick_prefix_sharing_when_dropout_comes_first():
    mc = mcdrop.MCDropout(DropoutFirst().eval(), n_samples=64, seed=0)
    mc(torch.randn(32, 16))
    assert mc.last_strategy == "replicate"


def test_auto_picks_the_same_strategy_and_numbers_under_load():
    model = HeadDropout().eval()
    x = torch.randn(32, 16)
    quiet = mcdrop.MCDropout(model, n_samples=64, seed=0)
    expected = quiet(x)
    stop = threading.Event()
    a = torch.randn(256, 256) / 16  # drawn before: the busy thread computes, it draws nothing

    def busy():
        nonlocal a
        while not stop.is_set():
            a = torch.tanh(a @ a)

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        loaded = mcdrop.MCDropout(model, n_samples=64, seed=0)
        got = loaded(x)
    finally:
        stop.set()
        worker.join()
    assert loaded.last_strategy == quiet.last_strategy
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


_SAME_SEED_SCRIPT = """
import sys, torch, mcdrop
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Linear(16, 128), torch.nn.ReLU(), torch.nn.Dropout(0.3), torch.nn.Linear(128, 5)
).eval()
x = torch.randn(64, 16)
r = mcdrop.predict_with_uncertainty(model, x, n_samples=50, seed=7)
torch.save({"mean": r.mean, "mi": r.mutual_information}, sys.argv[2])
"""


def test_same_seed_same_numbers_in_processes_with_different_thread_counts(tmp_path):
    results = []
    for threads in (1, 2):
        out = tmp_path / f"r{threads}.pt"
        subprocess.run(
            [sys.executable, "-c", _SAME_SEED_SCRIPT, str(threads), str(out)],
            check=True,
            timeout=120,
        )
        results.append(torch.load(out))
    torch.testing.assert_close(results[0]["mean"], results[1]["mean"], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(results[0]["mi"], results[1]["mi"], rtol=1e-5, atol=1e-9)


def test_auto_probe_does_not_consume_the_callers_random_stream():
    model = DeepDropoutMLP().eval()
    x = torch.randn(8, 6)
    torch.manual_seed(5)
    mc = mcdrop.MCDropout(model, n_samples=32)
    probed = mc(x)  # fresh model: probes under fork_rng, then samples
    chosen = mc.last_strategy
    assert chosen is not None
    torch.manual_seed(5)
    direct = mcdrop.MCDropout(model, n_samples=32, strategy=chosen)(x)
    torch.testing.assert_close(probed, direct)


# -- out of memory --------------------------------------------------------------------------------


def _eval_check(kw: dict) -> bool:
    """Whether a run is replicate's examples-interact check (dropout at rate 0)."""
    return kw.get("record") is NoDropout


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


class SetModel(nn.Module):
    """Examples interact (centred over the batch): replicating the batch would change them."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.3)
        self.body = nn.Linear(6, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.body(self.drop(x))
        return self.head(h - h.mean(0))


def test_auto_does_not_replicate_a_model_whose_examples_interact(caplog):
    model = SetModel().eval()
    x = torch.randn(8, 6)
    with caplog.at_level(logging.INFO, logger="mcdrop"):
        mc = mcdrop.MCDropout(model, n_samples=300, seed=0)
        samples = torch.softmax(mc(x), -1)
    assert mc.last_strategy != "replicate"
    assert any("'replicate' does not fit" in r.getMessage() for r in caplog.records)
    _assert_same_distribution(samples, _naive_probs(model, x, 300, seed=1))


def test_explicit_replicate_is_refused_when_examples_interact():
    """A replicated batch would mix the samples of its copies: refused, not a silent mix."""
    with pytest.raises(ValueError, match="`strategy` other than 'replicate'.*other examples"):
        mcdrop.predict_with_uncertainty(SetModel().eval(), torch.randn(8, 6), strategy="replicate")
    for strategy in ("vmap", "loop"):  # each sample sees the batch as it is
        mcdrop.predict_with_uncertainty(SetModel().eval(), torch.randn(8, 6), strategy=strategy)


class MaybeCentred(SetModel):
    """Examples interact only while ``centre`` is set: a plain attribute decides."""

    centre = False

    def forward(self, x):
        h = self.body(self.drop(x))
        return self.head(h - h.mean(0) if self.centre else h)


def test_examples_interact_check_runs_again_when_an_attribute_changes():
    model = MaybeCentred().eval()
    x = torch.randn(8, 6)
    mc = mcdrop.MCDropout(model, n_samples=20)
    mc(x)
    assert mc.last_strategy == "replicate"
    model.centre = True  # now a replicated batch would mix samples
    mc = mcdrop.MCDropout(model, n_samples=20)
    mc(x)
    assert mc.last_strategy != "replicate"


class LinearDropout(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.fc(x))


class HostRead(LinearDropout):
    """Reads its sampled activations on the host: fine in a loop, impossible under vmap."""

    def forward(self, x):
        h = self.drop(self.fc(x))
        np.asarray(h.detach())
        return h


def test_explicit_vmap_errors_name_the_option_only_when_the_model_runs_without_vmap():
    with pytest.raises(ValueError, match="`strategy`.*'vmap' cannot.*storage.*'auto'"):
        mcdrop.predict_with_uncertainty(HostRead().eval(), torch.randn(5, 4), strategy="vmap")
    assert mcdrop.predict_with_uncertainty(HostRead().eval(), torch.randn(5, 4)).n_samples == 100
    broken = HostRead().eval()
    broken.fc = nn.Linear(5, 3).eval()  # the user's own shape error stays the user's error
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        mcdrop.predict_with_uncertainty(broken, torch.randn(5, 4), strategy="vmap")


def test_explicit_vmap_that_cannot_run_the_model_names_the_option():
    """SDPA's fused dropout cannot draw per-sample masks under vmap: a clear error, not torch's."""
    model = FusedClassifier().eval()
    with pytest.raises(ValueError, match="`strategy`.*'vmap'.*'auto'"):
        mcdrop.predict_with_uncertainty(model, torch.randn(4, 5, 16), n_samples=4, strategy="vmap")
    auto = mcdrop.predict_with_uncertainty(model, torch.randn(4, 5, 16), n_samples=4)
    assert auto.n_samples == 4


def test_vmap_is_refused_for_sites_whose_kernels_were_not_probed():
    """Without a probe mcdrop cannot see an attention kernel inside a custom module (on CUDA its
    dropout would share one mask between the samples of a vmap pass): vmap is refused there,
    and auto does not try it; PyTorch's own plain layers stay vmap-able."""
    # Without a probe (either way), a parent reading its child nn.Dropout's rate into SDPA
    # (timm/HF style) is unseen, so any module outside torch.nn makes vmap unverifiable.
    for unprobed in ({"scope": "train_except_norm"}, {"detect_silent": False, "include": "head"}):
        with pytest.raises(ValueError, match="`strategy`.*FusedAttention \\(not probed\\)"):
            mcdrop.predict_with_uncertainty(
                FusedClassifier().eval(),
                torch.randn(4, 5, 16),
                n_samples=4,
                strategy="vmap",
                **unprobed,
            )
    mc = mcdrop.MCDropout(FusedClassifier().eval(), n_samples=4, scope="train_except_norm")
    mc(torch.randn(4, 5, 16))
    assert mc.last_strategy == "replicate"
    plain = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.3), nn.Linear(8, 3)).eval()
    for model in (plain, torch.compile(plain)):
        result = mcdrop.predict_with_uncertainty(
            model, torch.randn(5, 6), n_samples=4, strategy="vmap", detect_silent=False
        )
        assert result.n_samples == 4


class RowCheck(LinearDropout):
    """Refuses inputs whose fifth row is negative: the user's own error, on any strategy."""

    def forward(self, x):
        if x.shape[0] > 4 and bool(x[4, 0] < 0):
            raise KeyError("row 4 is out of range")
        return super().forward(x)


def test_explicit_vmap_keeps_the_users_own_errors():
    x = torch.randn(6, 4)
    x[4, 0] = -1.0
    for strategy in ("vmap", "loop"):
        with pytest.raises(KeyError, match="row 4"):
            mcdrop.predict_with_uncertainty(RowCheck().eval(), x, n_samples=4, strategy=strategy)


# -- the sampling twin checked on the first chunk -------------------------------------------------


class GatedDot(DotDropout):
    """The dropout child runs only while the parent trains: the twin must switch the parent on,
    which only the first chunk (or a second probe) can find out."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(x) if self.training else x
        return h @ self.w.unsqueeze(1)


class MixedModesFail(DotDropout):
    """Runs in eval and in full training mode, fails with only its dropout child training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop.training and not self.training:
            raise RuntimeError("mixed training modes")
        return super().forward(x)


def _two_row_calls(model: nn.Module) -> list[int]:
    """Batch sizes of every call of ``model``'s forward (its twins share its hooks)."""
    rows: list[int] = []
    model.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    return rows


@pytest.mark.parametrize("strategy", ["loop", "replicate", "vmap"])
def test_one_probe_pass_when_the_first_chunk_confirms_the_twin(strategy):
    model = DotDropout(torch.tensor([1.0, -2.0, 0.5]), 0.4).eval()
    rows = _two_row_calls(model)
    mcdrop.predict_with_uncertainty(
        model, torch.randn(8, 3), n_samples=16, strategy=strategy, task="regression"
    )
    # the training-mode probe (and for replicate the examples-interact check: 2 and 4 examples
    # alone); the first chunk checked the twin
    assert rows.count(2) == (2 if strategy == "replicate" else 1)
    assert all(r in (2, 4, 8, 8 * 16) for r in rows)


@pytest.mark.parametrize("strategy", ["loop", "replicate", "vmap"])
def test_gating_parent_found_on_the_first_chunk_matches_the_closed_form(strategy, caplog):
    p = 0.3
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, -1.0, 4.0], [0.5, 0.0, 3.0, -2.0]], dtype=torch.float64)
    T = 4000
    model = GatedDot(w, p).eval()
    mc = mcdrop.MCDropout(model, n_samples=T, strategy=strategy, batch_budget=2 * 500, seed=4)
    samples = mc(x).squeeze(-1)
    mean_true = x @ w
    var_true = p / (1 - p) * (w**2 * x**2).sum(1)
    z_mean = (samples.mean(0) - mean_true) / (var_true / T).sqrt()
    sq = (samples - samples.mean(0)) ** 2
    z_var = (sq.mean(0) - var_true) / (sq.std(0) / math.sqrt(T))
    assert z_mean.abs().max() < 5 and z_var.abs().max() < 5
    assert {s.name for s in mcdrop.dropout_sites(model, example_inputs=x)} == {"", "drop"}
    assert not any(m.training for m in model.modules())


def test_sampling_twin_that_fails_on_the_first_chunk_is_explained():
    model = MixedModesFail(torch.tensor([1.0, -2.0, 0.5]), 0.4).eval()
    with pytest.raises(ValueError, match="with its dropout sites in training mode on 2 examples"):
        mcdrop.predict_with_uncertainty(model, torch.randn(8, 3), n_samples=8, task="regression")
    assert not any(m.training for m in model.modules())


class TwiceGated(nn.Module):
    """One dropout module used twice, the second use only while the parent trains: the sampling
    twin without the parent makes the call, but too few times in every pass."""

    def __init__(self, w: torch.Tensor, p: float):
        super().__init__()
        self.drop = nn.Dropout(p)
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(x)
        if self.training:
            h = self.drop(h)
        return h @ self.w.unsqueeze(1)


@pytest.mark.parametrize(
    "options",
    [
        {"strategy": "loop"},
        {"strategy": "replicate", "batch_budget": 4},  # the first batch split in two passes
        {"strategy": "vmap", "batch_budget": 2},
        {"strategy": "replicate", "oom_rows": 3},  # the first chunk split by out-of-memory
    ],
    ids=["loop", "replicate-split", "vmap-split", "replicate-oom"],
)
def test_every_pass_of_the_first_chunk_must_make_the_calls_training_makes(monkeypatch, options):
    """Two independent masks per unit: var = sum w^2 x^2 (1 / (1 - p)^2 - 1)."""
    options = dict(options)
    oom_rows = options.pop("oom_rows", None)
    if oom_rows is not None:
        original = Runner.run

        def run(self, name, batch, k, **kw):
            if k * batch.size > oom_rows and not _eval_check(kw):
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return original(self, name, batch, k, **kw)

        monkeypatch.setattr(Runner, "run", run)
    p, T = 0.3, 4000
    w = torch.tensor([0.5, -1.0, 2.0, 0.25], dtype=torch.float64)
    x = torch.tensor([[1.0, 2.0, -1.0, 4.0], [0.5, 0.0, 3.0, -2.0]], dtype=torch.float64)
    x = x.repeat(4, 1)  # 8 examples: a budget of 4 rows splits them
    model = TwiceGated(w, p).eval()
    samples = mcdrop.MCDropout(model, n_samples=T, seed=1, task="regression", **options)(x)
    samples = samples.squeeze(-1)
    var_true = (w**2 * x**2).sum(1) * (1 / (1 - p) ** 2 - 1)
    sq = (samples - samples.mean(0)) ** 2
    z_var = (sq.mean(0) - var_true) / (sq.std(0) / math.sqrt(T))
    assert z_var.abs().max() < 5, z_var


class SharedGatedBlock(nn.Module):
    def __init__(self, drop: nn.Module, gated: bool):
        super().__init__()
        self.drop, self.gated, self.lin = drop, gated, nn.Linear(4, 4)

    def forward(self, x):
        h = torch.tanh(self.lin(x))
        return h if (self.gated and not self.training) else self.drop(h)


class Unreproducible(nn.Module):
    """The shared dropout's second use needs the root's flag, which also switches on a
    training-only stochastic depth: mcdrop must refuse, not sample either way."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.1)
        self.b1, self.b2 = SharedGatedBlock(self.drop, False), SharedGatedBlock(self.drop, True)
        self.head = nn.Linear(4, 1)

    def forward(self, x):
        h = self.b2(self.b1(x))
        if self.training:
            h = h * (torch.rand(h.shape[0], 1) >= 0.5) * 2.0
        return self.head(h)


@pytest.mark.parametrize("strategy", ["auto", "replicate", "loop"])
def test_a_dropout_the_twin_cannot_reproduce_is_refused_under_every_strategy(strategy):
    model = Unreproducible().eval()
    x = torch.randn(8, 4)
    with pytest.raises(ValueError, match="would be missed"):
        mcdrop.dropout_sites(model, example_inputs=x[:2])
    with pytest.raises(ValueError, match="would be missed"):
        mcdrop.predict_with_uncertainty(model, x, n_samples=50, strategy=strategy, seed=0)
    assert not any(m.training for m in model.modules())


class AuxOnly(nn.Module):
    """The only dropout is in a training-only auxiliary head."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.aux = nn.Sequential(nn.Dropout(0.5), nn.Linear(3, 2))

    def forward(self, x):
        h = self.body(x)
        return (h, self.aux(h)) if self.training else h


@pytest.mark.parametrize("n_samples", [1, 8])
def test_a_model_whose_only_dropout_is_an_auxiliary_head_is_refused(n_samples):
    with (
        pytest.warns(UserWarning, match="auxiliary branch"),
        pytest.raises(ValueError, match="Found no dropout"),
    ):
        mcdrop.predict_with_uncertainty(
            AuxOnly().eval(), torch.randn(6, 4), n_samples=n_samples, task="regression"
        )


class PaddedEncoder(nn.Module):
    """Dropout before a PyTorch encoder that is not a site: in eval mode its fused fast path
    gives padded positions other values than the slow path a recording forces."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.2)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True)
        self.out = nn.Linear(16, 1)

    def forward(self, x, mask):
        return self.out(self.enc(self.drop(self.inp(x)), src_key_padding_mask=mask)).squeeze(-1)


def test_every_chunk_computes_the_same_function_around_fused_fast_paths(monkeypatch):
    """CUDA runs no CPU dropout mode, so a recorded first chunk alone would leave the fast path:
    emulated here by switching the CPU mode off. Padded positions never see the dropout."""
    from mcdrop.sampling import _strategies as strategies

    monkeypatch.setattr(strategies, "FastCPUDropout", contextlib.nullcontext)
    torch.manual_seed(0)
    model = PaddedEncoder().eval()
    x = torch.randn(4, 6, 8)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[:, 4:] = True
    samples = mcdrop.MCDropout(
        model, n_samples=6, strategy="loop", batch_budget=8, seed=0, task="regression"
    )(x, mask)
    padded = samples[:, :, 4:]
    assert torch.equal(padded, padded[:1].expand_as(padded))


class PerExample(nn.Module):
    """Runs a block per example (its dropout count grows with the batch) and, while training,
    the block's dropout once more: more calls on a full batch must not hide the missing one."""

    def __init__(self):
        super().__init__()
        self.lin, self.drop, self.head = nn.Linear(4, 4), nn.Dropout(0.5), nn.Linear(4, 1)

    def forward(self, x):
        h = torch.cat([self.drop(self.lin(x[i : i + 1])) for i in range(x.shape[0])])
        if self.training:
            h = self.drop(h)
        return self.head(h)


@pytest.mark.parametrize("strategy", ["loop", "replicate", "vmap", "auto"])
def test_dropout_counts_that_grow_with_the_batch_do_not_hide_a_gated_call(strategy):
    torch.manual_seed(0)
    model = PerExample().eval()
    x = torch.randn(8, 4)
    T = 3000
    model.train()
    with torch.no_grad():
        reference = torch.stack([model(x) for _ in range(T)])
    model.eval()
    samples = mcdrop.predict_with_uncertainty(
        model, x, n_samples=T, strategy=strategy, task="regression", keep_samples=True, seed=1
    ).samples
    _assert_same_distribution(samples, reference)


class AlwaysOn(nn.Module):
    """Hand-written MC dropout: random in eval mode, but its examples never interact."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 16), nn.Linear(16, 1)

    def forward(self, x):
        return self.b(F.dropout(torch.relu(self.a(x)), 0.3, training=True))


class Noisy(AlwaysOn):
    """Random in eval mode beyond dropout (noise injection): the check cannot tell."""

    def forward(self, x):
        return super().forward(x + 0.1 * torch.randn_like(x))


class Mixer(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.d, self.b = nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 1)

    def forward(self, x):
        h = self.d(self.a(x))
        return self.b(h - h.mean(0, keepdim=True))


class TrainCentred(nn.Module):
    """Centres over the batch while training, with a fixed buffer in eval mode."""

    def __init__(self):
        super().__init__()
        self.register_buffer("centre", torch.zeros(16))

    def forward(self, h):
        return h - (h.mean(0) if self.training else self.centre)


class TrainOnlyMixer(Mixer):
    def __init__(self):
        super().__init__()
        self.centre = TrainCentred()

    def forward(self, x):
        return self.b(self.centre(self.d(self.a(x))))


def test_replicate_check_runs_the_twin_as_it_samples_with_its_dropout_off(caplog):
    x = torch.randn(8, 4)
    kw = {"n_samples": 20, "task": "regression", "strategy": "replicate", "seed": 0}
    result = mcdrop.predict_with_uncertainty(AlwaysOn().eval(), x, **kw)  # not refused
    assert (result.epistemic_variance > 0).all()
    with caplog.at_level(logging.WARNING, logger="mcdrop"):
        mcdrop.predict_with_uncertainty(Noisy().eval(), x, **kw)
    assert any("cannot be checked" in r.getMessage() for r in caplog.records)
    model = TrainOnlyMixer().eval()  # mixes only in the modules scope= puts in training mode
    mcdrop.predict_with_uncertainty(model, x, **kw)
    with pytest.raises(ValueError, match="other than 'replicate'"):
        mcdrop.predict_with_uncertainty(model, x, scope="train_except_norm", **kw)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_small_batches_whose_examples_interact_are_not_replicated(n):
    """Fewer than four examples: zero rows are the companions (one example's copies would mix
    too)."""
    torch.manual_seed(0)
    model = Mixer().eval()
    x = torch.randn(n, 4)
    kw = {"task": "regression", "seed": 0}
    with pytest.raises(ValueError, match="other than 'replicate'"):
        mcdrop.predict_with_uncertainty(model, x, n_samples=4, strategy="replicate", **kw)
    if n == 1:  # centred over one example the output is constant: nothing to sample
        return
    T = 3000
    samples = mcdrop.predict_with_uncertainty(model, x, n_samples=T, keep_samples=True, **kw)
    model.train()
    with torch.no_grad():
        reference = torch.stack([model(x) for _ in range(T)])
    model.eval()
    _assert_same_distribution(samples.samples, reference)


class SumNormalised(nn.Module):
    """Divides by a sum over the batch of non-negative units: zero rows would not change it."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.lin = nn.Linear(4, 8, bias=False)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(8, 1, bias=False)
        self.scale = scale

    def forward(self, x):
        h = self.drop(torch.relu(self.lin(x)))
        return self.scale * self.out(h / (h.abs().sum(0, keepdim=True) + 1e-3))


@pytest.mark.parametrize(("n", "amp"), [(1, None), (2, None), (3, None), (8, torch.bfloat16)])
def test_interactions_are_seen_in_small_batches_and_small_low_precision_outputs(n, amp):
    torch.manual_seed(0)
    model = SumNormalised(scale=0.1 if amp else 1.0).eval()
    with pytest.raises(ValueError, match="other than 'replicate'"):
        mcdrop.predict_with_uncertainty(
            model, torch.randn(n, 4), n_samples=4, strategy="replicate", task="regression", amp=amp
        )


class FailsOnFour(LinearDropout):
    def forward(self, x):
        if x.shape[0] == 4:
            raise RuntimeError("this model never sees four examples")
        return super().forward(x)


def test_replicate_that_cannot_be_checked_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="mcdrop"):
        mcdrop.predict_with_uncertainty(
            FailsOnFour().eval(), torch.randn(8, 4), n_samples=4, strategy="replicate"
        )
    assert any(
        "cannot be checked" in r.getMessage() and "four examples" in r.getMessage()
        for r in caplog.records
    )


class DropConnect(nn.Module):
    """Dropout on a weight (as AWD-LSTM's WeightDrop): one mask per pass."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 1)

    def forward(self, x):
        weight = F.dropout(self.lin.weight, 0.5, self.training)
        return F.linear(x, weight, self.lin.bias)


def test_dropout_on_a_weight_is_never_replicated():
    """Closed form per example: var = p / (1 - p) sum w^2 x^2, independent between samples."""
    torch.manual_seed(0)
    model = DropConnect().eval()
    x = torch.randn(8, 4)
    kw = {"task": "regression", "seed": 0}
    with pytest.raises(ValueError, match="drops out a weight"):
        mcdrop.predict_with_uncertainty(model, x, n_samples=4, strategy="replicate", **kw)
    T = 4000
    mc = mcdrop.MCDropout(model, n_samples=T, **kw)
    samples = mc(x).squeeze(-1).double()
    assert mc.last_strategy in ("vmap", "loop")
    w = model.lin.weight.detach().double().squeeze(0)
    var_true = (w**2 * x.double() ** 2).sum(1)  # p / (1 - p) = 1 at p = 0.5
    sq = (samples - samples.mean(0)) ** 2
    z_var = (sq.mean(0) - var_true) / (sq.std(0) / math.sqrt(T))
    assert z_var.abs().max() < 5


def test_the_examples_interact_check_leaves_the_callers_random_stream():
    from mcdrop.sampling._driver import _rows_interact
    from mcdrop.sampling._inputs import _Batch

    runner = Runner(
        Noisy().eval(), device=torch.device("cpu"), amp=None, n_outputs=1, output_transform=None
    )
    batch = _Batch((torch.randn(8, 4),), {}, None, 8)
    before = torch.get_rng_state()
    assert "random" in (_rows_interact(runner, batch) or "")
    assert torch.equal(torch.get_rng_state(), before)
