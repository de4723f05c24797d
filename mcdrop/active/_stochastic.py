"""Stochastic batch acquisition (Kirsch, Farquhar, Atighehchian, Jesson, Branchaud-Charron & Gal
2023): sample the batch from a single-point score instead of taking its top ``n``."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from mcdrop._validation import check_choice, check_float, check_scores
from mcdrop.active._checks import acquisition_size, generator
from mcdrop.active._result import Acquisition

__all__ = ["stochastic_batch"]

MODES = ("power", "softmax", "rank")


def log_weights(scores: np.ndarray, mode: str, beta: float) -> np.ndarray:
    """Unnormalised log-probabilities of the examples under ``mode``."""
    if mode == "softmax":
        return beta * scores
    if mode == "power":
        with np.errstate(divide="ignore"):
            return beta * np.log(scores) if beta > 0 else np.zeros_like(scores)
    ranks = np.empty(scores.shape[0])
    ranks[np.argsort(-scores, kind="stable")] = np.arange(1, scores.shape[0] + 1)
    return -beta * np.log(ranks)


def stochastic_batch(
    scores: Any,
    n: int,
    *,
    mode: str = "power",
    beta: float = 1.0,
    seed: int | None = None,
) -> Acquisition:
    """Draw ``n`` distinct examples with probabilities from their scores (Kirsch et al. 2023).

    One draw picks example ``i`` with probability ``q_i``:

    ``"power"`` (PowerBALD, PowerEntropy, ...)
        ``q_i ∝ s_i^beta``; scores must be ``>= 0``.
    ``"softmax"``
        ``q_i ∝ exp(beta s_i)``.
    ``"rank"`` (soft-rank)
        ``q_i ∝ r_i^(-beta)``, ``r_i`` the rank of ``s_i`` from the largest (1), ties by index.

    The ``n`` examples are drawn one after another without replacement, each from ``q``
    renormalised over those left (Plackett-Luce), in one pass with the Gumbel-top-k trick
    (Kool et al. 2019): the ``n`` largest ``log q_i + G_i``, ``G_i`` i.i.d. standard Gumbel.
    Examples with ``q_i = 0`` (a zero score in ``"power"``) come after all others, in random
    order. ``beta = 0`` draws uniformly; ``beta -> inf`` tends to top-``n``.

    Parameters
    ----------
    scores : Tensor or array-like of shape (N,)
        Finite single-point scores, larger meaning more informative (e.g. :func:`bald`).
    n : int
        How many to draw, ``1 <= n <= N``.
    mode : {"power", "softmax", "rank"}, default="power"
    beta : float, default=1.0
        Inverse temperature, ``>= 0``.
    seed : int or None, default=None
        Seed of a private generator (the global random stream is never used). ``None``: fresh
        entropy.

    Returns
    -------
    Acquisition
        ``indices`` in the order drawn, ``scores`` their input scores, ``method`` the mode.
    """
    values = check_scores("scores", scores)
    n = acquisition_size(n, values.shape[0], pool="scores")
    mode = check_choice("mode", mode, MODES)
    beta = check_float("beta", beta, low=0.0)
    if mode == "power" and float(values.min()) < 0.0:
        raise ValueError(
            "Expected `scores` >= 0 for mode='power' (q ∝ score^beta), but got a value of "
            f"{float(values.min())}; use mode='softmax' or 'rank' for signed scores."
        )
    logq = log_weights(values, mode, beta)
    uniform = torch.rand(values.shape[0], generator=generator(seed), dtype=torch.float64)
    gumbel = -np.log(-np.log(uniform.numpy().clip(1e-300, None)))
    order = np.lexsort((-gumbel, -(logq + gumbel)))[:n]
    return Acquisition(
        indices=torch.from_numpy(order.astype(np.int64)),
        scores=torch.from_numpy(values[order].copy()),
        method=mode,
    )
