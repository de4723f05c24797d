"""Sphinx configuration of the mcdrop documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html``; warnings are errors
in CI. sphinx-gallery runs every ``examples/plot_*.py`` during the build.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # _gallery_order
sys.path.insert(0, str(HERE.parent))  # mcdrop itself, also without an editable install

import mcdrop  # noqa: E402

os.environ.setdefault("MPLBACKEND", "Agg")

# The gallery examples use tiny models; on a CPU one thread is fastest for them (several
# threads mostly spin). sphinx-gallery runs the examples inside this process.
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass

project = "mcdrop"
author = "mcdrop developers"
copyright = "mcdrop developers"
release = mcdrop.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

# No intersphinx: CI has no network. Cross-references to other projects render as text.
templates_path = ["_templates"]  # autosummary/class.rst: no lists of inherited members
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "auto_examples/*.ipynb", "**/*.zip"]
root_doc = "index"
language = "en"
nitpicky = False

# -- autodoc / autosummary / numpydoc ----------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"members": True, "inherited-members": False, "show-inheritance": False}
autodoc_typehints = "none"  # the numpydoc sections already give the types
autodoc_member_order = "bysource"
numpydoc_show_class_members = False  # members are documented by autodoc, not repeated
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()
numpydoc_xref_param_type = False


_STAR_SHAPE = re.compile(r"(?<=[(,\s])\*(?=[A-Za-z_]\w*\s*[),])")


def _escape_star_shapes(app, what, name, obj, options, lines):
    """Escape the ``*S`` of shapes such as ``(N, C, *S)`` written outside literals.

    The docstrings write "any further dimensions" as ``*S``; in plain text reST would read the
    star as the start of an emphasis and warn. Literal segments (between double backticks) and
    math blocks are left alone.
    """
    in_math = False
    for index, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(".. math::"):
            in_math = True
            continue
        if in_math:
            if stripped and not line.startswith(" "):
                in_math = False
            else:
                continue
        parts = line.split("``")
        for i in range(0, len(parts), 2):  # even segments are outside ``literals``
            parts[i] = _STAR_SHAPE.sub(r"\\*", parts[i])
        lines[index] = "``".join(parts)


def setup(app):
    app.connect("autodoc-process-docstring", _escape_star_shapes)


# -- sphinx-gallery ----------------------------------------------------------------------------
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",  # run the plot_* examples
    # a torchrun script, documented in scaling.rst; not a gallery example
    "ignore_pattern": r"(__init__|distributed_inference)\.py",
    "within_subsection_order": "_gallery_order.QuickstartFirst",
    "download_all_examples": False,
    "remove_config_comments": True,
    "matplotlib_animations": False,
    "show_memory": False,
    "plot_gallery": "True",
    "abort_on_example_error": True,
    "only_warn_on_example_error": False,
}

# -- HTML ------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"mcdrop {release}"
html_static_path = ["_static"]
html_show_sourcelink = False
pygments_style = "sphinx"
pygments_dark_style = "monokai"
