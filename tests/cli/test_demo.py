"""mcdrop.demo: seeded, shifts that shift, one thread by default, figures without pyplot."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
