"""MkDocs hooks of the documentation site (``mkdocs.yml``: ``hooks``).

The notebook pages (mkdocs-jupyter, nbconvert's ``lab`` template) carry a module script that
would import mermaid.js from a CDN if the page had a Mermaid diagram. Ours have none, so the
script never runs, but the site promises to name no external script at all: the hook removes it.
"""

from __future__ import annotations

import re

MERMAID_LOADER = re.compile(r'<script type="module">(?:(?!</script>).)*?mermaid\.esm(?:(?!</script>).)*</script>', re.S)


def on_post_page(output: str, **kwargs) -> str:
    """The page's HTML without the CDN loader of mermaid.js."""
    return MERMAID_LOADER.sub("", output)
