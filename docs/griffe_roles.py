"""Griffe extension for the documentation site: Sphinx cross-reference roles as code.

The package's docstrings are Google style with reStructuredText roles (``:func:`rollout```,
``:class:`~captum_attnflow.attr.AttentionFlow```), which Markdown would print literally. This
extension rewrites each role to a code span of its target (``~`` keeps the last component), so
the API reference (mkdocstrings) reads cleanly. Loaded by ``mkdocs.yml``.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|data|attr|mod|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match) -> str:
    target = match[2].strip()
    if match[1]:
        target = target.rsplit(".", 1)[-1]
    return f"`{target}`"


def without_roles(text: str) -> str:
    """``text`` with every Sphinx role replaced by a code span of its (shortened) target."""
    return ROLE.sub(_code, text)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:  # noqa: D102 - griffe hook
        if obj.docstring is not None:
            obj.docstring.value = without_roles(obj.docstring.value)
