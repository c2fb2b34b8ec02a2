"""``--results-md DIR``: the commands write their results tables as Markdown files for the README.

The README never holds typed numbers: each of its results tables is a copy of a file
``docs/results/<name>.md`` written by the command named beside it (``captum-attnflow reproduce
--results-md docs/results`` and so on), and ``python docs/sync_readme.py`` copies the files into
the README's ``<!-- generated: <name> | command: ... -->`` markers. The names each command writes:

* ``reproduce``: ``reproduce_table1``, ``reproduce_table2``, ``reproduce_table2b``
* ``evaluate``: ``evaluate`` (another name with ``--results-name``: ``evaluate_sentiment``)
* ``sentiment``: ``sentiment_table3``
* ``pronoun``: ``pronoun_agreement``
* ``llm-faithfulness``: ``llm_faithfulness``
"""

from __future__ import annotations

import argparse
from pathlib import Path

OPTION = "--results-md"


def add_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--results-md DIR`` to a command's parser (``args.results_md``: a ``Path`` or ``None``)."""
    parser.add_argument(OPTION, type=Path, default=None, metavar="DIR",
                        help="also write the results tables as Markdown files into DIR, as the README includes "
                             "them (in a clone: docs/results, then python docs/sync_readme.py)")


def write_table(directory: Path | None, name: str, table: str) -> Path | None:
    """Write ``table`` (Markdown, optionally preceded by one line of context) to
    ``directory/<name>.md``; nothing when ``directory`` is ``None``. Returns the path written."""
    if directory is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.md"
    path.write_text(table.strip("\n") + "\n", encoding="utf-8")
    return path
