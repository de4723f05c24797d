"""mcdrop.demo: seeded, shifts that shift, one thread by default, figures without pyplot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba

from mcdrop.calibration import DirichletCalibration
from mcdrop.cli import demo


def _tiny(**options):
    return demo.run(epochs=1, samples=4, seeds=1, members=2, quiet=True, **options)


def test_same_seed_same_numbers_and_threads_restored():
    torch.set_num_threads(2)
    a, b = _tiny(), _tiny()
    assert torch.get_num_threads() == 2
    assert a.scored == b.scored
    c = _tiny(seed=1)
    assert c.scored != a.scored


def test_result_has_every_condition_method_and_figure():
    result = _tiny()
    (run,) = result.scored
    conditions = [
        "in distribution",
        *(f"{k} {v:g}" for k, levels in demo.SHIFTS.items() for v in levels if v),
    ]
    for method in demo.METHODS:
        assert list(run["metrics"][method]) == conditions
    assert set(result.figures) == {
        "shift",
        "reliability",
        "accuracy_rejection",
        "uncertainty_hist",
        "ood",
    }
    assert "What the numbers show" in result.summary


def test_splits_hold_out_digits_8_and_9():
    splits = demo.digits_splits(0)
    for name in ("train", "val", "test"):
        assert splits[name][1].max() < demo.IN_CLASSES
    assert set(np.unique(splits["ood"][1])) == {8, 9}
    sizes = sum(len(y) for _, y in splits.values())
    assert sizes == 1797


@pytest.mark.parametrize("kind", ["rotation", "noise"])
def test_shift_changes_images_and_stays_in_range(kind):
    x = demo.digits_splits(0)["test"][0][:20]
    assert demo.shifted(x, kind, 0.0, seed=0) is x
    level = demo.SHIFTS[kind][2]
    moved = demo.shifted(x, kind, level, seed=0)
    assert moved.shape == x.shape and moved.dtype == np.float32
    assert 0.0 <= moved.min() and moved.max() <= 1.0
    assert np.abs(moved - x).mean() > 0.02
    np.testing.assert_array_equal(moved, demo.shifted(x, kind, level, seed=0))


def test_options_are_validated():
    with pytest.raises(ValueError, match="Expected `members` to be an integer >= 2"):
        demo.run(members=1)
    with pytest.raises(TypeError, match="Expected `quiet` to be a bool"):
        demo.run(quiet=1)


# ----------------------------------------------------------------------------------------------
# the figures: one colour per method, which seed, the printed numbers, linear histograms
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_seeds():
    return demo.run(epochs=2, samples=8, seeds=2, members=2, quiet=True)


def _tables(summary: str) -> dict[str, dict[str, dict[str, str]]]:
    """Every printed table by its title line (the parser of ``docs/make_readme_figure.py``)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "docs" / "make_readme_figure.py"
    spec = importlib.util.spec_from_file_location("make_readme_figure", path)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script.tables(summary)


def _table(summary: str, starts: str) -> dict[str, dict[str, str]]:
    (rows,) = [rows for title, rows in _tables(summary).items() if title.startswith(starts)]
    return rows


def _rgb(color) -> tuple[float, ...]:
    return to_rgba(color)[:3]


def _suptitle(figure) -> str:
    return figure._suptitle.get_text()


def test_one_colour_per_method_in_every_figure(two_seeds):
    colors = {method: _rgb(demo.COLORS[method]) for method in demo.METHODS}
    assert len(set(colors.values())) == len(demo.METHODS)
    assert not set(colors.values()) & {_rgb("C0"), _rgb("C3")}  # the in/out histogram colours
    seen = {name: set() for name in two_seeds.figures}
    for name, figure in two_seeds.figures.items():
        for ax in figure.axes:
            title = ax.get_title()
            owner = next((m for m in demo.METHODS if title.startswith(m)), None)
            if owner is not None:  # a method's own panel: its title and every curve or bar
                assert _rgb(ax.title.get_color()) == colors[owner], (name, title)
                reference = ("_", "chance", "Perfectly calibrated")
                drawn = [x for x in ax.get_lines() if not x.get_label().startswith(reference)]
                drawn += [p for p in ax.patches if p.get_facecolor()[3] > 0 and not p.get_hatch()]
                if "best by mean AUROC" in title:  # histograms: blue and red for in and out
                    drawn = []
                for artist in drawn:
                    color = (
                        artist.get_color()
                        if hasattr(artist, "get_xdata")
                        else artist.get_facecolor()
                    )
                    assert _rgb(color) == colors[owner], (name, title, artist)
                seen[name].add(owner)
            for line in ax.get_lines():  # a legend entry names its method: the method's colour
                method = next((m for m in demo.METHODS if line.get_label().startswith(m)), None)
                if method is not None:
                    assert _rgb(line.get_color()) == colors[method], (name, line.get_label())
                    seen[name].add(method)
    for name in ("shift", "reliability", "accuracy_rejection", "ood"):
        assert seen[name] == set(demo.METHODS), name


def test_every_figure_says_which_seeds_it_shows(two_seeds):
    assert "mean ± std over 2 seeds" in _suptitle(two_seeds.figures["shift"])
    for name in ("reliability", "accuracy_rejection", "uncertainty_hist", "ood"):
        assert "seed 0 of 2 seeds (numbers: seed 0 | mean over seeds" in _suptitle(
            two_seeds.figures[name]
        ), name
    assert two_seeds.payload["figures"]["shift"] == "mean over seeds"
    assert two_seeds.payload["figures"]["ood"] == "seed 0"
    assert "shift.png shows the mean over the 2 seeds" in two_seeds.summary


def test_numbers_in_the_figures_are_the_printed_ones(two_seeds):
    """Each figure's 'seed 0 | mean' pair: seed 0's value and the mean of the printed table."""
    scored, summary, figures = two_seeds.scored, two_seeds.summary, two_seeds.figures

    def pair(per_seed: list[float], digits: int) -> str:
        return f"{per_seed[0]:.{digits}f} | {np.mean(per_seed):.{digits}f}"

    in_dist = _table(summary, "in distribution")
    titles = {ax.get_title().split("\n")[0]: ax.get_title() for ax in figures["reliability"].axes}
    for method in demo.METHODS:
        ece = [run["metrics"][method]["in distribution"]["ece"] for run in scored]
        assert titles[method].endswith(f"ECE {pair(ece, 4)}")
        assert in_dist[method]["ece"] == f"{np.mean(ece):.4f}"

    ood = _table(summary, "OOD AUROC")
    roc_labels = {
        ax.get_title().split(":")[0]: [line.get_label() for line in ax.get_lines()]
        for ax in figures["ood"].axes
        if "ROC" in ax.get_title()
    }
    for method in demo.METHODS:
        for measure in demo.MEASURES[method]:
            values = [run["ood_auroc"][method][measure] for run in scored]
            assert f"{measure}: {pair(values, 3)}" in roc_labels[method]
            assert ood[method][measure] == f"{np.mean(values):.3f}"

    aurc = _table(summary, "AURC")
    labels = [
        line.get_label() for ax in figures["accuracy_rejection"].axes for line in ax.get_lines()
    ]
    for method in demo.METHODS:
        for condition, column in (("rotation 30", "rotation 30"), ("noise 0.45", "noise 0.45")):
            values = [run["aurc"][method][condition] for run in scored]
            assert f"{method}: AURC {pair(values, 3)}" in labels
            assert aurc[method][column] == f"{np.mean(values):.3f}"

    mis = _table(summary, "Misclassification AUROC")
    hist_titles = [ax.get_title() for ax in figures["uncertainty_hist"].axes]
    for measure, title in zip(demo.MISCLASSIFICATION, hist_titles, strict=True):
        values = [run["misclassification_auroc"][measure] for run in scored]
        assert title.startswith(f"AUROC {pair(values, 3)}")
        assert mis["MC dropout"][measure] == f"{np.mean(values):.3f}"


def test_histograms_have_linear_density_axes(two_seeds):
    hist_axes = [ax for ax in two_seeds.figures["ood"].axes if "best by mean" in ax.get_title()]
    hist_axes += two_seeds.figures["uncertainty_hist"].axes
    assert len(hist_axes) == len(demo.METHODS) + 2  # a histogram per method, two of MC dropout
    assert {ax.get_yscale() for ax in hist_axes} == {"linear"}


def test_misclassification_interval_is_a_stratified_bootstrap():
    """Against a naive loop: resample the 6 wrong and the 280 right on their own, sklearn AUROC."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    wrong, right = rng.normal(1.0, 1.0, 6), rng.normal(0.0, 1.0, 280)
    low, high = demo._auroc_interval(wrong, right, seed=0)
    replicates = []
    for _ in range(4000):
        w, r = rng.choice(wrong, wrong.size), rng.choice(right, right.size)
        replicates.append(roc_auc_score(np.r_[np.ones(w.size), np.zeros(r.size)], np.r_[w, r]))
    expected = np.quantile(replicates, [0.025, 0.975])
    np.testing.assert_allclose([low, high], expected, atol=0.025)
    estimate = roc_auc_score(np.r_[np.ones(6), np.zeros(280)], np.r_[wrong, right])
    assert low < estimate < high and high - low > 0.1  # 6 errors: a wide interval


def test_augrc_and_dirichlet_are_reported_as_measured(two_seeds):
    """The AUGRC table is the mean of the per-seed AUGRCs (each at most the AURC, Traub et al.),
    and the Dirichlet sentence says what the in-distribution table shows."""
    scored, summary = two_seeds.scored, two_seeds.summary
    augrc, aurc = _table(summary, "AUGRC"), _table(summary, "AURC")
    for method in demo.METHODS:
        for condition in demo.REJECTION:
            column = condition.replace("in distribution", "in dist.")
            values = [run["augrc"][method][condition] for run in scored]
            assert augrc[method][column] == f"{np.mean(values):.5f}"
            assert float(augrc[method][column]) <= float(aurc[method][column]) + 5e-4
    in_dist = _table(summary, "in distribution")
    d, t = in_dist["Dirichlet-calibrated"], in_dist["temperature-scaled"]
    lower = float(d["nll"]) < float(t["nll"])
    sentence = next(line for line in summary.splitlines() if "Dirichlet calibration" in line)
    assert f"{'lower' if lower else 'higher'} NLL" in sentence
    weights = [run["dirichlet_weights"] for run in scored]
    assert two_seeds.payload["dirichlet_weights"] == weights
    grid = DirichletCalibration().grid
    assert all(lam in grid and mu in grid for lam, mu in weights)
