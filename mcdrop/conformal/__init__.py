"""Split-conformal prediction on top of Monte Carlo dropout.

Monte Carlo dropout gives every example a predictive distribution; split-conformal prediction
turns it into prediction *sets* (classification) or *intervals* (regression) with a
finite-sample, distribution-free coverage guarantee: for exchangeable calibration and test
examples,

.. math::

    \\Pr\\bigl(y_{\\text{test}} \\in C(x_{\\text{test}})\\bigr) \\ge 1 - \\alpha .

Recipe (Vovk et al. 2005; Angelopoulos & Bates 2021): compute a nonconformity score ``s_i`` for
each of the ``n`` calibration examples, take the ``k = ceil((n + 1)(1 - alpha))``-th smallest
of them, ``q``, i.e. the empirical quantile at level ``ceil((n + 1)(1 - alpha)) / n``
(``np.quantile(..., method="inverted_cdf")``, MAPIE's ``method="lower"``), and keep for a test example every candidate whose score is ``<= q``.
``k`` is computed in exact rational arithmetic from the float ``alpha``; when ``k > n`` (fewer
than about ``1 / alpha - 1`` calibration examples) no finite set has the guarantee and a
``ValueError`` says how many examples are needed.

Scores
------
Classification, from the MC predictive mean ``p`` (``result.mean``), for a candidate class ``c``:

``"lac"`` (least ambiguous set-valued classifier, Sadinle et al. 2019)
    ``1 - p_c``. Smallest average sets; may be empty for an ambiguous example.
``"aps"`` (adaptive prediction sets, Romano et al. 2020)
    ``sum of p_j over the classes ranked at or above c`` (classes sorted by decreasing
    probability, ties by index). Sets grow with the uncertainty of the example.
``"raps"`` (regularised APS, Angelopoulos et al. 2021)
    The APS score plus ``lambda_reg * max(0, rank_c + 1 - k_reg)``: penalises long tails of
    unlikely classes.

A class whose score is ``<= q`` is always in the set, which is what the guarantee needs. The
APS/RAPS sets (``randomized=False``) also keep the class whose cumulative mass crosses ``q``
(its score minus its own probability is ``< q``, MAPIE's ``include_last_label=True``): they are
never empty and their coverage is ``>= 1 - alpha``, sometimes above it. With
``randomized=True`` the score subtracts ``U * p_c`` with one ``U ~ Uniform(0, 1)`` per example
(drawn from ``seed``) and only classes with score ``<= q`` are kept: coverage is then
``1 - alpha`` in expectation (at most ``1 - alpha + 1 / (n + 1)``), with smaller sets. LAC sets
keep the classes with ``1 - p_c <= q`` and may be empty.

Regression: ``|y - mean| / std`` with ``std`` the MC predictive standard deviation (total or
epistemic): intervals ``mean -/+ q * std`` are wide where dropout is unsure. For outputs of shape
``(N, *S)`` the score of an example is the largest normalised residual over its ``*S`` elements,
so the intervals cover *all* elements of an example jointly with probability ``>= 1 - alpha``.
"""

from __future__ import annotations

from mcdrop.conformal._split import (
    ConformalCoverageDisplay,
    CoverageCurve,
    SplitConformalClassifier,
    SplitConformalRegressor,
    conformal_quantile,
    coverage_curve,
    mean_set_size,
    set_coverage,
)

__all__ = [
    "ConformalCoverageDisplay",
    "CoverageCurve",
    "SplitConformalClassifier",
    "SplitConformalRegressor",
    "conformal_quantile",
    "coverage_curve",
    "mean_set_size",
    "set_coverage",
]
