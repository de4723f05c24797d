"""mcdrop.plot as a whole: lazy Matplotlib, no plt.show(), shared style and figure handling."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from plot_helpers import (
    _classification_data,
    _regression_result,
)

from mcdrop.plot import (
    AccuracyRejectionDisplay,
    ConvergenceDisplay,
    OODHistogramDisplay,
    OODRocDisplay,
    PredictiveBandsDisplay,
    RegressionCalibrationDisplay,
    ReliabilityDisplay,
    ResidualStdDisplay,
    RiskCoverageDisplay,
    SparsificationDisplay,
    plot_reliability_comparison,
)


@pytest.fixture
def no_show(pyplot, monkeypatch):
    def _fail(*args, **kwargs):
        raise AssertionError("plt.show() must not be called")

    monkeypatch.setattr(pyplot, "show", _fail)
    return pyplot


def test_import_does_not_import_matplotlib():
    code = (
        "import sys, mcdrop, mcdrop.plot\n"
        "loaded = [m for m in sys.modules if m == 'matplotlib' or m.startswith('matplotlib.')]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_all_names_exist():
    import mcdrop.plot

    for name in mcdrop.plot.__all__:
        assert hasattr(mcdrop.plot, name)


def test_nothing_calls_show(no_show):
    y, probs = _classification_data()
    ReliabilityDisplay.from_predictions(y, probs)
    plot_reliability_comparison({"a": probs}, y)
    AccuracyRejectionDisplay.from_predictions(y, probs)
    OODHistogramDisplay.from_scores(np.arange(5.0), np.arange(5.0) + 2)
    OODRocDisplay.from_scores(np.arange(5.0), np.arange(5.0) + 2)
    reg = _regression_result()
    RegressionCalibrationDisplay.from_result(reg)
    PredictiveBandsDisplay.from_result(reg, np.arange(80.0))
    ResidualStdDisplay.from_result(reg)
    ConvergenceDisplay.from_result(reg)
    RiskCoverageDisplay.from_predictions(y, probs)
    SparsificationDisplay.from_result(reg)


def test_style_alias_conflict_raises(pyplot):
    y, probs = _classification_data()
    with pytest.raises(TypeError, match="`c` and `color`"):
        ReliabilityDisplay.from_predictions(y, probs, kind="line", c="red", color="blue")


# --------------------------------------------------------------------------------------------
# shared behaviour of every display (issue 11, group 6)
# --------------------------------------------------------------------------------------------


def _rng():
    return np.random.default_rng(7)


def _draw_each(**kwargs):
    """One call per display, all with the same extra keyword arguments."""
    y, probs = _classification_data(n=60)
    reg = _regression_result()
    s = _rng().gamma(2.0, size=40)
    samples = _rng().dirichlet(np.ones(3), size=(6, 10))
    x = np.linspace(0, 1, 20)
    return {
        "reliability": lambda: ReliabilityDisplay.from_predictions(y, probs, **kwargs),
        "rejection": lambda: AccuracyRejectionDisplay.from_predictions(y, probs, **kwargs),
        "ood_hist": lambda: OODHistogramDisplay.from_scores(s, s + 1, **kwargs),
        "ood_roc": lambda: OODRocDisplay.from_scores(s, s + 1, **kwargs),
        "reg_cal": lambda: RegressionCalibrationDisplay.from_result(reg, **kwargs),
        "bands": lambda: PredictiveBandsDisplay.from_predictions(
            x, np.sin(x), np.full(20, 0.2), **kwargs
        ),
        "residual": lambda: ResidualStdDisplay.from_result(reg, **kwargs),
        "convergence": lambda: ConvergenceDisplay.from_samples(samples, **kwargs),
        "risk_coverage": lambda: RiskCoverageDisplay.from_predictions(y, probs, **kwargs),
        "sparsification": lambda: SparsificationDisplay.from_errors(s, s + 1, **kwargs),
    }


DISPLAYS = list(_draw_each())


@pytest.mark.parametrize("display", DISPLAYS)
def test_style_typo_raises_before_a_figure_is_made(pyplot, display):
    before = pyplot.get_fignums()
    with pytest.raises(TypeError, match="unknown keyword 'colour'"):
        _draw_each(colour="red")[display]()
    assert pyplot.get_fignums() == before


@pytest.mark.parametrize("display", DISPLAYS)
def test_failed_drawing_closes_the_figure_it_made(pyplot, display):
    before = pyplot.get_fignums()
    with pytest.raises(ValueError):
        _draw_each(color="not-a-colour")[display]()
    assert pyplot.get_fignums() == before


def test_failed_drawing_keeps_a_given_figure(pyplot):
    fig, ax = pyplot.subplots()
    y, probs = _classification_data(n=60)
    with pytest.raises(ValueError):
        AccuracyRejectionDisplay.from_predictions(y, probs, ax=ax, color="not-a-colour")
    assert pyplot.fignum_exists(fig.number)


EMPTY = np.zeros(0)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: ReliabilityDisplay.from_predictions(EMPTY, np.zeros((0, 3))), "y_prob"),
        (lambda: AccuracyRejectionDisplay.from_predictions(EMPTY, np.zeros((0, 3))), "y_prob"),
        (lambda: OODHistogramDisplay.from_scores(EMPTY, np.ones(3)), "scores_in"),
        (lambda: OODHistogramDisplay.from_scores(np.ones(3), EMPTY), "scores_out"),
        (lambda: OODRocDisplay.from_scores(EMPTY, np.ones(3)), "scores_in"),
        (lambda: RegressionCalibrationDisplay.from_predictions(EMPTY, EMPTY, EMPTY), "y_true"),
        (lambda: PredictiveBandsDisplay.from_predictions(EMPTY, EMPTY, EMPTY), "x"),
        (lambda: ResidualStdDisplay.from_predictions(EMPTY, EMPTY, EMPTY), "y_true"),
        (lambda: ConvergenceDisplay.from_samples(np.zeros((4, 0, 3))), "samples"),
        (lambda: ConvergenceDisplay.from_samples(np.zeros((4, 0)), task="regression"), "samples"),
        (lambda: RiskCoverageDisplay.from_predictions(EMPTY, np.zeros((0, 3))), "y_prob"),
        (lambda: SparsificationDisplay.from_errors(EMPTY, EMPTY), "errors"),
        (lambda: SparsificationDisplay.from_predictions(EMPTY, EMPTY, EMPTY), "y"),
    ],
)
def test_every_display_refuses_empty_arrays(pyplot, call, argument):
    before = pyplot.get_fignums()
    with pytest.raises(ValueError, match=f"Expected `{argument}` to be non-empty"):
        call()
    assert pyplot.get_fignums() == before


def test_import_mcdrop_imports_neither_scipy_stats_nor_sklearn():
    code = (
        "import sys, mcdrop\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] == 'sklearn'\n"
        "         or m == 'scipy.stats' or m.startswith('scipy.stats.')]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize(
    ("call", "flag"),
    [
        (lambda y, p: ReliabilityDisplay.from_predictions(y, p, gaps="no"), "gaps"),
        (lambda y, p: ReliabilityDisplay.from_predictions(y, p, counts=1), "counts"),
        (
            lambda y, p: AccuracyRejectionDisplay.from_predictions(y, p, random_line=0),
            "random_line",
        ),
        (
            lambda y, p: OODRocDisplay.from_scores(p[:, 0], p[:, 1], chance_line="yes"),
            "chance_line",
        ),
        (lambda y, p: RiskCoverageDisplay.from_predictions(y, p, oracle=1), "oracle"),
        (lambda y, p: SparsificationDisplay.from_errors(p[:, 0], p[:, 1], fill="no"), "fill"),
    ],
)
def test_flags_must_be_booleans(pyplot, call, flag):
    y, probs = _classification_data(n=60)
    before = pyplot.get_fignums()
    with pytest.raises(TypeError, match=f"Expected `{flag}` to be True(,| or) False"):
        call(y, probs)
    assert pyplot.get_fignums() == before
