"""Vector, matrix and Dirichlet scaling: an affine map of the logits (or log-probabilities)
followed by a softmax, fitted by minimising the negative log-likelihood."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
from scipy.special import log_softmax, softmax

from mcdrop._validation import ArrayLike, as_real, check_float, check_int
from mcdrop.calibration._base import (
    Persistent,
    check_class_count,
    check_inputs,
    class_scores,
    fit_labels,
    not_fitted,
    state_array,
)


def _unpack(theta: np.ndarray, kind: str, c: int) -> tuple[np.ndarray, np.ndarray]:
    if kind == "vector":
        return theta[:c], theta[c:]
    return theta[: c * c].reshape(c, c), theta[c * c :]


def _affine(x: np.ndarray, weights: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """``x W^T + b`` (matrix) or ``x * w + b`` (vector: ``weights`` 1-d)."""
    return (x * weights if weights.ndim == 1 else x @ weights.T) + bias


def _probabilities(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of each row and its log-normaliser ``max + log sum exp(z - max)``."""
    top = logits.max(axis=1, keepdims=True)
    exp = np.exp(logits - top)
    total = exp.sum(axis=1, keepdims=True)
    return exp / total, top + np.log(total)


class _Problem:
    """Mean NLL of ``softmax(map(x))`` plus the ODIR penalties (Kull et al. 2019): value,
    gradient and Hessian-vector products, the softmax cached for the current parameters."""

    def __init__(self, x: np.ndarray, labels: np.ndarray, kind: str, lam: float, mu: float):
        self.x, self.labels, self.kind = x, labels, kind
        n, c = x.shape
        self.rows = np.arange(n)
        self.off_scale = lam / (c * (c - 1)) if kind == "matrix" and c > 1 else 0.0
        self.bias_scale = mu / c
        self._key: bytes | None = None
        self._probs = np.empty(0)

    def _softmax(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        weights, bias = _unpack(theta, self.kind, self.x.shape[1])
        logits = _affine(self.x, weights, bias)
        probs, normaliser = _probabilities(logits)
        self._key, self._probs = theta.tobytes(), probs
        return logits, normaliser

    def value_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        n, c = self.x.shape
        weights, bias = _unpack(theta, self.kind, c)
        logits, normaliser = self._softmax(theta)
        loss = float(np.mean(normaliser[:, 0] - logits[self.rows, self.labels]))
        residual = self._probs.copy()
        residual[self.rows, self.labels] -= 1.0
        residual /= n
        grad_w, grad_b = self._pull_back(residual)
        if self.off_scale:
            off = weights - np.diag(np.diag(weights))
            loss += self.off_scale * float(np.sum(off**2))
            grad_w = grad_w + 2.0 * self.off_scale * off
        if self.bias_scale:
            loss += self.bias_scale * float(np.sum(bias**2))
            grad_b = grad_b + 2.0 * self.bias_scale * bias
        return loss, np.concatenate([grad_w.ravel(), grad_b])

    def _pull_back(self, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grad_w = (residual * self.x).sum(axis=0) if self.kind == "vector" else residual.T @ self.x
        return grad_w, residual.sum(axis=0)

    def hessian_product(self, theta: np.ndarray, direction: np.ndarray) -> np.ndarray:
        c = self.x.shape[1]
        if self._key != theta.tobytes():
            self._softmax(theta)
        probs = self._probs
        d_weights, d_bias = _unpack(direction, self.kind, c)
        d_logits = _affine(self.x, d_weights, d_bias)
        d_residual = probs * (d_logits - np.sum(probs * d_logits, axis=1, keepdims=True))
        h_weights, h_bias = self._pull_back(d_residual / self.x.shape[0])
        if self.off_scale:
            off = d_weights - np.diag(np.diag(d_weights))
            h_weights = h_weights + 2.0 * self.off_scale * off
        if self.bias_scale:
            h_bias = h_bias + 2.0 * self.bias_scale * d_bias
        return np.concatenate([h_weights.ravel(), h_bias])


def _identity(kind: str, c: int) -> np.ndarray:
    weights = np.ones(c) if kind == "vector" else np.eye(c).ravel()
    return np.concatenate([weights, np.zeros(c)])


def _fit(
    x: np.ndarray,
    labels: np.ndarray,
    kind: str,
    lam: float,
    mu: float,
    *,
    start: np.ndarray | None = None,
    gtol: float = 1e-9,
) -> tuple[np.ndarray, bool]:
    """Minimise the convex objective of :class:`_Problem` (from the identity map, or
    ``start``) by a trust-region Newton method with conjugate-gradient steps on exact
    Hessian-vector products (scipy's ``trust-ncg``)."""
    from scipy.optimize import minimize

    problem = _Problem(x, labels, kind, lam, mu)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        solution = minimize(
            problem.value_and_gradient,
            _identity(kind, x.shape[1]) if start is None else start,
            jac=True,
            hessp=problem.hessian_product,
            method="trust-ncg",
            options={"gtol": gtol, "maxiter": 1000},
        )
        theta = np.asarray(solution.x, dtype=np.float64)
        gradient = problem.value_and_gradient(theta)[1]
    converged = bool(np.all(np.isfinite(theta)) and np.max(np.abs(gradient)) < max(1e-6, gtol))
    return theta, converged


class _AffineScaling(Persistent):
    """Shared fit / transform of the affine recalibrators."""

    _kind: ClassVar[str]
    reg_lambda: float | None
    reg_mu: float | None

    def __init__(self, *, inputs: str, reg_lambda: float, reg_mu: float) -> None:
        self.inputs = check_inputs(inputs)
        self.reg_lambda = check_float("reg_lambda", reg_lambda, low=0.0)
        self.reg_mu = check_float("reg_mu", reg_mu, low=0.0)
        self._weights: np.ndarray | None = None
        self._bias: np.ndarray | None = None

    def __repr__(self) -> str:
        fitted = "unfitted" if self._weights is None else f"n_classes={self._bias.shape[0]}"  # type: ignore[union-attr]
        return f"{type(self).__name__}(inputs={self.inputs!r}, {fitted})"

    def _options(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "reg_lambda": self.reg_lambda, "reg_mu": self.reg_mu}

    @property
    def weights(self) -> np.ndarray:
        """Fitted weights: ``(C,)`` (vector scaling) or ``(C, C)`` (matrix, Dirichlet)."""
        if self._weights is None:
            raise not_fitted(type(self).__name__, "fit(logits, y)")
        return self._weights.copy()

    @property
    def bias(self) -> np.ndarray:
        """Fitted intercepts, shape ``(C,)``."""
        if self._bias is None:
            raise not_fitted(type(self).__name__, "fit(logits, y)")
        return self._bias.copy()

    def _state(self) -> dict[str, Any] | None:
        if self._weights is None or self._bias is None:
            return None
        return {"weights": self._weights.tolist(), "bias": self._bias.tolist()}

    def _restore(self, state: dict[str, Any]) -> None:
        bias = state_array(state, "bias", (None,))
        c = bias.shape[0]
        shape = (c,) if self._kind == "vector" else (c, c)
        self._weights, self._bias = state_array(state, "weights", shape), bias

    def _training_data(self, logits: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        x, leading = class_scores("logits", logits, self.inputs)
        if x.shape[1] < 2:
            raise ValueError(
                f"Expected `logits` with at least 2 classes, but got shape {(*leading, x.shape[1])}."
            )
        return x, fit_labels("y", y, x.shape[1], leading)

    def _set(self, theta: np.ndarray, c: int, converged: bool) -> None:
        if not converged:
            warnings.warn(
                f"{type(self).__name__} did not converge: the fitted map may be far from the "
                "optimum (with few examples per parameter the likelihood can be unbounded); "
                "use regularisation or more validation data.",
                RuntimeWarning,
                stacklevel=3,
            )
        weights, bias = _unpack(theta, self._kind, c)
        self._weights, self._bias = weights.copy(), bias.copy()

    def fit(self, logits: ArrayLike, y: ArrayLike) -> Any:
        """Fit the map by minimising the mean NLL of ``y`` (plus the penalties).

        Parameters
        ----------
        logits : array-like or Tensor of shape (N, C) or (T, N, C)
            Validation outputs of the kind given by ``inputs``. With per-sample outputs
            ``(T, N, C)`` every sample counts as a prediction of its example's label.
        y : array-like or Tensor of shape (N,)
            Integer labels in ``[0, C)``.

        Returns
        -------
        self
        """
        x, labels = self._training_data(logits, y)
        theta, converged = _fit(x, labels, self._kind, self.reg_lambda or 0.0, self.reg_mu or 0.0)
        self._set(theta, x.shape[1], converged)
        return self

    def transform(self, logits: ArrayLike) -> np.ndarray:
        """Calibrated probabilities ``softmax(map(logits))``.

        Parameters
        ----------
        logits : array-like or Tensor of shape (..., C)
            Outputs of the kind given by ``inputs``, e.g. ``(N, C)`` or the ``(T, N, C)``
            outputs of ``T`` Monte Carlo samples (average the result over ``T`` for the
            calibrated predictive distribution).

        Returns
        -------
        ndarray of shape (..., C)
            Probabilities (``float64``).
        """
        weights = self.weights
        x, leading = class_scores("logits", logits, self.inputs)
        check_class_count("logits", x.shape[1], weights.shape[0])
        with np.errstate(over="ignore"):
            probs = softmax(_affine(x, weights, self.bias), axis=1)
        return probs.reshape(*leading, x.shape[1])

    def fit_transform(self, logits: ArrayLike, y: ArrayLike) -> np.ndarray:
        """:meth:`fit` then :meth:`transform` on the same data."""
        return self.fit(logits, y).transform(logits)


class VectorScaling(_AffineScaling):
    r"""Vector scaling (Guo et al. 2017): one scale and one bias per class.

    .. math::

        p = \mathrm{softmax}(w \odot z + b), \qquad w, b \in \mathbb{R}^C,

    fitted by minimising the mean negative log-likelihood on validation data (L-BFGS from
    ``w = 1, b = 0``; the objective is convex). Temperature scaling is the special case
    ``w = 1/T, b = 0``, so on the data it is fitted on vector scaling is never worse. Unlike
    temperature scaling it can change the predicted class.

    Parameters
    ----------
    inputs : {"logits", "probs", "log_probs"}, default="logits"
        What ``fit`` and ``transform`` receive (as in :class:`TemperatureScaling`);
        probabilities are mapped through ``log(max(p, tiny))``.

    Attributes
    ----------
    weights, bias : ndarray of shape (C,)
        The fitted ``w`` and ``b``.

    References
    ----------
    Guo, Pleiss, Sun & Weinberger (2017), "On calibration of modern neural networks", ICML.
    """

    _kind = "vector"

    def __init__(self, *, inputs: str = "logits"):
        super().__init__(inputs=inputs, reg_lambda=0.0, reg_mu=0.0)

    def _options(self) -> dict[str, Any]:
        return {"inputs": self.inputs}


class MatrixScaling(_AffineScaling):
    r"""Matrix scaling (Guo et al. 2017): a full affine map of the logits.

    .. math::

        p = \mathrm{softmax}(W z + b), \qquad W \in \mathbb{R}^{C \times C},\ b \in \mathbb{R}^C,

    i.e. multinomial logistic regression on the logits, fitted by minimising the mean NLL plus
    optional ODIR penalties (Kull et al. 2019)

    .. math::

        \frac{\lambda}{C(C-1)} \sum_{i \ne j} W_{ij}^2 + \frac{\mu}{C} \sum_j b_j^2 .

    It contains vector and temperature scaling but has ``C² + C`` parameters: without the
    penalties it overfits small validation sets (a ``RuntimeWarning`` when the fit does not
    converge, e.g. separable data).

    Parameters
    ----------
    inputs : {"logits", "probs", "log_probs"}, default="logits"
        What ``fit`` and ``transform`` receive. On ``"probs"`` this is Dirichlet calibration.
    reg_lambda : float, default=0.0
        ODIR weight ``λ >= 0`` on the off-diagonal entries of ``W``.
    reg_mu : float, default=0.0
        ODIR weight ``μ >= 0`` on the intercepts.

    Attributes
    ----------
    weights : ndarray of shape (C, C)
    bias : ndarray of shape (C,)

    References
    ----------
    Guo et al. (2017), ICML. Kull, Perello-Nieto, Kängsepp, Silva Filho, Song & Flach (2019),
    "Beyond temperature scaling: Obtaining well-calibrated multiclass probabilities with
    Dirichlet calibration", NeurIPS.
    """

    _kind = "matrix"

    def __init__(self, *, inputs: str = "logits", reg_lambda: float = 0.0, reg_mu: float = 0.0):
        super().__init__(inputs=inputs, reg_lambda=reg_lambda, reg_mu=reg_mu)


_DEFAULT_GRID = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)


class DirichletCalibration(_AffineScaling):
    r"""Dirichlet calibration with ODIR regularisation (Kull et al. 2019).

    A full affine map of the log-probabilities, ``p' = softmax(W log p + b)`` (the family of
    Dirichlet-distributed class-conditional probabilities), fitted by minimising

    .. math::

        -\frac1N \sum_i \log p'_{y_i}(x_i) + \frac{\lambda}{C(C-1)} \sum_{i \ne j} W_{ij}^2
        + \frac{\mu}{C} \sum_j b_j^2 ,

    the off-diagonal and intercept regularisation (ODIR) that keeps the map near a
    temperature-like diagonal. ``λ`` and ``μ`` are given or chosen, as Kull et al. do, by
    ``cv``-fold cross-validation (stratified folds of examples in input order; the ``T`` samples of an example stay in one fold) of the log-loss: over the
    pairs ``λ = μ`` of ``grid`` when both are ``None`` (one fit per value and fold instead of
    one per pair, Kull et al. search the full product), over ``grid`` for the one that is
    ``None`` otherwise; the map is then refitted on all the data.

    Parameters
    ----------
    inputs : {"probs", "logits", "log_probs"}, default="probs"
        What ``fit`` and ``transform`` receive: probabilities (e.g. the MC average
        ``result.mean``), or logits / log-probabilities, whose log-softmax is used.
    reg_lambda, reg_mu : float or None, default=None
        The ODIR weights ``λ, μ >= 0``; ``None`` chooses each by cross-validation.
    grid : sequence of float, default=(1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
        Candidate values for the weights chosen by cross-validation.
    cv : int, default=5
        Number of folds, >= 2. With fewer than ``cv`` examples of some class in ``y``, the
        folds are reduced to the smallest class count (classes absent from ``y`` aside), so
        that every fold trains and tests on every class; ``fit`` raises ``ValueError`` when a
        class has a single example (no fold could train on it) and the weights are not both
        given.

    Attributes
    ----------
    weights : ndarray of shape (C, C)
    bias : ndarray of shape (C,)
    reg_lambda_, reg_mu_ : float
        The weights used by the final fit (given or chosen).

    References
    ----------
    Kull, Perello-Nieto, Kängsepp, Silva Filho, Song & Flach (2019), "Beyond temperature
    scaling: Obtaining well-calibrated multiclass probabilities with Dirichlet calibration",
    NeurIPS.
    """

    _kind = "matrix"

    def __init__(
        self,
        *,
        inputs: str = "probs",
        reg_lambda: float | None = None,
        reg_mu: float | None = None,
        grid: Sequence[float] = _DEFAULT_GRID,
        cv: int = 5,
    ):
        super().__init__(inputs=inputs, reg_lambda=0.0, reg_mu=0.0)
        if reg_lambda is not None:
            reg_lambda = check_float("reg_lambda", reg_lambda, low=0.0)
        if reg_mu is not None:
            reg_mu = check_float("reg_mu", reg_mu, low=0.0)
        self.reg_lambda, self.reg_mu = reg_lambda, reg_mu
        values = as_real("grid", np.asarray(grid, dtype=np.float64), ndim=1)
        if np.any(values < 0.0):
            raise ValueError(
                f"Expected `grid` to hold weights >= 0, but got {float(values.min())}."
            )
        self.grid = tuple(float(v) for v in values)
        self.cv = check_int("cv", cv, minimum=2)
        self.reg_lambda_: float | None = None
        self.reg_mu_: float | None = None

    def _options(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "reg_lambda": self.reg_lambda,
            "reg_mu": self.reg_mu,
            "grid": list(self.grid),
            "cv": self.cv,
        }

    def _state(self) -> dict[str, Any] | None:
        state = super()._state()
        if state is not None:
            state.update(reg_lambda=self.reg_lambda_, reg_mu=self.reg_mu_)
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        for key in ("reg_lambda", "reg_mu"):
            value = state.get(key)
            setattr(self, f"{key}_", check_float(f"{key} in the saved state", value, low=0.0))

    def _training_data(self, logits: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        x, labels = super()._training_data(logits, y)
        return log_softmax(x, axis=1), labels  # log-probabilities whatever the inputs

    def fit(self, logits: ArrayLike, y: ArrayLike) -> DirichletCalibration:
        """Choose the ODIR weights (when not given) and fit the map.

        Parameters
        ----------
        logits : array-like or Tensor of shape (N, C) or (T, N, C)
            Validation outputs of the kind given by ``inputs`` (probabilities by default).
        y : array-like or Tensor of shape (N,)
            Integer labels in ``[0, C)``.

        Returns
        -------
        DirichletCalibration
            ``self``, fitted.
        """
        x, labels = self._training_data(logits, y)
        lam, mu = self._choose(x, labels, len(y))  # type: ignore[arg-type]
        theta, converged = _fit(x, labels, "matrix", lam, mu)
        self.reg_lambda_, self.reg_mu_ = lam, mu
        self._set(theta, x.shape[1], converged)
        return self

    def _choose(self, x: np.ndarray, labels: np.ndarray, n: int) -> tuple[float, float]:
        """The given weights, or the candidates of least cross-validated log-loss. ``n``: the
        number of examples; rows ``r`` and ``r + n`` (samples of one example, ``(T, N, C)``
        inputs) always fall in the same fold, so no fold is scored on an example it saw."""
        if self.reg_lambda is not None and self.reg_mu is not None:
            return self.reg_lambda, self.reg_mu
        if self.reg_lambda is None and self.reg_mu is None:
            pairs = [(value, value) for value in self.grid]
        elif self.reg_lambda is None:
            pairs = [(value, float(self.reg_mu)) for value in self.grid]  # type: ignore[arg-type]
        else:
            pairs = [(self.reg_lambda, value) for value in self.grid]
        from sklearn.model_selection import StratifiedKFold

        examples = labels[:n]
        repeats = len(labels) // n
        by_example = StratifiedKFold(n_splits=self._folds(examples)).split(examples, examples)
        folds = [
            tuple((np.arange(repeats)[:, None] * n + part).ravel() for part in split)
            for split in by_example
        ]
        order = sorted(range(len(pairs)), key=lambda k: pairs[k], reverse=True)
        losses = np.zeros(len(pairs))
        for train, test in folds:
            start = None  # warm starts along the path, strongest regularisation first
            for k in order:
                lam, mu = pairs[k]
                start, _ = _fit(x[train], labels[train], "matrix", lam, mu, start=start, gtol=1e-6)
                weights, bias = _unpack(start, "matrix", x.shape[1])
                log_p = log_softmax(_affine(x[test], weights, bias), axis=1)
                losses[k] -= float(np.sum(log_p[np.arange(test.size), labels[test]]))
        return pairs[int(np.argmin(losses))]

    def _folds(self, labels: np.ndarray) -> int:
        """``cv``, or the smallest class count when lower (at least 2, or a ``ValueError``)."""
        classes, counts = np.unique(labels, return_counts=True)
        rarest = int(np.argmin(counts))
        if counts[rarest] < 2:
            chosen = [f"`{k}`" for k in ("reg_lambda", "reg_mu") if getattr(self, k) is None]
            missing = " and ".join(chosen)
            raise ValueError(
                f"Expected `y` to hold at least 2 examples of every class present, to choose "
                f"{missing} by cross-validation, but class {int(classes[rarest])} has "
                f"{int(counts[rarest])}; give {missing} or fit on more data."
            )
        return min(self.cv, int(counts[rarest]))

    def transform(self, logits: ArrayLike) -> np.ndarray:
        """Calibrated probabilities ``softmax(W log p + b)``.

        Parameters
        ----------
        logits : array-like or Tensor of shape (..., C)
            Outputs of the kind given by ``inputs``.

        Returns
        -------
        ndarray of shape (..., C)
        """
        weights = self.weights
        x, leading = class_scores("logits", logits, self.inputs)
        check_class_count("logits", x.shape[1], weights.shape[0])
        x = log_softmax(x, axis=1)
        probs = softmax(_affine(x, weights, self.bias), axis=1)
        return probs.reshape(*leading, x.shape[1])
