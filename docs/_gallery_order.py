"""Order of the example gallery: the quickstart first, then by file name."""

from __future__ import annotations

FIRST = ("plot_quickstart.py",)


class QuickstartFirst:
    """``within_subsection_order`` key of sphinx-gallery (called with a file name)."""

    def __init__(self, src_dir: str) -> None:
        self.src_dir = src_dir

    def __call__(self, filename: str) -> tuple[int, str]:
        return (FIRST.index(filename) if filename in FIRST else len(FIRST), filename)

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
