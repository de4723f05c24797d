"""The ``auto`` rule: decided from the probe (FLOPs, kernels), never from a clock; candidates that
fail on the first chunk fall back with the numbers of the strategy settled on."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

import pytest
import torch
from strategy_models import (
    DeepDropoutMLP,
    HeadDropout,
    TinyTransformer,
    _assert_same_distribution,
    _naive_probs,
)
from torch import nn

import mcdrop
from mcdrop.sampling import _run as driver


class InplaceDropout(nn.Module):
    """In-place dropout on an activation that vmap leaves unbatched, read again after it: it
    stays in place, which vmap cannot run with a mask per sample."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 32)
        self.drop = nn.Dropout(0.3, inplace=True)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(x))
        dropped = self.drop(h)
        return self.fc2(h * 0.5 + dropped)  # ``h`` holds the dropped values too


# -- auto ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("model_cls", [InplaceDropout])
def test_auto_falls_back_when_vmap_cannot_run_the_model(model_cls, caplog):
    model = model_cls().eval()
    x = torch.randn(5, 6) if model_cls is InplaceDropout else torch.randn(5, 7, 16)
    with pytest.raises(ValueError, match="`strategy`.*'vmap'.*'auto'") as refused:  # the reason
        mcdrop.predict_with_uncertainty(model, x, n_samples=8, strategy="vmap")
    assert not any(m.training for m in model.modules())
    with caplog.at_level(logging.INFO, logger="mcdrop"):
        mc = mcdrop.MCDropout(model, n_samples=300, seed=1)
        samples = torch.softmax(mc(x), -1)
    assert mc.last_strategy in ("replicate", "loop")
    if model_cls is InplaceDropout:  # prefix-heavy, but vmap ruled out by the probe: named
        assert "in-place F.dropout in `drop` whose input the forward reads again" in str(
            refused.value
        )
        assert "in-place F.dropout in `drop`" in mc.last_sampling.reason
    _assert_same_distribution(samples, _naive_probs(model, x, 300, seed=2))


def test_vmap_runs_fused_attention_written_out():
    """``nn.TransformerEncoderLayer``'s attention runs fused; mcdrop writes it out with its own
    masks (independent masks too), which vmap batches: sampled like training mode."""
    model = TinyTransformer().eval()
    x = torch.randn(5, 7, 16)
    mc = mcdrop.MCDropout(model, n_samples=300, strategy="vmap", seed=1)
    samples = torch.softmax(mc(x), -1)
    assert mc.last_strategy == "vmap"
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
    """The fallback starts as if chosen first (same numbers as the fixed strategy), rewinding
    mcdrop's own generators: PyTorch's global ones are never rewound (other threads would get
    the same numbers again), seeded or not."""
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
    state = torch.get_rng_state()
    mcdrop.MCDropout(model, n_samples=10)(x)
    assert rewinds == []
    model.vmap_calls = 1
    mcdrop.MCDropout(model, n_samples=10, seed=2)(x)
    assert rewinds == []
    assert torch.equal(torch.get_rng_state(), state)


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
    """The probe and the checks draw nothing that the samples would draw (auto gives the fixed
    strategy's numbers), and the caller's global stream is neither read nor advanced."""
    model = DeepDropoutMLP().eval()
    x = torch.randn(8, 6)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    mc = mcdrop.MCDropout(model, n_samples=32, seed=5)
    probed = mc(x)  # fresh model: probes, then samples
    chosen = mc.last_strategy
    assert chosen is not None
    assert torch.equal(torch.get_rng_state(), state)
    direct = mcdrop.MCDropout(model, n_samples=32, strategy=chosen, seed=5)(x)
    torch.testing.assert_close(probed, direct)
    assert torch.equal(torch.get_rng_state(), state)
