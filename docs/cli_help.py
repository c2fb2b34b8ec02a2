"""Write ``docs/results/cli_help.md``: the ``--help`` of ``captum-attnflow`` and of every subcommand.

The command-line page of the site (``docs/cli.md``) holds a copy between sync markers
(``python docs/sync_readme.py``), so the page reads exactly like ``--help``; a test checks that the
committed file is what the parser prints today. Usage, from anywhere::

    python docs/cli_help.py            # rewrite docs/results/cli_help.md
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "cli_help.md"
WIDTH = "100"  # argparse wraps at the terminal width: fixed here so the text does not depend on it


def help_text() -> str:
    """Markdown: ``captum-attnflow --help`` then each subcommand's ``--help`` in a text block."""
    os.environ["COLUMNS"] = WIDTH
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # this checkout's package, not another installed copy
    from captum_attnflow.cli import build_parser

    parser = build_parser()
    sub = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    parts = ["### `captum-attnflow --help`", "", "```text", parser.format_help().rstrip(), "```"]
    for name, command in sub.choices.items():
        parts += ["", f"### `captum-attnflow {name} --help`", "", "```text", command.format_help().rstrip(), "```"]
    return "\n".join(parts) + "\n"


def main() -> int:
    OUT.write_text(help_text(), encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
