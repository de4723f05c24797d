"""``evaluate`` says when ``ignore_index`` leaves no label (issue 25, group 5)."""

from __future__ import annotations

import numpy as np
import pytest

from mcdrop import metrics


def test_every_label_ignored_is_reported_as_such():
    probs = np.full((6, 3), 1 / 3)
    message = r"other than `ignore_index` \(-100\), but all 6 labels of `y_true` equal it"
    with pytest.raises(ValueError, match=message):
        metrics.evaluate(probs, np.full(6, -100), ignore_index=-100)
