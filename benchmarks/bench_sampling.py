"""Benchmark of Monte Carlo dropout sampling strategies (not a test).

Times, for four model families (conv net with a dropout head, MLP with dropout after every
layer, transformer encoder classifier with dropout everywhere: PyTorch's fused encoder, and the
same written out with eager attention as Hugging Face's ``"eager"``), in fp32 and bf16
autocast:

* ``deterministic``: one plain pass, ``model.eval()``;
* ``naive loop``: what a user writes by hand, dropout modules on and a Python loop of ``T``
  passes whose outputs are stacked;
* ``loop`` / ``replicate`` / ``vmap``: ``mcdrop.MCDropout(strategy=...)`` returning the ``T``
  stacked samples (raw sampling, mcdrop's chunking, no statistics);
* ``auto``: the same with ``strategy="auto"`` (decided from the probe pass, never timed);
* ``... 1st call``: the first call of a new ``MCDropout`` on a copy of the model that mcdrop has
  not seen (twin, the probe, the ``auto`` rule, memory sizing, the examples-interact check),
  in a process already warm from the steady-state runs (median of rounds, like the rest);
* ``auto e2e``: ``mcdrop.predict_with_uncertainty`` end to end (sampling, streaming statistics,
  result on the CPU), fixed seed, no progress bar;
* ``compile`` (``--compile``): ``MCDropout(strategy="replicate", compile=True)``.

Medians of ``--repeats`` runs after warm-up, ``torch.cuda.synchronize`` around each; the methods
are timed round-robin (one run of each per round) so that load from other processes hits them
alike, and every ratio is computed from timings of the same run. On CPU the models are smaller than on GPU (printed).
For the transformer on GPU the achieved TFLOP/s counts matmul FLOPs analytically::

    per pass = B * L * layers * (8 d^2 + 4 d d_ff + 4 L d)   (+ the head, negligible)

(QKV and output projections ``2 * 4 d^2``, feed-forward ``2 * 2 d d_ff``, attention scores and
weighted values ``2 * 2 L d`` per token), against the card's dense bf16 peak.

Run::

    python benchmarks/bench_sampling.py --device auto --json bench.json
    python benchmarks/bench_sampling.py --quick            # smoke run, seconds
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import mcdrop

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, by substring of the device name.
PEAK_BF16_TFLOPS = [
    ("H200", 989.0),
    ("H100 PCIe", 756.0),
    ("H100", 989.0),  # SXM
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
    ("4090", 165.0),
]

SIZES = {
    # name: (GPU sizes, CPU sizes)
    "conv": ({"width": 64, "image": 32}, {"width": 16, "image": 32}),
    "mlp": ({"width": 1024, "depth": 4}, {"width": 256, "depth": 4}),
    "transformer": (
        {"d": 512, "layers": 6, "heads": 8, "ff": 2048, "seq": 128},
        {"d": 128, "layers": 2, "heads": 4, "ff": 512, "seq": 32},
    ),
}
SIZES["eager_transformer"] = SIZES["transformer"]
QUICK_SIZES = {
    "conv": {"width": 4, "image": 8},
    "mlp": {"width": 16, "depth": 2},
    "transformer": {"d": 16, "layers": 1, "heads": 2, "ff": 32, "seq": 4},
}
QUICK_SIZES["eager_transformer"] = QUICK_SIZES["transformer"]


class ConvHead(nn.Module):
    """Conv net, dropout only in the classifier head."""

    def __init__(self, width: int, image: int, classes: int = 10):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.BatchNorm2d(w),
            nn.ReLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
            nn.Conv2d(4 * w, 4 * w, 3, padding=1),
            nn.BatchNorm2d(4 * w),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Dropout(0.5), nn.Linear(4 * w, classes))
        self.image = image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def example(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.randn(batch, 3, self.image, self.image, device=device)


class DropoutMLP(nn.Module):
    """MLP with dropout after every layer (on the input too): no prefix to share."""

    def __init__(self, width: int, depth: int, d_in: int = 784, classes: int = 10):
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(0.2)]
        dims = [d_in] + [width] * depth
        for a, b in itertools.pairwise(dims):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(0.5)]
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)
        self.d_in = d_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def example(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.randn(batch, self.d_in, device=device)


class EncoderClassifier(nn.Module):
    """Transformer encoder classifier, dropout everywhere (attention, feed-forward, residual):
    PyTorch's fused encoder, or with ``eager`` the same sizes as :class:`EagerBlock` layers."""

    def __init__(
        self,
        d: int,
        layers: int,
        heads: int,
        ff: int,
        seq: int,
        classes: int = 10,
        *,
        eager: bool = False,
    ):
        super().__init__()
        self.encoder: nn.Module
        if eager:
            self.encoder = nn.Sequential(*(EagerBlock(d, heads, ff) for _ in range(layers)))
        else:
            layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.1, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d, classes)
        self.d, self.n_layers, self.ff, self.seq = d, layers, ff, seq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean(1))

    def example(self, batch: int, device: torch.device) -> torch.Tensor:
        return torch.randn(batch, self.seq, self.d, device=device)

    def flops_per_pass(self, batch: int) -> float:
        d, ff, seq = self.d, self.ff, self.seq
        return float(batch * seq * self.n_layers * (8 * d * d + 4 * d * ff + 4 * seq * d))


class EagerBlock(nn.Module):
    """Pre-norm encoder block with attention written out, as Hugging Face's "eager" attention:
    ``softmax(q k^T / sqrt(d_h))`` with ``nn.Dropout`` on the weights, dropout after the output
    projection and in the feed-forward. Plain ops: vmap can draw a mask per sample everywhere."""

    def __init__(self, d: int, heads: int, ff: int, p: float = 0.1):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.attn_drop, self.drop = nn.Dropout(p), nn.Dropout(p)
        self.ff = nn.Sequential(
            nn.Linear(d, ff), nn.GELU(), nn.Dropout(p), nn.Linear(ff, d), nn.Dropout(p)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, -1).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, L, d_h)
        weights = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5).softmax(-1)
        attended = (self.attn_drop(weights) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop(self.out(attended))
        return x + self.ff(self.norm2(x))


def build(name: str, sizes: dict[str, int]) -> nn.Module:
    if name == "conv":
        return ConvHead(**sizes)
    if name == "mlp":
        return DropoutMLP(**sizes)
    if name == "eager_transformer":
        return EncoderClassifier(**sizes, eager=True)
    return EncoderClassifier(**sizes)


_SAMPLING_TYPES = (nn.Dropout, nn.MultiheadAttention, nn.TransformerEncoderLayer)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit_interleaved(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    repeats: int,
    *,
    warm_up: bool = True,
) -> dict[str, float]:
    """Median ms of each function, timed round-robin so that every one sees the same load.

    The deterministic pass is short: it runs 5 times per round. Each function runs once untimed
    first, unless ``warm_up`` is False (first calls: the process is already warm from the
    steady-state runs on that model).
    """
    if warm_up:
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            for _ in range(5 if name == "deterministic" else 1):
                _sync(device)
                start = time.perf_counter()
                fn()
                _sync(device)
                times[name].append((time.perf_counter() - start) * 1e3)
    return {f"{name}_ms": statistics.median(t) for name, t in times.items()}


def _autocast(device: torch.device, dtype: str) -> Any:
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return torch.autocast(device_type=device.type, enabled=False)


def peak_tflops(device: torch.device, override: float | None) -> tuple[float | None, str]:
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "n/a on CPU"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS:
        if key in name:
            return value, f"{name} dense bf16"
    return None, f"unknown card {name!r}: pass --peak-tflops"


def _warm_up_process() -> None:
    """One call on a tiny model: the process-wide one-time costs (PyTorch initialises dynamo the
    first time a conv runs under a ``TorchFunctionMode``, about a second) are not charged to the
    first call of whichever strategy happens to run first."""
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Dropout(0.2), nn.LazyLinear(2))
    tiny(torch.randn(4, 3, 6, 6))
    for strategy in ("auto", "loop"):
        mcdrop.predict_with_uncertainty(
            tiny.eval(), torch.randn(4, 3, 6, 6), n_samples=4, strategy=strategy, progress=False
        )


def _peers(
    model: nn.Module, x: torch.Tensor, T: int, device: torch.device, dtype: str
) -> tuple[dict[str, Callable[[], Any]], dict[str, bool]]:
    """baal and torch-uncertainty, when installed, each on its own copy of the model (both change
    the model they wrap); and whether their samples vary at all (see the docs: neither switches
    on dropout held in a float, so PyTorch's fused encoder runs without any)."""
    fns: dict[str, Callable[[], Any]] = {}
    samples: dict[str, Callable[[], torch.Tensor]] = {}
    try:
        from baal.bayesian.dropout import MCDropoutModule
        from baal.modelwrapper import ModelWrapper, TrainingArgs
    except ImportError:
        pass
    else:
        wrapper = ModelWrapper(MCDropoutModule(copy.deepcopy(model)), TrainingArgs(use_cuda=False))

        def baal() -> torch.Tensor:  # (B, C, T)
            with torch.inference_mode(), _autocast(device, dtype):
                return wrapper.predict_on_batch(x, iterations=T)

        fns["baal"] = baal
        samples["baal"] = lambda: baal().movedim(-1, 0)
    try:
        from torch_uncertainty.methods.mc_dropout import mc_dropout
    except ImportError:
        pass
    else:
        tu_model = mc_dropout(copy.deepcopy(model), num_estimators=T, on_batch=True).eval()

        def tu() -> torch.Tensor:  # (T * B, C)
            with torch.inference_mode(), _autocast(device, dtype):
                return tu_model(x)

        fns["torch_uncertainty"] = tu
        samples["torch_uncertainty"] = lambda: tu().reshape(T, x.shape[0], -1)
    drops = {}
    for name, draw in samples.items():
        out = draw()
        drops[name] = bool((out != out[:1]).any())
    return fns, drops


def bench_one(
    name: str,
    model: nn.Module,
    device: torch.device,
    dtype: str,
    batch: int,
    T: int,
    repeats: int,
    do_compile: bool,
) -> dict[str, Any]:
    x = model.example(batch, device)  # type: ignore[operator]
    amp = "bf16" if dtype == "bf16" else None
    row: dict[str, Any] = {"model": name, "dtype": dtype, "device": device.type, "batch": batch}
    row["samples"] = T

    def deterministic() -> None:
        model.eval()
        with torch.inference_mode(), _autocast(device, dtype):
            model(x)

    def naive_loop() -> None:
        model.eval()
        for module in model.modules():
            if isinstance(module, _SAMPLING_TYPES):
                module.train()
        with torch.inference_mode(), _autocast(device, dtype):
            torch.stack([model(x) for _ in range(T)])
        model.eval()

    fns: dict[str, Callable[[], Any]] = {"deterministic": deterministic, "naive_loop": naive_loop}
    _warm_up_process()
    first_calls: dict[str, Callable[[], Any]] = {}
    for strategy in ("loop", "replicate", "vmap", "auto"):
        mc = mcdrop.MCDropout(model, n_samples=T, strategy=strategy, amp=amp)
        try:
            mc(x)
        except Exception as error:  # vmap cannot run every model
            row[f"{strategy}_ms"] = None
            row[f"{strategy}_error"] = f"{type(error).__name__}: {str(error)[:120]}"
            continue
        fns[strategy] = lambda mc=mc: mc(x)
        # A new MCDropout on a model object mcdrop has not seen: twin, the probe, the auto
        # rule, memory sizing and the examples-interact check all run again.
        first_calls[strategy] = lambda s=strategy: mcdrop.MCDropout(
            copy.deepcopy(model), n_samples=T, strategy=s, amp=amp
        )(x)
        if strategy == "auto":
            row["auto_strategy"] = mc.last_strategy
            row["auto_samples_per_pass"] = mc.last_samples_per_pass

    def predict() -> None:
        mcdrop.predict_with_uncertainty(model, x, n_samples=T, amp=amp, seed=0, progress=False)

    fns["auto_predict"] = predict
    peers, drops = _peers(model, x, T, device, dtype)
    fns.update(peers)
    for name, varies in drops.items():
        row[f"{name}_samples_vary"] = varies
    if do_compile:
        mc_c = mcdrop.MCDropout(model, n_samples=T, strategy="replicate", amp=amp, compile=True)
        _sync(device)
        start = time.perf_counter()
        mc_c(x)
        _sync(device)
        row["compile_first_ms"] = (time.perf_counter() - start) * 1e3
        fns["compile"] = lambda: mc_c(x)
    row.update(timeit_interleaved(fns, device, repeats))
    firsts = timeit_interleaved(first_calls, device, max(3, repeats // 2), warm_up=False)
    row.update({key.replace("_ms", "_first_ms"): value for key, value in firsts.items()})

    det = row["deterministic_ms"]
    row["auto_vs_deterministic"] = row["auto_predict_ms"] / det
    row["auto_raw_vs_deterministic"] = row["auto_ms"] / det
    row["speedup_vs_naive"] = row["naive_loop_ms"] / row["auto_predict_ms"]
    row["speedup_raw_vs_naive"] = row["naive_loop_ms"] / row["auto_ms"]
    fixed = [k for k in ("loop", "replicate", "vmap") if row.get(f"{k}_ms") is not None]
    row["auto_vs_best_fixed"] = row["auto_ms"] / min(row[f"{k}_ms"] for k in fixed)
    row["auto_first_vs_best_fixed_first"] = row["auto_first_ms"] / min(
        row[f"{k}_first_ms"] for k in fixed
    )
    row["throughput_samples_per_s"] = T * batch / (row["auto_predict_ms"] / 1e3)
    if isinstance(model, EncoderClassifier):
        flops = model.flops_per_pass(batch) * T
        row["tflops_auto"] = flops / (row["auto_ms"] / 1e3) / 1e12
        best = min(
            row[f"{key}_ms"]
            for key in ("loop", "replicate", "vmap", "auto", "compile")
            if row.get(f"{key}_ms")
        )
        row["tflops_best"] = flops / (best / 1e3) / 1e12
    return row


def memory_target(device: torch.device) -> dict[str, Any]:
    """T=2000, N=4096, C=100 (the GPU MLP with 100 classes): peak memory above the level before
    the call, against one deterministic pass of the 4096 examples, read as the highest
    ``torch.cuda.memory_allocated`` after any op (the allocator's peak counter is left alone)."""
    from mcdrop.sampling import _memory as memory

    torch.manual_seed(0)
    model = DropoutMLP(1024, 4, classes=100).to(device).eval()
    x = model.example(4096, device)
    with torch.inference_mode():
        det, _ = memory.pass_bytes(lambda: model(x), device)
    _sync(device)
    base = torch.cuda.memory_allocated(device)
    with memory.PeakAllocated(device) as peak:
        result = mcdrop.predict_with_uncertainty(model, x, n_samples=2000, seed=0, progress=False)
    _sync(device)
    start = time.perf_counter()
    mcdrop.predict_with_uncertainty(model, x, n_samples=2000, seed=0, progress=False)
    _sync(device)
    seconds = time.perf_counter() - start
    row = {
        "model": "mlp C=100",
        "samples": 2000,
        "batch": 4096,
        "deterministic_pass_bytes": det,
        "peak_extra_bytes": peak.peak - base,
        "samples_bytes_fp32": 2000 * 4096 * 100 * 4,
        "seconds": seconds,
        "n_samples": result.n_samples,
    }
    return row


def targets(row: dict[str, Any], peak: float | None) -> list[str]:
    """The issue's targets that apply to this row, as 'met'/'NOT met' lines."""
    out = []

    def check(label: str, ok: bool, value: str) -> None:
        out.append(f"{'met    ' if ok else 'NOT met'} {label}: {value}")

    m, dt, dev = row["model"], row["dtype"], row["device"]
    if m == "conv":
        r = row["auto_vs_deterministic"]
        limit = 1.2 if dev == "cuda" else 1.5
        check(f"conv {dt} {dev} <= {limit}x one pass", r <= limit, f"{r:.2f}x end to end")
    if m == "transformer" and dt == "bf16" and dev == "cuda":
        s = row["speedup_vs_naive"]
        check("transformer bf16 >= 2x naive loop", s >= 2, f"{s:.2f}x")
        if peak:
            frac = row["tflops_auto"] / peak
            check("transformer bf16 >= 50 % of peak", frac >= 0.5, f"{100 * frac:.0f} %")
    if m == "mlp" and dt == "bf16" and dev == "cuda":
        s = row["speedup_vs_naive"]
        check("mlp bf16 >= 15x naive loop", s >= 15, f"{s:.1f}x")
    r = row["auto_vs_best_fixed"]
    check(f"{m} {dt} {dev} auto steady <= 1.10x best fixed strategy", r <= 1.10, f"{r:.2f}x")
    r = row["auto_first_vs_best_fixed_first"]
    check(f"{m} {dt} {dev} auto first call <= 1.25x best fixed first", r <= 1.25, f"{r:.2f}x")
    return out


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 10 else f"{value:.2f}"
    return str(value)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--samples", type=int, default=100, help="T")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=None, help="default 5 on GPU, 3 on CPU")
    parser.add_argument("--models", default="conv,mlp,transformer,eager_transformer")
    parser.add_argument("--dtype", default="fp32,bf16")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument("--compile", action="store_true", help="also time compile=True")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    elif args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")
    else:
        devices = [args.device]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    T = 4 if args.quick else args.samples
    if args.quick:
        dtypes = dtypes[:1]

    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_threads": torch.get_num_threads(),
        "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "mcdrop": mcdrop.__version__,
    }
    print(f"torch {info['torch']}, CPU {info['cpu']} ({info['cpu_threads']} threads)", end="")
    print(f", GPU {info['cuda_device']}" if info["cuda_device"] else ", no GPU")
    results: list[dict[str, Any]] = []
    lines: list[str] = []
    for dev_name in devices:
        device = torch.device(dev_name)
        repeats = args.repeats or (5 if device.type == "cuda" else 3)
        if args.quick:
            repeats = 1
        peak, peak_source = peak_tflops(device, args.peak_tflops)
        for name in models:
            gpu_sizes, cpu_sizes = SIZES[name]
            sizes = (
                QUICK_SIZES[name] if args.quick else gpu_sizes if dev_name == "cuda" else cpu_sizes
            )
            batch = args.batch
            if name.endswith("transformer") and dev_name == "cpu" and not args.quick:
                batch = min(batch, 16)
            torch.manual_seed(0)
            model = build(name, sizes).to(device).eval()
            for dtype in dtypes:
                row = bench_one(name, model, device, dtype, batch, T, repeats, args.compile)
                row["sizes"] = sizes
                results.append(row)
                print(
                    f"\n[{dev_name}] {name} {dtype}: sizes {sizes}, batch {batch}, T={T}, "
                    f"median of {repeats}"
                )
                cols = [
                    ("deterministic", "deterministic_ms"),
                    ("naive loop", "naive_loop_ms"),
                    ("loop", "loop_ms"),
                    ("replicate", "replicate_ms"),
                    ("vmap", "vmap_ms"),
                    ("auto", "auto_ms"),
                    ("auto e2e", "auto_predict_ms"),
                    ("loop 1st call", "loop_first_ms"),
                    ("replicate 1st", "replicate_first_ms"),
                    ("vmap 1st call", "vmap_first_ms"),
                    ("auto 1st call", "auto_first_ms"),
                    ("baal", "baal_ms"),
                    ("torch-uncert.", "torch_uncertainty_ms"),
                ]
                if args.compile:
                    cols += [("compile", "compile_ms"), ("compile 1st", "compile_first_ms")]
                for label, key in cols:
                    value = row.get(key)
                    ratio = "" if value is None else f"{value / row['deterministic_ms']:7.2f}x pass"
                    speed = "" if value is None else f"{row['naive_loop_ms'] / value:7.2f}x faster"
                    print(f"  {label:<14} {_fmt(value):>10} ms {ratio}  {speed} than naive loop")
                for peer in ("baal", "torch_uncertainty"):
                    if f"{peer}_samples_vary" in row and not row[f"{peer}_samples_vary"]:
                        print(f"  {peer}: every sample identical (no dropout ran)")
                if row.get("vmap_error"):
                    print(f"  vmap: {row['vmap_error']}")
                print(
                    f"  auto chose {row['auto_strategy']!r} ({row['auto_samples_per_pass']} samples"
                    f" per pass); throughput {row['throughput_samples_per_s']:.3g} samples x "
                    "examples / s end to end"
                )
                if "tflops_auto" in row:
                    if peak:
                        share = f" = {100 * row['tflops_auto'] / peak:.0f} % of {peak:g}"
                        row["peak_tflops"] = peak
                    else:
                        share = ""
                    print(
                        f"  transformer matmul throughput: auto {row['tflops_auto']:.2f} TFLOP/s"
                        f"{share} (peak: {peak_source}); best strategy "
                        f"{row['tflops_best']:.2f} TFLOP/s"
                    )
                for line in targets(row, peak):
                    print("  target", line)
                    lines.append(line)
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if device.type == "cuda" and not args.quick:
            mem = memory_target(device)
            torch.cuda.empty_cache()
            results.append(mem)
            extra, det = mem["peak_extra_bytes"], mem["deterministic_pass_bytes"]
            print(
                f"\n[cuda] T=2000, N=4096, C=100: peak {extra / 2**30:.2f} GiB above the start "
                f"(one deterministic pass {det / 2**30:.2f} GiB; the samples alone would be "
                f"{mem['samples_bytes_fp32'] / 2**30:.2f} GiB in fp32); {mem['seconds']:.2f} s"
            )
            ok = extra - det <= 1e9
            line = (
                f"{'met    ' if ok else 'NOT met'} T=2000 N=4096 C=100 within 1 GB of one pass: "
                f"{(extra - det) / 1e9:.2f} GB more"
            )
            lines.append(line)
    if devices == ["cpu"] and not args.quick:
        print(
            "\nCPU sizes are smaller than the GPU ones (see 'sizes'); no GPU figures in this run."
        )
    print("\nTargets:")
    for line in lines:
        print(" ", line)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({**info, "argv": sys.argv[1:], "results": results}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
