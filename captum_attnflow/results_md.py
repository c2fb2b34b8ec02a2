"""``--results-md DIR``: the commands write their results tables as Markdown files for the README.

The README never holds typed numbers: each of its results tables is a copy of a file
``docs/results/<name>.md`` written by the command named beside it (``captum-attnflow reproduce
--results-md docs/results`` and so on), and ``python docs/sync_readme.py`` copies the files into
the README's ``<!-- generated: <name> | command: ... -->`` markers. The names each command writes:

* ``reproduce``: ``reproduce_table1``, ``reproduce_table2``, ``reproduce_table2b``
* ``evaluate``: ``evaluate``
* ``sentiment``: ``sentiment_table3``
* ``pronoun``: ``pronoun_agreement``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Mapping, Sequence

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


def evaluation_table(records: Sequence[Mapping[str, Any]]) -> str:
    """An evaluation's summary records (:attr:`ResultTable.records`) as Markdown: one table per
    metric, rows = methods, columns = layers (``all`` for methods without layers), cells mean±std."""
    from captum_attnflow.evaluation.results import METRICS, _cell

    blocks = []
    for metric, meaning in METRICS.items():
        rows = [r for r in records if r["metric"] == metric]
        if not rows:
            continue
        layers = sorted({r["layer"] for r in rows if r["layer"] is not None})
        columns = [f"L{layer}" for layer in layers] + (["all"] if any(r["layer"] is None for r in rows) else [])
        cells = {(r["method"], "all" if r["layer"] is None else f"L{r['layer']}"): _cell(r) for r in rows}
        lines = [f"**{meaning}**", "", "| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for method in dict.fromkeys(r["method"] for r in rows):
            lines.append(f"| {method} | " + " | ".join(cells.get((method, c), "") for c in columns) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
