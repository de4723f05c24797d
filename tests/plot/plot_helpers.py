"""Data builders shared by the plot tests (imported as a module, not a conftest)."""

from __future__ import annotations

import numpy as np
import torch

from mcdrop.results import ClassificationResult, RegressionResult


def _classification_data(n=400, c=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=2.0, size=(n, c))
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.array([rng.choice(c, p=p) for p in probs**0.7 / (probs**0.7).sum(1, keepdims=True)])
    return y, probs


def _classification_result(n=60, c=3, t=8, extra=(), targets=True, keep_samples=True, seed=0):
    """A consistent ClassificationResult built from random samples (class_dim=1)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn((t, n, c, *extra), generator=gen, dtype=torch.float64) * 2
    samples = logits.softmax(dim=2)
    mean = samples.mean(0)
    variance = samples.var(0, unbiased=False)

    def entropy(p, dim):
        return -(p * p.clamp_min(1e-12).log()).sum(dim)

    pred = samples.argmax(2)
    modal = torch.mode(pred, dim=0).values
    variation = 1.0 - (pred == modal).double().mean(0)
    labels = torch.randint(0, c, (n, *extra), generator=gen) if targets else None
    return ClassificationResult(
        mean=mean,
        variance=variance,
        predictive_entropy=entropy(mean, 1),
        expected_entropy=entropy(samples, 2).mean(0),
        variation_ratio=variation,
        n_samples=t,
        targets=labels,
        samples=samples if keep_samples else None,
    )


def _regression_result(n=80, t=10, targets=True, keep_samples=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    samples = torch.randn((t, n, 1), generator=gen, dtype=torch.float64) * 0.3
    samples = samples + torch.linspace(-2, 2, n, dtype=torch.float64)[None, :, None]
    mean = samples.mean(0)
    epistemic = samples.var(0, unbiased=False)
    aleatoric = torch.full_like(mean, 0.2)
    y = mean + torch.randn(mean.shape, generator=gen, dtype=torch.float64) * 0.5
    return RegressionResult(
        mean=mean,
        epistemic_variance=epistemic,
        aleatoric_variance=aleatoric,
        n_samples=t,
        targets=y if targets else None,
        samples=samples if keep_samples else None,
    )


def _legend_texts(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]
