"""CUDA: every strategy against a training-mode reference, memory sizing, the real out-of-memory
back-off, AMP, ``compile=True`` and NCCL.

Skipped without CUDA; run on a GPU machine with ``python -m pytest -m gpu``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import MLP, FusedClassifier, assert_matches_reference, training_reference
from torch import nn

import mcdrop
from mcdrop.sampling import _engine as driver
from mcdrop.sampling import _memory as memory

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

ROOT = Path(__file__).resolve().parents[2]
GiB = 2**30


def _scaled(model: nn.Module, head: nn.Linear, factor: float = 4.0) -> nn.Module:
    """Random-init heads are near-constant: scale them so that the tests can fail."""
    with torch.no_grad():
        head.weight.mul_(factor)
    return model.cuda().eval()


class Encoder(nn.Module):
    """PyTorch's encoder: dropout in attention (a float), feed-forward and residuals."""

    def __init__(self, d: int = 32, n_classes: int = 5):
        super().__init__()
        layer = nn.TransformerEncoderLayer(d, 4, 64, dropout=0.2, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))


class WideMLP(nn.Module):
    """Dropout on a wide hidden layer: about 40 KB of activations per row."""

    def __init__(self, width: int = 8192, n_classes: int = 10):
        super().__init__()
        self.body = nn.Linear(64, width)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.body(x))))


def _models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    mlp = MLP(d_in=6, hidden=64, n_classes=4)
    fused = FusedClassifier(dim=16, n_classes=3)
    enc = Encoder()
    return {
        "mlp": (_scaled(mlp, mlp.head), torch.randn(12, 6, device="cuda")),
        "sdpa": (_scaled(fused, fused.head, 8.0), torch.randn(6, 5, 16, device="cuda")),
        "encoder": (_scaled(enc, enc.head, 8.0), torch.randn(6, 7, 32, device="cuda")),
    }


@pytest.mark.parametrize("name", ["mlp", "sdpa", "encoder"])
@pytest.mark.parametrize("strategy", ["loop", "replicate", "vmap", "auto"])
def test_strategy_matches_training_reference(name: str, strategy: str) -> None:
    model, x = _models()[name]
    T = 600
    try:
        result = mcdrop.predict_with_uncertainty(
            model, x, n_samples=T, strategy=strategy, keep_samples=True, seed=1, progress=False
        )
    except ValueError as error:  # vmap refuses fused kernels it cannot batch, by name
        assert strategy == "vmap" and "vmap" in str(error)
        return
    assert result.mean.device.type == "cpu" and result.mean.dtype == torch.float64
    reference = training_reference(model, lambda m: m(x), T).cpu()
    assert_matches_reference(result, reference, class_dim=1)


def test_auto_on_cuda_uses_vmap_for_small_calls_where_it_draws_a_mask_per_sample() -> None:
    """vmap (no examples-interact check) for a small call with plain dropout; replicate for fused
    attention, whose dropout vmap would share between samples, and for a large call."""
    for name, expected in (("mlp", "vmap"), ("sdpa", "replicate"), ("encoder", "replicate")):
        model, x = _models()[name]
        mc = mcdrop.MCDropout(model, n_samples=8, seed=0)
        mc(x)
        assert mc.last_strategy == expected, name
    head = nn.Linear(4096, 10)  # dropout first: no prefix to share
    wide = nn.Sequential(nn.Dropout(0.2), nn.Linear(64, 4096), nn.ReLU(), nn.Dropout(0.5), head)
    wide = _scaled(wide, head)
    x = torch.randn(512, 64, device="cuda")  # 0.6 MFLOP per example: 0.6 TFLOP for T = 2000
    for n_samples, expected in ((100, "vmap"), (2000, "replicate")):
        mc = mcdrop.MCDropout(wide, n_samples=n_samples, seed=0)
        mc(x)
        assert mc.last_strategy == expected, n_samples


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_real_out_of_memory_back_off_keeps_every_sample() -> None:
    """A pass sized past the memory this process may use fails for real; mcdrop halves it and
    returns every sample, distributed as the training-mode reference."""
    model = WideMLP()
    model = _scaled(model, model.head, 40.0)
    x = torch.randn(256, 64, device="cuda")
    T = 400  # one pass of T x 256 rows would need over 3 GiB; this process may take 1 GiB more
    total = torch.cuda.get_device_properties(0).total_memory
    fraction = (torch.cuda.memory_allocated() + GiB) / total
    logger = logging.getLogger("mcdrop")
    handler = _Messages()
    logger.addHandler(handler)
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(fraction)
    try:
        mc = mcdrop.MCDropout(model, n_samples=T, batch_budget=10**8, seed=3)
        samples = mc(x)
        backed_off = [m for m in handler.messages if "out of memory" in m]
        assert backed_off, handler.messages
        assert samples.shape == (T, 256, 10)
        assert (samples[1:] != samples[:-1]).any(-1).all()  # no sample repeated or left empty
        assert mc._engine is not None and mc._engine.planner.sample_cap is not None
        handler.messages.clear()
        cap = mc._engine.planner.sample_cap
        assert mc(x).shape == (T, 256, 10)  # the back-off is kept: it starts from the cap
        assert not [m for m in handler.messages if f"with {T} samples" in m], handler.messages
        assert mc._engine.planner.sample_cap <= cap
        result = mcdrop.predict_with_uncertainty(
            model, x[:16], n_samples=T, batch_budget=10**8, keep_samples=True, seed=4
        )
    finally:
        logger.removeHandler(handler)
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    assert result.n_samples == T
    reference = training_reference(model, lambda m: m(x[:16]), T).cpu()
    assert_matches_reference(result, reference, class_dim=1)


def test_memory_sizing_is_deterministic_and_leaves_the_users_peak() -> None:
    model = WideMLP()
    model = _scaled(model, model.head, 40.0)
    x = torch.randn(128, 64, device="cuda")
    T = 600  # 76,800 rows: several passes whatever the sizing

    def run() -> tuple[int, torch.Tensor]:
        driver._BUDGETS.clear()  # measure again: the second run must not reuse the first's size
        mc = mcdrop.MCDropout(model, n_samples=T, seed=11)
        samples = mc(x)
        assert mc._engine is not None
        return mc._engine.planner.budget, samples

    budget, first = run()
    assert 1 < budget < T * x.shape[0]
    user = torch.empty(4 * GiB, dtype=torch.uint8, device="cuda")  # the user's peak, then freed
    del user
    user_peak = torch.cuda.max_memory_allocated()
    hog = torch.empty(16 * GiB, dtype=torch.uint8, device="cuda")  # less free memory
    try:
        budget_busy, busy = run()
    finally:
        del hog
    assert torch.cuda.max_memory_allocated() >= user_peak  # not reset
    assert budget_busy == budget  # neither the user's peak nor free memory changes the plan
    assert torch.equal(busy, first)  # so the same seed gives the same numbers


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_keeps_float64_statistics(amp: str) -> None:
    model, x = _models()["mlp"]
    T = 600
    result = mcdrop.predict_with_uncertainty(
        model, x, n_samples=T, amp=amp, keep_samples=True, seed=5, progress=False
    )
    assert result.mean.dtype == torch.float64
    assert torch.allclose(result.mean.sum(-1), torch.ones(len(x), dtype=torch.float64))
    assert bool((result.mutual_information >= 0).all())
    assert bool((result.mutual_information <= result.predictive_entropy + 1e-12).all())
    reference = training_reference(model, lambda m: m(x), T).cpu()
    assert_matches_reference(result, reference, class_dim=1)


def test_compile_true_on_cuda() -> None:
    model, x = _models()["mlp"]
    T = 600
    for strategy in ("replicate", "auto"):
        result = mcdrop.predict_with_uncertainty(
            model, x, n_samples=T, strategy=strategy, compile=True, keep_samples=True, seed=6
        )
        reference = training_reference(model, lambda m: m(x), T).cpu()
        assert_matches_reference(result, reference, class_dim=1)


def test_many_samples_stream_in_bounded_memory() -> None:
    """T=2000, N=4096, C=100: the samples (3.3 GB in float32) are never held; the peak stays
    within 1 GiB of one sampling pass of the size mcdrop chose."""
    model = nn.Sequential(nn.Linear(32, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 100))
    model = model.cuda().eval()
    x = torch.randn(4096, 32, device="cuda")
    cuda = torch.device("cuda")
    mc = mcdrop.MCDropout(model, n_samples=2)
    mc(x)  # sizes the passes
    assert mc._engine is not None
    k = max(1, mc._engine.planner.budget * mc._engine.planner.scale // len(x))
    one_pass, _ = memory.pass_bytes(lambda: mcdrop.MCDropout(model, n_samples=k)(x), cuda)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    with memory.PeakAllocated(cuda) as peak:
        result = mcdrop.predict_with_uncertainty(model, x, n_samples=2000, seed=7, progress=False)
    extra = peak.peak - base
    assert result.n_samples == 2000 and result.mean.shape == (4096, 100)
    assert extra < one_pass + GiB, f"{extra / GiB:.2f} GiB over {one_pass / GiB:.2f} GiB"


_NCCL_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    from torch import nn
    import mcdrop

    torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(0.4), nn.Linear(64, 5))
    model = model.cuda().eval()
    x = torch.randn(37, 8, device="cuda")
    dist_result = mcdrop.predict_with_uncertainty(
        model, x, n_samples=400, seed=0, distributed=True, progress=False
    )
    only = mcdrop.predict_with_uncertainty(
        model, x, n_samples=400, seed=0, distributed=True, rank0_only=True, progress=False
    )
    dist.destroy_process_group()
    plain = mcdrop.predict_with_uncertainty(model, x, n_samples=400, seed=0, progress=False)
    z = (dist_result.mean - plain.mean).abs() / (
        (dist_result.standard_error**2 + plain.standard_error**2).sqrt().clamp_min(1e-6)
    )
    json.dump(
        {"n": int(dist_result.mean.shape[0]), "z": float(z.max()),
         "rank0_only_equal": bool(torch.equal(only.mean, dist_result.mean))},
        open(sys.argv[1], "w"),
    )
    """
)


def test_nccl_world_size_one_under_torchrun(tmp_path: Path) -> None:
    if not torch.distributed.is_nccl_available():
        pytest.skip("NCCL not built in")
    worker = tmp_path / "worker.py"
    worker.write_text(_NCCL_WORKER)
    out = tmp_path / "out.json"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node=1",
            "--master_port=29533",
            str(worker),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["n"] == 37 and record["rank0_only_equal"]
    assert record["z"] < 5.5
