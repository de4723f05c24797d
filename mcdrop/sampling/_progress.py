"""Progress: a tqdm bar where one is shown, else one log line for a long run.

No bar object exists unless a bar is shown (``progress=True``, or by default a terminal or a
notebook): ``tqdm.auto`` is not even imported otherwise. A shown bar redraws under tqdm's
process-wide lock; tqdm's own ``refresh`` releases that lock only when the redraw returns, so an
interrupt raised while it writes (Ctrl-C on a slow terminal) would leave it held and hang every
later bar of every thread. The bar here releases it whatever the redraw raises.

Without a bar, a run expected to take longer than ``_ANNOUNCE_AFTER_S`` logs how long once, after
its first chunk: the time already spent (the probe, the checks) plus the samples still to draw at
the speed of that chunk alone, so that the one-time costs of the start are not extrapolated.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from typing import Any

__all__: list[str] = []

logger = logging.getLogger("mcdrop")

_ANNOUNCE_AFTER_S = 60.0  # without a progress bar, log the size of runs expected to take longer
_clock = time.perf_counter


class Progress:
    """Progress over ``total`` samples (None when unknown); ``enabled`` is ``progress=``."""

    def __init__(self, enabled: bool | None, total: int | None) -> None:
        shown = _interactive() if enabled is None else enabled
        self.bar: Any = _bar_class()(**_BAR_OPTIONS, total=total) if shown else None
        self.total = total
        self.announce = enabled is None and not shown and bool(total)
        self.started = _clock()
        self.done = 0

    @property
    def timing(self) -> bool:
        """Whether the next chunk should be timed: the first one, when a line may be logged."""
        return self.announce

    def update(self, n: int, seconds: float | None = None) -> None:
        """``n`` more samples; ``seconds``: how long the first chunk's passes took."""
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        if self.announce and self.total:
            self.announce = False  # once, after the first chunk
            self._announce(n, seconds)

    def estimate(self, n: int, seconds: float | None) -> float:
        """Seconds the whole run takes: the time spent so far, and the samples still to draw at
        the speed of the first chunk (``n`` samples in ``seconds``)."""
        elapsed = _clock() - self.started
        per_sample = (elapsed if seconds is None else seconds) / max(n, 1)
        return elapsed + max((self.total or 0) - self.done, 0) * per_sample

    def _announce(self, n: int, seconds: float | None) -> None:
        estimate = self.estimate(n, seconds)
        if estimate > _ANNOUNCE_AFTER_S:
            logger.warning(
                "mcdrop: %d samples in all; about %.0f s at the speed of the first chunk "
                "(progress=True shows a bar).",
                self.total,
                estimate,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_BAR_OPTIONS: dict[str, Any] = {"unit": "pass", "desc": "MC dropout", "leave": False}


def _interactive() -> bool:
    if sys.stderr is not None and sys.stderr.isatty():
        return True
    shell = sys.modules.get("IPython")
    get = getattr(shell, "get_ipython", None)
    return bool(get is not None and get() is not None and "ipykernel" in sys.modules)


@functools.cache
def _bar_class() -> type:
    """tqdm's bar (terminal or notebook, as ``tqdm.auto`` decides), imported when first shown,
    whose redraws release tqdm's lock whatever they raise."""
    from tqdm.auto import tqdm

    class Bar(tqdm):  # type: ignore[misc, valid-type]
        def refresh(self, nolock: bool = False, lock_args: Any = None) -> bool | None:
            if self.disable:
                return None
            if not nolock:
                if lock_args:
                    if not self._lock.acquire(*lock_args):
                        return False
                else:
                    self._lock.acquire()
            try:
                self.display()
            finally:
                if not nolock:
                    self._lock.release()
            return True

        def clear(self, nolock: bool = False) -> None:
            if self.disable:
                return
            if not nolock:
                self._lock.acquire()
            try:
                super().clear(nolock=True)
            finally:
                if not nolock:
                    self._lock.release()

    return Bar
