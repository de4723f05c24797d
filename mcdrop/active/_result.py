"""The result of an acquisition: which pool examples to label, and why."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Acquisition"]


@dataclass(frozen=True, eq=False)
class Acquisition:
    """Pool examples chosen for labelling, in the order they were chosen.

    Parameters
    ----------
    indices : Tensor of shape (n,)
        ``int64`` positions in the pool, distinct, in the order chosen.
    scores : Tensor of shape (n,)
        ``float64`` score of each chosen example when it was chosen: its single-point score
        (BALD, entropy, EPIG, ...) for top-k and stochastic acquisition; for BatchBALD the gain
        ``I[y_1..y_k; w] - I[y_1..y_{k-1}; w]`` of adding it, so that ``scores.cumsum(0)`` is
        the mutual information of the growing batch with the weights.
    method : str
        What chose them, e.g. ``"bald"``, ``"batchbald"``, ``"power-bald"``, ``"random"``.
    n_exact : int or None, default=None
        BatchBALD only: how many of the ``n`` greedy steps computed the joint entropy exactly
        (the rest estimated it from sampled class configurations).
    """

    indices: torch.Tensor
    scores: torch.Tensor
    method: str
    n_exact: int | None = None

    def __post_init__(self) -> None:
        if self.indices.shape != self.scores.shape or self.indices.ndim != 1:
            raise ValueError(
                "Expected `indices` and `scores` of one shape (n,), but got "
                f"{tuple(self.indices.shape)} and {tuple(self.scores.shape)}."
            )

    def __len__(self) -> int:
        return int(self.indices.shape[0])

    def tolist(self) -> list[int]:
        """The chosen indices as a list of Python ints."""
        return [int(i) for i in self.indices.tolist()]
