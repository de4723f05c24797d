"""Hugging Face integration: ``datasets``, the ``Trainer`` and text-classification pipelines.

* :func:`predict_with_uncertainty` runs :func:`mcdrop.predict_with_uncertainty` on a
  ``datasets.Dataset`` (tokenized) or on a DataLoader of dict batches such as
  ``trainer.get_eval_dataloader()``. The ``labels`` (or ``label``) column becomes the result's
  ``targets`` and is *not* passed to the model, so no loss is computed on the ``T`` passes.
* :func:`evaluate` and :class:`MCDropoutTrainerCallback` evaluate a ``Trainer``'s model with
  ``T`` stochastic passes and report NLL, Brier score, ECE, accuracy, the misclassification AUROC
  of the mutual information and the mean mutual information, as ``eval_mc_*`` metrics.
* :class:`MCDropoutTextClassifier` wraps a text-classification pipeline (or a model and its
  tokenizer) and returns, per input text, the label, its MC predictive probability and the
  mutual information.

The model is never written to: only its dropout modules sample (attention dropout included),
every module's ``training`` flag is as before afterwards, and ``model.config`` is untouched
(unlike switching the whole model to ``train()``, which also changes what BERT's dropout state
is left in).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from torch import nn
from torch.utils.data import DataLoader, SequentialSampler

from mcdrop import metrics as _metrics
from mcdrop._validation import check_int
from mcdrop.results import ClassificationResult, RegressionResult
from mcdrop.sampling import SamplingOptions, default_of
from mcdrop.sampling import predict_with_uncertainty as _predict

__all__ = [
    "MCDropoutTextClassifier",
    "MCDropoutTrainerCallback",
    "evaluate",
    "predict_with_uncertainty",
    "uncertainty_metrics",
]

_LABEL_COLUMNS = ("labels", "label")
_DEFAULT_SAMPLES: int = default_of("n_samples")  # the core's: one default everywhere


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel`` wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _forward_names(model: nn.Module) -> set[str]:
    return set(inspect.signature(_unwrap(model).forward).parameters)


def _split_labels(batch: Any, label_names: Sequence[str]) -> tuple[dict[str, Any], Any]:
    """``(model inputs, labels)`` of a dict batch; the labels are taken out of the inputs."""
    if not isinstance(batch, Mapping):
        raise TypeError(
            f"Expected dict batches (as Hugging Face collators give), but got {type(batch).__name__}."
        )
    inputs = dict(batch)
    labels = None
    for name in label_names:
        if name in inputs:
            labels = inputs.pop(name)
    return inputs, labels


class _WithoutLabels:
    """Collate function: the base collate, then ``labels`` moved out into the targets."""

    def __init__(self, collate: Callable[[list[Any]], Any], label_names: Sequence[str]) -> None:
        self.collate = collate
        self.label_names = tuple(label_names)

    def __call__(self, rows: list[Any]) -> Any:
        inputs, labels = _split_labels(self.collate(rows), self.label_names)
        return inputs if labels is None else (inputs, labels)


def _pairs(loader: Any, label_names: Sequence[str]) -> Iterator[Any]:
    for batch in loader:
        inputs, labels = _split_labels(batch, label_names)
        yield inputs if labels is None else (inputs, labels)


def _dataset_loader(
    model: nn.Module,
    dataset: Any,
    *,
    batch_size: int,
    collate_fn: Callable[[list[Any]], Any] | None,
    tokenizer: Any,
) -> DataLoader[Any]:
    """A DataLoader over the model's columns of a ``datasets.Dataset``, labels kept apart."""
    columns = list(dataset.column_names)
    main = getattr(_unwrap(model), "main_input_name", "input_ids")
    if main not in columns:
        raise ValueError(
            f"Expected the dataset to have the column {main!r} that "
            f"{type(_unwrap(model)).__name__} needs, but it has {columns}; tokenize it first, "
            "e.g. dataset.map(lambda batch: tokenizer(batch['text'], truncation=True), "
            "batched=True)."
        )
    wanted = _forward_names(model)
    keep = [c for c in columns if c in wanted and c not in _LABEL_COLUMNS]
    keep += [c for c in _LABEL_COLUMNS if c in columns][:1]
    data = dataset.with_format("torch", columns=keep)
    if collate_fn is None:
        from transformers import DataCollatorWithPadding, default_data_collator

        collate_fn = (
            default_data_collator if tokenizer is None else DataCollatorWithPadding(tokenizer)
        )
    collate = _WithoutLabels(_checked_collate(collate_fn), _LABEL_COLUMNS)
    return DataLoader(data, batch_size=batch_size, shuffle=False, collate_fn=collate)


def _checked_collate(collate: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    def run(rows: list[Any]) -> Any:
        try:
            return collate(rows)
        except (ValueError, RuntimeError) as error:
            raise ValueError(
                f"Could not batch the dataset's rows ({error}); sequences of different lengths "
                "need padding: pass `tokenizer=` (padding with DataCollatorWithPadding) or "
                "`collate_fn=`, or tokenize with padding='max_length'."
            ) from error

    return run


def predict_with_uncertainty(
    model: nn.Module,
    data: Any,
    *,
    n_samples: int = _DEFAULT_SAMPLES,
    batch_size: int = 32,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    tokenizer: Any = None,
    **options: Any,
) -> ClassificationResult | RegressionResult:
    """MC dropout predictions of a Hugging Face model on a dataset or a DataLoader.

    Parameters
    ----------
    model : transformers.PreTrainedModel or nn.Module
        Called with the batch's columns as keyword arguments; ``logits`` are taken from its
        output. Only its dropout modules sample; it is left as it was.
    data : datasets.Dataset or DataLoader of dict batches
        A tokenized dataset (the columns the model's ``forward`` accepts are used; a
        ``labels``/``label`` column becomes the targets) or a DataLoader yielding dicts, e.g.
        ``trainer.get_eval_dataloader()`` (``labels`` taken out as the targets).
    n_samples : int, default=100
        Stochastic passes ``T``.
    batch_size : int, default=32
        Examples per batch for a dataset.
    collate_fn : callable, optional
        Batches rows of a dataset; default ``DataCollatorWithPadding(tokenizer)`` when a
        ``tokenizer`` is given, else ``transformers.default_data_collator`` (rows of equal
        length).
    tokenizer : PreTrainedTokenizerBase, optional
        For padding rows of different lengths.
    **options
        Any keyword option of :func:`mcdrop.predict_with_uncertainty` (``seed``, ``outputs``,
        ``class_dim``, ``strategy``, ``batch_budget``, ``distributed``, ...).

    Returns
    -------
    ClassificationResult or RegressionResult
        With ``targets`` when the data carried labels.

    Notes
    -----
    With a dataset, or a DataLoader with a sequential sampler, the batches come from a
    ``DataLoader`` over a map-style dataset, so ``distributed=True`` can shard it.
    """
    if "targets" in options:
        raise TypeError("Expected the targets in the data's `labels` column, not `targets=`.")
    batch_size = check_int("batch_size", batch_size, minimum=1)
    if hasattr(data, "column_names") and hasattr(data, "with_format"):  # datasets.Dataset
        inputs: Any = _dataset_loader(
            model, data, batch_size=batch_size, collate_fn=collate_fn, tokenizer=tokenizer
        )
    elif isinstance(data, DataLoader):
        if isinstance(data.sampler, SequentialSampler) and data.batch_size is not None:
            base = data.collate_fn
            inputs = DataLoader(
                data.dataset,
                batch_size=data.batch_size,
                shuffle=False,
                collate_fn=_WithoutLabels(base, _LABEL_COLUMNS),
                num_workers=data.num_workers,
            )
        else:
            inputs = _pairs(data, _LABEL_COLUMNS)
    else:
        raise TypeError(
            "Expected `data` to be a datasets.Dataset or a DataLoader of dict batches, but got "
            f"{type(data).__name__}; for tensors use mcdrop.predict_with_uncertainty."
        )
    options.setdefault("progress", False)
    return _predict(_unwrap(model), inputs, n_samples=n_samples, **options)


def uncertainty_metrics(
    result: ClassificationResult, *, prefix: str = "eval_mc", n_bins: int = 15
) -> dict[str, float]:
    """The metrics the Trainer helpers report, ``{prefix}_{name}``.

    ``accuracy``, ``nll``, ``brier``, ``ece`` (from :func:`mcdrop.metrics.evaluate`),
    ``misclassification_auroc`` of the mutual information (NaN when every prediction is right
    or every one wrong) and the mean ``mutual_information``.
    """
    if result.targets is None:
        raise ValueError(
            "Expected labels in the evaluation data (a `labels` column) to compute the metrics."
        )
    values = _metrics.evaluate(result, n_bins=n_bins)
    out = {name: values[name] for name in ("accuracy", "nll", "brier", "ece")}
    mean = result.mean.movedim(result.class_dim, -1)
    probs, labels = mean.reshape(-1, mean.shape[-1]), result.targets.reshape(-1)
    mi = result.mutual_information.reshape(-1)
    try:
        out["misclassification_auroc"] = _metrics.misclassification_auroc(labels, probs, mi)
    except ValueError:
        out["misclassification_auroc"] = math.nan
    out["mutual_information"] = float(mi.mean())
    return {f"{prefix}_{name}": float(value) for name, value in out.items()}


def evaluate(
    trainer: Any,
    eval_dataset: Any = None,
    *,
    n_samples: int = _DEFAULT_SAMPLES,
    metric_key_prefix: str = "eval_mc",
    **options: Any,
) -> dict[str, float]:
    """Evaluate a ``transformers.Trainer``'s model with ``T`` Monte Carlo dropout passes.

    Parameters
    ----------
    trainer : transformers.Trainer
        Its ``get_eval_dataloader(eval_dataset)`` gives the batches, its ``model`` is sampled.
    eval_dataset : datasets.Dataset, optional
        Default: the trainer's ``eval_dataset``.
    n_samples : int, default=100
        Stochastic passes ``T``.
    metric_key_prefix : str, default="eval_mc"
        Prefix of the reported names.
    **options
        Keyword options of :func:`mcdrop.predict_with_uncertainty`.

    Returns
    -------
    dict of str to float
        :func:`uncertainty_metrics`; also logged with ``trainer.log`` (log history and the
        configured reporters).
    """
    loader = trainer.get_eval_dataloader(eval_dataset)
    result = predict_with_uncertainty(trainer.model, loader, n_samples=n_samples, **options)
    values = uncertainty_metrics(result, prefix=metric_key_prefix)  # type: ignore[arg-type]
    trainer.log(dict(values))
    return values


def _trainer_callback_base() -> type:
    try:
        from transformers import TrainerCallback
    except ImportError as error:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            'mcdrop.integrations.huggingface needs Hugging Face transformers: pip install "mcdrop[transformers]"'
        ) from error
    return TrainerCallback


class MCDropoutTrainerCallback(_trainer_callback_base()):  # type: ignore[misc]
    """``TrainerCallback``: after every evaluation, also evaluate with ``T`` MC dropout passes.

    The ``eval_mc_*`` values of :func:`uncertainty_metrics` are added to the metrics that
    ``trainer.evaluate()`` returns (so ``metric_for_best_model="eval_mc_nll"`` works) and to
    ``trainer.state.log_history``.

    Parameters
    ----------
    n_samples : int, default=100
        Stochastic passes ``T``.
    metric_key_prefix : str, default="eval_mc"
    **options
        Keyword options of :func:`mcdrop.predict_with_uncertainty` (``seed=`` for repeatable
        values).
    """

    def __init__(
        self,
        n_samples: int = _DEFAULT_SAMPLES,
        *,
        metric_key_prefix: str = "eval_mc",
        **options: Any,
    ) -> None:
        self.n_samples = check_int("n_samples", n_samples, minimum=1)
        self.metric_key_prefix = metric_key_prefix
        SamplingOptions.create(n_samples=n_samples, **options)  # refused now, not at evaluation
        self.options = options

    def on_evaluate(  # type: ignore[no-untyped-def]
        self, args, state, control, model=None, eval_dataloader=None, metrics=None, **kwargs
    ):
        if model is None or eval_dataloader is None:
            return control
        result = predict_with_uncertainty(
            model, eval_dataloader, n_samples=self.n_samples, **self.options
        )
        values = uncertainty_metrics(result, prefix=self.metric_key_prefix)  # type: ignore[arg-type]
        if metrics is not None:
            metrics.update(values)
        state.log_history.append({**values, "epoch": state.epoch, "step": state.global_step})
        return control


class MCDropoutTextClassifier:
    """Text classification with MC dropout: label, probability and mutual information per text.

    Parameters
    ----------
    pipeline : transformers.TextClassificationPipeline or PreTrainedModel
        A ``pipeline("text-classification", ...)``, or the model itself (then pass
        ``tokenizer``). Single-label classifiers only (softmax over ``num_labels >= 2``).
    tokenizer : PreTrainedTokenizerBase, optional
        Needed when ``pipeline`` is a model.
    n_samples : int, default=100
        Stochastic passes ``T``.
    batch_size : int, default=32
        Texts per batch.
    max_length : int, optional
        Truncation length of the tokenizer (default: the tokenizer's).
    seed : int or None, default=0
        Same texts and seed give the same numbers.
    **options
        Keyword options of :func:`mcdrop.predict_with_uncertainty`.

    Examples
    --------
    >>> from transformers import pipeline  # doctest: +SKIP
    >>> classify = MCDropoutTextClassifier(pipeline("text-classification", model=path))  # doctest: +SKIP
    >>> classify("great movie")  # doctest: +SKIP
    {'label': 'POSITIVE', 'score': 0.93, 'mutual_information': 0.012, 'predictive_entropy': 0.25}
    """

    def __init__(
        self,
        pipeline: Any,
        tokenizer: Any = None,
        *,
        n_samples: int = _DEFAULT_SAMPLES,
        batch_size: int = 32,
        max_length: int | None = None,
        seed: int | None = 0,
        **options: Any,
    ) -> None:
        model: Any
        if isinstance(pipeline, nn.Module):
            model, tok = pipeline, tokenizer
        else:
            model = getattr(pipeline, "model", None)
            tok = tokenizer if tokenizer is not None else getattr(pipeline, "tokenizer", None)
        if not isinstance(model, nn.Module):
            raise TypeError(
                "Expected `pipeline` to be a text-classification pipeline or a PyTorch model, "
                f"but got {type(pipeline).__name__}."
            )
        if tok is None:
            raise ValueError("Expected a `tokenizer` with a model (the pipeline has none).")
        config = getattr(model, "config", None)
        num_labels = int(getattr(config, "num_labels", 0) or 0)
        problem = getattr(config, "problem_type", None)
        if num_labels < 2 or problem in ("multi_label_classification", "regression"):
            raise ValueError(
                f"Expected a single-label classifier with num_labels >= 2, but got num_labels="
                f"{num_labels} and problem_type={problem!r}."
            )
        self.model, self.tokenizer = model, tok
        self.id2label = dict(getattr(config, "id2label", {}) or {})
        self.n_samples = check_int("n_samples", n_samples, minimum=1)
        self.batch_size = check_int("batch_size", batch_size, minimum=1)
        self.max_length = max_length
        self.seed = seed
        SamplingOptions.create(  # refused now, not at the first text
            n_samples=n_samples, batch_size=batch_size, seed=seed, progress=False, **options
        )
        self.options = options

    def predict(self, texts: Sequence[str]) -> ClassificationResult:
        """The MC dropout result for a list of texts (in order)."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts) or not texts:
            raise TypeError("Expected `texts` to be a non-empty list of strings.")
        encoded = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        wanted = _forward_names(self.model)
        inputs = {k: v for k, v in encoded.items() if k in wanted}
        result = _predict(
            self.model,
            inputs,
            n_samples=self.n_samples,
            batch_size=self.batch_size,
            seed=self.seed,
            progress=False,
            **self.options,
        )
        assert isinstance(result, ClassificationResult)
        return result

    def __call__(self, texts: str | Sequence[str]) -> dict[str, Any] | list[dict[str, Any]]:
        """``{"label", "score", "mutual_information", "predictive_entropy"}`` per text.

        A single string gives one dict, a list gives a list of dicts.
        """
        single = isinstance(texts, str)
        result = self.predict([texts] if single else texts)  # type: ignore[list-item]
        classes = result.predicted_class.numpy()
        score = result.confidence.numpy()
        mi = result.mutual_information.numpy()
        entropy = result.predictive_entropy.numpy()
        rows = [
            {
                "label": self.id2label.get(int(c), f"LABEL_{int(c)}"),
                "score": float(s),
                "mutual_information": float(m),
                "predictive_entropy": float(h),
            }
            for c, s, m, h in zip(classes, score, mi, entropy, strict=True)
        ]
        return rows[0] if single else rows
