"""Non-parametric recalibration of each class's probability: isotonic regression and histogram
binning, one-vs-rest, renormalised to the simplex."""

from __future__ import annotations

from typing import Any

import numpy as np

from mcdrop._validation import ArrayLike, check_choice, check_int
from mcdrop.calibration._base import (
    Persistent,
    check_class_count,
    check_inputs,
    class_probs,
    fit_labels,
    not_fitted,
    state_array,
    state_int,
)


def _renormalise(values: np.ndarray) -> np.ndarray:
    """Rows divided by their sum; a row that is all zero becomes uniform (as scikit-learn's
    ``CalibratedClassifierCV``)."""
    total = values.sum(axis=1, keepdims=True)
    uniform = np.full_like(values, 1.0 / values.shape[1])
    return np.divide(values, total, out=uniform, where=total > 0)


class _OneVsRest(Persistent):
    """Inputs, labels and the fitted class count shared by the one-vs-rest recalibrators."""

    def __init__(self, inputs: str) -> None:
        self.inputs = check_inputs(inputs)
        self._n_classes: int | None = None

    def __repr__(self) -> str:
        fitted = "unfitted" if self._n_classes is None else f"n_classes={self._n_classes}"
        return f"{type(self).__name__}(inputs={self.inputs!r}, {fitted})"

    def _training_data(self, probs: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        values, leading = class_probs("probs", probs, self.inputs)
        if values.shape[1] < 2:
            raise ValueError(
                f"Expected `probs` with at least 2 classes, but got shape "
                f"{(*leading, values.shape[1])}."
            )
        return values, fit_labels("y", y, values.shape[1], leading)

    def _inputs(self, probs: Any) -> tuple[np.ndarray, tuple[int, ...]]:
        if self._n_classes is None:
            raise not_fitted(type(self).__name__, "fit(probs, y)")
        values, leading = class_probs("probs", probs, self.inputs)
        check_class_count("probs", values.shape[1], self._n_classes)
        return values, leading

    def fit_transform(self, probs: ArrayLike, y: ArrayLike) -> np.ndarray:
        """``fit`` then ``transform`` on the same data."""
        return self.fit(probs, y).transform(probs)  # type: ignore[attr-defined, no-any-return]


class IsotonicCalibration(_OneVsRest):
    r"""Isotonic recalibration, one-vs-rest, renormalised (Zadrozny & Elkan 2002).

    For each class ``c`` a non-decreasing map ``g_c`` from the predicted probability
    ``p_c`` to the frequency of ``y = c`` is fitted by isotonic regression (pool adjacent
    violators, :class:`sklearn.isotonic.IsotonicRegression`, linear between its thresholds,
    clipped outside them); the calibrated probabilities are ``g_c(p_c) / sum_k g_k(p_k)``
    (uniform when every ``g_k`` is 0). This is what
    :class:`sklearn.calibration.CalibratedClassifierCV` does with ``method="isotonic"``.
    Flexible (no parametric form) but needs more validation data than scaling and can change
    the predicted class and produce ties.

    Parameters
    ----------
    inputs : {"probs", "logits", "log_probs"}, default="probs"
        What ``fit`` and ``transform`` receive; logits go through a softmax first.

    Attributes
    ----------
    thresholds_ : list of (ndarray, ndarray)
        For each class, the increasing inputs and the fitted values of its map.

    References
    ----------
    Zadrozny & Elkan (2002), "Transforming classifier scores into accurate multiclass
    probability estimates", KDD.
    """

    def __init__(self, *, inputs: str = "probs") -> None:
        super().__init__(inputs)
        self.thresholds_: list[tuple[np.ndarray, np.ndarray]] = []

    def _options(self) -> dict[str, Any]:
        return {"inputs": self.inputs}

    def _state(self) -> dict[str, Any] | None:
        if self._n_classes is None:
            return None
        return {
            "x": [x.tolist() for x, _ in self.thresholds_],
            "y": [y.tolist() for _, y in self.thresholds_],
        }

    def _restore(self, state: dict[str, Any]) -> None:
        xs, ys = state.get("x"), state.get("y")
        if (
            not isinstance(xs, list)
            or not isinstance(ys, list)
            or len(xs) != len(ys)
            or len(xs) < 2
        ):
            raise ValueError("Expected `x` and `y` in the saved state: one list per class, >= 2.")
        pairs = []
        for c, (x, y) in enumerate(zip(xs, ys, strict=True)):
            x_arr = state_array({"x": x}, "x", (None,))
            y_arr = state_array({"y": y}, "y", (x_arr.shape[0],))
            if x_arr.size == 0 or np.any(np.diff(x_arr) < 0) or np.any(np.diff(y_arr) < 0):
                raise ValueError(f"Expected a non-decreasing, non-empty map for class {c}.")
            if np.any((x_arr < 0) | (x_arr > 1) | (y_arr < 0) | (y_arr > 1)):
                raise ValueError(
                    f"Expected the map of class {c} in the saved state to take probabilities in "
                    "[0, 1] to probabilities in [0, 1] (`x` and `y`)."
                )
            pairs.append((x_arr, y_arr))
        self.thresholds_, self._n_classes = pairs, len(pairs)

    def fit(self, probs: ArrayLike, y: ArrayLike) -> IsotonicCalibration:
        """Fit one isotonic map per class on validation predictions.

        Parameters
        ----------
        probs : array-like or Tensor of shape (N, C) or (T, N, C)
            Validation outputs of the kind given by ``inputs``.
        y : array-like or Tensor of shape (N,)
            Integer labels in ``[0, C)``.

        Returns
        -------
        IsotonicCalibration
            ``self``, fitted.
        """
        from sklearn.isotonic import IsotonicRegression

        values, labels = self._training_data(probs, y)
        self.thresholds_ = []
        for c in range(values.shape[1]):
            regression = IsotonicRegression(out_of_bounds="clip")
            regression.fit(values[:, c], (labels == c).astype(np.float64))
            self.thresholds_.append(
                (
                    regression.X_thresholds_.astype(np.float64),
                    regression.y_thresholds_.astype(np.float64),
                )
            )
        self._n_classes = values.shape[1]
        return self

    def transform(self, probs: ArrayLike) -> np.ndarray:
        """Calibrated probabilities, renormalised.

        Parameters
        ----------
        probs : array-like or Tensor of shape (..., C)
            Outputs of the kind given by ``inputs``.

        Returns
        -------
        ndarray of shape (..., C)
        """
        values, leading = self._inputs(probs)
        mapped = np.stack(
            [np.interp(values[:, c], x, y) for c, (x, y) in enumerate(self.thresholds_)], axis=1
        )
        return _renormalise(mapped).reshape(*leading, values.shape[1])


_BIN_STRATEGIES = ("uniform", "quantile")


class HistogramBinning(_OneVsRest):
    r"""Histogram binning, one-vs-rest, renormalised (Zadrozny & Elkan 2001).

    For each class ``c`` the predicted probabilities ``p_c`` are cut into ``n_bins`` bins and a
    prediction in bin ``b`` is replaced by the frequency of ``y = c`` among the validation
    predictions in that bin (an empty bin keeps its centre, as torch-uncertainty's
    ``HistogramBinningScaler``); the row is then renormalised (uniform when all are 0).

    Parameters
    ----------
    n_bins : int, default=15
        Number of bins per class, >= 1.
    strategy : {"uniform", "quantile"}, default="uniform"
        ``"uniform"``: equal-width bins on ``[0, 1]``, right-closed (the first also holds 0),
        the bins of :func:`mcdrop.metrics.reliability_curve`. ``"quantile"``: edges at the
        quantiles of each class's validation probabilities (Zadrozny & Elkan's equal-frequency
        bins), extended to 0 and 1.
    inputs : {"probs", "logits", "log_probs"}, default="probs"
        What ``fit`` and ``transform`` receive; logits go through a softmax first.

    Attributes
    ----------
    edges_ : ndarray of shape (C, n_bins + 1)
        Bin edges of each class.
    values_ : ndarray of shape (C, n_bins)
        Calibrated probability of each bin.

    References
    ----------
    Zadrozny & Elkan (2001), "Obtaining calibrated probability estimates from decision trees
    and naive Bayesian classifiers", ICML.
    """

    def __init__(self, *, n_bins: int = 15, strategy: str = "uniform", inputs: str = "probs"):
        super().__init__(inputs)
        self.n_bins = check_int("n_bins", n_bins, minimum=1)
        self.strategy = check_choice("strategy", strategy, _BIN_STRATEGIES)
        self.edges_: np.ndarray | None = None
        self.values_: np.ndarray | None = None

    def _options(self) -> dict[str, Any]:
        return {"n_bins": self.n_bins, "strategy": self.strategy, "inputs": self.inputs}

    def _state(self) -> dict[str, Any] | None:
        if self.edges_ is None or self.values_ is None:
            return None
        return {
            "n_classes": self._n_classes,
            "edges": self.edges_.tolist(),
            "values": self.values_.tolist(),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        c = state_int(state, "n_classes", 2)
        edges = state_array(state, "edges", (c, self.n_bins + 1))
        values = state_array(state, "values", (c, self.n_bins))
        outside = np.any((edges < 0) | (edges > 1)) or np.any((values < 0) | (values > 1))
        if np.any(np.diff(edges, axis=1) < 0) or outside:
            raise ValueError(
                "Expected increasing `edges` in [0, 1] and `values` in [0, 1] in the saved state."
            )
        self.edges_, self.values_, self._n_classes = edges, values, c

    def _edges(self, column: np.ndarray) -> np.ndarray:
        if self.strategy == "uniform":
            return np.linspace(0.0, 1.0, self.n_bins + 1)
        edges = np.percentile(column, np.linspace(0.0, 100.0, self.n_bins + 1))
        edges[0], edges[-1] = 0.0, 1.0
        return edges

    def fit(self, probs: ArrayLike, y: ArrayLike) -> HistogramBinning:
        """Fit the bin frequencies of each class on validation predictions.

        Parameters
        ----------
        probs : array-like or Tensor of shape (N, C) or (T, N, C)
            Validation outputs of the kind given by ``inputs``.
        y : array-like or Tensor of shape (N,)
            Integer labels in ``[0, C)``.

        Returns
        -------
        HistogramBinning
            ``self``, fitted.
        """
        values, labels = self._training_data(probs, y)
        c = values.shape[1]
        edges = np.empty((c, self.n_bins + 1))
        fitted = np.empty((c, self.n_bins))
        for k in range(c):
            edges[k] = self._edges(values[:, k])
            ids = np.searchsorted(edges[k, 1:-1], values[:, k], side="left")
            count = np.bincount(ids, minlength=self.n_bins)
            hits = np.bincount(ids, weights=(labels == k).astype(np.float64), minlength=self.n_bins)
            centre = (edges[k, :-1] + edges[k, 1:]) / 2.0
            fitted[k] = np.where(count > 0, hits / np.maximum(count, 1), centre)
        self.edges_, self.values_, self._n_classes = edges, fitted, c
        return self

    def transform(self, probs: ArrayLike) -> np.ndarray:
        """Calibrated probabilities, renormalised.

        Parameters
        ----------
        probs : array-like or Tensor of shape (..., C)
            Outputs of the kind given by ``inputs``.

        Returns
        -------
        ndarray of shape (..., C)
        """
        values, leading = self._inputs(probs)
        assert self.edges_ is not None and self.values_ is not None
        mapped = np.empty_like(values)
        for k in range(values.shape[1]):
            ids = np.searchsorted(self.edges_[k, 1:-1], values[:, k], side="left")
            mapped[:, k] = self.values_[k, ids]
        return _renormalise(mapped).reshape(*leading, values.shape[1])
