"""Streaming :class:`torchmetrics.Metric` versions of mcdrop's uncertainty metrics.

Each metric accumulates states across ``update`` calls and, under DDP, across processes
(``dist_reduce_fx``), then ``compute`` gives the value :mod:`mcdrop.metrics` gives on all the data
at once: the per-batch work is done by the same functions (and private steps) of
:mod:`mcdrop.metrics`, so input validation and conventions are identical.

``update(preds, target=None)`` takes a :class:`~mcdrop.ClassificationResult` (its ``mean``; dense
``(N, C, *S)`` outputs are flattened to one prediction per position, as in
:func:`mcdrop.metrics.evaluate`) or a probability tensor of shape ``(N, C)``; ``target`` defaults
to the result's ``targets``. Regression metrics take a :class:`~mcdrop.RegressionResult` or a
``(mean, variance)`` pair.

States
------
Sums (``dist_reduce_fx="sum"``, float64, constant memory): :class:`NegativeLogLikelihood`,
:class:`BrierScore`, :class:`Accuracy`, :class:`GaussianNLL`, :class:`EnergyScore`, and the
per-bin counts and sums of :class:`CalibrationError` (uniform bins only: quantile bins depend on
all the data). Ranking metrics cannot be summed: :class:`MisclassificationAUROC` and
:class:`AUGRC` keep one score and one flag per example (``dist_reduce_fx="cat"``), as
torchmetrics' exact ``AUROC`` does.

Values equal :mod:`mcdrop.metrics` up to floating-point summation order (about ``1e-15``
relative).

>>> import torch
>>> from mcdrop.integrations.torchmetrics import NegativeLogLikelihood
>>> metric = NegativeLogLikelihood()
>>> metric.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 1]))
>>> round(float(metric.compute()), 4)
0.1643
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

try:
    from torchmetrics import Metric
    from torchmetrics.utilities import dim_zero_cat
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        'mcdrop.integrations.torchmetrics needs torchmetrics: pip install "mcdrop[torchmetrics]"'
    ) from error

from mcdrop import _validation as _v
from mcdrop import metrics as _m
from mcdrop._validation import check_choice, check_int
from mcdrop.results import ClassificationResult, RegressionResult

__all__ = [
    "AUGRC",
    "Accuracy",
    "BrierScore",
    "CalibrationError",
    "EnergyScore",
    "GaussianNLL",
    "MisclassificationAUROC",
    "NegativeLogLikelihood",
]

_SCORES = ("mutual_information", "predictive_entropy", "expected_entropy", "variation_ratio")


def _classification(preds: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated ``(labels (M,), probs (M, C))`` of one batch, dense outputs flattened."""
    names = ("target", "preds")  # the errors name the arguments of update(preds, target)
    if isinstance(preds, ClassificationResult):
        mean = preds.mean.movedim(preds.class_dim, -1)
        probs: Any = mean.reshape(-1, mean.shape[-1])
        names = ("target", "preds.mean")
        if target is None:
            target, names = preds.targets, ("preds.targets", "preds.mean")
    else:
        probs = preds
    if target is None:
        raise ValueError(
            "Expected `target` (or the result's `targets`) to hold labels, but got None."
        )
    labels = _v.to_array(names[0], target).reshape(-1)
    return _v.check_classification(labels, probs, allow_1d=False, names=names)


class _SumMetric(Metric):
    """Mean of a per-example quantity: ``sum`` and ``count`` states."""

    is_differentiable = False
    full_state_update = False
    total: torch.Tensor
    count: torch.Tensor

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("total", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _add(self, batch_mean: float, n: int) -> None:
        self.total += batch_mean * n
        self.count += n

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError(f"Expected `update` before `compute` on {type(self).__name__}.")
        return self.total / self.count


class NegativeLogLikelihood(_SumMetric):
    """Streaming :func:`mcdrop.metrics.negative_log_likelihood` (mean NLL in nats)."""

    higher_is_better = False

    def update(self, preds: Any, target: Any = None) -> None:
        """Add a batch: ``preds`` a ClassificationResult or (N, C) probabilities."""
        labels, probs = _classification(preds, target)
        self._add(_m.negative_log_likelihood(labels, probs), labels.shape[0])


class BrierScore(_SumMetric):
    """Streaming :func:`mcdrop.metrics.brier_score` (multiclass, sum over classes)."""

    higher_is_better = False

    def update(self, preds: Any, target: Any = None) -> None:
        """Add a batch: ``preds`` a ClassificationResult or (N, C) probabilities."""
        labels, probs = _classification(preds, target)
        self._add(_m.brier_score(labels, probs), labels.shape[0])


class Accuracy(_SumMetric):
    """Streaming :func:`mcdrop.metrics.accuracy` of the MC predictive mean."""

    higher_is_better = True

    def update(self, preds: Any, target: Any = None) -> None:
        """Add a batch: ``preds`` a ClassificationResult or (N, C) probabilities."""
        labels, probs = _classification(preds, target)
        self._add(_m.accuracy(labels, probs), labels.shape[0])


class GaussianNLL(_SumMetric):
    """Streaming :func:`mcdrop.metrics.gaussian_nll` under the total predictive variance."""

    higher_is_better = False

    def update(self, preds: Any, target: Any = None) -> None:
        """Add a batch: ``preds`` a RegressionResult or a ``(mean, variance)`` pair."""
        t_name, m_name, v_name = "target", "preds.mean", "preds.variance"
        if isinstance(preds, RegressionResult):
            mean, var = preds.mean, preds.variance
            if target is None:
                target, t_name = preds.targets, "preds.targets"
        elif isinstance(preds, (tuple, list)) and len(preds) == 2:
            (mean, var), m_name, v_name = preds, "preds[0]", "preds[1]"
        else:
            raise TypeError(
                "Expected `preds` to be a RegressionResult or a (mean, variance) pair, but got "
                f"{type(preds).__name__}."
            )
        if target is None:
            raise ValueError("Expected `target` (or the result's `targets`), but got None.")
        # Validated here so that the errors name the arguments of update(preds, target).
        y = _v.as_real(t_name, target)
        means = _v.match_shape(m_name, _v.as_real(m_name, mean), t_name, y)
        variances = _v.match_shape(v_name, _v.as_real(v_name, var), t_name, y)
        _v.check_positive(v_name, variances)
        values = _m.gaussian_nll(y, means, variances, reduction="none")
        self._add(float(np.mean(values)), int(np.size(values)))


class CalibrationError(Metric):
    """Streaming :func:`mcdrop.metrics.expected_calibration_error` on uniform bins.

    Parameters
    ----------
    n_bins : int, default=15
        Equal-width bins on [0, 1] (``strategy="uniform"``).
    norm : {"l1", "l2", "max"}, default="l1"
        ``"l1"``: ECE; ``"l2"``: RMS calibration error; ``"max"``: MCE.
    **kwargs
        Options of :class:`torchmetrics.Metric`.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    bin_count: torch.Tensor
    bin_confidence: torch.Tensor
    bin_hits: torch.Tensor

    def __init__(self, n_bins: int = 15, norm: str = "l1", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.n_bins = check_int("n_bins", n_bins, minimum=1)
        self.norm = check_choice("norm", norm, ("l1", "l2", "max"))
        self.edges = np.linspace(0.0, 1.0, self.n_bins + 1)
        for name in ("bin_count", "bin_confidence", "bin_hits"):
            zeros = torch.zeros(self.n_bins, dtype=torch.float64)
            self.add_state(name, zeros, dist_reduce_fx="sum")

    def update(self, preds: Any, target: Any = None) -> None:
        """Add a batch: ``preds`` a ClassificationResult or (N, C) probabilities."""
        labels, probs = _classification(preds, target)
        curve = _m.reliability_curve(labels, probs, n_bins=self.n_bins, strategy="uniform")
        count = curve.count.astype(np.float64)
        self.bin_count += torch.from_numpy(count).to(self.bin_count)
        self.bin_confidence += torch.from_numpy(np.nan_to_num(curve.confidence) * count).to(
            self.bin_count
        )
        self.bin_hits += torch.from_numpy(np.nan_to_num(curve.accuracy) * count).to(self.bin_count)

    def compute(self) -> torch.Tensor:
        count = self.bin_count.cpu().numpy()
        if count.sum() == 0:
            raise ValueError("Expected `update` before `compute` on CalibrationError.")
        with np.errstate(invalid="ignore", divide="ignore"):
            confidence = np.where(count > 0, self.bin_confidence.cpu().numpy() / count, np.nan)
            accuracy = np.where(count > 0, self.bin_hits.cpu().numpy() / count, np.nan)
        curve = _m.ReliabilityCurve(confidence, accuracy, count.astype(np.int64), self.edges)
        return torch.tensor(curve.calibration_error(self.norm), dtype=torch.float64)


class _ErrorsAndScores(Metric):
    """One 0/1 error flag and one uncertainty score per example (``"cat"`` states)."""

    is_differentiable = False
    full_state_update = False
    errors: list[torch.Tensor]
    scores: list[torch.Tensor]

    def __init__(self, score: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.score = check_choice("score", score, _SCORES)
        self.add_state("errors", [], dist_reduce_fx="cat")
        self.add_state("scores", [], dist_reduce_fx="cat")

    def update(self, preds: Any, target: Any = None, scores: Any = None) -> None:
        """Add a batch.

        Parameters
        ----------
        preds : ClassificationResult or Tensor of shape (N, C)
            Predictions; with a probability tensor pass ``scores``.
        target : Tensor of shape (N, *S), optional
            Labels; the result's ``targets`` when ``None``.
        scores : Tensor of shape (N, *S), optional
            Uncertainty per prediction; default ``getattr(preds, score)``.
        """
        if scores is None:
            if not isinstance(preds, ClassificationResult):
                raise TypeError(
                    "Expected `scores=` with probability `preds`, or a ClassificationResult "
                    f"whose `{self.score}` is used, but got {type(preds).__name__}."
                )
            scores = getattr(preds, self.score)
        labels, probs = _classification(preds, target)
        values = _v.check_scores("scores", _v.to_array("scores", scores).reshape(-1))
        if values.shape[0] != labels.shape[0]:
            raise ValueError(
                f"Expected `scores` with {labels.shape[0]} entries, but got {values.shape[0]}."
            )
        errors = probs.argmax(axis=1) != labels
        self.errors.append(torch.from_numpy(errors).to(self.device))
        self.scores.append(torch.from_numpy(values).to(self.device))

    def _gathered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Labels, probabilities and scores that reproduce the stored errors exactly."""
        if not self.errors:
            raise ValueError(f"Expected `update` before `compute` on {type(self).__name__}.")
        errors = dim_zero_cat(self.errors).cpu().numpy().astype(bool)
        scores = dim_zero_cat(self.scores).cpu().numpy()
        # predictions that are wrong exactly where `errors` is: class 1 predicted, label 0
        probs = np.stack([~errors, errors], axis=1).astype(np.float64)
        return np.zeros(errors.shape[0], dtype=np.int64), probs, scores


class MisclassificationAUROC(_ErrorsAndScores):
    """Streaming :func:`mcdrop.metrics.misclassification_auroc` of an uncertainty score.

    Parameters
    ----------
    score : {"mutual_information", "predictive_entropy", "expected_entropy", \
"variation_ratio"}, default="mutual_information"
        Attribute of the :class:`~mcdrop.ClassificationResult` ranking the examples (higher
        means more uncertain); ignored when ``update`` gets ``scores=``.
    **kwargs
        Options of :class:`torchmetrics.Metric`.

    Notes
    -----
    Keeps one flag and one score per example (``"cat"`` states), like torchmetrics' exact AUROC.
    ``compute`` raises ``ValueError`` when every prediction is right or every one wrong.
    """

    higher_is_better = True

    def __init__(self, score: str = "mutual_information", **kwargs: Any) -> None:
        super().__init__(score, **kwargs)

    def compute(self) -> torch.Tensor:
        labels, probs, scores = self._gathered()
        return torch.tensor(_m.misclassification_auroc(labels, probs, scores), dtype=torch.float64)


class AUGRC(_ErrorsAndScores):
    """Streaming :func:`mcdrop.metrics.augrc` (area under the generalised risk-coverage curve).

    Parameters
    ----------
    score : {"predictive_entropy", "mutual_information", "expected_entropy", \
"variation_ratio"}, default="predictive_entropy"
        Attribute of the :class:`~mcdrop.ClassificationResult` ranking the examples (higher
        means more uncertain, accepted last); ignored when ``update`` gets ``scores=``. The
        default is the score of :func:`mcdrop.metrics.evaluate`'s ``augrc``.
    **kwargs
        Options of :class:`torchmetrics.Metric`.

    Notes
    -----
    Keeps one flag and one score per example (``"cat"`` states): the ranking needs all of
    them. Ties in the score are broken by position in the concatenated states, as
    :func:`mcdrop.metrics.augrc` breaks them by position in its input.
    """

    higher_is_better = False

    def __init__(self, score: str = "predictive_entropy", **kwargs: Any) -> None:
        super().__init__(score, **kwargs)

    def compute(self) -> torch.Tensor:
        labels, probs, scores = self._gathered()
        return torch.tensor(_m.augrc(labels, probs, scores), dtype=torch.float64)


class EnergyScore(_SumMetric):
    """Streaming :func:`mcdrop.metrics.energy_score` of sampled regression predictions.

    ``update(preds, target=None)`` takes a :class:`~mcdrop.RegressionResult` that kept its
    samples (``keep_samples=True``) or a ``(T, N, *S)`` tensor of samples; the ``*S``
    elements of an example form one vector. Sums of per-example scores (constant memory).
    """

    higher_is_better = False

    def update(self, preds: Any, target: Any = None) -> None:
        """Add a batch: ``preds`` a RegressionResult with samples, or (T, N, *S) samples."""
        if isinstance(preds, RegressionResult):
            if preds.samples is None:
                raise ValueError(
                    "Expected a RegressionResult with `samples` (keep_samples=True) for the "
                    "energy score, but it holds none."
                )
            samples = preds.samples
            target = preds.targets if target is None else target
        else:
            samples = preds
        if target is None:
            raise ValueError("Expected `target` (or the result's `targets`), but got None.")
        values = np.asarray(_m.energy_score(target, samples, reduction="none"))
        self._add(float(np.mean(values)), int(values.size))
