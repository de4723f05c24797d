"""The result classes (one frozen dataclass per task) and their standard errors."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from mcdrop._validation import check_float
from mcdrop.results._file import FORMAT, MASK_KINDS, check_result, read_result_file
from mcdrop.results._record import SamplingRecord
from mcdrop.results._summary import summarize_result

__all__ = ["ClassificationResult", "RegressionResult", "load_result"]


def _tensor_to_numpy(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return value


def standard_error_of(variance: torch.Tensor, n_samples: int) -> torch.Tensor:
    """``sqrt(variance / (T - 1))``: the standard error of a mean of ``T`` draws (``ddof=0`` in)."""
    if n_samples < 2:
        return torch.full_like(variance, math.inf)
    return (variance / (n_samples - 1)).sqrt()


class _ResultMixin:
    """Shared conversion and persistence for the result dataclasses."""

    task: ClassVar[str]
    _derived: ClassVar[tuple[str, ...]]

    def summary(self) -> str:
        """A few lines: task, ``N``, ``T``, output shape, headline statistics, standard error.

        Returns
        -------
        str
            At most ten lines whatever the size of the result: the task, the number of examples
            ``N`` and samples ``T``, the shape of ``mean``, the mean (and largest) predictive
            entropy and mutual information (classification) or predictive standard deviation
            (regression), the largest Monte Carlo standard error of ``mean`` and whether
            adaptive sampling reached it, what else is kept (targets, samples) and the sampling
            record when the result carries one. ``repr(result)`` is the same text; every array
            stays available as an attribute and through :meth:`to_dict`.
        """
        return summarize_result(self)

    def __repr__(self) -> str:
        return summarize_result(self)

    def to_dict(self) -> dict[str, Any]:
        """Every stored field and every derived quantity, by name.

        Returns
        -------
        dict
            Tensors stay tensors; ``n_samples`` and the other scalars stay Python numbers.
        """
        out: dict[str, Any] = {"task": self.task}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            out[field.name] = getattr(self, field.name)
        for name in self._derived:
            out[name] = getattr(self, name)
        return out

    def to_numpy(self) -> dict[str, Any]:
        """Like :meth:`to_dict`, with every tensor converted to a :class:`numpy.ndarray`."""
        return {key: _tensor_to_numpy(value) for key, value in self.to_dict().items()}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the result to ``path`` as an ``.npz`` archive (no pickle).

        Parameters
        ----------
        path : str or path-like
            Destination file. NumPy appends ``.npz`` when the name has no such suffix.
        """
        arrays: dict[str, np.ndarray] = {}
        shared = self.masks == "shared"  # type: ignore[attr-defined]
        # Version 1 files (every mcdrop reads them) unless the result has shared masks.
        meta: dict[str, Any] = {"format": FORMAT, "version": 2 if shared else 1}
        meta["task"] = self.task
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, field.name)
            if isinstance(value, torch.Tensor):
                arrays[field.name] = value.detach().cpu().numpy()
            elif isinstance(value, SamplingRecord):
                meta[field.name] = value.to_json()
            elif field.name != "masks" or shared:
                meta[field.name] = value
        # The schema that load_result applies: a result that could not be loaded is not written.
        check_result(meta, arrays, f"the result to save to {os.fspath(path)!r}")
        arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8)
        np.savez(path, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Any:
        """Read a result written by :meth:`save`; checks that the file holds this task."""
        result = load_result(path)
        if not isinstance(result, cls):
            raise ValueError(
                f"Expected `path` to hold a {cls.__name__}, but it holds a "
                f"{type(result).__name__}: {os.fspath(path)!r}."
            )
        return result

    def _check_common(self, leading: torch.Tensor) -> None:
        if self.masks not in MASK_KINDS:  # type: ignore[attr-defined]
            raise ValueError(
                f"Expected `masks` to be one of {list(MASK_KINDS)}, but got {self.masks!r}."  # type: ignore[attr-defined]
            )
        if self.n_samples < 1:  # type: ignore[attr-defined]
            raise ValueError(f"Expected `n_samples` >= 1, but got {self.n_samples}.")  # type: ignore[attr-defined]
        targets = self.targets  # type: ignore[attr-defined]
        if targets is not None and targets.shape[0] != leading.shape[0]:
            raise ValueError(
                f"Expected `targets` to have {leading.shape[0]} rows, but got shape "
                f"{tuple(targets.shape)}."
            )
        samples = self.samples  # type: ignore[attr-defined]
        if samples is not None and tuple(samples.shape[1:]) != tuple(leading.shape):
            raise ValueError(
                f"Expected `samples` of shape (T, {', '.join(map(str, leading.shape))}), but "
                f"got {tuple(samples.shape)}."
            )


@dataclass(frozen=True, eq=False, repr=False)
class ClassificationResult(_ResultMixin):
    """Monte Carlo dropout predictive distribution of a classifier.

    Stored fields are aggregated over the ``T`` stochastic passes as a stream; derived quantities
    (properties) are computed from them on access.

    Parameters
    ----------
    mean : Tensor of shape (N, C, *S)
        Predictive probabilities, the average of the ``T`` sampled softmax outputs.
    variance : Tensor of shape (N, C, *S)
        Per-class variance of the sampled probabilities across the ``T`` passes (``ddof=0``).
    predictive_entropy : Tensor of shape (N, *S)
        Entropy of ``mean`` in nats: total uncertainty, ``H[E_t p_t]``.
    expected_entropy : Tensor of shape (N, *S)
        Average entropy of the sampled distributions in nats: aleatoric part, ``E_t H[p_t]``.
    variation_ratio : Tensor of shape (N, *S)
        ``1 - (count of the modal sampled class) / T``.
    n_samples : int
        Number of Monte Carlo samples ``T`` behind the statistics.
    class_dim : int, default=1
        Position of the class dimension in ``mean`` and ``variance``.
    targets : Tensor of shape (N, *S) or None, default=None
        Integer labels, kept when the inputs were ``(inputs, targets)`` batches.
    samples : Tensor of shape (T, N, C, *S) or None, default=None
        Every sampled probability vector, only with ``keep_samples=True``.
    standard_error : Tensor of shape (N, C, *S) or None, default=None
        Monte Carlo standard error of ``mean``, ``sqrt(s^2 / T)`` with the unbiased sample
        variance ``s^2 = variance * T / (T - 1)`` (``inf`` when ``T == 1``). Computed from
        ``variance`` and ``n_samples`` when not given; with adaptive sampling each example's own
        number of samples is used.
    standard_error_reached : float or None, default=None
        Largest Monte Carlo standard error of ``mean`` when sampling stopped (adaptive
        ``n_samples``); ``None`` for a fixed ``n_samples``.
    sampling : SamplingRecord or None, default=None
        How the samples were drawn: strategy, samples per pass, the ``auto`` fallbacks and
        their reasons (:class:`mcdrop.results.SamplingRecord`); ``None`` when the result did
        not come from sampling a model (:func:`mcdrop.summarize_samples`, older files).
    masks : {"independent", "shared"}, default="independent"
        How the dropout masks were drawn: ``"shared"`` when sample ``t`` was one network ``f_t``
        for every example (``masks="shared"``: ``samples[t]`` are that network's outputs, joint
        quantities across examples are meaningful), ``"independent"`` when each example drew its
        own.

    Notes
    -----
    The decomposition ``predictive_entropy = expected_entropy + mutual_information`` holds
    exactly; ``mutual_information`` (BALD, Houlsby et al. 2011) is the epistemic part.
    """

    task: ClassVar[str] = "classification"
    _derived: ClassVar[tuple[str, ...]] = (
        "mutual_information",
        "predicted_class",
        "confidence",
        "margin",
        "std",
    )

    mean: torch.Tensor
    variance: torch.Tensor
    predictive_entropy: torch.Tensor
    expected_entropy: torch.Tensor
    variation_ratio: torch.Tensor
    n_samples: int
    class_dim: int = 1
    targets: torch.Tensor | None = None
    samples: torch.Tensor | None = None
    standard_error: torch.Tensor | None = None
    standard_error_reached: float | None = None
    sampling: SamplingRecord | None = None
    masks: str = "independent"

    def __post_init__(self) -> None:
        for name in ("variance", "standard_error"):
            value = getattr(self, name)
            if value is not None and value.shape != self.mean.shape:
                raise ValueError(
                    f"Expected `{name}` to match `mean` of shape {tuple(self.mean.shape)}, but "
                    f"got {tuple(value.shape)}."
                )
        self._check_common(self.mean)
        if self.standard_error is None:
            object.__setattr__(
                self, "standard_error", standard_error_of(self.variance, self.n_samples)
            )

    @property
    def num_classes(self) -> int:
        """Number of classes ``C``."""
        return int(self.mean.shape[self.class_dim])

    @property
    def mutual_information(self) -> torch.Tensor:
        """Tensor of shape (N, *S): epistemic uncertainty, ``H[E p] - E H[p]`` (BALD), >= 0."""
        return (self.predictive_entropy - self.expected_entropy).clamp_min(0.0)

    @property
    def predicted_class(self) -> torch.Tensor:
        """Tensor of shape (N, *S): ``argmax`` of the predictive probabilities."""
        return self.mean.argmax(dim=self.class_dim)

    @property
    def confidence(self) -> torch.Tensor:
        """Tensor of shape (N, *S): the largest predictive probability."""
        return self.mean.amax(dim=self.class_dim)

    @property
    def margin(self) -> torch.Tensor:
        """Tensor of shape (N, *S): largest minus second-largest predictive probability.

        Equals the largest probability when there is a single class.
        """
        if self.num_classes < 2:
            return self.mean.select(self.class_dim, 0)
        top2 = self.mean.topk(2, dim=self.class_dim).values
        return top2.select(self.class_dim, 0) - top2.select(self.class_dim, 1)

    @property
    def std(self) -> torch.Tensor:
        """Tensor of shape (N, C, *S): per-class standard deviation of the sampled probabilities."""
        return self.variance.sqrt()

    def _kept_samples(self, quantity: str) -> torch.Tensor:
        """``samples`` in float64 with the class dimension last: ``(T, N, *S, C)``."""
        if self.samples is None:
            raise ValueError(
                f"Expected `samples` to compute `{quantity}` (it needs every sampled "
                "distribution: predict with keep_samples=True), but the result holds none."
            )
        return self.samples.to(torch.float64).movedim(self.class_dim + 1, -1)

    @property
    def disagreement(self) -> torch.Tensor:
        r"""Tensor of shape (N, *S): fraction of pairs of samples that predict different classes.

        ``1 - sum_c n_c (n_c - 1) / (T (T - 1))`` with ``n_c`` the number of the ``T`` samples
        whose most probable class is ``c`` (torch-uncertainty's ``Disagreement``); 0 when every
        sample predicts the same class. Needs ``samples`` (``keep_samples=True``) and ``T >= 2``.
        """
        samples = self._kept_samples("disagreement")
        n = samples.shape[0]
        if n < 2:
            raise ValueError(
                f"Expected at least 2 samples to compute `disagreement` (pairs of samples), "
                f"but got {n}."
            )
        votes = torch.nn.functional.one_hot(samples.argmax(-1), samples.shape[-1]).sum(0)
        agreeing = (votes * (votes - 1)).sum(-1).to(torch.float64)
        return 1.0 - agreeing / (n * (n - 1))

    def _entropies_and_cross(self, quantity: str) -> tuple[torch.Tensor, ...]:
        """``E_t H[p_t]``, ``H[p]`` and ``-sum_c p_c E_t log p_t,c`` from the kept samples."""
        samples = self._kept_samples(quantity)
        mean = samples.mean(0)
        expected_entropy = -torch.special.xlogy(samples, samples).sum(-1).mean(0)
        entropy = -torch.special.xlogy(mean, mean).sum(-1)
        mean_log = samples.log().mean(0)  # -inf where a sample gives the class probability 0
        cross = -torch.where(mean > 0, mean * mean_log, torch.zeros_like(mean)).sum(-1)
        return expected_entropy, entropy, cross

    @property
    def expected_pairwise_kl(self) -> torch.Tensor:
        r"""Tensor of shape (N, *S): expected pairwise KL divergence between samples (EPKL), nats.

        ``E_{t,s} KL(p_t || p_s) = -sum_c p_c E_t[log p_t,c] - E_t H[p_t]`` (Malinin & Gales
        2021), an epistemic measure; equals ``mutual_information + reverse_mutual_information``.
        ``inf`` when a class has probability 0 in one sample and not in another. Needs
        ``samples`` (``keep_samples=True``).
        """
        expected_entropy, _, cross = self._entropies_and_cross("expected_pairwise_kl")
        return (cross - expected_entropy).clamp_min(0.0)

    @property
    def reverse_mutual_information(self) -> torch.Tensor:
        r"""Tensor of shape (N, *S): reverse mutual information (RMI), nats.

        ``E_t KL(p || p_t) = -sum_c p_c E_t[log p_t,c] - H[p]`` with ``p`` the mean of the
        samples (Malinin & Gales 2021), the KL "the other way round" from the mutual
        information ``E_t KL(p_t || p)``. ``inf`` when a class has probability 0 in one sample
        and not on average. Needs ``samples`` (``keep_samples=True``).
        """
        _, entropy, cross = self._entropies_and_cross("reverse_mutual_information")
        return (cross - entropy).clamp_min(0.0)


@dataclass(frozen=True, eq=False, repr=False)
class RegressionResult(_ResultMixin):
    """Monte Carlo dropout predictive distribution of a regressor.

    Parameters
    ----------
    mean : Tensor of shape (N, *S)
        Predictive mean, the average of the ``T`` sampled outputs (or sampled means of a
        heteroscedastic head).
    epistemic_variance : Tensor of shape (N, *S)
        Variance of the sampled means across the ``T`` passes (``ddof=0``, as in Gal 2016).
    aleatoric_variance : Tensor of shape (N, *S)
        Noise variance: the average of ``exp(log_variance)`` of a heteroscedastic head
        (Kendall & Gal 2017), or ``1 / tau`` for a given model precision ``tau`` (Gal 2016), or
        zeros when neither was given.
    n_samples : int
        Number of Monte Carlo samples ``T``.
    tau : float or None, default=None
        Model precision used for ``aleatoric_variance``, if one was given.
    targets : Tensor of shape (N, *S) or None, default=None
        Regression targets, kept when the inputs were ``(inputs, targets)`` batches.
    samples : Tensor of shape (T, N, *S) or None, default=None
        Every sampled mean, only with ``keep_samples=True``.
    standard_error : Tensor of shape (N, *S) or None, default=None
        Monte Carlo standard error of ``mean`` (``inf`` when ``T == 1``); computed from
        ``epistemic_variance`` and ``n_samples`` when not given.
    standard_error_reached : float or None, default=None
        Largest Monte Carlo standard error of ``mean`` when adaptive sampling stopped.
    sampling : SamplingRecord or None, default=None
        How the samples were drawn (see :class:`ClassificationResult`).
    masks : {"independent", "shared"}, default="independent"
        How the dropout masks were drawn (see :class:`ClassificationResult`).
    """

    task: ClassVar[str] = "regression"
    _derived: ClassVar[tuple[str, ...]] = ("variance", "std")

    mean: torch.Tensor
    epistemic_variance: torch.Tensor
    aleatoric_variance: torch.Tensor
    n_samples: int
    tau: float | None = None
    targets: torch.Tensor | None = None
    samples: torch.Tensor | None = None
    standard_error: torch.Tensor | None = None
    standard_error_reached: float | None = None
    sampling: SamplingRecord | None = None
    masks: str = "independent"

    def __post_init__(self) -> None:
        if self.standard_error is None:
            se = standard_error_of(self.epistemic_variance, self.n_samples)
            object.__setattr__(self, "standard_error", se)
        for name in ("epistemic_variance", "aleatoric_variance", "standard_error"):
            value = getattr(self, name)
            if value.shape != self.mean.shape:
                raise ValueError(
                    f"Expected `{name}` to match `mean` of shape {tuple(self.mean.shape)}, but "
                    f"got {tuple(value.shape)}."
                )
        self._check_common(self.mean)

    @property
    def variance(self) -> torch.Tensor:
        """Tensor of shape (N, *S): total predictive variance, epistemic + aleatoric."""
        return self.epistemic_variance + self.aleatoric_variance

    @property
    def std(self) -> torch.Tensor:
        """Tensor of shape (N, *S): total predictive standard deviation."""
        return self.variance.sqrt()

    def interval(
        self, level: float = 0.95, *, kind: str = "total"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Central predictive interval under a Gaussian approximation.

        Parameters
        ----------
        level : float, default=0.95
            Coverage in (0, 1).
        kind : {"total", "epistemic"}, default="total"
            Which variance to use: total predictive, or epistemic only (the spread of the mean).

        Returns
        -------
        lower, upper : Tensor of shape (N, *S)
            ``mean -/+ z * std`` with ``z`` the ``(1 + level) / 2`` normal quantile.
        """
        level = check_float(
            "level", level, low=0.0, high=1.0, low_inclusive=False, high_inclusive=False
        )
        if kind == "total":
            std = self.std
        elif kind == "epistemic":
            std = self.epistemic_variance.sqrt()
        else:
            raise ValueError(
                f"Expected `kind` to be one of ['total', 'epistemic'], but got {kind!r}."
            )
        from scipy.special import ndtri  # imported here: scipy.stats costs ~1 s at import time

        z = float(ndtri(0.5 + level / 2.0))
        return self.mean - z * std, self.mean + z * std


_RESULT_TYPES: dict[str, type[_ResultMixin]] = {
    "classification": ClassificationResult,
    "regression": RegressionResult,
}


def load_result(path: str | os.PathLike[str]) -> ClassificationResult | RegressionResult:
    """Read a result saved with ``result.save(path)``.

    Every field is checked against one schema before it is used: the metadata (format, version,
    task, ``n_samples``, ``class_dim``, ``tau``), then each array's header (dtype and shape,
    consistent with ``mean``, ``class_dim`` and ``n_samples``) *before* its data is read, so
    memory is bounded by the sizes the file declares, then the values (finite means,
    probabilities in [0, 1] whose rows sum to one, non-negative variances, entropies within
    ``[0, log C]``). Nothing is unpickled.

    Parameters
    ----------
    path : str or path-like
        An ``.npz`` file written by :meth:`ClassificationResult.save` or
        :meth:`RegressionResult.save` (``.npz`` is appended when ``path`` does not exist).

    Returns
    -------
    ClassificationResult or RegressionResult
        The task stored in the file decides the type.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    ValueError
        For anything else: a file that is not an mcdrop result, needs pickle, or holds a field
        that breaks the schema. The message names the file and the field.
    """
    path = os.fspath(path)
    if not os.path.exists(path) and os.path.exists(path + ".npz"):
        path = path + ".npz"
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such result file: {path!r}")
    meta, arrays = read_result_file(path)
    cls = _RESULT_TYPES[meta["task"]]
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        if field.name in arrays:
            kwargs[field.name] = torch.from_numpy(arrays[field.name])
        elif field.name == "sampling" and meta.get("sampling") is not None:
            kwargs[field.name] = SamplingRecord.from_json(meta["sampling"])
        elif field.name in meta:
            kwargs[field.name] = meta[field.name]
    try:
        return cls(**kwargs)  # type: ignore[return-value]
    except (ValueError, TypeError) as error:  # the schema should have caught it; never escape
        raise ValueError(f"Expected a valid mcdrop result in {path!r}, but {error}") from None
