"""Sphinx configuration of precal's documentation site.

Pages are MyST markdown (the ``docs/*.md`` files, also readable on their own); the API
reference is generated from the numpydoc docstrings. Build it as CI does (warnings fail):

    pip install -e ".[docs]"
    python -m sphinx -W --keep-going -b html docs docs/_build/html

Nothing is fetched at build time (no intersphinx): the build runs offline.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import types

from docutils import nodes
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging

import precal

logger = logging.getLogger("precal.docs")

project = "precal"
author = "the precal developers"
copyright = "the precal developers"  # noqa: A001 - Sphinx's name
release = precal.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
# examples/ holds runnable scripts (tests/test_docs_examples.py runs them), not pages.
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]

# --- MyST: $...$ / $$...$$ math, heading anchors for page#section links ------------------
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3

# --- API reference ------------------------------------------------------------------------
# The numpydoc docstrings give every parameter's type, so signatures show names and
# defaults only; members are listed in source order.
autodoc_typehints = "none"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
# numpydoc would list class members in autosummary tables needing generated stub pages;
# autodoc's :members: documents them in place instead.
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Do not let numpydoc turn every "Attributes" entry into a separate object.
numpydoc_attributes_as_param_list = True

# --- HTML ---------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"precal {release}"
html_static_path = ["_static"]
html_css_files = ["precal.css"]
html_show_sourcelink = False


# --- Build-time checks and fixes ----------------------------------------------------------
#: Packages whose ``__all__`` the API reference must cover completely.
PUBLIC_PACKAGES = ("precal", "precal.calibration", "precal.metrics", "precal.emulate", "precal.plotting")
#: scikit-learn's metadata-routing methods, generated on every estimator class; their
#: docstrings point into scikit-learn's own glossary, which this site does not have.
_SKLEARN_ROUTING = re.compile(r"^(set_\w+_request|get_metadata_routing)$")


def _skip_member(app, what, name, obj, skip, options):
    if _SKLEARN_ROUTING.match(name):
        return True
    return None


def _attribute_comment(fullname: str, obj: object) -> list[str] | None:
    """The ``#:`` comment above the assignment of a package-level name, in whichever of the
    package's modules assigns it (autodoc only reads the package's ``__init__``)."""
    modname, _, attr = fullname.rpartition(".")
    candidates = [modname] + sorted(m for m in list(sys.modules) if m.startswith(modname + "."))
    for name in candidates:
        module = sys.modules.get(name)
        if module is None or getattr(module, attr, None) is not obj:
            continue
        try:
            docs = ModuleAnalyzer.for_module(name).find_attr_docs()
        except Exception:  # noqa: BLE001 - no source to analyse
            continue
        if ("", attr) in docs:
            return list(docs[("", attr)])
    return None


def _data_docstring(app, what, name, obj, options, lines):
    """Module-level data gets its ``#:`` comment, never the docstring of its type."""
    if what != "data":
        return
    comment = _attribute_comment(name, obj)
    if comment is not None:
        lines[:] = comment
        return
    type_doc = inspect.getdoc(type(obj)) or ""
    if "\n".join(lines).strip() == type_doc.strip():
        lines[:] = []
    if not any(line.strip() for line in lines):
        logger.warning(f"{name}: public data without a '#:' doc comment where it is assigned", type="precal")


def _check_api_complete(app, env):
    """Warn (so a strict build fails) for every public name without an API entry."""
    domain = env.get_domain("py")
    documented = set(domain.objects) | set(domain.modules)
    packages = {name: importlib.import_module(name) for name in PUBLIC_PACKAGES}
    for pkg_name, pkg in packages.items():
        if not hasattr(pkg, "__all__"):
            logger.warning(f"{pkg_name} has no __all__", type="precal")
            continue
        for name in pkg.__all__:
            obj = getattr(pkg, name)
            if isinstance(obj, types.ModuleType):
                ok = obj.__name__ in documented
            else:
                # documented under this package, or under another public package that
                # exports the same object (precal re-exports precal.calibration's names)
                ok = any(
                    f"{other}.{name}" in documented and getattr(mod, name, None) is obj
                    for other, mod in packages.items()
                )
            if not ok:
                logger.warning(f"{pkg_name}.{name} is public but has no entry in docs/api/", type="precal")


#: numpydoc renames the citations of each docstring ("[1]" -> "[R<12 hex>-1]") and renames
#: them back in the reference list, but (numpydoc 1.11, Sphinx 9) not where prose cites
#: them ("see [1]_"): such text would show the hash. Cite by name in prose instead.
_MANGLED_CITATION = re.compile(r"\[R[0-9a-f]{12}-[^\]]*\]")


def _check_citations(app, doctree, docname):
    for text in doctree.findall(nodes.Text):
        match = _MANGLED_CITATION.search(text.astext())
        if match:
            logger.warning(
                f"mangled citation {match.group()} (a docstring cites '[x]_' in its text; "
                "cite the reference by name instead)", location=text.parent, type="precal",
            )


def setup(app):
    app.connect("autodoc-skip-member", _skip_member)
    # before numpydoc (priority 500) parses the docstring
    app.connect("autodoc-process-docstring", _data_docstring, priority=400)
    app.connect("env-check-consistency", _check_api_complete)
    app.connect("doctree-resolved", _check_citations)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
