"""Joint predictive quantities of several inputs under the same ``T`` networks (shared masks).

With ``masks="shared"`` sample ``t`` is one network, so the per-sample class probabilities of
different inputs, ``p_t(y | x_i)``, can be combined across inputs: the joint predictive of labels
``y_1 .. y_n`` is ``p(y_1, .., y_n) = mean_t prod_i p_t(y_i | x_i)`` (the quantity BatchBALD
and EPIG are built on). With independent masks the same formula factorises into the product of
the marginals, and every mutual information between inputs is zero up to Monte Carlo error.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["joint_log_predictive", "joint_predictive", "pairwise_mutual_information"]

_MAX_TABLE = 2**22  # entries of a full joint table
_BLOCK_BYTES = 64 * 2**20  # memory of one block of pairwise joints


def _check_log_probs(log_probs: Any, name: str = "log_probs") -> torch.Tensor:
    if not isinstance(log_probs, torch.Tensor) or log_probs.ndim != 3 or 0 in log_probs.shape:
        shape = tuple(log_probs.shape) if isinstance(log_probs, torch.Tensor) else None
        raise ValueError(
            f"Expected `{name}` to be a Tensor of shape (T, N, C) with T, N, C >= 1 (per-sample "
            f"log-probabilities, e.g. from mcdrop.sample_log_probs), but got "
            f"{shape if shape is not None else type(log_probs).__name__}."
        )
    if not log_probs.is_floating_point():
        raise TypeError(f"Expected `{name}` to hold floats, but got {log_probs.dtype}.")
    values = log_probs.double()
    if bool(torch.isnan(values).any()) or bool((values > 1e-6).any()):
        raise ValueError(f"Expected `{name}` to hold log-probabilities (<= 0, no NaN).")
    sums = values.exp().sum(-1)
    worst = float((sums - 1).abs().max())
    if worst > 1e-3:
        raise ValueError(
            f"Expected `{name}` to sum to 1 over the classes (last dimension) after exp, but a "
            f"row is off by {worst:.3g}: pass log-probabilities with the classes last."
        )
    return values


def joint_predictive(log_probs: torch.Tensor) -> torch.Tensor:
    """Joint predictive distribution of the labels of ``N`` inputs under one set of networks.

    Parameters
    ----------
    log_probs : Tensor of shape (T, N, C)
        Per-sample log-probabilities of ``N`` inputs, sample ``t`` one network for all of them
        (``mcdrop.sample_log_probs``, or ``predict_with_uncertainty(..., masks="shared",
        keep_samples=True)``).

    Returns
    -------
    Tensor of shape (C,) * N, float64
        ``p[y_1, .., y_N] = mean_t prod_i p_t(y_i | x_i)``; sums to 1. At most 2**22 entries.

    See Also
    --------
    joint_log_predictive : the log-probability of given label configurations (any ``N``).
    """
    values = _check_log_probs(log_probs)
    t, n, c = values.shape
    if c**n > _MAX_TABLE:
        raise ValueError(
            f"Expected a joint table of at most {_MAX_TABLE} entries, but {n} inputs of {c} "
            f"classes have {c}**{n}; use joint_log_predictive for given label configurations."
        )
    table = torch.ones(t, *([1] * n), dtype=torch.float64, device=values.device)
    probs = values.exp()
    for i in range(n):
        shape = [t] + [1] * n
        shape[i + 1] = c
        table = table * probs[:, i].reshape(shape)
    return table.mean(0)


def joint_log_predictive(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of label configurations of ``N`` inputs under one set of networks.

    Parameters
    ----------
    log_probs : Tensor of shape (T, N, C)
        Per-sample log-probabilities (see :func:`joint_predictive`).
    labels : Tensor of shape (N,) or (M, N)
        Integer labels in ``[0, C)``: one configuration, or ``M`` of them.

    Returns
    -------
    Tensor of shape () or (M,), float64
        ``log mean_t prod_i p_t(labels_i | x_i)``, computed with ``logsumexp``.
    """
    values = _check_log_probs(log_probs)
    t, n, c = values.shape
    if (
        not isinstance(labels, torch.Tensor)
        or labels.dtype.is_floating_point
        or labels.dtype == (torch.bool)
    ):
        raise TypeError(f"Expected `labels` to be an integer Tensor, but got {labels!r}.")
    single = labels.ndim == 1
    configs = labels.reshape(1, -1) if single else labels
    if configs.ndim != 2 or configs.shape[1] != n:
        raise ValueError(
            f"Expected `labels` of shape ({n},) or (M, {n}), but got {tuple(labels.shape)}."
        )
    if bool((configs < 0).any()) or bool((configs >= c).any()):
        raise ValueError(f"Expected `labels` in [0, {c}), but got values outside.")
    configs = configs.to(values.device)
    # (T, M, N): log p_t(label_i | x_i) for every configuration
    picked = values.unsqueeze(1).expand(t, len(configs), n, c)
    picked = picked.gather(3, configs.expand(t, -1, -1).unsqueeze(-1)).squeeze(-1)
    out = torch.logsumexp(picked.sum(-1), 0) - math.log(t)
    return out[0] if single else out


def _entropy(p: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return torch.special.entr(p).sum(dims)


def pairwise_mutual_information(log_probs: torch.Tensor) -> torch.Tensor:
    """Mutual information between the labels of every pair of inputs under one set of networks.

    Entry ``(i, j)`` is ``I(y_i; y_j)`` in nats for labels drawn ``y_i ~ p_t(. | x_i)`` and
    ``y_j ~ p_t(. | x_j)`` from the same network ``t``, ``t`` uniform: ``H[y_i] + H[y_j] -
    H[y_i, y_j]`` with the joint ``p(a, b) = mean_t p_t(a | x_i) p_t(b | x_j)``. The diagonal is
    the information between two labels drawn for the same input (two copies of it). With
    independent masks every entry off the diagonal is zero up to Monte Carlo error.

    Parameters
    ----------
    log_probs : Tensor of shape (T, N, C)
        Per-sample log-probabilities (see :func:`joint_predictive`).

    Returns
    -------
    Tensor of shape (N, N), float64
        Symmetric, non-negative (clamped at 0 against rounding).
    """
    values = _check_log_probs(log_probs)
    t, n, c = values.shape
    probs = values.exp()
    marginal = probs.mean(0)  # (N, C)
    h = _entropy(marginal, (1,))  # (N,)
    out = torch.empty(n, n, dtype=torch.float64, device=values.device)
    block = max(1, _BLOCK_BYTES // (8 * n * c * c + 8 * t * c))
    for lo in range(0, n, block):
        hi = min(n, lo + block)
        joint = torch.einsum("tia,tjb->ijab", probs[:, lo:hi], probs) / t  # (b, N, C, C)
        out[lo:hi] = h[lo:hi, None] + h[None, :] - _entropy(joint, (2, 3))
    out = (out + out.T) / 2  # exact symmetry whatever the rounding of the blocks
    return out.clamp_min_(0.0)
