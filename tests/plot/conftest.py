"""Fixtures of the plot tests: headless pyplot, figures closed, plt.show() forbidden."""

from __future__ import annotations

import pytest


@pytest.fixture
def pyplot():
    """Headless pyplot; closes every figure after the test."""
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


@pytest.fixture
def no_show(pyplot, monkeypatch):
    def _fail(*args, **kwargs):
        raise AssertionError("plt.show() must not be called")

    monkeypatch.setattr(pyplot, "show", _fail)
    return pyplot
