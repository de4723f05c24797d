"""Models and helpers shared by the strategy tests (not a test module)."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

import mcdrop
from mcdrop.dropout._probe import NoDropout


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


# -- out of memory --------------------------------------------------------------------------------


def _eval_check(kw: dict) -> bool:
    """Whether a run is replicate's examples-interact check (dropout at rate 0)."""
    return kw.get("record") is NoDropout


def in_threads(call, inputs: list, threads: int = 8, rounds: int = 6) -> list:
    """``call(inputs[k])`` from ``threads`` threads started together, each making ``rounds``
    calls on the inputs in turn: ``(k, result)`` of every call (raises the first error)."""
    import threading

    results: dict[tuple[int, int], tuple[int, object]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(threads)

    def work(i: int) -> None:
        try:
            start.wait()
            for j in range(rounds):
                k = (i + j) % len(inputs)
                results[(i, j)] = (k, call(inputs[k]))
        except BaseException as error:
            errors.append(error)

    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        raise errors[0]
    assert len(results) == threads * rounds
    return list(results.values())


@contextlib.contextmanager
def drawing_from_the_global_stream():
    """Inside, another thread draws ``torch.rand(8)`` from PyTorch's global generator without
    pause; yields the list of its draws (complete on leaving)."""
    import threading

    stop = threading.Event()
    draws: list[torch.Tensor] = []

    def draw() -> None:
        while not stop.is_set():
            draws.append(torch.rand(8))

    thread = threading.Thread(target=draw)
    thread.start()
    try:
        yield draws
    finally:
        stop.set()
        thread.join()
