"""Ranking: misclassification and out-of-distribution detection, and the energy OOD score."""

from __future__ import annotations

from typing import Any

import numpy as np

from mcdrop._validation import (
    ArrayLike,
    as_real,
    check_classification,
    check_float,
    check_scores,
    describe_shape,
)
from mcdrop.metrics._base import (
    _prob_matrix,
)


def _errors_and_scores(y_true: Any, y_prob: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = check_classification(y_true, y_prob)
    errors = _prob_matrix(probs).argmax(axis=1) != labels
    score_values = check_scores("scores", scores, labels.shape[0])
    n_errors = int(errors.sum())
    if n_errors == 0 or n_errors == errors.shape[0]:
        kind = "correct" if n_errors == 0 else "misclassified"
        raise ValueError(
            f"Expected `y_true` and `y_prob` to give both correct and misclassified "
            f"predictions, but all {errors.shape[0]} are {kind}; the metric is undefined."
        )
    return errors, score_values


def misclassification_auroc(y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve for detecting misclassifications with an uncertainty score.

    Errors (``argmax y_prob != y_true``) are the positive class and a higher score means more
    uncertain: 1.0 when every error scores above every correct prediction, 0.5 for an
    uninformative score. Ties count one half (:func:`sklearn.metrics.roc_auc_score`).

    Parameters
    ----------
    y_true : array-like or Tensor of shape (N,)
        Integer labels.
    y_prob : array-like or Tensor of shape (N, C) or (N,)
        Predicted probabilities, used only for the predicted class.
    scores : array-like or Tensor of shape (N,)
        Uncertainty scores (e.g. predictive entropy, mutual information, ``1 - confidence``).

    Returns
    -------
    float
        In ``[0, 1]``.

    Raises
    ------
    ValueError
        When all predictions are correct or all are wrong (the AUROC is undefined).
    """
    from sklearn.metrics import roc_auc_score

    errors, score_values = _errors_and_scores(y_true, y_prob, scores)
    return float(roc_auc_score(errors, score_values))


def misclassification_aupr(y_true: ArrayLike, y_prob: ArrayLike, scores: ArrayLike) -> float:
    """Area under the precision-recall curve for detecting misclassifications (errors positive).

    Computed as the average precision (:func:`sklearn.metrics.average_precision_score`) with
    errors as the positive class and higher ``scores`` meaning more uncertain. A random score
    gives about the error rate.

    Parameters
    ----------
    y_true, y_prob, scores
        As in :func:`misclassification_auroc`.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    from sklearn.metrics import average_precision_score

    errors, score_values = _errors_and_scores(y_true, y_prob, scores)
    return float(average_precision_score(errors, score_values))


def _ood_inputs(scores_in: Any, scores_out: Any) -> tuple[np.ndarray, np.ndarray]:
    inside = check_scores("scores_in", scores_in)
    outside = check_scores("scores_out", scores_out)
    is_out = np.concatenate([np.zeros(inside.shape[0], bool), np.ones(outside.shape[0], bool)])
    return is_out, np.concatenate([inside, outside])


def ood_auroc(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """AUROC for separating out-of-distribution from in-distribution inputs.

    Out-of-distribution is the positive class and a higher score means more uncertain, so 1.0
    means every OOD input scores above every in-distribution input; ties count one half.

    Parameters
    ----------
    scores_in : array-like or Tensor of shape (N_in,)
        Uncertainty scores on in-distribution inputs.
    scores_out : array-like or Tensor of shape (N_out,)
        Uncertainty scores on out-of-distribution inputs.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    from sklearn.metrics import roc_auc_score

    is_out, scores = _ood_inputs(scores_in, scores_out)
    return float(roc_auc_score(is_out, scores))


def ood_aupr(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """Average precision for detecting out-of-distribution inputs (OOD positive, higher = OOD).

    Parameters
    ----------
    scores_in, scores_out
        As in :func:`ood_auroc`.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    from sklearn.metrics import average_precision_score

    is_out, scores = _ood_inputs(scores_in, scores_out)
    return float(average_precision_score(is_out, scores))


def fpr_at_95_tpr(scores_in: ArrayLike, scores_out: ArrayLike) -> float:
    """False-positive rate on in-distribution inputs when 95 % of OOD inputs are detected.

    The threshold ``t`` is the largest one that flags (``score >= t``) at least 95 % of the
    out-of-distribution inputs: the ``k``-th largest OOD score with
    ``k = ceil(0.95 * N_out)``; the result is the fraction of in-distribution scores ``>= t``.
    This equals the FPR at the first point of :func:`sklearn.metrics.roc_curve` whose TPR
    reaches 0.95. Lower is better.

    Parameters
    ----------
    scores_in, scores_out
        As in :func:`ood_auroc`.

    Returns
    -------
    float
        In ``[0, 1]``.
    """
    inside = check_scores("scores_in", scores_in)
    outside = check_scores("scores_out", scores_out)
    n_out = outside.shape[0]
    k = (95 * n_out + 99) // 100  # ceil(0.95 * n_out) in exact integer arithmetic
    threshold = np.sort(outside)[::-1][k - 1]
    return float(np.mean(inside >= threshold))


def energy_ood_score(logits: ArrayLike, *, temperature: float = 1.0) -> np.ndarray:
    r"""Free energy of the logits (Liu et al. 2020), an out-of-distribution score.

    .. math::

        E(x) = -\tau \log \sum_{c=1}^{C} \exp(z_c / \tau) ,

    the negative (tempered) log-partition function of the classifier's logits ``z``. In
    distribution the logits are large and the energy low; higher energy means more likely
    out of distribution, so the result ranks like the uncertainty scores of
    :func:`ood_auroc` (higher = more uncertain).

    Parameters
    ----------
    logits : array-like or Tensor of shape (..., C)
        Unnormalised scores, class dimension last (e.g. ``(N, C)``, or the ``(T, N, C)``
        logits of ``T`` Monte Carlo samples).
    temperature : float, default=1.0
        ``τ > 0``. Liu et al. use 1.

    Returns
    -------
    ndarray of shape (...)
        One energy per prediction (the class dimension removed).

    Notes
    -----
    Energies of Monte Carlo samples can be averaged over ``T``; the energy of averaged
    *probabilities* is not defined (probabilities are not logits: their logarithms are
    normalised, so their energy is always 0 at ``τ = 1``).

    References
    ----------
    Liu, Wang, Owens & Li (2020), "Energy-based out-of-distribution detection", NeurIPS.
    """
    from scipy.special import logsumexp

    tau = check_float("temperature", temperature, low=0.0, low_inclusive=False)
    values = as_real("logits", logits)
    if values.ndim < 1:
        raise ValueError(
            f"Expected `logits` to have a class dimension, shape (..., C), but got shape "
            f"{describe_shape(values)}."
        )
    # -(m + τ log Σ exp((z - m) / τ)) with m = max z: (z - m) / τ <= 0 never overflows
    top = values.max(axis=-1, keepdims=True)
    with np.errstate(over="ignore"):  # -inf: a class with no weight
        shifted = logsumexp((values - top) / tau, axis=-1)
    return np.asarray(-(top[..., 0] + tau * shifted), dtype=np.float64)
