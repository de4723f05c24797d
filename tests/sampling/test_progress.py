"""Progress: no bar unless one is shown, a shown bar that an interrupt cannot wedge, and run-time
estimates from the first chunk alone (not from the one-time costs before it)."""

from __future__ import annotations

import io
import logging
import sys
import threading

import pytest
import torch
import tqdm.std
from conftest import MLP

import mcdrop
from mcdrop.sampling import _progress


def _count_bars(monkeypatch) -> list[object]:
    made: list[object] = []
    original = tqdm.std.tqdm.__init__

    def counting(self, *args, **kwargs):
        made.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(tqdm.std.tqdm, "__init__", counting)
    return made


def test_no_bar_exists_unless_one_is_shown(monkeypatch):
    made = _count_bars(monkeypatch)
    model, x = MLP().eval(), torch.randn(8, 6)
    mcdrop.predict_with_uncertainty(model, x, n_samples=4, progress=False)
    monkeypatch.setattr(_progress, "_interactive", lambda: False)
    mcdrop.predict_with_uncertainty(model, x, n_samples=4)  # not a terminal: a log line at most
    assert made == []
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    mcdrop.predict_with_uncertainty(model, x, n_samples=4, progress=True)
    assert len(made) == 1 and "MC dropout" in sys.stderr.getvalue()  # the counter sees bars


class _InterruptedStream(io.StringIO):
    """A terminal on which Ctrl-C lands while the bar writes its first line."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = True

    def write(self, text: str) -> int:
        if self.armed and text:
            self.armed = False
            raise KeyboardInterrupt
        return super().write(text)


def test_an_interrupted_redraw_leaves_no_lock_behind(monkeypatch):
    """tqdm's own refresh releases its process-wide lock only when the redraw returns: an
    interrupt there would hang every later bar of every thread."""
    monkeypatch.setattr(sys, "stderr", _InterruptedStream())
    model, x = MLP().eval(), torch.randn(8, 6)
    with pytest.raises(KeyboardInterrupt):
        mcdrop.predict_with_uncertainty(model, x, n_samples=4, progress=True)
    finished = threading.Event()
    errors: list[BaseException] = []

    def another_call() -> None:
        try:
            mcdrop.predict_with_uncertainty(model, x, n_samples=4, progress=True)
            tqdm.std.tqdm.write("and tqdm's own writes", file=io.StringIO())
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finished.set()

    thread = threading.Thread(target=another_call, daemon=True)
    thread.start()
    assert finished.wait(timeout=120), "a later bar in another thread hangs on tqdm's lock"
    assert not errors, errors


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    ("setup_s", "chunk_s", "chunk", "total"),
    [
        (30.0, 1.0, 10, 1000),  # the probe and checks cost 30 chunks' worth: old formula 31x
        (0.5, 2.0, 4, 400),  # little setup
        (5.0, 0.2, 100, 100_000),  # many chunks
    ],
)
def test_the_estimate_extrapolates_the_first_chunk_not_the_setup(
    monkeypatch, caplog, setup_s, chunk_s, chunk, total
):
    """A run whose every chunk takes as long as its first: the true time is the setup plus
    ``total / chunk`` chunks; the logged estimate must be within 1.5x of it."""
    clock = _Clock()
    monkeypatch.setattr(_progress, "_clock", clock)
    monkeypatch.setattr(_progress, "_interactive", lambda: False)
    monkeypatch.setattr(_progress, "_ANNOUNCE_AFTER_S", 0.0)
    progress = _progress.Progress(None, total)
    assert progress.bar is None and progress.timing
    clock.now += setup_s + chunk_s  # the probe, the checks, then the first chunk's passes
    with caplog.at_level(logging.WARNING, logger="mcdrop"):
        progress.update(chunk, chunk_s)
    true_time = setup_s + chunk_s * total / chunk
    lines = [r.getMessage() for r in caplog.records if "samples in all" in r.getMessage()]
    assert len(lines) == 1
    logged = float(lines[0].split("about ")[1].split(" s")[0])
    assert 1 / 1.5 <= logged / true_time <= 1.5, (logged, true_time)
    assert not progress.timing  # once
