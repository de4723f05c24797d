"""``repr(result)`` and ``result.summary()``: a few lines, numbers that match the arrays."""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

import mcdrop
from mcdrop.results import ClassificationResult, RegressionResult, SamplingRecord

MAX_LINES = 10
MAX_WIDTH = 120


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern.replace(r"(\S+)", r"([-+.\deinf]+)"), text)
    assert match is not None, (pattern, text)
    return float(match.group(1))


def _close(printed: float, expected: float) -> None:
    """Printed with four significant digits: equal to within half a unit of the fourth."""
    assert printed == pytest.approx(expected, rel=5e-4, abs=1e-12), (printed, expected)


def _probabilities(t: int, n: int, c: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # sharp and flat examples, so that entropy and mutual information vary across examples
    logits = rng.normal(size=(t, n, c)) * rng.uniform(0.1, 4.0, size=(1, n, 1))
    logits += rng.normal(size=(1, n, c)) * 3
    return np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)


def _check_shape_of_text(text: str) -> None:
    lines = text.splitlines()
    assert 3 <= len(lines) <= MAX_LINES, text
    assert max(len(line) for line in lines) <= MAX_WIDTH, text


@pytest.mark.parametrize("n", [50, 10_000])
def test_classification_summary_is_short_and_its_numbers_are_the_arrays(n):
    t, c = 20, 6
    probs = _probabilities(t, n, c, seed=n)
    targets = torch.from_numpy(np.random.default_rng(1).integers(0, c, n))
    result = mcdrop.summarize_samples(torch.from_numpy(probs), outputs="probs", targets=targets)
    text = repr(result)
    assert text == result.summary() == str(result)
    _check_shape_of_text(text)
    assert text.startswith(f"ClassificationResult(task='classification', N={n}, T={t}, C={c}")
    assert f"({n}, {c})" in text and "targets" in text

    mean = probs.mean(0)
    entropy = stats.entropy(mean, axis=-1)
    expected_entropy = stats.entropy(probs, axis=-1).mean(0)
    mutual_information = np.maximum(entropy - expected_entropy, 0.0)
    se = np.sqrt(probs.var(0, ddof=1) / t)
    _close(_number(r"predictive entropy: mean (\S+) nats", text), entropy.mean())
    _close(_number(r"predictive entropy: mean \S+ nats, max (\S+)", text), entropy.max())
    _close(_number(r"log C = (\S+)\)", text), math.log(c))
    _close(
        _number(r"mutual information \(BALD\): mean (\S+) nats", text), mutual_information.mean()
    )
    _close(
        _number(r"mutual information \(BALD\): mean \S+ nats, max (\S+)", text),
        mutual_information.max(),
    )
    _close(_number(r"confidence \(largest probability\): mean (\S+)", text), mean.max(-1).mean())
    _close(_number(r"standard error of mean: max (\S+)", text), se.max())
    assert f"n_samples={t} fixed" in text


@pytest.mark.parametrize("n", [50, 10_000])
def test_regression_summary_is_short_and_its_numbers_are_the_arrays(n):
    rng = np.random.default_rng(n)
    t = 15
    draws = rng.normal(size=(t, n)) * rng.uniform(0.1, 2.0, size=(1, n)) + rng.normal(size=(1, n))
    result = mcdrop.summarize_samples(torch.from_numpy(draws), task="regression", tau=2.5)
    text = repr(result)
    _check_shape_of_text(text)
    assert text.startswith(f"RegressionResult(task='regression', N={n}, T={t}, mean ({n},)")
    epistemic = draws.var(0)  # ddof=0, as Gal (2016)
    std = np.sqrt(epistemic + 1 / 2.5)
    _close(_number(r"predictive std: mean (\S+)", text), std.mean())
    _close(_number(r"predictive std: mean \S+, max (\S+)", text), std.max())
    _close(_number(r"epistemic std: mean (\S+);", text), np.sqrt(epistemic).mean())
    _close(_number(r"aleatoric std: mean (\S+) ", text), math.sqrt(1 / 2.5))
    _close(_number(r"tau=(\S+)\)", text), 2.5)
    _close(
        _number(r"standard error of mean: max (\S+)", text),
        draws.std(0, ddof=1).max() / math.sqrt(t),
    )


def test_summary_of_per_pixel_outputs_averages_over_positions():
    t, n, c, h = 8, 4, 3, 5
    probs = torch.from_numpy(_probabilities(t, n * h * h, c, seed=3))
    probs = probs.reshape(t, n, h, h, c).permute(0, 1, 4, 2, 3)  # (T, N, C, H, W)
    result = mcdrop.summarize_samples(probs, outputs="probs")
    text = result.summary()
    _check_shape_of_text(text)
    assert "N=4," in text and f"mean ({n}, {c}, {h}, {h})" in text and "per position" in text
    entropy = stats.entropy(probs.mean(0).numpy(), axis=1)  # (N, H, W)
    _close(_number(r"predictive entropy: mean (\S+) nats", text), entropy.mean())


def test_adaptive_sampling_reports_the_standard_error_reached():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(32, 3)
    ).eval()
    result = mcdrop.predict_with_uncertainty(
        model, torch.randn(30, 4), n_samples="auto", seed=0, progress=False
    )
    text = repr(result)
    _check_shape_of_text(text)
    assert result.standard_error_reached is not None
    _close(_number(r"standard error of mean: reached (\S+) ", text), result.standard_error_reached)
    assert f"up to T={result.n_samples}" in text


def _result_with_record(record):
    result = mcdrop.summarize_samples(
        torch.from_numpy(_probabilities(5, 7, 3, seed=0)), outputs="probs"
    )
    object.__setattr__(result, "sampling", record)  # any object with summary(), or a mapping
    return result


class _Record:
    def summary(self) -> str:
        return "strategy 'vmap' (auto)\nfallback: none\nchunks: 3 of 64 samples\nfirst chunk 0.1 s"


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (
            {"strategy": "replicate", "fallback": "vmap refused: data-dependent control flow"},
            "strategy=replicate, fallback=vmap refused",
        ),
        (_Record(), "strategy 'vmap' (auto)"),
        ("loop " + "x" * 500, "loop xxx"),
    ],
)
def test_the_sampling_record_is_shown_in_at_most_two_clipped_lines(record, expected):
    text = repr(_result_with_record(record))
    _check_shape_of_text(text)
    record_lines = text.split("  sampling: ", 1)[1].splitlines()
    assert 1 <= len(record_lines) <= 2
    assert record_lines[0].startswith(expected)
    if isinstance(record, _Record):
        assert "fallback: none" in record_lines[1] and "(+2 lines)" in record_lines[1]


def test_a_real_sampling_record_names_the_strategy_and_each_fallback():
    record = SamplingRecord(
        strategy="replicate",
        samples_per_pass=4,
        fallbacks=(("vmap", "RuntimeError: in-place"),),
    )
    lines = repr(_result_with_record(record)).split("  sampling: ", 1)[1].splitlines()
    assert lines[0] == "strategy 'replicate', 4 per pass"
    assert lines[1].strip() == "fell back from 'vmap': RuntimeError: in-place"


def test_no_record_no_sampling_line():
    assert "sampling:" not in repr(_result_with_record(None))


def test_results_built_by_hand_and_loaded_print_the_same(tmp_path):
    result = RegressionResult(
        mean=torch.zeros(3),
        epistemic_variance=torch.ones(3),
        aleatoric_variance=torch.zeros(3),
        n_samples=1,
    )
    text = repr(result)
    assert "max inf" in text and "no aleatoric variance given" in text  # T = 1: no standard error
    classification = _result_with_record(None)
    classification.save(tmp_path / "r.npz")
    loaded = mcdrop.load_result(tmp_path / "r.npz")
    assert isinstance(loaded, ClassificationResult)
    assert repr(loaded) == repr(classification)


def test_summary_says_when_masks_were_shared():
    """Shared masks (one network per sample) are named in the first line; independent ones,
    the default, are not, so older summaries read as before."""
    probs = torch.from_numpy(_probabilities(8, 5, 3, seed=3))
    independent = mcdrop.summarize_samples(probs, outputs="probs")
    shared = dataclasses.replace(independent, masks="shared")
    first = shared.summary().splitlines()[0]
    assert first.startswith("ClassificationResult(task='classification', N=5, T=8, C=3, ")
    assert "masks='shared'" in first
    assert "masks" not in independent.summary()
    _check_shape_of_text(shared.summary())
