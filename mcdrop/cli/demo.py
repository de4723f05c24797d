"""What MC dropout is for, shown on scikit-learn's digits: the data, the model and the study.

:func:`run` trains (seeded) a small dropout CNN on the bundled 8x8 digits 0–7 and compares, over
a few seeds,

* the **deterministic** network (dropout off),
* **MC dropout** (the average of ``samples`` stochastic passes),
* **temperature scaling** of the deterministic logits (fitted on a validation split),
* **Dirichlet calibration** of the same logits (Kull et al. 2019, ODIR weights chosen by
  cross-validation on the validation split), and
* a **deep ensemble** of ``members`` networks trained from different seeds (Lakshminarayanan et
  al. 2017), the baseline that Ovadia et al. (2019) found best under dataset shift,

in distribution, under increasing shift (rotation, pixel noise) and out of distribution (the
held-out digits 8 and 9): accuracy, NLL, Brier score and ECE per shift level, OOD AUROC of each
uncertainty measure, AURC and AUGRC (Traub et al. 2024) of rejecting by predictive entropy, and
accuracy–rejection curves. It writes figures, ``report.json`` and the
in-distribution MC dropout result, and returns a :class:`DemoResult` whose ``summary`` says what
the numbers show. ``mcdrop demo`` is a thin wrapper around :func:`run`.

Everything is seeded (data split, initialisation, batches, dropout masks, noise): the same
arguments give the same numbers. By default torch uses one CPU thread, which is the fastest on a
small, busy machine.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mcdrop._validation import check_int

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure
    from torch import nn

__all__ = ["DemoResult", "digits_cnn", "digits_splits", "run", "shifted"]

METHODS = (
    "deterministic",
    "MC dropout",
    "temperature-scaled",
    "Dirichlet-calibrated",
    "deep ensemble",
)
METRICS = ("accuracy", "nll", "brier", "ece")
SHIFTS = {"rotation": (0.0, 15.0, 30.0, 45.0, 60.0), "noise": (0.0, 0.15, 0.3, 0.45, 0.6)}
SHIFT_UNITS = {"rotation": "degrees", "noise": "pixel noise std"}
MEASURES = {
    "deterministic": ("1 − confidence", "entropy"),
    "temperature-scaled": ("1 − confidence", "entropy"),
    "Dirichlet-calibrated": ("1 − confidence", "entropy"),
    "MC dropout": ("1 − confidence", "entropy", "mutual information"),
    "deep ensemble": ("1 − confidence", "entropy", "mutual information"),
}
IN_CLASSES = 8  # digits 0-7 are in distribution; 8 and 9 are held out as OOD
# One colour per method in every figure; none is the blue or red that the histograms use for
# in- and out-of-distribution (or right and wrong) scores.
COLORS = {
    "deterministic": "C7",
    "MC dropout": "C1",
    "temperature-scaled": "C2",
    "Dirichlet-calibrated": "C5",
    "deep ensemble": "C4",
}
LINESTYLES = {"1 − confidence": ":", "entropy": "-", "mutual information": "--"}
MISCLASSIFICATION = ("entropy", "mutual information")  # MC dropout's scores of its own errors
N_BINS = 15  # bins of the ECE in the tables and of the reliability diagrams


# ----------------------------------------------------------------------------------------------
# data and model
# ----------------------------------------------------------------------------------------------


def digits_splits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Stratified train / validation / test splits (60/20/20 %) of digits 0–7, and the OOD set.

    Returns ``{"train", "val", "test", "ood"}`` to ``(images (N, 1, 8, 8) float32 in [0, 1],
    labels (N,) int64)``; ``ood`` holds every image of the digits 8 and 9.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    labels = digits.target.astype(np.int64)
    inside = labels < IN_CLASSES
    x, y = images[inside], labels[inside]
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=seed
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.25, stratify=y_rest, random_state=seed
    )
    return {
        "train": (x_train, y_train),
        "val": (x_val, y_val),
        "test": (x_test, y_test),
        "ood": (images[~inside], labels[~inside]),
    }


def shifted(images: np.ndarray, kind: str, level: float, *, seed: int) -> np.ndarray:
    """``images`` rotated by ``level`` degrees, or with Gaussian pixel noise of std ``level``."""
    if level == 0.0:
        return images
    if kind == "rotation":
        from scipy.ndimage import rotate

        out = rotate(images, level, axes=(2, 3), reshape=False, order=1, mode="constant")
    else:
        noise = np.random.default_rng(seed).normal(0.0, level, size=images.shape)
        out = images + noise
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def digits_cnn(n_classes: int = IN_CLASSES) -> nn.Module:
    """Small CNN for 8x8 images with dropout after the convolutions and in the head."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 16 x 4 x 4
        nn.Dropout(0.25),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 64),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(64, n_classes),
    )


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    seed: int,
    progress: bool = False,
    desc: str = "training",
) -> list[float]:
    """Adam, batches of 64 shuffled by a seeded generator; returns the loss of each epoch."""
    import torch
    from torch.nn import functional as F
    from tqdm.auto import tqdm

    generator = torch.Generator().manual_seed(seed)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    model.train()
    for _ in tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False):
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            loss = F.cross_entropy(model(inputs[index]), targets[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(index)
        losses.append(total / len(inputs))
    model.eval()
    return losses


# ----------------------------------------------------------------------------------------------
# one seed
# ----------------------------------------------------------------------------------------------


@dataclass
class _Conditions:
    """Every evaluation set of one seed, concatenated so each model runs once."""

    names: list[str]
    inputs: np.ndarray
    labels: list[np.ndarray]
    slices: list[slice]

    @classmethod
    def build(cls, splits: Mapping[str, tuple[np.ndarray, np.ndarray]], seed: int) -> _Conditions:
        x_test, y_test = splits["test"]
        names: list[str] = []
        chunks: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        for kind, levels in SHIFTS.items():
            for i, level in enumerate(levels):
                if level == 0.0 and names and names[0] == "in distribution":
                    continue
                name = "in distribution" if level == 0.0 else f"{kind} {level:g}"
                names.append(name)
                chunks.append(shifted(x_test, kind, level, seed=seed * 1000 + i))
                labels.append(y_test)
        names.append("ood")
        chunks.append(splits["ood"][0])
        labels.append(splits["ood"][1])
        bounds = np.cumsum([0, *(len(c) for c in chunks)])
        slices = [slice(int(a), int(b)) for a, b in itertools.pairwise(bounds)]
        return cls(names, np.concatenate(chunks), labels, slices)


def _entropy(probs: np.ndarray) -> np.ndarray:
    from scipy.stats import entropy

    return entropy(probs, axis=1)


def _scores(method: str, probs: np.ndarray, result: Any) -> dict[str, np.ndarray]:
    scores = {"1 − confidence": 1.0 - probs.max(axis=1), "entropy": _entropy(probs)}
    if result is not None:
        scores["mutual information"] = result.mutual_information.numpy()
    return {name: scores[name] for name in MEASURES[method]}


def _run_seed(
    seed: int,
    *,
    epochs: int,
    samples: int,
    members: int,
    log: Callable[[str], None],
    progress: bool,
) -> dict[str, Any]:
    import torch

    from mcdrop.calibration import DirichletCalibration, TemperatureScaling
    from mcdrop.sampling import predict_with_uncertainty
    from mcdrop.stats import summarize_samples

    splits = digits_splits(seed)
    conditions = _Conditions.build(splits, seed)
    x_train, y_train = splits["train"]
    inputs = torch.from_numpy(conditions.inputs)
    models, losses = [], []
    for k in range(members):
        torch.manual_seed(seed * 100 + k)
        model = digits_cnn()
        losses.append(
            train(
                model,
                x_train,
                y_train,
                epochs=epochs,
                seed=seed * 100 + k,
                progress=progress,
                desc=f"seed {seed}, network {k + 1}/{members}",
            )
        )
        models.append(model)
    with torch.inference_mode():
        logits = [m(inputs).double() for m in models]
        val_logits = models[0](torch.from_numpy(splits["val"][0])).double()
    scaler = TemperatureScaling().fit(val_logits, splits["val"][1])
    dirichlet = DirichletCalibration(inputs="logits").fit(val_logits, splits["val"][1])
    mc = predict_with_uncertainty(
        models[0], inputs, n_samples=samples, seed=seed, progress=progress
    )
    ensemble = summarize_samples(torch.stack([z.softmax(1) for z in logits]), outputs="probs")
    probs = {
        "deterministic": logits[0].softmax(1).numpy(),
        "MC dropout": mc.mean.numpy(),
        "temperature-scaled": scaler.transform(logits[0]),
        "Dirichlet-calibrated": dirichlet.transform(logits[0]),
        "deep ensemble": ensemble.mean.numpy(),
    }
    results = {"MC dropout": mc, "deep ensemble": ensemble}
    log(
        f"seed {seed}: trained {members} networks ({epochs} epochs each), temperature "
        f"{scaler.temperature:.3f}, Dirichlet ODIR weights {dirichlet.reg_lambda_:g}, "
        f"{dirichlet.reg_mu_:g}"
    )
    return {
        "conditions": conditions,
        "probs": probs,
        "results": results,
        "losses": losses,
        "temperature": scaler.temperature,
        "dirichlet_weights": (dirichlet.reg_lambda_, dirichlet.reg_mu_),
        "model": models[0],
        "splits": splits,
        "seed": seed,
    }


def _score_seed(run: Mapping[str, Any]) -> dict[str, Any]:
    """Metrics per method and condition, OOD AUROC per measure, AURC and AUGRC per condition."""
    from mcdrop import metrics

    conditions: _Conditions = run["conditions"]
    table: dict[str, dict[str, dict[str, float]]] = {m: {} for m in METHODS}
    auroc: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    aurc: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    augrc: dict[str, dict[str, float]] = {m: {} for m in METHODS}
    where = dict(zip(conditions.names, conditions.slices, strict=True))
    labels = dict(zip(conditions.names, conditions.labels, strict=True))
    for method in METHODS:
        probs = run["probs"][method]
        result = run["results"].get(method)
        for name in conditions.names[:-1]:
            p, y = probs[where[name]], labels[name]
            table[method][name] = {
                "accuracy": metrics.accuracy(y, p),
                "nll": metrics.negative_log_likelihood(y, p),
                "brier": metrics.brier_score(y, p),
                "ece": metrics.expected_calibration_error(y, p, n_bins=N_BINS),
            }
            aurc[method][name] = metrics.aurc(y, p, _entropy(p))
            augrc[method][name] = metrics.augrc(y, p, _entropy(p))
        sub = None if result is None else _subset(result, where["in distribution"])
        ood = None if result is None else _subset(result, where["ood"])
        s_in = _scores(method, probs[where["in distribution"]], sub)
        s_out = _scores(method, probs[where["ood"]], ood)
        for measure in s_in:
            auroc[method][measure] = metrics.ood_auroc(s_in[measure], s_out[measure])
    y_in = labels["in distribution"]
    p_in = run["probs"]["MC dropout"][where["in distribution"]]
    s_mc = _scores(
        "MC dropout", p_in, _subset(run["results"]["MC dropout"], where["in distribution"])
    )
    wrong = int(np.sum(p_in.argmax(1) != y_in))
    misclassification = {
        measure: (
            metrics.misclassification_auroc(y_in, p_in, s_mc[measure])
            if 0 < wrong < len(y_in)
            else float("nan")
        )
        for measure in MISCLASSIFICATION
    }
    return {
        "metrics": table,
        "ood_auroc": auroc,
        "aurc": aurc,
        "augrc": augrc,
        "misclassification_auroc": misclassification,
        "n_wrong": wrong,
        "n_test": len(y_in),
        "dirichlet_weights": list(run["dirichlet_weights"]),
        "seed": run["seed"],
    }


def _subset(result: Any, part: slice) -> Any:
    """The rows ``part`` of a classification result (only the fields the demo reads)."""
    from types import SimpleNamespace

    return SimpleNamespace(mutual_information=result.mutual_information[part])


# ----------------------------------------------------------------------------------------------
# aggregation over seeds and the story
# ----------------------------------------------------------------------------------------------


def _stack(scored: list[dict[str, Any]], *path: str) -> np.ndarray:
    values = []
    for run in scored:
        node: Any = run
        for key in path:
            node = node[key]
        values.append(node)
    return np.asarray(values, dtype=float)


def _levels(kind: str) -> list[str]:
    return ["in distribution" if v == 0.0 else f"{kind} {v:g}" for v in SHIFTS[kind]]


def _shifted_mean(
    scored: list[dict[str, Any]], method: str, metric: str, kind: str | None = None
) -> np.ndarray:
    """Per seed: the metric averaged over the shifted conditions (level > 0) of ``kind``."""
    kinds = list(SHIFTS) if kind is None else [kind]
    names = [n for k in kinds for n in _levels(k) if n != "in distribution"]
    return np.mean([_stack(scored, "metrics", method, n, metric) for n in names], axis=0)


def _compare(
    scored: list[dict[str, Any]], better: str, worse: str, metric: str, kind: str
) -> tuple[bool, str]:
    """Whether ``better`` has the lower mean, and a sentence with the paired spread."""
    a = _shifted_mean(scored, better, metric, kind)
    b = _shifted_mean(scored, worse, metric, kind)
    diff = b - a  # > 0: `better` has the lower (better) value
    wins = int(np.sum(diff > 0))
    spread = float(np.std(diff, ddof=1)) if len(diff) > 1 else float("nan")
    lower = bool(diff.mean() > 0)
    clear = len(diff) > 1 and abs(diff.mean()) > spread
    text = (
        f"{better} {'lower' if lower else 'higher'} than {worse} by "
        f"{abs(diff.mean()):.3f} ± {spread:.3f} ({better} lower in {wins}/{len(diff)} "
        f"seeds{'' if clear else '; within the spread'})"
    )
    return lower, text


def _verdict(kind: str, mc_beats_plain: bool, ensemble_beats_mc: bool) -> str:
    if mc_beats_plain and ensemble_beats_mc:
        return (
            f"Under {kind} this agrees with Ovadia et al. (2019): MC dropout is better than "
            "the plain network and behind the deep ensemble."
        )
    if mc_beats_plain:
        return (
            f"Under {kind} MC dropout beats the plain network as in Ovadia et al. (2019), "
            "but unlike there it also beats the deep ensemble."
        )
    if ensemble_beats_mc:
        return (
            f"Under {kind}, unlike Ovadia et al. (2019), MC dropout does not beat the plain "
            "network; the deep ensemble beats MC dropout."
        )
    return (
        f"Under {kind}, unlike Ovadia et al. (2019), MC dropout does not beat the plain "
        "network and the ensemble does not beat MC dropout."
    )


def _summary(scored: list[dict[str, Any]]) -> str:
    def in_dist(method: str, metric: str) -> float:
        return float(_stack(scored, "metrics", method, "in distribution", metric).mean())

    n = len(scored)
    lines = [
        f"What the numbers show (NLL and ECE averaged over the shifted test sets of each "
        f"kind; mean ± std of the paired difference over {n} seed{'s' if n > 1 else ''}):"
    ]
    verdicts = []
    pairs = (
        ("MC dropout", "deterministic"),
        ("deep ensemble", "MC dropout"),
        ("Dirichlet-calibrated", "temperature-scaled"),
    )
    for kind in SHIFTS:
        outcome = {}
        for metric in ("nll", "ece"):
            for better, worse in pairs:
                lower, text = _compare(scored, better, worse, metric, kind)
                outcome[better, metric] = lower
                lines.append(f"  {kind}, {metric.upper()}: {text}")
        verdicts.append(
            _verdict(kind, outcome["MC dropout", "nll"], outcome["deep ensemble", "nll"])
        )
    lines += [f"  {v}" for v in verdicts]
    ts = (
        _shifted_mean(scored, "temperature-scaled", "nll").mean()
        < _shifted_mean(scored, "deterministic", "nll").mean()
    )
    best_in = min(METHODS, key=lambda m: in_dist(m, "nll"))
    mc_nll, det_nll = in_dist("MC dropout", "nll"), in_dist("deterministic", "nll")
    sentence = (
        f"  In distribution the lowest NLL is {best_in}'s. MC dropout has NLL {mc_nll:.3f} "
        f"and ECE {in_dist('MC dropout', 'ece'):.3f} against the plain network's "
        f"{det_nll:.3f} and {in_dist('deterministic', 'ece'):.3f}"
    )
    gains = any("MC dropout is better" in v or "MC dropout beats" in v for v in verdicts)
    if mc_nll > det_nll and gains:
        sentence += (
            ": averaging over masks softens predictions that were already calibrated, "
            "the price of its gain under shift."
        )
    lines.append(sentence + ("" if sentence.endswith(".") else "."))
    lines.append(
        f"  Temperature scaling (fitted in distribution) "
        f"{'lowers' if ts else 'does not lower'} the NLL under shift."
    )
    lines.append(_dirichlet_sentence(scored))
    lines.append(_augrc_sentence(scored))
    best = max(
        (
            (m, s, float(_stack(scored, "ood_auroc", m, s).mean()))
            for m in METHODS
            for s in MEASURES[m]
        ),
        key=lambda t: t[2],
    )
    mi = float(_stack(scored, "ood_auroc", "MC dropout", "mutual information").mean())
    lines.append(
        f"  Out of distribution (digits 8, 9) the best detector is {best[0]}'s "
        f"{best[1]} (AUROC {best[2]:.3f}); MC dropout's mutual information reaches "
        f"{mi:.3f}."
    )
    lines.append(f"  {_figures_note(scored)}")
    return "\n".join(lines)


def _dirichlet_sentence(scored: list[dict[str, Any]]) -> str:
    """Dirichlet calibration against temperature scaling, in distribution and under shift."""

    def in_dist(method: str, metric: str) -> float:
        return float(_stack(scored, "metrics", method, "in distribution", metric).mean())

    d_nll, t_nll = in_dist("Dirichlet-calibrated", "nll"), in_dist("temperature-scaled", "nll")
    d_ece, t_ece = in_dist("Dirichlet-calibrated", "ece"), in_dist("temperature-scaled", "ece")
    d_shift = float(_shifted_mean(scored, "Dirichlet-calibrated", "nll").mean())
    t_shift = float(_shifted_mean(scored, "temperature-scaled", "nll").mean())
    weights = [run["dirichlet_weights"] for run in scored]
    if all(lam == mu for lam, mu in weights):
        chosen = "λ = μ = " + ", ".join(f"{lam:g}" for lam, _ in weights)
    else:
        chosen = ", ".join(f"(λ, μ) = ({lam:g}, {mu:g})" for lam, mu in weights)
    chosen += f" in the {_seeds_text(scored)}" if len(scored) > 1 else ""
    return (
        f"  Dirichlet calibration (fitted in distribution; cross-validation chose {chosen}) "
        f"has in distribution NLL {d_nll:.3f} and ECE {d_ece:.4f} against temperature "
        f"scaling's {t_nll:.3f} and {t_ece:.4f}: {'lower' if d_nll < t_nll else 'higher'} NLL, "
        f"{'lower' if d_ece < t_ece else 'higher'} ECE. Averaged over the shifted sets its NLL "
        f"is {d_shift:.3f}, {'below' if d_shift < t_shift else 'above'} temperature scaling's "
        f"{t_shift:.3f}."
    )


REJECTION = ("in distribution", "rotation 30", "noise 0.45")  # the conditions of the AURC tables


def _augrc_sentence(scored: list[dict[str, Any]]) -> str:
    """Which method has the lowest AUGRC on each condition of the tables, and MC dropout's."""
    parts, mc = [], []
    for name in REJECTION:
        means = {m: float(_stack(scored, "augrc", m, name).mean()) for m in METHODS}
        best = min(METHODS, key=lambda m: means[m])
        where = {"in distribution": "in distribution", "rotation 30": "rotated by 30°"}
        parts.append(f"{where.get(name, f'under {name}')} {best}'s ({means[best]:.5f})")
        mc.append(f"{means['MC dropout']:.5f}")
    return (
        "  Rejecting by predictive entropy, the lowest AUGRC (accepted errors over all "
        f"predictions, averaged over the coverages; Traub et al. 2024) is {', '.join(parts)}; "
        f"MC dropout's is {', '.join(mc)}."
    )


def _figures_note(scored: list[dict[str, Any]]) -> str:
    seed = scored[0]["seed"]
    if len(scored) == 1:
        return f"Figures: every figure shows seed {seed}, the only seed."
    return (
        f"Figures: shift.png shows the mean over the {len(scored)} seeds; reliability.png, "
        f"accuracy_rejection.png, uncertainty_hist.png and ood.png draw seed {seed} and quote "
        f"each number as 'seed {seed} | mean over seeds'."
    )


def _tables(scored: list[dict[str, Any]]) -> str:
    from mcdrop.metrics import format_table

    def mean(*path: str) -> float:
        return float(_stack(scored, *path).mean())

    def std(*path: str) -> float:
        values = _stack(scored, *path)
        return float(values.std(ddof=1)) if len(values) > 1 else 0.0

    parts = [
        format_table(
            {m: {k: mean("metrics", m, "in distribution", k) for k in METRICS} for m in METHODS}
        )
    ]
    for kind in SHIFTS:
        for metric in ("nll", "ece"):
            rows = {
                m: {
                    name.replace(f"{kind} ", "") if name != "in distribution" else "0": mean(
                        "metrics", m, name, metric
                    )
                    for name in _levels(kind)
                }
                for m in METHODS
            }
            parts.append(
                f"{metric.upper()} under {kind} ({SHIFT_UNITS[kind]}), mean over seeds:\n"
                + format_table(rows, precision=3)
            )
    rows = {
        m: {n.replace("in distribution", "in dist."): mean("aurc", m, n) for n in REJECTION}
        for m in METHODS
    }
    parts.append(
        "AURC, rejecting by predictive entropy (area under the risk-coverage curve, lower is "
        "better), mean over seeds:\n" + format_table(rows, precision=3)
    )
    rows = {
        m: {n.replace("in distribution", "in dist."): mean("augrc", m, n) for n in REJECTION}
        for m in METHODS
    }
    parts.append(
        "AUGRC, rejecting by predictive entropy (area under the generalised risk-coverage "
        "curve: accepted errors over all predictions, Traub et al. 2024; lower is better), mean "
        "over seeds:\n" + format_table(rows, precision=5)
    )
    rows = {m: {s: mean("ood_auroc", m, s) for s in MEASURES[m]} for m in METHODS}
    parts.append(
        "OOD AUROC (digits 8, 9 against the test digits 0-7), mean over seeds:\n"
        + format_table(rows, precision=3)
    )
    wrong = [int(run["n_wrong"]) for run in scored]
    rows = {
        "MC dropout": {s: mean("misclassification_auroc", s) for s in MISCLASSIFICATION},
        "std over seeds": {s: std("misclassification_auroc", s) for s in MISCLASSIFICATION},
    }
    parts.append(
        "Misclassification AUROC of MC dropout (its wrong against its right predictions in "
        f"distribution; wrong predictions per seed: {', '.join(map(str, wrong))} of "
        f"{scored[0]['n_test']}: few, see the intervals "
        "in uncertainty_hist.png), mean over seeds:\n" + format_table(rows, precision=3)
    )
    spread = {
        m: {f"{k} std": std("metrics", m, "in distribution", k) for k in METRICS} for m in METHODS
    }
    parts.append("Spread over seeds in distribution (std):\n" + format_table(spread))
    return "\n\n".join(parts)


# ----------------------------------------------------------------------------------------------
# figures
# ----------------------------------------------------------------------------------------------


def _seeds_text(scored: list[dict[str, Any]]) -> str:
    n = len(scored)
    return f"{n} seed{'s' if n > 1 else ''}"


def _first_seed_title(seed: int, scored: list[dict[str, Any]]) -> str:
    """The note every one-seed figure carries: which seed, and where the mean is."""
    if len(scored) == 1:
        return f"seed {seed}, the only seed"
    return (
        f"seed {seed} of {_seeds_text(scored)} (numbers: seed {seed} | mean over seeds, as printed)"
    )


def _both(value: float, mean: float, digits: int, scored: list[dict[str, Any]]) -> str:
    """``0.056 | 0.065``: the first seed's value and the mean over seeds (just one of one)."""
    if len(scored) == 1:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} | {mean:.{digits}f}"


def _shift_figure(scored: list[dict[str, Any]]) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13.0, 6.2), layout="constrained")
    axes = fig.subplots(len(SHIFTS), len(METRICS), squeeze=False)
    for row, kind in enumerate(SHIFTS):
        levels = np.asarray(SHIFTS[kind])
        for col, metric in enumerate(METRICS):
            ax = axes[row, col]
            for method in METHODS:
                values = np.stack(
                    [_stack(scored, "metrics", method, n, metric) for n in _levels(kind)]
                )  # (levels, seeds)
                mean, spread = values.mean(1), values.std(1, ddof=1) if len(scored) > 1 else 0
                color = COLORS[method]
                ax.plot(levels, mean, marker="o", markersize=3.5, color=color, label=method)
                ax.fill_between(
                    levels, mean - spread, mean + spread, color=color, alpha=0.15, linewidth=0
                )
            ax.set(
                xlabel=f"{kind} ({SHIFT_UNITS[kind]})",
                ylabel=metric.upper() if metric != "accuracy" else "Accuracy",
            )
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    spread = " ± std" if len(scored) > 1 else ""
    fig.suptitle(
        f"Digits 0–7 under increasing shift: mean{spread} over {_seeds_text(scored)}, as in the "
        "printed tables (lower is better except accuracy)"
    )
    return fig


def _reliability_figure(run: Mapping[str, Any], scored: list[dict[str, Any]]) -> Figure:
    from matplotlib.figure import Figure

    from mcdrop.plot import ReliabilityDisplay

    conditions: _Conditions = run["conditions"]
    part = dict(zip(conditions.names, conditions.slices, strict=True))["in distribution"]
    labels = run["splits"]["test"][1]
    fig = Figure(figsize=(3.6 * len(METHODS), 6.0), layout="constrained")
    grid = fig.add_gridspec(2, len(METHODS), height_ratios=(3.2, 1.0))
    for column, method in enumerate(METHODS):
        ax = fig.add_subplot(grid[0, column])
        hist_ax = fig.add_subplot(grid[1, column], sharex=ax)
        ReliabilityDisplay.from_predictions(
            labels,
            run["probs"][method][part],
            n_bins=N_BINS,
            name=method,
            ax=ax,
            hist_ax=hist_ax,
            color=COLORS[method],
        )
        ece = _stack(scored, "metrics", method, "in distribution", "ece")
        ax.set_title(
            f"{method}\nECE {_both(ece[0], ece.mean(), 4, scored)}",
            fontsize="medium",
            color=COLORS[method],
        )
        legend = ax.get_legend()
        if legend is not None:  # the title gives the ECE, the suptitle what is drawn
            legend.remove()
        if column:
            ax.set_ylabel("")
            hist_ax.set_ylabel("")
    fig.suptitle(
        f"In-distribution test digits, {_first_seed_title(run['seed'], scored)}\n"
        "accuracy per confidence bin (bars, 95% Wilson intervals, number of images above); "
        "hatched: gap to the dashed diagonal of perfect calibration",
        fontsize="medium",
    )
    return fig


def _auroc_interval(
    scores_wrong: np.ndarray, scores_right: np.ndarray, seed: int
) -> tuple[float, float]:
    """95% percentile bootstrap interval of an AUROC, resampling each group on its own.

    Stratified (:func:`scipy.stats.bootstrap` with two samples) so that every resample keeps
    the few wrong predictions' count; the AUROC is the Mann–Whitney ``U / (n1 n2)``.
    """
    from inspect import signature

    from scipy.stats import bootstrap, mannwhitneyu

    def auroc(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        return mannwhitneyu(a, b, axis=axis).statistic / (a.shape[axis] * b.shape[axis])

    generator = np.random.default_rng(seed)
    # scipy >= 1.15 names the generator `rng`; `random_state` before (and deprecated since)
    where = {"rng" if "rng" in signature(bootstrap).parameters else "random_state": generator}
    interval = bootstrap(
        (scores_wrong, scores_right),
        auroc,
        n_resamples=2000,
        method="percentile",
        vectorized=True,
        **where,
    ).confidence_interval
    return float(interval.low), float(interval.high)


def _uncertainty_figure(run: Mapping[str, Any], scored: list[dict[str, Any]]) -> Figure:
    """MC dropout's entropy and mutual information of its right and wrong predictions."""
    from matplotlib.figure import Figure

    from mcdrop.plot import OODHistogramDisplay

    conditions: _Conditions = run["conditions"]
    part = dict(zip(conditions.names, conditions.slices, strict=True))["in distribution"]
    labels = run["splits"]["test"][1]
    mc = run["results"]["MC dropout"]
    wrong = run["probs"]["MC dropout"][part].argmax(1) != labels
    first = scored[0]
    fig = Figure(figsize=(11.0, 4.4), layout="constrained")
    for ax, measure in zip(fig.subplots(1, 2), MISCLASSIFICATION, strict=True):
        attribute = measure.replace(" ", "_").replace("entropy", "predictive_entropy")
        values = getattr(mc, attribute).numpy()[part]
        if wrong.all() or not wrong.any():
            ax.hist(values, bins=30, color="C0")
            ax.set(xlabel=f"{measure.capitalize()} (nats)", ylabel="Count")
            ax.set_title("every prediction right" if not wrong.any() else "every prediction wrong")
            continue
        hist = OODHistogramDisplay.from_scores(
            values[~wrong],
            values[wrong],
            bins=30,
            ax=ax,
            yscale="linear",
            score_name=f"{measure.capitalize()} (nats)",
        )
        if min(wrong.sum(), (~wrong).sum()) >= 2:
            low, high = _auroc_interval(values[wrong], values[~wrong], seed=run["seed"])
            interval = f"95% interval {low:.3f}–{high:.3f}, stratified bootstrap"
        else:
            interval = "one wrong prediction: no interval"
        mean = float(_stack(scored, "misclassification_auroc", measure).mean())
        hist.hist_in_.set_label(f"right ({int((~wrong).sum())})")
        hist.hist_out_.set_label(f"wrong ({int(wrong.sum())})")
        auroc = first["misclassification_auroc"][measure]
        ax.set_title(
            f"AUROC {_both(auroc, mean, 3, scored)}\n(seed {run['seed']}: {interval})",
            fontsize="medium",
        )
        ax.legend(loc="upper right", fontsize="small")
    fig.suptitle(
        f"MC dropout, its right and wrong predictions in distribution: "
        f"{_first_seed_title(run['seed'], scored)}",
        fontsize="medium",
        color=COLORS["MC dropout"],
    )
    return fig


def _ood_figure(run: Mapping[str, Any], scored: list[dict[str, Any]]) -> Figure:
    """Per method (columns): its best score's histograms, then the ROC of each of its scores."""
    from matplotlib.figure import Figure

    from mcdrop.plot import OODHistogramDisplay, OODRocDisplay

    conditions: _Conditions = run["conditions"]
    where = dict(zip(conditions.names, conditions.slices, strict=True))
    fig = Figure(figsize=(3.6 * len(METHODS), 7.6), layout="constrained")
    axes = fig.subplots(2, len(METHODS))
    for column, method in enumerate(METHODS):
        probs = run["probs"][method]
        result = run["results"].get(method)
        s_in, s_out = (
            _scores(method, probs[where[n]], None if result is None else _subset(result, where[n]))
            for n in ("in distribution", "ood")
        )
        means = {m: float(_stack(scored, "ood_auroc", method, m).mean()) for m in s_in}
        best = max(means, key=lambda m: means[m])
        hist = OODHistogramDisplay.from_scores(
            s_in[best],
            s_out[best],
            bins=30,
            ax=axes[0, column],
            yscale="linear",
            score_name=best.capitalize() + ("" if best == "1 − confidence" else " (nats)"),
        )
        hist.hist_in_.set_label("digits 0–7")
        hist.hist_out_.set_label("digits 8, 9")
        axes[0, column].legend(loc="upper right", fontsize="x-small")
        axes[0, column].set_title(
            f"{method}: {best} (best by mean AUROC)", fontsize="medium", color=COLORS[method]
        )
        for measure in s_in:
            display = OODRocDisplay.from_scores(
                s_in[measure],
                s_out[measure],
                ax=axes[1, column],
                chance_line=False,
                color=COLORS[method],
                linestyle=LINESTYLES[measure],
                linewidth=1.6,
            )
            value = scored[0]["ood_auroc"][method][measure]
            display.line_.set_label(f"{measure}: {_both(value, means[measure], 3, scored)}")
        ax = axes[1, column]
        chance = np.geomspace(1.0 / len(s_in[best]), 1.0, 50)
        ax.plot(chance, chance, linestyle="--", color="0.4", linewidth=1.0, label="chance: 0.5")
        ax.set_xscale("log")
        ax.set_xlim(1.0 / len(s_in[best]), 1.0)
        ax.xaxis.set_major_formatter("{x:g}")
        ax.legend(loc="lower right", fontsize="x-small", title="AUROC", title_fontsize="x-small")
        ax.set_title(f"{method}: ROC, each score", fontsize="medium", color=COLORS[method])
        if column:
            for row in (0, 1):
                axes[row, column].set_ylabel("")
    fig.suptitle(
        "Telling the unseen digits 8 and 9 from the test digits 0–7, "
        f"{_first_seed_title(run['seed'], scored)}\n"
        "ROC with a logarithmic false positive rate: where the curves differ",
        fontsize="medium",
    )
    return fig


def _rejection_figure(run: Mapping[str, Any], scored: list[dict[str, Any]]) -> Figure:
    from matplotlib.figure import Figure

    from mcdrop.plot import AccuracyRejectionDisplay

    conditions: _Conditions = run["conditions"]
    where = dict(zip(conditions.names, conditions.slices, strict=True))
    labels = dict(zip(conditions.names, conditions.labels, strict=True))
    fig = Figure(figsize=(12.0, 4.8), layout="constrained")
    panels = ("rotation 30", "noise 0.45")  # shifted sets with enough errors to reject
    for ax, name in zip(fig.subplots(1, 2), panels, strict=True):
        for method in METHODS:
            probs = run["probs"][method][where[name]]
            display = AccuracyRejectionDisplay.from_predictions(
                labels[name],
                probs,
                scores=_entropy(probs),
                name=method,
                ax=ax,
                oracle=False,
                random_line=False,
                color=COLORS[method],
            )
            mean = float(_stack(scored, "aurc", method, name).mean())
            value = scored[0]["aurc"][method][name]
            display.line_.set_label(f"{method}: AURC {_both(value, mean, 3, scored)}")
        ax.set_title(f"Rejecting by predictive entropy: {name}", fontsize="medium")
        ax.legend(loc="upper left", fontsize="small")
    fig.suptitle(_first_seed_title(run["seed"], scored), fontsize="medium")
    return fig


# ----------------------------------------------------------------------------------------------
# the study
# ----------------------------------------------------------------------------------------------


@dataclass
class DemoResult:
    """What :func:`run` measured.

    Attributes
    ----------
    scored : list of dict
        Per seed: ``metrics[method][condition][metric]``, ``ood_auroc[method][measure]`` and
        ``aurc[method][condition]`` and ``augrc[method][condition]`` (rejecting by predictive
        entropy), ``dirichlet_weights`` (the ODIR weights ``[λ, μ]`` cross-validation chose).
    summary : str
        The tables and what they show (printed by ``mcdrop demo``).
    figures : dict of str to matplotlib Figure
        ``shift``, ``reliability``, ``accuracy_rejection``, ``uncertainty_hist``, ``ood``.
    payload : dict
        The content of ``report.json``.
    files : list of str
        Files written into ``out``.
    """

    scored: list[dict[str, Any]]
    summary: str
    figures: dict[str, Figure]
    payload: dict[str, Any]
    files: list[str] = field(default_factory=list)


def run(
    *,
    out: str | os.PathLike[str] | None = None,
    epochs: int = 15,
    samples: int = 30,
    seed: int = 0,
    seeds: int = 3,
    members: int = 5,
    threads: int | None = 1,
    quiet: bool = False,
) -> DemoResult:
    """Train, evaluate in distribution, under shift and out of distribution, and report.

    Parameters
    ----------
    out : path or None, default=None
        Directory for the figures (``shift.png``, ``reliability.png``,
        ``accuracy_rejection.png``, ``uncertainty_hist.png``, ``ood.png``), ``report.json``
        and ``result.npz`` (the in-distribution MC dropout result of the first seed, with its
        targets, readable by ``mcdrop report``); nothing is written when ``None``.
    epochs : int, default=15
        Training epochs of every network.
    samples : int, default=30
        MC dropout samples per input.
    seed : int, default=0
        First seed; seeds ``seed, seed + 1, ...`` are run.
    seeds : int, default=3
        Number of seeds (splits, initialisations, dropout masks and noise all change).
    members : int, default=5
        Networks of the deep ensemble (the first is the deterministic / MC dropout network).
    threads : int or None, default=1
        ``torch.set_num_threads`` during the run (restored after); ``None`` leaves it.
    quiet : bool, default=False
        No progress bars or status lines on stderr.

    Returns
    -------
    DemoResult
    """
    import torch

    epochs = check_int("epochs", epochs, minimum=1)
    samples = check_int("samples", samples, minimum=2)
    seed = check_int("seed", seed, minimum=0)
    seeds = check_int("seeds", seeds, minimum=1)
    members = check_int("members", members, minimum=2)
    if not isinstance(quiet, bool):
        raise TypeError(f"Expected `quiet` to be a bool, but got {quiet!r}.")

    def log(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr, flush=True)

    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(check_int("threads", threads, minimum=1))
    started = time.perf_counter()
    try:
        runs, scored = [], []
        for s in range(seed, seed + seeds):
            runs.append(
                _run_seed(
                    s, epochs=epochs, samples=samples, members=members, log=log, progress=not quiet
                )
            )
            scored.append(_score_seed(runs[-1]))
            if s > seed:  # keep only the first seed's models and arrays for the figures
                runs[-1] = {}
    finally:
        torch.set_num_threads(previous)
    return _finish(
        runs[0],
        scored,
        out=out,
        started=started,
        log=log,
        settings={
            "epochs": epochs,
            "samples": samples,
            "seed": seed,
            "seeds": seeds,
            "members": members,
            "threads": threads,
        },
    )


def _finish(
    first: Mapping[str, Any],
    scored: list[dict[str, Any]],
    *,
    out: Any,
    started: float,
    log: Callable[[str], None],
    settings: dict[str, Any],
) -> DemoResult:
    import torch

    from mcdrop._version import __version__
    from mcdrop.reporting import output_dir, write_json
    from mcdrop.results import ClassificationResult

    conditions: _Conditions = first["conditions"]
    where = dict(zip(conditions.names, conditions.slices, strict=True))
    part = where["in distribution"]
    y_test = first["splits"]["test"][1]
    mc = first["results"]["MC dropout"]
    mc_in = ClassificationResult(
        mean=mc.mean[part],
        variance=mc.variance[part],
        predictive_entropy=mc.predictive_entropy[part],
        expected_entropy=mc.expected_entropy[part],
        variation_ratio=mc.variation_ratio[part],
        n_samples=mc.n_samples,
        targets=torch.from_numpy(y_test),
    )
    figures = {
        "shift": _shift_figure(scored),
        "reliability": _reliability_figure(first, scored),
        "accuracy_rejection": _rejection_figure(first, scored),
        "uncertainty_hist": _uncertainty_figure(first, scored),
        "ood": _ood_figure(first, scored),
    }
    summary = _tables(scored) + "\n\n" + _summary(scored)
    splits = first["splits"]
    payload = {
        "command": "demo",
        "mcdrop_version": __version__,
        "dataset": {
            "name": "digits (sklearn.datasets.load_digits), digits 0-7 in distribution",
            "n_train": len(splits["train"][1]),
            "n_validation": len(splits["val"][1]),
            "n_test": len(y_test),
            "n_ood": len(splits["ood"][1]),
            "n_classes": IN_CLASSES,
            "shifts": {k: list(v) for k, v in SHIFTS.items()},
        },
        "settings": settings,
        "methods": list(METHODS),
        "training_loss": first["losses"][0],
        "temperature": [float(first["temperature"])],
        "dirichlet_weights": [run["dirichlet_weights"] for run in scored],
        "table_columns": list(METRICS),
        "metrics": {m: dict(scored[0]["metrics"][m]["in distribution"]) for m in METHODS},
        "mean_over_seeds": {
            m: {
                n: {k: float(_stack(scored, "metrics", m, n, k).mean()) for k in METRICS}
                for n in conditions.names[:-1]
            }
            for m in METHODS
        },
        "per_seed": scored,
        "figures": {
            name: "mean over seeds" if name == "shift" else f"seed {scored[0]['seed']}"
            for name in figures
        },
        "summary": summary,
    }
    files: list[str] = []
    if out is not None:
        directory = output_dir(out)
        for name, figure in figures.items():
            figure.savefig(directory / f"{name}.png", dpi=110)
            files.append(f"{name}.png")
        mc_in.save(directory / "result.npz")
        files += ["report.json", "result.npz"]
        payload["files"] = files
        payload["seconds"] = time.perf_counter() - started
        write_json(Path(directory) / "report.json", payload)
        log(f"wrote {', '.join(files)} to {directory}/ in {payload['seconds']:.1f} s")
        log(
            f"next: mcdrop report {Path(directory) / 'result.npz'} --out "
            f"{Path(directory) / 'report'}"
        )
    return DemoResult(scored=scored, summary=summary, figures=figures, payload=payload, files=files)
