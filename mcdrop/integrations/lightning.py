"""PyTorch Lightning integration: Monte Carlo dropout in ``validate``, ``test`` and ``predict``.

Add :class:`MCDropoutCallback` to a :class:`lightning.pytorch.Trainer`; the LightningModule is
left as it is. For every batch of the chosen loops the callback runs
:func:`mcdrop.predict_with_uncertainty` on the module (a LightningModule is an ``nn.Module``:
its ``forward`` is sampled ``T`` times with only the dropout layers switched on) and

* ``validate`` / ``test`` (also the validation inside ``fit``): feeds the results to streaming
  :mod:`mcdrop.integrations.torchmetrics` metrics and logs them at the end of the epoch through
  ``pl_module.log`` (so through the Trainer's logger) as ``val_mc_<metric>`` /
  ``test_mc_<metric>``;
* ``predict``: ``trainer.predict`` returns one :class:`~mcdrop.ClassificationResult` (or
  :class:`~mcdrop.RegressionResult`) per batch instead of the module's outputs;
  :func:`merge_results` joins them.

The module's own ``validation_step`` / ``test_step`` / ``predict_step`` still run (one
deterministic pass); the callback adds ``T`` stochastic passes per batch.

Distributed (DDP)
-----------------
Lightning already gives every rank its own shard of the data (``DistributedSampler``), so each
rank samples its own batches; the metric states are then reduced across ranks by torchmetrics
(``dist_reduce_fx``) when they are computed, and every rank logs the global value. mcdrop's
``distributed=True`` path, which shards one input over the ranks itself, is for a whole dataset
outside a Lightning loop; here it would shard data that Lightning has already sharded. Under DDP
``trainer.predict`` returns each rank's own batches, as Lightning does for any module.

Reproducibility
---------------
With ``seed`` set, batch ``b`` of dataloader ``d`` on rank ``r`` is sampled with a seed derived
from ``(seed, d, b, r)``, the same in every loop, and the global RNG is left as it was (so
training with the callback gives the same weights as without it). With ``seed=None`` the
sampling draws from the global RNG (``lightning.seed_everything`` makes it reproducible).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

try:
    from lightning.pytorch import Callback, LightningModule, Trainer
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        'mcdrop.integrations.lightning needs PyTorch Lightning: pip install "mcdrop[lightning]"'
    ) from error

from mcdrop._validation import check_choice, check_int
from mcdrop.results import ClassificationResult, RegressionResult
from mcdrop.sampling import SamplingOptions, default_of, predict_with_uncertainty

__all__ = ["MCDropoutCallback", "merge_results", "split_batch"]

_STAGES = ("validate", "test", "predict")
_TARGET_KEYS = ("labels", "label", "targets", "target", "y")
_CLASSIFICATION_METRICS = (
    "nll",
    "brier",
    "accuracy",
    "ece",
    "mce",
    "misclassification_auroc",
    "mutual_information",
)
_REGRESSION_METRICS = ("gaussian_nll",)
_RESERVED = ("targets", "distributed", "rank0_only", "progress", "seed", "generator")
_PREFIX = {"validate": "val", "test": "test"}

Result = ClassificationResult | RegressionResult


def split_batch(batch: Any) -> tuple[Any, Any]:
    """Default split of a Lightning batch into ``(inputs, targets)``.

    * ``(x, y)`` tuple or list of two: ``x`` and ``y``; ``(x,)``: ``x`` and no targets.
    * dict: targets under ``labels``, ``label``, ``targets``, ``target`` or ``y`` (taken out);
      the remaining keys are the model's keyword arguments.
    * a tensor: the inputs, no targets.

    Pass ``batch_transform=`` to :class:`MCDropoutCallback` for any other layout.
    """
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, Mapping):
        inputs = dict(batch)
        for key in _TARGET_KEYS:
            if key in inputs:
                return inputs, inputs.pop(key)
        return inputs, None
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return batch[0], (batch[1] if len(batch) == 2 else None)
    raise TypeError(
        "Expected a batch that is a tensor, an (inputs, targets) pair or a dict, but got "
        f"{type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        + "; pass `batch_transform=lambda batch: (inputs, targets)` to MCDropoutCallback."
    )


def merge_results(results: Sequence[Result]) -> Result:
    """Join per-batch results (e.g. the output of ``trainer.predict``) along the examples.

    Parameters
    ----------
    results : sequence of ClassificationResult or of RegressionResult
        Results of one task with the same number of samples ``T``.

    Returns
    -------
    ClassificationResult or RegressionResult
        Every per-example tensor concatenated (``samples`` along dimension 1).
    """
    if not results:
        raise ValueError("Expected at least one result to merge, but got none.")
    first = results[0]
    if any(type(r) is not type(first) for r in results):
        raise TypeError("Expected results of one type (all classification or all regression).")
    if any(r.n_samples != first.n_samples for r in results):
        raise ValueError(
            "Expected results with one `n_samples`, but got "
            f"{sorted({r.n_samples for r in results})}."
        )
    merged: dict[str, Any] = {}
    for field in dataclasses.fields(first):
        name, value = field.name, getattr(first, field.name)
        if isinstance(value, torch.Tensor):
            dim = 1 if name == "samples" else 0
            merged[name] = torch.cat([getattr(r, name) for r in results], dim=dim)
        elif name == "standard_error_reached" and value is not None:
            merged[name] = max(getattr(r, name) for r in results)
        else:
            merged[name] = value
    return type(first)(**merged)


def _metric(name: str, n_bins: int, score: str) -> Any:
    from torchmetrics.aggregation import MeanMetric

    from mcdrop.integrations import torchmetrics as tm

    factories: dict[str, Callable[[], Any]] = {
        "nll": tm.NegativeLogLikelihood,
        "brier": tm.BrierScore,
        "accuracy": tm.Accuracy,
        "ece": lambda: tm.CalibrationError(n_bins=n_bins),
        "mce": lambda: tm.CalibrationError(n_bins=n_bins, norm="max"),
        "misclassification_auroc": lambda: tm.MisclassificationAUROC(score=score),
        "gaussian_nll": tm.GaussianNLL,
        "mutual_information": MeanMetric,
    }
    return factories[name]()


class MCDropoutCallback(Callback):
    """Monte Carlo dropout in Lightning's ``validate``, ``test`` and ``predict`` loops.

    Parameters
    ----------
    n_samples : int, default=100
        Stochastic passes ``T`` per batch.
    stages : sequence of {"validate", "test", "predict"}, default=all three
        Loops in which the callback samples (``"validate"`` includes validation during
        ``fit``, not the sanity check).
    metrics : sequence of str, optional
        Logged in ``validate`` / ``test``. Classification: ``"nll"``, ``"brier"``,
        ``"accuracy"``, ``"ece"``, ``"mce"``, ``"misclassification_auroc"`` (of ``score``),
        ``"mutual_information"`` (the mean); default ``("nll", "brier", "ece",
        "misclassification_auroc")``. Regression: ``"gaussian_nll"`` (default).
    score : str, default="mutual_information"
        Uncertainty ranking misclassifications for ``"misclassification_auroc"``.
    n_bins : int, default=15
        Uniform bins of ``"ece"`` / ``"mce"``.
    batch_transform : callable, optional
        ``batch -> (inputs, targets)``; default :func:`split_batch`. ``inputs`` is what the
        module's ``forward`` takes: a tensor, a tuple (positional) or a dict (keyword).
    seed : int or None, default=0
        Base seed (see the module docstring); ``None`` draws from the global RNG.
    **options
        Keyword options of :func:`mcdrop.predict_with_uncertainty` (``task``, ``outputs``,
        ``include``, ``scope``, ``strategy``, ``batch_budget``, ``tau``, ...).

    Attributes
    ----------
    results_ : dict of str to float
        The metrics of the last validate/test epoch, by logged name.

    Examples
    --------
    >>> from lightning.pytorch import Trainer  # doctest: +SKIP
    >>> from mcdrop.integrations.lightning import MCDropoutCallback, merge_results  # doctest: +SKIP
    >>> trainer = Trainer(callbacks=[MCDropoutCallback(n_samples=50)])  # doctest: +SKIP
    >>> trainer.validate(module, val_loader)  # logs val_mc_nll, val_mc_ece, ...  # doctest: +SKIP
    >>> result = merge_results(trainer.predict(module, test_loader))  # doctest: +SKIP
    """

    def __init__(
        self,
        n_samples: int = default_of("n_samples"),
        *,
        stages: Sequence[str] = _STAGES,
        metrics: Sequence[str] | None = None,
        score: str = "mutual_information",
        n_bins: int = 15,
        batch_transform: Callable[[Any], tuple[Any, Any]] | None = None,
        seed: int | None = 0,
        **options: Any,
    ) -> None:
        super().__init__()
        self.n_samples = check_int("n_samples", n_samples, minimum=1)
        if isinstance(stages, str):
            stages = (stages,)
        self.stages = tuple(check_choice("stages", s, _STAGES) for s in stages)
        reserved = sorted(set(options) & set(_RESERVED))
        if reserved:
            raise TypeError(
                f"Expected no {reserved} among the options: the callback sets them itself "
                "(targets come from the batch, `seed=` is the callback's own argument)."
            )
        self.task = SamplingOptions.create(n_samples=n_samples, **options).task  # checked now
        allowed: tuple[str, ...] = _CLASSIFICATION_METRICS
        if self.task == "regression":
            allowed = _REGRESSION_METRICS
        default = ("nll", "brier", "ece", "misclassification_auroc")
        chosen = (
            (default if self.task == "classification" else allowed) if metrics is None else metrics
        )
        self.metrics = tuple(check_choice("metrics", m, allowed) for m in chosen)
        self.score = check_choice(
            "score",
            score,
            ("mutual_information", "predictive_entropy", "expected_entropy", "variation_ratio"),
        )
        self.n_bins = check_int("n_bins", n_bins, minimum=1)
        self.batch_transform = split_batch if batch_transform is None else batch_transform
        self.seed = None if seed is None else check_int("seed", seed, minimum=0)
        self.options = options
        self.results_: dict[str, float] = {}
        self._metrics: dict[str, Any] = {}
        self._predictions: dict[int, list[Result]] = {}

    # -- sampling ----------------------------------------------------------------------------
    def _batch_seed(self, trainer: Trainer, batch_idx: int, dataloader_idx: int) -> int | None:
        if self.seed is None:
            return None
        key = [self.seed, dataloader_idx, batch_idx, trainer.global_rank]
        return int(np.random.SeedSequence(key).generate_state(1)[0])

    def _sample(
        self, trainer: Trainer, module: LightningModule, batch: Any, idx: int, dl: int
    ) -> Result:
        inputs, targets = self.batch_transform(batch)
        try:
            return predict_with_uncertainty(
                module,
                inputs,
                targets=targets,
                n_samples=self.n_samples,
                seed=self._batch_seed(trainer, idx, dl),
                progress=False,
                **self.options,
            )
        except ValueError as error:
            if "no dropout" not in str(error).lower():
                raise
            raise ValueError(
                f"MCDropoutCallback needs dropout in the LightningModule "
                f"`{type(module).__name__}`: {error} Add dropout to the module, pass "
                "`include=`/`scope=` to the callback, or remove the callback."
            ) from None

    # -- validate / test ---------------------------------------------------------------------
    def _start(self, stage: str, module: LightningModule) -> None:
        self._metrics = {
            m: _metric(m, self.n_bins, self.score).to(module.device) for m in self.metrics
        }

    def _batch(
        self, stage: str, trainer: Trainer, module: LightningModule, batch: Any, idx: int, dl: int
    ) -> None:
        if stage not in self.stages or trainer.sanity_checking:
            return
        result = self._sample(trainer, module, batch, idx, dl)
        if result.targets is None:
            raise ValueError(
                f"Expected the {stage} batches to carry targets for the MC dropout metrics, but "
                "batch_transform gave None; pass `batch_transform=lambda batch: (inputs, "
                "targets)` to MCDropoutCallback."
            )
        for name, metric in self._metrics.items():
            if name == "mutual_information":
                metric.update(result.mutual_information.to(module.device))  # type: ignore[union-attr]
            else:
                metric.update(result)

    def _end(self, stage: str, trainer: Trainer, module: LightningModule) -> None:
        if stage not in self.stages or trainer.sanity_checking or not self._metrics:
            return
        prefix = _PREFIX[stage]
        for name, metric in self._metrics.items():
            try:
                value = float(metric.compute())
            except ValueError as error:  # e.g. AUROC when every prediction is right
                warnings.warn(f"mcdrop: {prefix}_mc_{name} is undefined: {error}", stacklevel=2)
                value = math.nan
            self.results_[f"{prefix}_mc_{name}"] = value
            module.log(f"{prefix}_mc_{name}", value, on_epoch=True, sync_dist=False)
            metric.reset()

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("validate", pl_module)

    def on_test_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start("test", pl_module)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch("validate", trainer, pl_module, batch, batch_idx, dataloader_idx)

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._batch("test", trainer, pl_module, batch, batch_idx, dataloader_idx)

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end("validate", trainer, pl_module)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._end("test", trainer, pl_module)

    # -- predict -----------------------------------------------------------------------------
    def on_predict_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._predictions = {}

    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if "predict" not in self.stages:
            return
        result = self._sample(trainer, pl_module, batch, batch_idx, dataloader_idx)
        self._predictions.setdefault(dataloader_idx, []).append(result)

    def on_predict_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if "predict" not in self.stages:
            return
        loop = trainer.predict_loop
        if loop.return_predictions:  # the loop returns these lists right after this hook
            for index, results in self._predictions.items():
                loop._predictions[index] = list(results)
        self.predictions_ = dict(self._predictions)
