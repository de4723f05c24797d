""":func:`sample_log_probs`: several input sets under the same ``T`` networks."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mcdrop._validation import check_int
from mcdrop.sampling._api import predict_with_uncertainty
from mcdrop.sampling._rng import fresh_seed, seed_from

__all__ = ["sample_log_probs"]

_FIXED = ("masks", "keep_samples", "task", "n_samples", "generator")


def sample_log_probs(
    model: nn.Module,
    inputs: list[Any],
    *,
    n_samples: int = 100,
    seed: int | None = None,
    **options: Any,
) -> list[torch.Tensor]:
    """Per-sample log-probabilities of several input sets under the same ``T`` networks.

    Sample ``t`` is one network ``f_t`` (``masks="shared"``) for every set: the outputs are
    joint draws, what BatchBALD (a pool against itself) and EPIG (a pool against target inputs)
    consume, e.g. with :func:`mcdrop.stats.joint_predictive` and
    :func:`mcdrop.stats.pairwise_mutual_information`. Later calls with the same ``seed`` (and
    options) evaluate the same networks on other inputs.

    Parameters
    ----------
    model : nn.Module
        A trained classifier containing dropout.
    inputs : list
        The input sets, each anything :func:`mcdrop.predict_with_uncertainty` takes (a Tensor,
        a tuple of positional arguments, a dict of keyword arguments, an iterable of batches).
    n_samples : int, default=100
        Number of networks ``T``.
    seed : int, optional
        Which networks: the same seed gives the same ``T`` networks in every call. Without one a
        seed is drawn once (from the operating system, not PyTorch's generators) for all sets.
    **options
        Other keyword options of :func:`mcdrop.predict_with_uncertainty` (``outputs``,
        ``class_dim``, ``output_transform``, ``strategy``, ``batch_size``, ``device``, ...).

    Returns
    -------
    list of Tensor
        One per input set, of shape ``(T, N_i, C)`` (``(T, N_i, C, *S)`` for outputs with
        further dimensions, as :attr:`ClassificationResult.samples`): the log of the sampled
        class probabilities, ``float64``, on ``result_device`` (default CPU).

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import mcdrop
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)).eval()
    >>> pool, target = mcdrop.sample_log_probs(
    ...     net, [torch.randn(8, 4), torch.randn(5, 4)], n_samples=50, seed=0
    ... )
    >>> pool.shape, target.shape
    (torch.Size([50, 8, 3]), torch.Size([50, 5, 3]))
    >>> mcdrop.stats.pairwise_mutual_information(torch.cat([pool, target], 1)).shape
    torch.Size([13, 13])
    """
    if not isinstance(inputs, list) or not inputs:
        raise TypeError(
            "Expected `inputs` to be a non-empty list of input sets (each a Tensor, tuple, dict "
            f"or iterable of batches), but got {type(inputs).__name__}: a tuple would be read "
            "as the positional arguments of one set, so wrap the sets in a list."
        )
    fixed = sorted(set(options) & set(_FIXED))
    if fixed:
        raise TypeError(
            f"Expected options of predict_with_uncertainty other than {fixed}: "
            "sample_log_probs samples shared masks, keeps every sample, and classifies."
        )
    count = check_int("n_samples", n_samples, minimum=1)
    chosen = seed_from(seed, None)
    chosen = fresh_seed() if chosen is None else chosen
    out = []
    for part in inputs:
        result = predict_with_uncertainty(
            model,
            part,
            n_samples=count,
            seed=chosen,
            masks="shared",
            keep_samples=True,
            task="classification",
            **options,
        )
        assert result.samples is not None
        out.append(result.samples.double().log())
    return out
