"""Labelled / unlabelled bookkeeping and one step of an active-learning loop.

Values, not a framework: :class:`LabelledSet` is an immutable record of which examples of a
dataset are labelled; :func:`active_learning_step` trains with the user's own function (plain
PyTorch, Lightning, ...), acquires, and records metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from mcdrop._validation import check_int, to_array
from mcdrop.active._acquire import acquire
from mcdrop.active._checks import generator
from mcdrop.active._result import Acquisition

__all__ = ["ActiveStep", "LabelledSet", "active_learning_step"]


@dataclass(frozen=True, eq=False)
class LabelledSet:
    """Which examples of a dataset of ``size`` examples are labelled, in the order labelled.

    Parameters
    ----------
    size : int
        Number of examples in the dataset.
    labelled : tuple of int, default=()
        Dataset indices already labelled, distinct, in ``[0, size)``.

    Examples
    --------
    >>> state = LabelledSet.initial(100, 10, seed=0)
    >>> len(state.labelled), len(state.unlabelled)
    (10, 90)
    >>> state = state.label([0, 5])  # positions in ``state.unlabelled``, e.g. from acquire
    >>> len(state.labelled)
    12
    """

    size: int
    labelled: tuple[int, ...] = ()
    _mask: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        size = check_int("size", self.size, minimum=1)
        labelled = tuple(int(i) for i in self.labelled)
        mask = np.zeros(size, dtype=bool)
        for i in labelled:
            if not 0 <= i < size:
                raise ValueError(f"Expected `labelled` indices in [0, {size}), but got {i}.")
            if mask[i]:
                raise ValueError(f"Expected distinct `labelled` indices, but got {i} twice.")
            mask[i] = True
        object.__setattr__(self, "labelled", labelled)
        object.__setattr__(self, "_mask", mask)

    @classmethod
    def initial(
        cls,
        size: int,
        n: int,
        *,
        labels: Any = None,
        seed: int | None = None,
    ) -> LabelledSet:
        """``n`` examples drawn at random; with ``labels`` as balanced over classes as ``n``
        allows (the same count per class, the remainder to random classes)."""
        size = check_int("size", size, minimum=1)
        n = check_int("n", n, minimum=0)
        if n > size:
            raise ValueError(f"Expected `n` to be at most `size` ({size}), but got {n}.")
        gen = generator(seed)
        order = torch.randperm(size, generator=gen).numpy()
        if labels is None:
            return cls(size, tuple(int(i) for i in order[:n]))
        classes = to_array("labels", labels)
        if classes.shape != (size,):
            raise ValueError(
                f"Expected `labels` of shape ({size},), but got {tuple(classes.shape)}."
            )
        # Round-robin over the classes in the random order: balanced, then random.
        shuffled = classes[order]
        rank_within_class = np.zeros(size, dtype=np.int64)
        for value in np.unique(shuffled):
            where = np.flatnonzero(shuffled == value)
            rank_within_class[where] = np.arange(where.size)
        picked = order[np.lexsort((np.arange(size), rank_within_class))[:n]]
        return cls(size, tuple(int(i) for i in picked))

    @property
    def unlabelled(self) -> np.ndarray:
        """Dataset indices not yet labelled, increasing: the pool, in the order acquire sees."""
        return np.flatnonzero(~self._mask)

    def label(self, pool_positions: Acquisition | Sequence[int] | torch.Tensor) -> LabelledSet:
        """A new set with the examples at ``pool_positions`` of :attr:`unlabelled` labelled."""
        if isinstance(pool_positions, Acquisition):
            pool_positions = pool_positions.indices
        positions = to_array("pool_positions", pool_positions).astype(np.int64).ravel()
        pool = self.unlabelled
        if positions.size and (positions.min() < 0 or positions.max() >= pool.size):
            raise ValueError(
                f"Expected `pool_positions` in [0, {pool.size}) (positions in `unlabelled`), "
                f"but got {int(positions.min() if positions.min() < 0 else positions.max())}."
            )
        return LabelledSet(self.size, self.labelled + tuple(int(i) for i in pool[positions]))

    def split(self, dataset: Any) -> tuple[Subset[Any], Subset[Any]]:
        """``(labelled, pool)`` subsets of ``dataset`` (anything with ``__getitem__`` and
        ``__len__``); the pool in the order of :attr:`unlabelled`."""
        if len(dataset) != self.size:
            raise ValueError(f"Expected `dataset` of {self.size} examples, but got {len(dataset)}.")
        return Subset(dataset, list(self.labelled)), Subset(dataset, self.unlabelled.tolist())


@dataclass(frozen=True, eq=False)
class ActiveStep:
    """One step of active learning.

    Parameters
    ----------
    n_labelled : int
        Labelled examples the model of this step was trained on.
    metrics : dict
        What ``evaluate`` returned for that model (empty without ``evaluate``).
    acquisition : Acquisition
        The batch chosen by the model, as positions in the pool of the step.
    acquired : tuple of int
        The same batch as dataset indices.
    labelled : LabelledSet
        The labelled set after the step, to pass to the next one.
    model : nn.Module
        The model ``train`` returned.
    """

    n_labelled: int
    metrics: dict[str, float]
    acquisition: Acquisition
    acquired: tuple[int, ...]
    labelled: LabelledSet
    model: nn.Module


def active_learning_step(
    labelled: LabelledSet,
    dataset: Any,
    n: int,
    *,
    train: Callable[[Subset[Any]], nn.Module],
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    **acquire_options: Any,
) -> ActiveStep:
    """Train on the labelled examples, evaluate, and acquire ``n`` more from the rest.

    Parameters
    ----------
    labelled : LabelledSet
        Which examples of ``dataset`` are labelled.
    dataset : indexable dataset
        All examples (map-style: ``__getitem__`` and ``__len__``), e.g. ``(x, y)`` pairs.
    n : int
        Examples to acquire.
    train : callable
        ``train(labelled_subset) -> model``: your training, from scratch or not.
    evaluate : callable, optional
        ``evaluate(model) -> dict of metrics``, e.g. test accuracy.
    **acquire_options
        Options of :func:`acquire` (``method``, ``n_samples``, ``seed``, ``stochastic``, ...).

    Returns
    -------
    ActiveStep
    """
    labelled_subset, pool = labelled.split(dataset)
    model = train(labelled_subset)
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"Expected `train` to return the trained nn.Module, but got {type(model).__name__}."
        )
    metrics = dict(evaluate(model)) if evaluate is not None else {}
    chosen = acquire(model, pool, n, **acquire_options)
    after = labelled.label(chosen)
    return ActiveStep(
        n_labelled=len(labelled.labelled),
        metrics=metrics,
        acquisition=chosen,
        acquired=after.labelled[len(labelled.labelled) :],
        labelled=after,
        model=model,
    )
