"""BatchBALD (Kirsch, van Amersfoort & Gal 2019): greedy batch acquisition on a joint entropy.

The mutual information of a batch ``y_1..y_k`` with the weights is
``I[y_1..y_k; w] = H[y_1..y_k] - sum_j E_t H[p_t(y_j)]``: given one network ``t`` the labels are
independent, so the conditional part is a sum, and the joint predictive distribution is the
mixture over the ``T`` networks of products, ``p(y_1..y_k) = (1/T) sum_t prod_j p_t(y_j)``.
The greedy step adds the example that most increases it.

The joint is held as ``P[m, t] = prod_j p_t(y_j = m_j)`` over class configurations ``m``:
exactly (all ``C^k`` of them) while ``C^k <= n_configurations``, else from configurations
sampled from the mixture, ``ceil(n_configurations / T)`` from each network (stratified), as in
the reference implementation ``batchbald_redux``, and the entropy is the importance-weighted
estimate ``(1/M) sum_m sum_c p(m, c) / p(m) * -log p(m, c)`` (unbiased for the joint entropy).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from mcdrop._validation import check_int
from mcdrop.active._checks import (
    CHUNK_ELEMENTS,
    acquisition_size,
    generator,
    per_example,
    sample_probs,
)
from mcdrop.active._result import Acquisition
from mcdrop.active._scores import _entropy_of

__all__ = ["batchbald"]


def joint_entropies(
    configs: torch.Tensor, weights: torch.Tensor | None, probs: torch.Tensor
) -> torch.Tensor:
    """``H[y_1..y_k, y_i]`` for every example ``i`` of ``probs`` ``(T, N, C)``.

    ``configs`` ``(M, T)``: ``prod_j p_t(y_j = m_j)`` of each configuration ``m`` of the labels
    already in the batch; ``weights`` ``(M,)``: ``1 / p(m)`` for sampled configurations, or
    ``None`` when ``configs`` enumerates all of them (exact).
    """
    m, t = (int(s) for s in configs.shape)
    c = int(probs.shape[2])
    step = max(1, CHUNK_ELEMENTS // (m * c))
    out = []
    for s in range(0, int(probs.shape[1]), step):
        joint = torch.einsum("mt,tbc->bmc", configs, probs[:, s : s + step]) / t
        nats = -torch.special.xlogy(joint, joint)
        if weights is None:
            out.append(nats.sum((1, 2)))
        else:
            out.append((nats.sum(2) * weights).mean(1))
    return torch.cat(out)


def sample_configurations(
    chosen: torch.Tensor, per_network: int, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``per_network`` configurations from each network's product distribution over the labels
    of ``chosen`` ``(T, k, C)``: their ``P[m, t]`` ``(T * per_network, T)`` and ``1 / p(m)``."""
    t, k, c = (int(s) for s in chosen.shape)
    cpu = chosen.to("cpu")
    draws = torch.multinomial(cpu.reshape(t * k, c), per_network, replacement=True, generator=gen)
    labels = draws.reshape(t, k, per_network).permute(0, 2, 1).reshape(t * per_network, k)
    labels = labels.to(chosen.device)
    configs = torch.ones(t * per_network, t, dtype=chosen.dtype, device=chosen.device)
    for j in range(k):
        configs *= chosen[:, j, :][:, labels[:, j]].T
    return configs, 1.0 / configs.mean(1)


def batchbald(
    probs: Any,
    n: int,
    *,
    n_configurations: int = 10_000,
    seed: int | None = None,
) -> Acquisition:
    """Greedy BatchBALD batch of ``n`` pool examples (Kirsch et al. 2019).

    Parameters
    ----------
    probs : Tensor or array-like of shape (T, N, C)
        Sampled class probabilities of the pool, samples first, **with one network per sample
        shared by all examples** (``masks="shared"``): ``probs[t]`` must come from one dropout
        mask for every example. With independent masks per example the joint entropy treats the
        examples as independent and BatchBALD reduces to top-k BALD.
    n : int
        Batch size, ``1 <= n <= N``.
    n_configurations : int, default=10_000
        The joint entropy of the batch is exact while it has ``C^k <= n_configurations`` class
        configurations, else estimated from ``ceil(n_configurations / T) * T`` sampled ones.
        Memory: ``M x T`` float64 for the configurations (``M`` at most ``C * n_configurations``
        exactly, or the sampled count) plus 32 MiB per chunk of candidates, besides a float64
        copy of ``probs``. Time per greedy step: ``O(N x M x T x C)``.
    seed : int or None, default=None
        Seed of the sampled configurations (a private generator; the global random stream is
        never used). ``None``: fresh entropy.

    Returns
    -------
    Acquisition
        ``indices`` in the greedy order; ``scores`` the gain of each in batch mutual
        information (nats); ``n_exact`` the number of steps with an exact joint entropy.
        ``n = 1`` is the arg-max of BALD.
    """
    why = " for `batchbald` (it measures disagreement between samples)"
    p = sample_probs("probs", probs, min_samples=2, classes_last=True, why=why)
    t, pool, c = (int(s) for s in p.shape)
    n = acquisition_size(n, pool)
    n_configurations = check_int("n_configurations", n_configurations, minimum=1)
    gen = generator(seed)
    p = p.to(torch.float64)
    conditional = per_example(p, lambda x: _entropy_of(x, 2).mean(0))
    configs = torch.ones(1, t, dtype=torch.float64, device=p.device)
    weights: torch.Tensor | None = None
    chosen: list[int] = []
    gains: list[float] = []
    value = 0.0
    n_exact = 0
    for step in range(n):
        values = joint_entropies(configs, weights, p) - conditional
        values -= conditional[chosen].sum()
        values[chosen] = -math.inf
        best = int(values.argmax())
        n_exact += weights is None
        gains.append(float(values[best]) - value)
        value = float(values[best])
        chosen.append(best)
        if step + 1 == n:
            break
        if weights is None and c ** len(chosen) <= n_configurations:
            configs = (configs[:, None, :] * p[:, best, :].T[None]).reshape(-1, t)
        else:
            per_network = math.ceil(n_configurations / t)
            configs, weights = sample_configurations(p[:, chosen, :], per_network, gen)
    return Acquisition(
        indices=torch.tensor(chosen, dtype=torch.int64),
        scores=torch.tensor(gains, dtype=torch.float64),
        method="batchbald",
        n_exact=n_exact,
    )
