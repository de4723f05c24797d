"""Single-point acquisition scores on sampled probabilities ``(T, N, C, *S)``.

Every score is oriented so that a larger value means "acquire first".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from mcdrop._validation import check_choice
from mcdrop.active._checks import REDUCTIONS, per_example, sample_probs

__all__ = ["bald", "entropy", "least_confidence", "margin", "mean_std", "variation_ratio"]

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def _entropy_of(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(dim)


def _predictive_entropy(x: torch.Tensor) -> torch.Tensor:
    return _entropy_of(x.mean(0), 1)


def _bald(x: torch.Tensor) -> torch.Tensor:
    return (_predictive_entropy(x) - _entropy_of(x, 2).mean(0)).clamp_min(0.0)


def _margin(x: torch.Tensor) -> torch.Tensor:
    top2 = x.mean(0).topk(2, dim=1).values
    return 1.0 - (top2.select(1, 0) - top2.select(1, 1))


def _least_confidence(x: torch.Tensor) -> torch.Tensor:
    return 1.0 - x.mean(0).amax(1)


def _variation_ratio(x: torch.Tensor) -> torch.Tensor:
    votes = F.one_hot(x.argmax(2), int(x.shape[2])).sum(0)  # (b, *S, C)
    return 1.0 - votes.amax(-1).to(x.dtype) / x.shape[0]


def _mean_std(x: torch.Tensor) -> torch.Tensor:
    return x.std(0, correction=0).mean(1)


# name -> (function on float64 chunks (T, b, C, *S) giving (b, *S), fewest samples it needs)
SCORES: dict[str, tuple[ScoreFn, int]] = {
    "bald": (_bald, 2),
    "entropy": (_predictive_entropy, 1),
    "margin": (_margin, 1),
    "least_confidence": (_least_confidence, 1),
    "variation_ratio": (_variation_ratio, 2),
    "mean_std": (_mean_std, 2),
}


def reduce_positions(values: torch.Tensor, reduction: str | None) -> torch.Tensor:
    """``(N, *S)`` per-position scores reduced to ``(N,)`` (``None``: kept as they are)."""
    if reduction is None or values.ndim == 1:
        return values
    flat = values.flatten(1)
    if reduction == "mean":
        return flat.mean(1)
    if reduction == "sum":
        return flat.sum(1)
    return flat.amax(1)


def check_reduction(reduction: Any) -> str | None:
    if reduction is None:
        return None
    return check_choice("reduction", reduction, REDUCTIONS)


def score(name: str, probs: Any, reduction: Any = "mean") -> torch.Tensor:
    """The score ``name`` of every example of ``probs`` (shared by the public functions)."""
    fn, min_samples = SCORES[name]
    reduction = check_reduction(reduction)
    why = (
        f" for `{name}` (it measures disagreement between samples, 0 with a single one)"
        if min_samples > 1
        else ""
    )
    checked = sample_probs("probs", probs, min_samples=min_samples, why=why)
    return reduce_positions(per_example(checked, fn), reduction)


_PARAMS = """
    Parameters
    ----------
    probs : Tensor or array-like of shape (T, N, C) or (T, N, C, *S)
        Sampled class probabilities, samples first (``result.samples`` of
        :func:`mcdrop.predict_with_uncertainty` with ``keep_samples=True``). ``*S``: pixels of
        a segmentation map, tokens, ... Each vector along ``C`` must sum to 1.
    reduction : {"mean", "sum", "max"} or None, default="mean"
        How the scores of the positions ``*S`` of one example are combined (no effect on
        ``(T, N, C)``); ``None`` keeps them.

    Returns
    -------
    Tensor of shape (N,) or (N, *S)
        ``float64``, on the device of ``probs``; larger means acquire first.
"""


def bald(probs: Any, *, reduction: str | None = "mean") -> torch.Tensor:
    """BALD (Houlsby et al. 2011): mutual information between the label and the weights.

    ``I[y; w | x] = H[E_t p_t] - E_t H[p_t]`` in nats, ``>= 0``; the epistemic part of the
    predictive entropy (:attr:`mcdrop.ClassificationResult.mutual_information`). Needs
    ``T >= 2``.
    """
    return score("bald", probs, reduction)


def entropy(probs: Any, *, reduction: str | None = "mean") -> torch.Tensor:
    """Predictive entropy ``H[E_t p_t] = -sum_c p_c log p_c`` in nats (total uncertainty).

    Epistemic and aleatoric uncertainty together: large where the samples disagree and where
    they agree on a flat distribution.
    """
    return score("entropy", probs, reduction)


def margin(probs: Any, *, reduction: str | None = "mean") -> torch.Tensor:
    """Margin score ``1 - (p_(1) - p_(2))`` of the predictive probabilities ``p = E_t p_t``.

    ``p_(1) >= p_(2)`` are the two largest; in ``[0, 1]``, 1 for a tie between the top two
    classes (Scheffer et al. 2001, reoriented so that larger means more uncertain).
    """
    return score("margin", probs, reduction)


def least_confidence(probs: Any, *, reduction: str | None = "mean") -> torch.Tensor:
    """Least confidence ``1 - max_c p_c`` of the predictive probabilities ``p = E_t p_t``.

    In ``[0, 1 - 1/C]``: 0 when the predictive puts all its mass on one class.
    """
    return score("least_confidence", probs, reduction)


def variation_ratio(probs: Any, *, reduction: str | None = "mean") -> torch.Tensor:
    """Variation ratio ``1 - f_mode / T`` (Freeman 1965) of the sampled predictions.

    ``f_mode`` counts the samples whose most probable class (``argmax``, ties to the lowest
    index) is the most frequent one. Needs ``T >= 2``.
    """
    return score("variation_ratio", probs, reduction)


def mean_std(probs: Any, *, reduction: str | None = "mean") -> torch.Tensor:
    """Mean standard deviation ``(1/C) sum_c std_t p_t,c`` (Kampffmeyer et al. 2016; ``ddof=0``).

    Needs ``T >= 2``.
    """
    return score("mean_std", probs, reduction)


for _fn in (bald, entropy, margin, least_confidence, variation_ratio, mean_std):
    _fn.__doc__ = (_fn.__doc__ or "") + _PARAMS
