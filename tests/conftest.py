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
