"""Shared fixtures and small models for the mcdrop test suite."""

from __future__ import annotations

import os

import matplotlib
import pytest
import torch
from torch import nn
from torch.nn import functional as F

matplotlib.use("Agg")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(1234)
    yield


@pytest.fixture(autouse=True)
def _fresh_layouts():
    """Shared masks keep the layouts they learn between calls (keyed by module ids, which a
    later test's model may reuse): every test learns its own first."""
    from mcdrop.sampling import _shared

    _shared._LAYOUTS.clear()
    yield


@pytest.fixture
def pyplot():
    """matplotlib.pyplot with every figure closed after the test."""
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


class MLP(nn.Module):
    """Classifier with BatchNorm and a dropout head (the common case)."""

    def __init__(self, d_in: int = 6, hidden: int = 32, n_classes: int = 4, p: float = 0.3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU())
        self.drop = nn.Dropout(p)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.body(x)))


class FusedAttention(nn.Module):
    """Attention block that reads its Dropout child's rate into SDPA (timm/HF style)."""

    def __init__(self, dim: int = 16, heads: int = 2, p: float = 0.4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attn_drop = nn.Dropout(p)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class FusedClassifier(nn.Module):
    def __init__(self, dim: int = 16, n_classes: int = 3):
        super().__init__()
        self.attn = FusedAttention(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.attn(x).mean(1))


class FunctionalDropout(nn.Module):
    """Uses F.dropout gated on its own training flag: invisible to a module scan."""

    def __init__(self, d_in: int = 6, n_classes: int = 3, p: float = 0.5):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 32)
        self.fc2 = nn.Linear(32, n_classes)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.fc1(x))
        return self.fc2(F.dropout(h, self.p, self.training))


def training_reference(model: nn.Module, forward, n_samples: int, keep_eval=()) -> torch.Tensor:
    """``(T, ...)`` outputs of a naive loop in training mode, norm layers (and ``keep_eval``) in eval.

    The independent reference for Monte Carlo dropout: when dropout is a model's only training-mode
    randomness, mcdrop must agree with it within Monte Carlo error. The model's flags are restored.
    """
    flags = {m: m.training for m in model.modules()}
    try:
        model.train()
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._NormBase) or module in keep_eval:
                module.eval()
        with torch.no_grad():
            return torch.stack([forward(model) for _ in range(n_samples)])
    finally:
        for module, flag in flags.items():
            module.training = flag


def _mutual_information(probs: torch.Tensor, class_dim: int) -> torch.Tensor:
    """Mean over examples of H(E[p]) - E[H(p)] from probabilities ``(T, N, ...)``."""
    probs = probs.double().clamp_min(1e-300)
    mean = probs.mean(0)
    total = -(mean * mean.log()).sum(class_dim)
    expected = -(probs * probs.log()).sum(class_dim + 1 if class_dim >= 0 else class_dim).mean(0)
    return (total - expected).mean()


def assert_matches_reference(result, reference_logits: torch.Tensor, class_dim: int = 1) -> None:
    """Mean probabilities and mutual information agree with the reference within MC error.

    ``result`` needs ``keep_samples=True``. Means: every element within 6 standard errors of the
    difference and the mean squared z-score below 2 (about 1 when both agree). Mutual information
    (averaged over examples): within 4 bootstrap standard errors of the difference.
    """
    ours = result.samples.double()
    theirs = torch.softmax(reference_logits.double(), dim=class_dim + 1 if class_dim >= 0 else -1)
    t1, t2 = ours.shape[0], theirs.shape[0]
    se = (ours.var(0) / t1 + theirs.var(0) / t2).sqrt().clamp_min(1e-6)
    z = (ours.mean(0) - theirs.mean(0)) / se
    assert z.abs().max() < 6 and (z**2).mean() < 2, f"means differ: max |z| {z.abs().max():.2f}"
    gen = torch.Generator().manual_seed(0)

    def boot(samples: torch.Tensor) -> torch.Tensor:
        draws = [
            _mutual_information(
                samples[torch.randint(0, len(samples), (len(samples),), generator=gen)], class_dim
            )
            for _ in range(40)
        ]
        return torch.stack(draws).std()

    mi_ours, mi_theirs = (
        _mutual_information(ours, class_dim),
        _mutual_information(theirs, class_dim),
    )
    tol = 4 * (boot(ours) ** 2 + boot(theirs) ** 2).sqrt()
    assert mi_theirs > 1e-3, "the reference has no epistemic uncertainty: the test could not fail"
    assert abs(mi_ours - mi_theirs) < tol, (
        f"MI {mi_ours:.4f} vs reference {mi_theirs:.4f} (tol {tol:.4f})"
    )
