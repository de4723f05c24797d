"""Uncertainty measures, aggregated as a stream over Monte Carlo samples.

The accumulators take chunks of samples of shape ``(k, B, ...)`` one after another and keep only
``O(B x C)`` state, whatever the number of samples ``T``. Means and variances are merged with
Chan et al.'s parallel update in ``float64`` (no catastrophic cancellation of ``E[x^2] - E[x]^2``).

:func:`summarize_samples` runs the same accumulators over samples that are already stacked,
e.g. the members of a deep ensemble.

Definitions (natural logarithms, ``p_t`` the sampled class probabilities, ``p = mean_t p_t``):

* predictive entropy ``H[p] = -sum_c p_c log p_c`` (total uncertainty);
* expected entropy ``E_t H[p_t]`` (aleatoric);
* mutual information ``H[p] - E_t H[p_t]`` (epistemic; BALD, Houlsby et al. 2011);
* variation ratio ``1 - f_mode / T`` with ``f_mode`` the count of the most sampled class
  (Freeman 1965);
* regression: epistemic variance ``Var_t[mu_t]`` (``ddof=0``), aleatoric variance
  ``E_t[sigma_t^2]`` or ``1 / tau`` (Gal 2016, eq. 3.16; Kendall & Gal 2017).
"""

from __future__ import annotations

from mcdrop.stats._accumulators import (
    OUTPUT_KINDS,
    ClassificationAccumulator,
    Moments,
    RegressionAccumulator,
    concat_states,
    normalise_class_dim,
    result_from_state,
    summarize_samples,
)
from mcdrop.stats._joint import (
    joint_log_predictive,
    joint_predictive,
    pairwise_mutual_information,
)

__all__ = [
    "joint_log_predictive",
    "joint_predictive",
    "pairwise_mutual_information",
    "summarize_samples",
]

# Not part of the public API; used by mcdrop.sampling (the run loop) and mcdrop.metrics.
__internal__ = [
    "OUTPUT_KINDS",
    "ClassificationAccumulator",
    "Moments",
    "RegressionAccumulator",
    "concat_states",
    "normalise_class_dim",
    "result_from_state",
]
