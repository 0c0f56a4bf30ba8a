"""
Sphinx configuration for the sprites-twisted documentation (``make docs``).

Built with warnings as errors.  No network is needed: intersphinx links to
the Python and Twisted documentation are only made when
``SPRITES_DOCS_INTERSPHINX=1`` is set, since fetching their inventories
needs the network.
"""

import os
import re
import sys

sys.path.insert(0, os.path.abspath(".."))

from sprites_twisted import __version__  # noqa: E402

project = "sprites-twisted"
author = "the sprites-twisted developers"
copyright = "the sprites-twisted developers"
version = release = __version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "repoze.sphinx.autointerface",
]

if os.environ.get("SPRITES_DOCS_INTERSPHINX"):
    extensions.append("sphinx.ext.intersphinx")
    intersphinx_mapping = {
        "python": ("https://docs.python.org/3", None),
        "twisted": ("https://docs.twisted.org/en/stable/", None),
    }

# Markdown pages (performance.md) are published elsewhere; Sphinx reads .rst.
source_suffix = {".rst": "restructuredtext"}
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "signature"
html_theme = "alabaster"
html_static_path: list[str] = []


# Some docstrings still use epytext markup (C{code}, L{link}, I{italic},
# B{bold}), Twisted's older habit.  Rewrite it to reST as autodoc reads
# them, so that they render properly without touching every module.
_EPYTEXT = re.compile(r"(?<![\w`])([CLIB])\{([^{}\n]+)\}")
_REST = {"C": "``{}``", "L": ":py:obj:`{}`", "I": "*{}*", "B": "**{}**"}


def _epytextToReST(app, what, name, obj, options, lines):
    def convert(match):
        text = _REST[match.group(1)].format(match.group(2).strip())
        end = match.end()
        line = match.string
        # reST inline markup must be followed by a space or punctuation.
        if end < len(line) and (line[end].isalnum() or line[end] == "_"):
            text += "\\ "
        return text

    lines[:] = [_EPYTEXT.sub(convert, line) for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", _epytextToReST)
