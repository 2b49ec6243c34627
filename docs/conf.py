"""Sphinx configuration for the dgm_ppl documentation.

Build (warnings are errors in CI, see ``.ci/run``)::

    python -m pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html

Nothing is fetched from the network at build time: no intersphinx, MathJax is loaded by the reader's browser.
"""

from __future__ import annotations

import os
import re
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)  # the package, when the docs are built from a source checkout
sys.path.insert(1, os.path.join(ROOT, "tutorials"))  # the tutorials' module docstrings (automodule)

os.environ.setdefault("MPLBACKEND", "Agg")

import dgm_ppl  # noqa: E402

project = "dgm_ppl"
author = "the dgm_ppl authors"
copyright = "the dgm_ppl authors, Apache License 2.0"
release = dgm_ppl.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
smartquotes_action = "qe"  # curly quotes and ellipses, but "--" stays two hyphens (command-line options)
templates_path: list[str] = []

# --- autodoc ------------------------------------------------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_default_options = {"show-inheritance": True}  # the API pages ask for :members: themselves
autodoc_typehints = "description"  # types next to the :param: fields, signatures stay short
autodoc_typehints_description_target = "documented"
autodoc_class_signature = "mixed"
autodoc_preserve_defaults = True
nitpicky = False  # type annotations name torch/pyro classes that have no target without intersphinx
add_module_names = False
python_display_short_literal_types = True

# --- MyST (the Markdown pages: user guide, tutorials, benchmarks, changelog) --------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# --- HTML ---------------------------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"dgm_ppl {release}"
html_static_path: list[str] = []
html_show_sourcelink = True


# torch.nn.Module hooks that the modules override for their own bookkeeping: not part of the API.
_SKIP = {"get_extra_state", "set_extra_state", "extra_repr"}


def _skip_member(app, what, name, obj, skip, options):
    return True if name in _SKIP else None


# One docstring style across the package: Pyro's reST field lists (``:param x:``, ``:returns:``, ``:raises E:``).
# A Google-style section header parses as reST without complaint (a definition list), so it is flagged here.
_GOOGLE_SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Yields|Raises|Attributes|Examples?|Notes?):\s*$")


def _check_docstring_style(app, what, name, obj, options, lines):
    from sphinx.util import logging

    for number, line in enumerate(lines, 1):
        if _GOOGLE_SECTION.match(line):
            logging.getLogger(__name__).warning(
                "docstring of %s, line %d: Google-style section %r; use reST fields (:param x:, :returns:, "
                ":raises ValueError:)",
                name,
                number,
                line.strip(),
            )


def _commands_as_code(app, what, name, obj, options, lines):
    """The tutorials' docstrings show how to run them as an indented command line (a block quote in reST): render it
    as a code block, without changing the scripts."""
    if what != "module":
        return
    for i in range(len(lines) - 1, 0, -1):
        command = lines[i].startswith("    python ") or lines[i].startswith("    OMP_NUM_THREADS=")
        if command and not lines[i - 1].strip() and not any(line.rstrip().endswith("::") for line in lines[i - 2 : i]):
            lines[i:i] = [".. code-block:: bash", ""]


def _check_api_pages(app):
    """Every public module of the package has a page in docs/api/ (a new module without one fails the build)."""
    import pkgutil

    from sphinx.util import logging

    pages = set()
    for name in os.listdir(os.path.join(app.srcdir, "api")):
        if name.endswith(".rst"):
            with open(os.path.join(app.srcdir, "api", name), encoding="utf-8") as f:
                pages.update(line.split("::", 1)[1].strip() for line in f if line.startswith(".. automodule::"))
    public = {f"dgm_ppl.{m.name}" for m in pkgutil.iter_modules(dgm_ppl.__path__) if not m.name.startswith("_")}
    for module in sorted(public - pages):
        logging.getLogger(__name__).warning(
            "%s has no API page: add docs/api/<name>.rst with '.. automodule:: %s' and ':members:', and list it in "
            "docs/api/index.rst",
            module,
            module,
        )


def setup(app):
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("autodoc-process-docstring", _check_docstring_style)
    app.connect("autodoc-process-docstring", _commands_as_code)
    app.connect("builder-inited", _check_api_pages)
