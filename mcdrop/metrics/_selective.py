"""Selective prediction: rejection curves and the area under the risk-coverage curve."""

from __future__ import annotations

import numpy as np

from mcdrop._validation import (
    ArrayLike,
    check_classification,
    check_scores,
)
from mcdrop.metrics._base import (
    _prob_matrix,
)


def _rejection_order(scores: np.ndarray) -> np.ndarray:
    """Indices from most to least uncertain; ties keep input order (stable sort)."""
    return np.argsort(-scores, kind="stable")


def accuracy_rejection_curve(
    y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy on the retained examples as the most uncertain ones are rejected.

    Examples are rejected one at a time in decreasing order of ``scores`` (higher = more
    uncertain = rejected first). Ties are broken deterministically by position: among equal
    scores the example that comes first in the input is rejected first.

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities.
    scores : array-like or Tensor of shape (N,)
        Uncertainty scores.

    Returns
    -------
    rejection_fraction : ndarray of shape (N,)
        ``0, 1/N, ..., (N-1)/N``.
    accuracy : ndarray of shape (N,)
        Accuracy on the ``N - k`` retained examples after rejecting ``k``.

    References
    ----------
    Nadeem, Zucker & Hanczar (2009), "Accuracy-rejection curves (ARCs) for comparing
    classification methods with a reject option", MLSB.
    """
    labels, probs = check_classification(y_true, y_prob)
    score_values = check_scores("scores", scores, labels.shape[0])
    correct = (_prob_matrix(probs).argmax(axis=1) == labels).astype(np.float64)
    return _accuracy_after_rejection(correct, score_values)


def _accuracy_after_rejection(
    correct: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n = correct.shape[0]
    ordered = correct[_rejection_order(scores)]
    # Retained after rejecting k: ordered[k:]; suffix sums give their number correct.
    retained_correct = np.cumsum(ordered[::-1])[::-1]
    retained = np.arange(n, 0, -1, dtype=np.float64)
    return np.arange(n, dtype=np.float64) / n, retained_correct / retained


def aurc(y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike) -> float:
    r"""Area under the risk-coverage curve (Geifman & El-Yaniv 2017). Lower is better.

    Keeping the ``m`` least uncertain examples (coverage ``m / N``), the selective risk is
    their error rate; the AURC is its mean over ``m = 1, ..., N``:

    .. math::

        \mathrm{AURC} = \frac{1}{N} \sum_{m=1}^{N} \frac{1}{m}
        \sum_{j \le m} \mathbb{1}[\text{example } \pi_j \text{ misclassified}]

    with ``\pi`` the examples in increasing order of ``scores``; equivalently the mean of
    ``1 - accuracy`` of :func:`accuracy_rejection_curve` (same tie-breaking).

    Parameters
    ----------
    y_true, y_prob, scores
        As in :func:`accuracy_rejection_curve`.

    Returns
    -------
    float
        In ``[0, 1]``.

    References
    ----------
    Geifman & El-Yaniv (2017), "Selective classification for deep neural networks", NeurIPS;
    Geifman, Uziel & El-Yaniv (2019), "Bias-reduced uncertainty estimation for deep neural
    classifiers", ICLR (AURC).
    """
    _, acc = accuracy_rejection_curve(y_true, y_prob, scores)
    return float(np.mean(1.0 - acc))
