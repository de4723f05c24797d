"""Proper scores and accuracy of classifiers."""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy

from mcdrop._validation import (
    ArrayLike,
    check_classification,
    check_float,
)
from mcdrop.metrics._base import (
    _prob_matrix,
)


def accuracy(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Fraction of examples whose most probable class is the label.

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities (1-d: binary, probability of class 1). Ties go to the lowest
        class index (``argmax``); in the binary 1-d case ``p = 0.5`` predicts class 0.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    labels, probs = check_classification(y_true, y_prob)
    return float(np.mean(_prob_matrix(probs).argmax(axis=1) == labels))


def brier_score(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    r"""Multiclass Brier score (Brier 1950): sum over classes, mean over examples.

    ``BS = (1/N) sum_i sum_c (y_prob[i, c] - 1[y_i = c])^2``, in ``[0, 2]``.

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities. A 1-d (binary) ``p`` is expanded to ``[1 - p, p]``, so the
        result is twice :func:`sklearn.metrics.brier_score_loss`.

    Returns
    -------
    float
        In ``[0, 2]``; 0 for a perfect, confident prediction.
    """
    labels, probs = check_classification(y_true, y_prob)
    probs = _prob_matrix(probs)
    onehot = np.zeros_like(probs)
    onehot[np.arange(probs.shape[0]), labels] = 1.0
    return float(np.mean(np.sum((probs - onehot) ** 2, axis=1)))


def negative_log_likelihood(
    y_true: ArrayLike, y_prob: ArrayLike, *, eps: float | None = None
) -> float:
    r"""Mean negative log-likelihood (cross-entropy, log loss) in nats.

    ``NLL = -(1/N) sum_i log max(y_prob[i, y_i], eps)``.

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities (1-d: binary, probability of class 1).
    eps : float or None, default=None
        Lower clip of the probability of the true class, so that a zero probability gives a
        large finite loss rather than ``inf``. ``None`` means the ``float64`` machine epsilon
        (``2.2e-16``, a loss of at most ``36.04`` per example), the clip that
        :func:`sklearn.metrics.log_loss` applies to ``float64`` inputs; pass ``0.0`` to get
        ``inf`` for a zero probability.

    Returns
    -------
    float
        ``>= 0``.
    """
    labels, probs = check_classification(y_true, y_prob)
    clip = (
        float(np.finfo(np.float64).eps)
        if eps is None
        else check_float("eps", eps, low=0.0, high=1.0, high_inclusive=False)
    )
    probs = _prob_matrix(probs)
    p_true = probs[np.arange(probs.shape[0]), labels]
    with np.errstate(divide="ignore"):
        return float(-np.mean(np.log(np.maximum(p_true, clip))))


def _entropy(probs: np.ndarray) -> np.ndarray:
    return -np.sum(xlogy(probs, probs), axis=1)
