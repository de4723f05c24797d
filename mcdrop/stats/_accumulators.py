"""Streaming accumulators of the uncertainty statistics, and summaries of stacked samples."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch.nn import functional as F

from mcdrop._validation import check_choice, check_float, check_int
from mcdrop.results import ClassificationResult, RegressionResult, standard_error_of

__all__ = ["summarize_samples"]

OUTPUT_KINDS = ("logits", "probs", "log_probs", "binary_logits")
_CLASS_MAJOR_MAX = 16  # classes up to which the statistics run class-major (measured)


def _stat_dtype(device: torch.device) -> torch.dtype:
    # MPS has no float64; everything else accumulates in double precision.
    return torch.float32 if device.type == "mps" else torch.float64


class Moments:
    """Streaming mean and sum of squared deviations (Chan et al. 1979), per element."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, chunk: torch.Tensor) -> None:
        k = chunk.shape[0]
        chunk_mean = chunk.mean(0)
        chunk_m2 = (chunk - chunk_mean).square_().sum(0)
        if self.mean is None or self.m2 is None:
            self.count, self.mean, self.m2 = k, chunk_mean, chunk_m2
            return
        total = self.count + k
        delta = chunk_mean - self.mean
        self.mean = self.mean + delta * (k / total)
        self.m2 = self.m2 + chunk_m2 + delta.square() * (self.count * k / total)
        self.count = total

    @property
    def variance(self) -> torch.Tensor:
        assert self.m2 is not None
        return self.m2 / self.count

    def max_standard_error(self) -> float:
        if self.count < 2 or self.m2 is None:
            return math.inf
        return float((self.m2 / (self.count * (self.count - 1))).max().sqrt())


class ClassificationAccumulator:
    """Streaming statistics of sampled class probabilities for one batch.

    On the CPU, chunks ``(k, B, C, *S)`` with at most ``_CLASS_MAJOR_MAX`` classes are worked on
    class-major, ``(k, C, B, *S)``: reductions over the few classes then run across the examples
    (PyTorch's CPU softmax along a last dimension of 10 was 4x slower). More classes, and CUDA
    (one more kernel, nothing gained), keep the outputs' layout (there a reduction along the
    classes is faster, and more accurate in float32). The statistics are kept in the working
    layout and returned as ``(B, C, *S)``.
    """

    def __init__(self, *, outputs: str, class_dim: int, keep_samples: bool, atol: float = 1e-3):
        self.outputs = outputs
        self.class_dim = class_dim  # of one sample (B, C, *S)
        self.keep_samples = keep_samples
        self.atol = atol
        self.moments = Moments()  # of the probabilities, in the working layout
        self.major = False  # class-major working layout (decided on the first chunk)
        self.entropy_sum: torch.Tensor | None = None
        self.mode_counts: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []
        # outputs='logits' on the first chunk: "every row is a probability vector" (a device
        # flag, read in state() where the statistics are read anyway: no extra sync).
        self.looks_like_probs: torch.Tensor | None = None

    @property
    def _dim(self) -> int:
        """The class dimension of a chunk in the working layout."""
        return 1 if self.major else self.class_dim + 1

    def _probs(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Probabilities of a chunk in the working layout, and their logarithms where they
        come for free (softmax outputs)."""
        dim = self.class_dim + 1
        num_classes = raw.shape[dim]
        if self.moments.count == 0:
            _note_token_layout(tuple(raw.shape[1:]), self.class_dim)
            self.major = num_classes <= _CLASS_MAJOR_MAX and raw.device.type == "cpu"
        # float64 outputs stay float64; low-precision outputs (bf16 under amp) get a tolerance
        # that matches their rounding.
        atol = self.atol
        if raw.is_floating_point():
            atol = max(atol, 2 * num_classes * torch.finfo(raw.dtype).eps)
        dtype = torch.float64 if raw.dtype == torch.float64 else torch.float32
        if self.major:
            raw = raw.movedim(dim, 1).to(dtype, memory_format=torch.contiguous_format)
        else:
            raw = raw.to(dtype)
        dim = self._dim
        if self.outputs == "binary_logits":
            if num_classes != 1:
                raise ValueError(
                    "Expected `outputs='binary_logits'` model outputs with one logit along "
                    f"class_dim={self.class_dim}, but got {num_classes}."
                )
            raw = torch.cat([torch.zeros_like(raw), raw], dim)  # softmax([0, z]) = [1-s(z), s(z)]
        elif num_classes == 1:
            raise ValueError(
                f"Expected at least 2 classes along class_dim={self.class_dim}, but the model "
                "output has 1: a softmax over one class is always 1 (zero uncertainty). For a "
                "regression model (one output per example) pass `task='regression'`; for a "
                "binary classifier with one logit (BCEWithLogitsLoss), "
                "`outputs='binary_logits'`; for one probability, `output_transform=lambda p: "
                "torch.cat([1 - p, p], dim=1)` with `outputs='probs'`."
            )
        if self.outputs == "logits" and self.looks_like_probs is None and raw.numel():
            # min and max reductions: a comparison to a boolean tensor reduced by all() costs
            # several times more on the CPU; NaN gives False either way. On the CPU, where
            # reading a value waits for nothing, rows with a negative value need no sums.
            nonnegative = raw.amin() >= 0
            if raw.device.type == "cpu" and not bool(nonnegative):
                self.looks_like_probs = nonnegative
            else:
                sums_off = (raw.sum(dim) - 1).abs().amax()
                self.looks_like_probs = nonnegative & (sums_off <= atol)
        if self.outputs in ("logits", "binary_logits"):
            log_probs = F.log_softmax(raw, dim=dim)
            return log_probs.exp(), log_probs
        if self.outputs == "log_probs":
            probs = raw.exp()
        else:
            probs = raw
            if bool(((probs < -atol) | (probs > 1 + atol)).any()):
                raise ValueError(
                    "Expected `outputs='probs'` model outputs in [0, 1], but got values from "
                    f"{float(probs.min()):g} to {float(probs.max()):g}; pass `outputs='logits'` "
                    "if the model returns logits."
                )
        sums = probs.sum(dim, keepdim=True)
        if not bool(torch.allclose(sums, torch.ones_like(sums), atol=atol)):
            worst = float((sums - 1).abs().max())
            raise ValueError(
                f"Expected `outputs={self.outputs!r}` rows that sum to 1 along class_dim="
                f"{self.class_dim}, but a row is off by {worst:g}; pass `outputs='logits'` if the "
                "model returns logits, or the right `class_dim`."
            )
        return probs.clamp_min(0.0) / sums, None  # remove the rounding of low-precision outputs

    def update(self, raw: torch.Tensor) -> None:
        """Add a chunk of samples ``(k, B, C, *S)``."""
        probs, log_probs = self._probs(raw)
        dtype = _stat_dtype(probs.device)
        # -sum p log p, 0 at p = 0 (a logit of -inf, a masked class, gives log p = -inf)
        # per sample, then over the samples in ``dtype`` (a sum with a dtype first casts its
        # input: the small (k, B, *S) entropies, not the chunk): (B, *S)
        if log_probs is None:
            entropy_sum = torch.special.entr(probs).sum(self._dim).sum(0, dtype=dtype)
        else:
            finite = log_probs.clamp_min(torch.finfo(log_probs.dtype).min)
            entropy_sum = (probs * finite).sum(self._dim).sum(0, dtype=dtype).neg_()
        self.entropy_sum = (
            entropy_sum if self.entropy_sum is None else self.entropy_sum + entropy_sum
        )
        # The most probable class of each sample, from the outputs as given, in their own
        # layout (an argmax across the examples is slow): softmax, exp and normalising keep the
        # order of the values, which rounding can turn into ties. One logit: class 1 if z > 0.
        dim = self.class_dim + 1
        if self.outputs == "binary_logits":
            winners = (raw > 0).squeeze(dim).long()
        else:
            # (max's indices: argmax's, the first of equal values, several times faster on the
            # CPU along a short class dimension)
            winners = (raw.to(torch.uint8) if raw.dtype == torch.bool else raw).max(dim).indices
        winners = winners.movedim(0, -1)  # (B, *S, k)
        if self.mode_counts is None:  # votes per class, class dimension last: (B, *S, C)
            shape = (*winners.shape[:-1], probs.shape[self._dim])
            self.mode_counts = torch.zeros(shape, dtype=torch.int64, device=probs.device)
        self.mode_counts.scatter_add_(-1, winners, torch.ones_like(winners))
        self.moments.update(probs.to(dtype))
        if self.keep_samples:
            self.samples.append(probs.movedim(self._dim, self.class_dim + 1).cpu())

    @property
    def count(self) -> int:
        return self.moments.count

    def max_standard_error(self) -> float:
        return self.moments.max_standard_error()

    def state(self) -> dict[str, torch.Tensor]:
        """Per-example statistics of the batch, on the accumulation device."""
        assert self.moments.mean is not None and self.entropy_sum is not None
        if self.looks_like_probs is not None and bool(self.looks_like_probs):
            raise ValueError(
                "Expected `outputs='logits'` (the default) model outputs, but every output row of "
                "the first batch is non-negative and sums to 1 along class_dim="
                f"{self.class_dim}: the model already returns probabilities, and a second softmax "
                "would flatten them (lower confidence, understated mutual information). Pass "
                "`outputs='probs'`."
            )
        assert self.mode_counts is not None
        kept = self._dim - 1  # the class dimension of the statistics as kept
        count = self.count
        predictive_entropy = -torch.special.xlogy(self.moments.mean, self.moments.mean).sum(kept)
        expected_entropy = self.entropy_sum / count
        mean = self.moments.mean.movedim(kept, self.class_dim)
        variation_ratio = 1.0 - self.mode_counts.amax(-1).to(mean.dtype) / count
        variance = self.moments.variance.movedim(kept, self.class_dim)
        out = {
            "mean": mean.contiguous(),
            "variance": variance.contiguous(),
            "standard_error": standard_error_of(variance, count).contiguous(),
            "predictive_entropy": predictive_entropy,
            "expected_entropy": expected_entropy,
            "variation_ratio": variation_ratio,
        }
        if self.keep_samples:
            out["samples"] = torch.cat(self.samples, 0)
        return out


class RegressionAccumulator:
    """Streaming statistics of sampled regression outputs for one batch."""

    def __init__(self, *, tau: float | None, heteroscedastic: bool, keep_samples: bool):
        self.tau = tau
        self.heteroscedastic = heteroscedastic
        self.keep_samples = keep_samples
        self.moments = Moments()
        self.noise_sum: torch.Tensor | None = None
        self.samples: list[torch.Tensor] = []

    def update(self, raw: torch.Tensor, log_var: torch.Tensor | None = None) -> None:
        dtype = _stat_dtype(raw.device)
        mean = raw.to(dtype)
        self.moments.update(mean)
        if self.heteroscedastic:
            assert log_var is not None
            if log_var.shape != raw.shape:
                raise ValueError(
                    f"Expected the log-variance output to match the mean of shape "
                    f"{tuple(raw.shape[1:])}, but got {tuple(log_var.shape[1:])}."
                )
            noise = log_var.to(dtype).exp().sum(0)
            self.noise_sum = noise if self.noise_sum is None else self.noise_sum + noise
        if self.keep_samples:
            self.samples.append(raw.float().cpu())

    @property
    def count(self) -> int:
        return self.moments.count

    def max_standard_error(self) -> float:
        return self.moments.max_standard_error()

    def state(self) -> dict[str, torch.Tensor]:
        assert self.moments.mean is not None
        mean = self.moments.mean
        epistemic = self.moments.variance
        if self.noise_sum is not None:
            aleatoric = self.noise_sum / self.count
        elif self.tau is not None:
            aleatoric = torch.full_like(mean, 1.0 / self.tau)
        else:
            aleatoric = torch.zeros_like(mean)
        standard_error = standard_error_of(epistemic, self.count)
        out = {
            "mean": mean,
            "epistemic_variance": epistemic,
            "aleatoric_variance": aleatoric,
            "standard_error": standard_error,
        }
        if self.keep_samples:
            out["samples"] = torch.cat(self.samples, 0)
        return out


def result_from_state(
    task: str,
    state: dict[str, torch.Tensor],
    *,
    n_samples: int,
    class_dim: int = 1,
    tau: float | None = None,
    targets: torch.Tensor | None = None,
    standard_error_reached: float | None = None,
    sampling: Any = None,
    masks: str = "independent",
) -> ClassificationResult | RegressionResult:
    """The result of ``task`` from accumulator states (one batch's, or joined by
    :func:`concat_states`): the one place a result is assembled from statistics."""
    fields: dict[str, Any] = {
        **state,
        "n_samples": n_samples,
        "targets": targets,
        "standard_error_reached": standard_error_reached,
        "sampling": sampling,
        "masks": masks,
    }
    if task == "classification":
        return ClassificationResult(class_dim=class_dim, **fields)
    return RegressionResult(tau=tau, **fields)


def concat_states(states: list[dict[str, torch.Tensor]], device: torch.device) -> dict[str, Any]:
    """Join per-batch statistics along the example dimension (dim 1 for samples)."""
    if len(states) == 1:  # (one batch: its own tensors, no copies)
        return {key: value.to(device).contiguous() for key, value in states[0].items()}
    return {
        key: torch.cat([s[key].to(device) for s in states], 1 if key == "samples" else 0)
        for key in states[0]
    }


def summarize_samples(
    samples: torch.Tensor,
    *,
    task: str = "classification",
    outputs: str = "logits",
    class_dim: int = 1,
    tau: float | None = None,
    log_variance: torch.Tensor | None = None,
    targets: torch.Tensor | None = None,
    chunk_size: int = 64,
) -> ClassificationResult | RegressionResult:
    """Uncertainty of stacked samples, e.g. from a deep ensemble or your own MC loop.

    Parameters
    ----------
    samples : Tensor of shape (T, N, ...)
        Samples first. Classification: ``(T, N, C, *S)`` logits, probabilities or
        log-probabilities (``outputs``). Regression: ``(T, N, *S)`` sampled means.
    task : {"classification", "regression"}, default="classification"
    outputs : {"logits", "probs", "log_probs", "binary_logits"}, default="logits"
        What ``samples`` hold (classification); never guessed from the values, but
        probability rows (non-negative, summing to 1) given as ``"logits"`` are refused: a
        second softmax would flatten them.
        ``"binary_logits"``: one logit per example (``BCEWithLogitsLoss``), turned into the two
        classes ``[1 - sigmoid(z), sigmoid(z)]``.
    class_dim : int, default=1
        Class dimension of one sample ``(N, C, *S)``.
    tau : float, optional
        Model precision for the aleatoric variance of a regression (``1 / tau``).
    log_variance : Tensor of shape (T, N, *S), optional
        Sampled log-variances of a heteroscedastic regression head.
    targets : Tensor of shape (N, ...), optional
        Stored on the result.
    chunk_size : int, default=64
        Samples aggregated at a time.

    Returns
    -------
    ClassificationResult or RegressionResult
    """
    task = check_choice("task", task, ["classification", "regression"])
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    if not isinstance(samples, torch.Tensor) or samples.ndim < 2 or samples.shape[0] == 0:
        shape = (
            tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        )
        raise ValueError(
            f"Expected `samples` to be a Tensor of shape (T, N, ...), but got {shape}."
        )
    acc: ClassificationAccumulator | RegressionAccumulator
    if task == "classification":
        outputs = check_choice("outputs", outputs, OUTPUT_KINDS)
        cd = normalise_class_dim(class_dim, samples.ndim - 1)
        acc = ClassificationAccumulator(outputs=outputs, class_dim=cd, keep_samples=False)
        for start in range(0, samples.shape[0], chunk_size):
            acc.update(samples[start : start + chunk_size])
        return result_from_state(
            task, acc.state(), n_samples=acc.count, class_dim=cd, targets=targets
        )
    if tau is not None:
        tau = check_float("tau", tau, low=0.0, low_inclusive=False)
    acc = RegressionAccumulator(
        tau=tau, heteroscedastic=log_variance is not None, keep_samples=False
    )
    for start in range(0, samples.shape[0], chunk_size):
        lv = None if log_variance is None else log_variance[start : start + chunk_size]
        acc.update(samples[start : start + chunk_size], lv)
    return result_from_state(task, acc.state(), n_samples=acc.count, tau=tau, targets=targets)


_TOKEN_LAYOUTS_NOTED: set[tuple[int, ...]] = set()


def _note_token_layout(shape: tuple[int, ...], class_dim: int) -> None:
    """Say once per output shape which dimension of an (N, A, B) output holds the classes.

    (N, C, L) (1-d segmentation) and (N, L, C) (token classification, language models) cannot
    be told apart from the shape; with ``class_dim=1`` the A entries of dim 1 are the classes.
    """
    if len(shape) != 3 or class_dim != 1 or shape[1:] in _TOKEN_LAYOUTS_NOTED:
        return
    _TOKEN_LAYOUTS_NOTED.add(shape[1:])
    n, a, b = shape
    warnings.warn(
        f"mcdrop: the model output has shape (N={n}, {a}, {b}) and class_dim=1, so its {a} "
        f"entries along dim 1 are taken as the classes, at {b} positions each. If the output is "
        f"per token, (N, L, C) with {b} classes, pass `class_dim=-1`. (Shown once per shape.)",
        UserWarning,
        stacklevel=2,
    )


def normalise_class_dim(class_dim: int, ndim: int) -> int:
    class_dim = check_int("class_dim", class_dim)
    if ndim < 2:
        raise ValueError(
            f"Expected a classifier's output (N, C, ...) with a class dimension, but the model "
            f"output has {ndim} dimension (N,): one value per example, as a regression model "
            "gives. Pass `task='regression'` for a regression model; a binary classifier with "
            "one logit per example needs `outputs='binary_logits'` and its logits as (N, 1) "
            "(`output_transform=lambda z: z.unsqueeze(1)`)."
        )
    if not -ndim <= class_dim < ndim:
        raise ValueError(
            f"Expected `class_dim` to index a dimension of the model output with {ndim} "
            f"dimensions (batch first), but got {class_dim}."
        )
    cd = class_dim % ndim
    if cd == 0:
        raise ValueError(
            "Expected `class_dim` to point past the batch dimension (the output is (N, C, ...)), "
            f"but got {class_dim}."
        )
    return cd
