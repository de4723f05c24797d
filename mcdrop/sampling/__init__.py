"""Monte Carlo dropout inference: :func:`predict_with_uncertainty` and :class:`MCDropout`.

The ``T`` stochastic passes run as a few large batched passes on the model's device, on a twin of
the model with exactly its training-mode dropout switched on (:mod:`mcdrop.dropout`):

``"replicate"``
    Repeat each batch ``k`` times along the batch dimension and run one pass of ``k * B`` rows.
``"vmap"``
    ``torch.func.vmap(..., randomness="different")`` over a dummy sample axis of size ``k``.
    Everything computed before the first dropout is not batched by vmap, so it runs once for all
    ``k`` samples (prefix sharing): a network with dropout only in its head costs about one pass.
``"loop"``
    ``k`` separate passes: the reference, and the lowest memory.
``"auto"`` (default)
    Decided from the probe pass that finds the dropout sites, never from a clock: ``vmap`` when at
    least half of the FLOPs come before the first dropout, else ``replicate``, else ``loop``; each
    candidate must first pass a validity check on the first chunk (see
    :mod:`mcdrop.sampling._planner`). Every strategy draws independent masks for every sample and
    example, so the choice never changes the distribution of the results; with
    ``masks="shared"`` every strategy applies the same ``T`` networks (:mod:`mcdrop.dropout`'s
    mask generator), so the choice never changes the numbers.

Python-level randomness (``random.random()`` in ``forward``) is drawn once per pass, so it is
shared by the samples of a replicate or vmap pass: use ``strategy="loop"`` for such models.

Statistics are aggregated as a stream (see :mod:`mcdrop.stats`): memory stays
``O(N x C)`` whatever ``T`` unless ``keep_samples=True``.

The path of one call, module by module: ``_api`` (options, :mod:`._options`) -> ``_driver``
(batches from ``_inputs``) -> ``_engine`` (the twin, :mod:`mcdrop.dropout`) -> ``_run`` (the plan
of ``_planner``, chunks of ``_strategies``, checks of ``_checks``) -> :mod:`mcdrop.stats` ->
a result (:mod:`mcdrop.results`).
"""

from __future__ import annotations

from mcdrop.sampling._api import MCDropout, predict_with_uncertainty
from mcdrop.sampling._distributed import shard_indices
from mcdrop.sampling._joint import sample_log_probs
from mcdrop.sampling._options import SamplingOptions, default_of

__all__ = ["MCDropout", "predict_with_uncertainty", "sample_log_probs", "shard_indices"]

# Not part of the public API; used by mcdrop.integrations (one set of option defaults).
__internal__ = ["SamplingOptions", "default_of"]
