"""EPIG (Bickford Smith, Kirsch, Farquhar, Gal, Foster & Rainforth 2023)."""

from __future__ import annotations

from typing import Any

import torch

from mcdrop.active._checks import CHUNK_ELEMENTS, per_example, sample_probs
from mcdrop.active._scores import _entropy_of

__all__ = ["epig"]

_WHY = " for `epig` (it measures how samples covary)"


def epig(pool_probs: Any, target_probs: Any) -> torch.Tensor:
    """Expected predictive information gain of each pool example about the target inputs.

    ``EPIG(x) = E_{x*}[I(y; y* | x, x*)] = H[p(y|x)] + E_{x*} H[p(y*|x*)] - E_{x*} H[p(y, y*|x, x*)]``
    with the joint predictive ``p(y, y*|x, x*) = (1/T) sum_t p_t(y|x) p_t(y*|x*)`` from the same
    ``T`` networks on pool and target, and ``E_{x*}`` the mean over the target examples.

    Parameters
    ----------
    pool_probs : Tensor or array-like of shape (T, N, C)
        Sampled class probabilities of the pool, samples first.
    target_probs : Tensor or array-like of shape (T, M, C*)
        Sampled class probabilities of ``M`` target inputs (unlabelled examples from the
        distribution the model will be used on), **from the same ``T`` networks** as
        ``pool_probs`` (``masks="shared"``, one dropout mask per sample for pool and target
        alike). With independent masks the joint factorises and EPIG is about 0.

    Returns
    -------
    Tensor of shape (N,)
        ``float64`` EPIG in nats, ``>= 0`` (rounding clamped), on the device of ``pool_probs``.

    Notes
    -----
    Memory: chunks of at most 32 MiB of the joint ``(b, C, M x C*)``; time ``O(N x M x T x C x C*)``.
    Subsample the target inputs (a few hundred suffice in Bickford Smith et al.) for large pools.
    """
    pool = sample_probs("pool_probs", pool_probs, min_samples=2, classes_last=True, why=_WHY)
    target = sample_probs("target_probs", target_probs, min_samples=2, classes_last=True, why=_WHY)
    if target.shape[0] != pool.shape[0]:
        raise ValueError(
            "Expected `target_probs` to hold as many samples as `pool_probs` "
            f"(T = {int(pool.shape[0])}, the same networks), but got shape "
            f"{tuple(int(s) for s in target.shape)}."
        )
    if target.device != pool.device:
        raise ValueError(
            f"Expected `target_probs` on the device of `pool_probs` ({pool.device}), but got "
            f"{target.device}."
        )
    t, m, c_target = (int(s) for s in target.shape)
    c = int(pool.shape[2])
    target = target.to(torch.float64)
    target_entropy = _entropy_of(target.mean(0), 1).mean()
    flat = target.reshape(t, m * c_target)
    step = max(1, CHUNK_ELEMENTS // (c * m * c_target))

    def one_chunk(x: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, int(x.shape[1]), step):
            joint = torch.einsum("tbc,tk->bck", x[:, s : s + step], flat) / t
            joint_entropy = -torch.special.xlogy(joint, joint).sum((1, 2)) / m
            out.append(_entropy_of(x[:, s : s + step].mean(0), 1) - joint_entropy)
        return torch.cat(out)

    return (per_example(pool, one_chunk) + target_entropy).clamp_min(0.0)
