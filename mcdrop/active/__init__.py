"""Active learning on Monte Carlo dropout: which pool examples to label next.

Scores on sampled probabilities ``probs`` of shape ``(T, N, C)`` (samples first, as everywhere in
mcdrop; ``(T, N, C, *S)`` for pixels or tokens, combined per example by ``reduction=``), all
oriented so that larger means "acquire first":

* :func:`bald` (mutual information), :func:`entropy`, :func:`margin`,
  :func:`least_confidence`, :func:`variation_ratio`, :func:`mean_std`;
* :func:`batchbald` (Kirsch et al. 2019): greedy batches on the joint mutual information;
* :func:`epig` (Bickford Smith et al. 2023): information about the labels of target inputs;
* :func:`stochastic_batch` (Kirsch et al. 2023): a batch sampled from any score.

:func:`acquire` runs Monte Carlo dropout on a model and a pool and returns an
:class:`Acquisition`; :class:`LabelledSet` and :func:`active_learning_step` keep the labelled /
unlabelled bookkeeping of a loop around your own training function.

BatchBALD and EPIG need **one network per sample**: ``probs[t]`` of every example (and target)
must come from the same dropout mask. With independent masks per example (the default of
:func:`mcdrop.predict_with_uncertainty`, and of other libraries) the joint factorises:
BatchBALD reduces to top-k BALD and EPIG to about zero.
"""

from __future__ import annotations

from mcdrop.active._acquire import acquire
from mcdrop.active._batchbald import batchbald
from mcdrop.active._epig import epig
from mcdrop.active._loop import ActiveStep, LabelledSet, active_learning_step
from mcdrop.active._result import Acquisition
from mcdrop.active._scores import (
    bald,
    entropy,
    least_confidence,
    margin,
    mean_std,
    variation_ratio,
)
from mcdrop.active._stochastic import stochastic_batch

__all__ = [
    "Acquisition",
    "ActiveStep",
    "LabelledSet",
    "acquire",
    "active_learning_step",
    "bald",
    "batchbald",
    "entropy",
    "epig",
    "least_confidence",
    "margin",
    "mean_std",
    "stochastic_batch",
    "variation_ratio",
]
