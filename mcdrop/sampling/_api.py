"""The two entry points: :func:`predict_with_uncertainty` and :class:`MCDropout`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from mcdrop._validation import check_bool
from mcdrop.dropout import DropoutSite, ModuleFilter, SamplingWrapper, dropout_sites
from mcdrop.results import ClassificationResult, RegressionResult
from mcdrop.sampling import _driver as driver
from mcdrop.sampling._inputs import _Batch, _leading_size
from mcdrop.sampling._options import CALL_OPTIONS, SamplingOptions, resolve_device
from mcdrop.sampling._rng import fresh_seed, seed_from

__all__ = ["MCDropout", "predict_with_uncertainty"]


def predict_with_uncertainty(
    model: nn.Module,
    inputs: Any,
    *,
    n_samples: int | str = 100,
    task: str = "classification",
    outputs: str = "logits",
    class_dim: int = 1,
    targets: Any = None,
    target_key: str | int | None = "auto",
    tau: float | None = None,
    heteroscedastic: bool = False,
    output_transform: Callable[[Any], Any] | None = None,
    scope: str = "dropout",
    include: ModuleFilter = None,
    exclude: ModuleFilter = None,
    detect_silent: bool = True,
    strategy: str = "auto",
    batch_size: int | None = None,
    batch_budget: int | None = None,
    amp: Any = None,
    compile: bool | dict[str, Any] = False,
    keep_samples: bool = False,
    tolerance: float = 1e-2,
    max_samples: int = 1000,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    result_device: torch.device | str = "cpu",
    progress: bool | None = None,
    distributed: bool = False,
    rank0_only: bool = False,
    masks: str = "independent",
) -> ClassificationResult | RegressionResult:
    """Monte Carlo dropout predictive distribution of ``model`` on ``inputs``.

    Exactly the dropout that training applies samples (see :func:`mcdrop.dropout_sites`), on a twin
    of the model that shares its parameters: the model itself is never written to (flags, hooks,
    attributes), so other threads may call it meanwhile. Normalisation layers stay in eval mode.

    Parameters
    ----------
    model : nn.Module
        A trained model containing dropout.
    inputs : Tensor, tuple, dict or iterable of batches
        ``Tensor`` of shape (N, ...) (one positional argument); ``tuple`` of positional
        arguments; ``dict`` of keyword arguments (e.g. ``input_ids`` and ``attention_mask``); or
        an iterable of batches — a ``list``, ``DataLoader``, generator — each item a Tensor,
        tuple or dict. Targets are never passed to the model; ``target_key`` says where they
        are. Tensors whose leading dimension is not the batch size are passed unchanged;
        which arguments are batched is decided once (from ``N``, or from the first batch of an
        iterable) and kept for every batch. An unbatched tensor argument whose leading dimension
        equals ``N`` cannot be told apart from a batched one: bind it to the model instead
        (a wrapper module or ``functools.partial``).
    n_samples : int or "auto", default=100
        Number of stochastic passes ``T``. ``"auto"`` samples until the largest Monte Carlo
        standard error of the predictive mean in each batch is at most ``tolerance`` (at least
        16 passes, at most ``max_samples``).
    task : {"classification", "regression"}, default="classification"
        Decides the result type: :class:`ClassificationResult` or :class:`RegressionResult`.
    outputs : {"logits", "probs", "log_probs", "binary_logits"}, default="logits"
        What a classifier returns; never guessed from the values. ``"binary_logits"``: one logit
        per example (``BCEWithLogitsLoss``), giving the classes ``[1 - sigmoid, sigmoid]``.
    class_dim : int, default=1
        Class dimension of the model output (N, C, ...): ``1`` for ``(N, C)`` and segmentation
        ``(N, C, H, W)`` (per-pixel uncertainty maps), ``-1`` for ``(N, L, C)`` token outputs.
    targets : array-like of shape (N, ...), optional
        Targets for tensor inputs, stored on the result.
    target_key : "auto", None, int or str, default="auto"
        Which part of a batch holds the targets. ``"auto"``: the ``"labels"`` entry of a dict
        (Hugging Face), or the second element of an ``(inputs, targets)`` pair from an iterable
        when it is integer class labels with one row per example; any other pair is refused
        with the way to disambiguate. ``None``: nothing is targets. An ``int``: position in a
        tuple batch (``1`` for ``(x, y)``, ``-1`` for ``(x, mask, y)``). A ``str``: key of a
        dict batch.
    tau : float, optional
        Regression model precision (Gal 2016): aleatoric variance ``1 / tau``.
    heteroscedastic : bool, default=False
        Regression model returns ``(mean, log_variance)`` (Kendall & Gal 2017).
    output_transform : callable, optional
        Applied to the raw model output first, e.g. ``lambda out: out["scores"]``.
    scope : {"dropout", "train_except_norm"}, default="dropout"
        Which modules sample, see :class:`mcdrop.Scope`.
    include, exclude : str, list of str or callable, optional
        Extra modules to switch on / modules to keep off, by name pattern or predicate.
    detect_silent : bool, default=True
        Probe the first batch for dropout that is registered but never called (fused attention)
        or called functionally with ``training=False``, and switch on its gating module.
    strategy : {"auto", "replicate", "vmap", "loop"}, default="auto"
        How the ``T`` passes are batched (module docstring). All give the same distribution;
        ``"auto"`` decides from the probe pass, never from a clock.
    batch_size : int, optional
        Examples per batch when ``inputs`` is a tensor, tuple or dict (default: ``batch_budget``).
    batch_budget : int, optional
        Rows per forward pass, samples x examples. Default: 1024 on CPU; on CUDA at most 1 GiB of
        activations and 70 % of the card's capacity, from one measured pass (never from the free
        memory other processes change, so the same seed gives the same numbers). On CUDA
        out-of-memory the samples per pass are halved and retried (then the examples per pass);
        the size used is logged on the ``"mcdrop"`` logger. Other errors are not retried.
    amp : {None, "bf16", "fp16"} or torch.dtype, default=None
        Autocast precision for the passes; statistics are still accumulated in float64.
    compile : bool or dict, default=False
        Run the model through ``torch.compile`` (``True``) or ``torch.compile(model, **compile)``
        (a dict of its options, e.g. ``{"mode": "max-autotune"}``). The first call compiles
        (seconds to minutes); pays for large ``T`` x ``N`` on GPU, see the performance page.
    keep_samples : bool, default=False
        Also return every sample (``result.samples``, shape (T, N, ...)); memory grows with T.
    tolerance : float, default=0.01
        Target standard error for ``n_samples="auto"`` (probability units for classification,
        output units for regression).
    max_samples : int, default=1000
        Upper bound on ``T`` for ``n_samples="auto"``.
    seed : int, optional
        Seed for reproducible results (same inputs, options and seed: the same numbers, however
        busy the machine); the caller's global RNG state is left as it was. Sampling calls run one
        at a time per process (PyTorch's generators are process-wide).
    generator : torch.Generator, optional
        Alternative to ``seed``: one seed is drawn from it.
    device : torch.device or str, optional
        Where to run; defaults to the device of the model's parameters. Inputs are moved there.
    result_device : torch.device or str, default="cpu"
        Where the result's tensors are returned.
    progress : bool, optional
        tqdm progress bar over batches x samples. Default: shown when stderr is a terminal.
    distributed : bool, default=False
        Inside an initialised ``torch.distributed`` process group (``torchrun``): each rank
        samples its share of the examples and every rank gets the full result, in the original
        order (see :mod:`mcdrop.distributed`). ``inputs`` may then also be a map-style
        ``Dataset`` (batched by ``batch_size``, default 64); an iterable that is not a
        ``DataLoader`` over a map-style dataset cannot be sharded.
    rank0_only : bool, default=False
        With ``distributed=True``: gather the result on rank 0 only; other ranks get ``None``.
    masks : {"independent", "shared"}, default="independent"
        ``"independent"``: every sample draws its dropout masks afresh for every example (the
        marginal predictive of each example). ``"shared"``: sample ``t`` is one network
        ``f_t``, the same for every example, batch, chunk, strategy and call with the same
        ``seed`` — what joint quantities need (BatchBALD, EPIG, the joint predictive of a set of
        inputs, sample functions). Each example's distribution is the same in both; masks are
        then drawn from mcdrop's own counter-based generator, never from PyTorch's global one.
        See the user guide's *Shared masks* page for what a mask is indexed by.

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
    options = SamplingOptions.create(
        n_samples=n_samples,
        task=task,
        outputs=outputs,
        class_dim=class_dim,
        tau=tau,
        heteroscedastic=heteroscedastic,
        output_transform=output_transform,
        scope=scope,
        include=include,
        exclude=exclude,
        detect_silent=detect_silent,
        strategy=strategy,
        batch_size=batch_size,
        batch_budget=batch_budget,
        amp=amp,
        compile=compile,
        keep_samples=keep_samples,
        tolerance=tolerance,
        max_samples=max_samples,
        device=device,
        target_key=target_key,
        masks=masks,
    )
    distributed = check_bool("distributed", distributed)
    if check_bool("rank0_only", rank0_only) and not distributed:
        raise ValueError("Expected `rank0_only=True` only with `distributed=True`.")
    if progress is not None:
        check_bool("progress", progress)
    call = (
        model,
        inputs,
        targets,
        options,
        seed_from(seed, generator),
        progress,
        resolve_device("result_device", result_device),
    )
    if distributed:
        from mcdrop.sampling._distributed import _predict_distributed

        # None off rank 0 with rank0_only
        return _predict_distributed(*call, rank0_only=rank0_only)  # type: ignore[arg-type, return-value]
    return driver.predict(*call)  # type: ignore[arg-type]


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
        ``strategy``, ``scope``, ``batch_budget``, ``amp``, ``seed``, ...), validated once. One
        engine is kept between calls: its out-of-memory back-off and CUDA sizing carry over.
        With ``masks="shared"`` the wrapper is one ensemble of ``T`` networks: every call
        applies the same ``T`` networks (drawn once, from ``seed`` when given), so calls on
        different inputs (decoding steps, a pool and a target set) are joint draws.

    Attributes
    ----------
    last_strategy : str or None
        Strategy the last :meth:`forward` used (what ``strategy="auto"`` chose).
    last_samples_per_pass : int or None
        Samples per forward pass in the last :meth:`forward` (lower after out-of-memory).

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

    def __init__(self, model: nn.Module, n_samples: int = 100, **options: Any) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}."
            )
        unknown = set(options) - set(SamplingOptions.__dataclass_fields__) - set(CALL_OPTIONS)
        unknown -= {"max_samples"}
        if unknown:
            raise TypeError(
                f"Expected options of predict_with_uncertainty, but got unknown {sorted(unknown)}."
            )
        if isinstance(n_samples, str):
            raise TypeError(
                f"Expected `n_samples` to be an integer >= 1 (forward returns that many stacked "
                f"samples), but got {n_samples!r}; adaptive sampling is an option of "
                "predict_with_uncertainty."
            )
        self.model = model
        self.options = dict(options)
        sampling = {k: v for k, v in options.items() if k not in CALL_OPTIONS}
        self._sampling = SamplingOptions.create(n_samples=n_samples, **sampling)
        for name in ("distributed", "rank0_only"):
            check_bool(name, options.get(name, False))
        if options.get("progress") is not None:
            check_bool("progress", options["progress"])
        resolve_device("result_device", options.get("result_device", "cpu"))
        self.n_samples = self._sampling.n_samples
        self._seed = seed_from(options.get("seed"), options.get("generator"))
        if self._seed is None and self._sampling.masks == "shared":
            # Shared masks: the wrapper is one ensemble of T networks, the same at every call.
            self._seed = fresh_seed()
        self._engine: driver.Engine | None = None  # built at the first call, then kept
        self.last_strategy: str | None = None  # what the last forward used (auto decision)
        self.last_samples_per_pass: int | None = None  # after out-of-memory back-off

    def forward(
        self, *args: Any, **kwargs: Any
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Stacked samples of the model output, shape (T, B, ...), for one batch.

        Returns the extracted output (logits, probabilities or regression means as the model
        gives them); a heteroscedastic regressor gives ``(means, log_variances)``. The same
        checks as :func:`predict_with_uncertainty` run (NaN/Inf, dropout that changes nothing).
        """
        if self._engine is None or self._engine.model is not self.model:
            self._engine = driver.Engine(self.model, self._sampling)
        size = _leading_size(args, kwargs, "inputs")
        stacked = driver.sample_stack(
            self._engine, _Batch(args, dict(kwargs), None, size), self._seed
        )
        self.last_strategy = self._engine.strategy
        self.last_samples_per_pass = self._engine.last_samples_per_pass
        return stacked[0] if len(stacked) == 1 else (stacked[0], stacked[1])

    def predict_with_uncertainty(
        self, inputs: Any, **overrides: Any
    ) -> ClassificationResult | RegressionResult:
        """Aggregated result over ``inputs``, as :func:`mcdrop.predict_with_uncertainty`."""
        kwargs = {**self.options, **overrides}
        kwargs.setdefault("n_samples", self.n_samples)
        return predict_with_uncertainty(self.model, inputs, **kwargs)

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
