"""The two entry points: :func:`predict_with_uncertainty` and :class:`MCDropout`.

Both take their keyword options from one declaration, :class:`~mcdrop.sampling._options.
SamplingOptions`: its fields give :func:`predict_with_uncertainty` its signature, defaults and
parameter docs, and validate what :class:`MCDropout` is given.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from mcdrop.dropout import DropoutSite, SamplingWrapper, dropout_sites
from mcdrop.results import ClassificationResult, RegressionResult, SamplingRecord
from mcdrop.sampling import _driver as driver
from mcdrop.sampling._engine import Engine, Plans
from mcdrop.sampling._inputs import batch_of
from mcdrop.sampling._options import (
    SamplingOptions,
    default_of,
    keyword_parameters,
    parameters_doc,
)
from mcdrop.sampling._rng import fresh_seed

__all__ = ["MCDropout", "predict_with_uncertainty"]


def predict_with_uncertainty(
    model: nn.Module, inputs: Any, *, targets: Any = None, **options: Any
) -> ClassificationResult | RegressionResult:
    """Monte Carlo dropout predictive distribution of ``model`` on ``inputs``.

    Exactly the dropout that training applies samples (see :func:`mcdrop.dropout_sites`), on a twin
    of the model that shares its parameters: the model itself is never written to (flags, hooks,
    attributes), so other threads may call it meanwhile. Normalisation layers stay in eval mode.

    Parameters
    ----------
    model : nn.Module
        A trained model containing dropout.
    inputs : Tensor, ndarray, tuple, dict or iterable of batches
        ``Tensor`` or NumPy array of shape (N, ...) (one positional argument; an array is
        converted with ``torch.as_tensor``, keeping its dtype); ``tuple`` of positional
        arguments; ``dict`` of keyword arguments (e.g. ``input_ids`` and ``attention_mask``); or
        an iterable of batches — a ``list``, ``DataLoader``, generator — each item a Tensor,
        tuple or dict. Targets are never passed to the model; ``target_key`` says where they
        are. Tensors whose leading dimension is not the batch size are passed unchanged;
        which arguments are batched is decided once (from ``N``, or from the first batch of an
        iterable) and kept for every batch. An unbatched tensor argument whose leading dimension
        equals ``N`` cannot be told apart from a batched one: bind it to the model instead
        (a wrapper module or ``functools.partial``).
    targets : array-like of shape (N, ...), optional
        Targets for tensor or array inputs, stored on the result.
    {options}

    Returns
    -------
    ClassificationResult or RegressionResult
        Statistics of the ``T`` samples, see :mod:`mcdrop.results` for the shapes (``None`` on
        ranks other than 0 with ``rank0_only=True``).

    Raises
    ------
    ValueError
        No dropout in the model, every rate 0, dropout that does not change the output, NaN/Inf
        outputs, empty inputs, invalid options; ``TypeError`` for wrong types.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import mcdrop
    >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    >>> _ = model.eval()
    >>> result = mcdrop.predict_with_uncertainty(model, torch.randn(8, 4), n_samples=50, seed=0)
    >>> result.mean.shape, result.mutual_information.shape
    (torch.Size([8, 3]), torch.Size([8]))
    """
    o = SamplingOptions.create(**options)
    if o.distributed:
        from mcdrop.sampling._distributed import predict_distributed

        # None off rank 0 with rank0_only
        return predict_distributed(model, inputs, targets, o, o.draw_seed())  # type: ignore[return-value]
    return driver.predict(model, inputs, targets, o, o.draw_seed())


predict_with_uncertainty.__doc__ = inspect.cleandoc(predict_with_uncertainty.__doc__ or "").replace(
    "{options}", parameters_doc()
)
predict_with_uncertainty.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [
        inspect.Parameter("model", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("inputs", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("targets", inspect.Parameter.KEYWORD_ONLY, default=None),
        *keyword_parameters(),
    ],
    return_annotation="ClassificationResult | RegressionResult",
)


class MCDropout(SamplingWrapper):
    """``nn.Module`` wrapper whose forward returns ``T`` stacked Monte Carlo dropout samples.

    Parameters
    ----------
    model : nn.Module
        The trained model; registered as the submodule ``model`` (its ``state_dict`` keys gain
        the prefix ``model.``).
    n_samples : int, default=100
        Samples per call ``T``.
    **options
        Any keyword option of :func:`predict_with_uncertainty` (``task``, ``outputs``,
        ``strategy``, ``scope``, ``batch_budget``, ``amp``, ``seed``, ...), validated once.
        Between calls the plan is kept (the sampling twin, its sites, the strategy, the rows
        per pass, the out-of-memory back-off), guarded: every call takes a fingerprint of the
        module tree, training flags, hooks, every parameter's and buffer's identity, shape,
        dtype and device, every other module attribute (rates, ``attention_dropout``,
        ``config._attn_implementation``, an instance-level ``forward``), the input signature
        and torch's modes, and plans afresh when it differs; the first chunk of every call is
        recorded and must make the dropout calls the plan was made for, else the call runs
        again on a new plan. Parameters updated in place are used as they are. See
        :ref:`kept-plan` for exactly what is checked.
        With ``masks="shared"`` the wrapper is one ensemble of ``T`` networks: every call
        applies the same ``T`` networks (drawn once, from ``seed`` when given), so calls on
        different inputs (decoding steps, a pool and a target set) are joint draws.

    Attributes
    ----------
    last_strategy : str or None
        Strategy the last :meth:`forward` used (what ``strategy="auto"`` chose).
    last_samples_per_pass : int or None
        Samples per forward pass in the last :meth:`forward` (lower after out-of-memory).
    last_sampling : SamplingRecord or None
        The plan of the last :meth:`forward`: strategy, samples per pass, ``auto`` fallbacks.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> import mcdrop
    >>> net = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3)).eval()
    >>> mc = mcdrop.MCDropout(net, n_samples=20)
    >>> mc(torch.randn(5, 4)).shape
    torch.Size([20, 5, 3])
    >>> mc.predict_with_uncertainty(torch.randn(5, 4)).mean.shape
    torch.Size([5, 3])
    """

    def __init__(
        self, model: nn.Module, n_samples: int = default_of("n_samples"), **options: Any
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}."
            )
        if isinstance(n_samples, str):
            raise TypeError(
                f"Expected `n_samples` to be an integer >= 1 (forward returns that many stacked "
                f"samples), but got {n_samples!r}; adaptive sampling is an option of "
                "predict_with_uncertainty."
            )
        self.model = model
        self.options = dict(options)  # as given: predict_with_uncertainty's defaults
        self._sampling = SamplingOptions.create(n_samples=n_samples, **options)
        self.n_samples = self._sampling.sample_limit
        self._seed = self._sampling.draw_seed()  # one seed for every forward
        if self._seed is None and self._sampling.masks == "shared":
            # Shared masks: the wrapper is one ensemble of T networks, the same at every call.
            self._seed = fresh_seed()
        # Kept between calls, and only what stays valid across them (see Engine): the pass
        # sizing, whose out-of-memory back-off and CUDA rows carry over. Rebuilt when `model`
        # is replaced.
        self._engine: Engine | None = None
        self.last_strategy: str | None = None  # what the last forward used (auto decision)
        self.last_samples_per_pass: int | None = None  # after out-of-memory back-off
        self.last_sampling: SamplingRecord | None = None  # the last forward's plan

    def __getstate__(self) -> dict[str, Any]:
        """A copy (``copy.deepcopy``, ``pickle``, ``torch.save``) keeps no plan: the plans hold
        twins of this model and a lock; the copy plans afresh on its first call."""
        state = super().__getstate__()  # (nn.Module's: without a compiled call)
        state["_engine"] = None
        state.pop("_last_options", None)
        return state

    def forward(
        self, *args: Any, **kwargs: Any
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Stacked samples of the model output, shape (T, B, ...), for one batch.

        Returns the extracted output (logits, probabilities or regression means as the model
        gives them); a heteroscedastic regressor gives ``(means, log_variances)``. The same
        checks as :func:`predict_with_uncertainty` run (NaN/Inf, dropout that changes nothing).
        """
        stacked, run = driver.sample_stack(
            self._engine_for(self._sampling), batch_of(args, kwargs), self._seed
        )
        self.last_sampling = driver.record_of(run)
        self.last_strategy = self.last_sampling.strategy
        self.last_samples_per_pass = self.last_sampling.samples_per_pass
        return stacked[0] if len(stacked) == 1 else (stacked[0], stacked[1])

    def predict_with_uncertainty(
        self, inputs: Any, **overrides: Any
    ) -> ClassificationResult | RegressionResult:
        """Aggregated result over ``inputs``, as :func:`mcdrop.predict_with_uncertainty`.

        With the wrapper's own options (``overrides`` may change ``seed``, ``generator``,
        ``progress`` and ``targets``), the plan kept by :meth:`forward` serves here too, and the
        other way round.
        """
        kwargs = {**self.options, **overrides}
        kwargs.setdefault("n_samples", self.n_samples)
        targets = kwargs.pop("targets", None)
        o = self._options_for(kwargs)
        if o.distributed:
            return predict_with_uncertainty(self.model, inputs, targets=targets, **kwargs)
        return driver.predict(self.model, inputs, targets, o, o.draw_seed(), self._engine_for(o))

    def _options_for(self, kwargs: dict[str, Any]) -> SamplingOptions:
        """``kwargs`` validated; those of the last call again when they are equal (a server's
        calls: validating them takes longer than a fingerprint)."""
        last = self.__dict__.get("_last_options")
        if last is not None and _same_options(last[0], kwargs):
            return last[1]
        options = SamplingOptions.create(**kwargs)
        self.__dict__["_last_options"] = (kwargs, options)
        return options

    def _engine_for(self, options: SamplingOptions) -> Engine:
        """The engine that keeps the plan for ``options`` (seed, generator and progress aside);
        a new one when ``model`` was replaced or the options differ."""
        engine = self._engine
        if (
            engine is None
            or engine.model is not self.model
            or engine.options.plan_fields != options.plan_fields
        ):
            engine = self._engine = Engine(self.model, options, plans=Plans())
        return engine

    def sites(self, example_inputs: Any = None) -> list[DropoutSite]:
        """The dropout sites this wrapper samples (see :func:`mcdrop.dropout_sites`)."""
        o = self._sampling
        return dropout_sites(
            self.model,
            scope=o.scope,
            include=o.include,
            exclude=o.exclude,
            example_inputs=example_inputs,
        )


def _same_options(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two sets of keyword options are the same values of the same types: plain values
    and tuples of them by value (``True`` is not ``1``: a boolean given where a number is
    expected must be refused again), functions, dtypes, devices and generators by identity.
    Anything that can change in place (a list of module names, a dict of compile options) is
    never taken for the same: it is validated again."""
    if a.keys() != b.keys():
        return False
    return all(_same_value(value, b[key]) for key, value in a.items())


_PLAIN = (bool, int, float, str, type(None))


def _same_value(value: Any, other: Any) -> bool:
    kind = type(value)
    if kind is not type(other):
        return False
    if kind in _PLAIN:
        return bool(value == other)
    if kind is tuple:  # (of plain values: compared item by item, types included)
        return len(value) == len(other) and all(
            type(v) in _PLAIN and _same_value(v, w) for v, w in zip(value, other, strict=True)
        )
    if value is other:
        return callable(value) or isinstance(value, (torch.dtype, torch.device, torch.Generator))
    return False
