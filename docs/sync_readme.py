"""Copy the generated result tables of ``docs/results/`` into the README and the documentation pages.

Every results table of the README and of the site's pages (``docs/*.md``) is written by a
command, never typed. The command writes the table as ``docs/results/<name>.md`` (most commands
take ``--results-md docs/results``), and the page holds a copy between two markers that name the
command::

    <!-- generated: <name> | command: <the exact command> -->
    ... the content of docs/results/<name>.md ...
    <!-- end generated: <name> -->

Timing tables (machine-dependent) carry ``| timing`` after the name. Usage, from the repository
root (or anywhere: the paths are relative to this file)::

    python docs/sync_readme.py           # copy every docs/results/<name>.md into its markers
    python docs/sync_readme.py --check   # exit 1 naming the tables whose copy is stale

A marker without its results file and a marker that is opened but never closed are errors in
both modes. Files in subfolders of ``docs/results/`` (``docs/results/ci/``: small runs that the
tests recompute) are not page tables.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "docs" / "results"


def pages() -> list[Path]:
    """The files whose markers are synchronised: the README and every ``docs/*.md`` page."""
    return [README, *sorted((ROOT / "docs").glob("*.md"))]

OPEN = re.compile(r"^<!-- generated: (?P<name>[\w.-]+)(?P<timing> \| timing)? \| command: (?P<command>.+?) -->$", re.M)


@dataclass(frozen=True)
class Block:
    """One generated table of a page: its name, the command that writes it, whether it is a
    timing table, and the character span of its body (between the two marker lines)."""

    name: str
    command: str
    timing: bool
    start: int
    end: int


def find_blocks(readme: str) -> list[Block]:
    """Every marked block of ``readme`` (the text of one page), in order.

    Raises:
        ValueError: a block is opened twice or never closed.
    """
    blocks, seen = [], set()
    for match in OPEN.finditer(readme):
        name = match["name"]
        if name in seen:
            raise ValueError(f"the generated table {name!r} is marked twice; keep one marker pair per table and page.")
        seen.add(name)
        closing = f"<!-- end generated: {name} -->"
        end = readme.find(closing, match.end())
        if end < 0:
            raise ValueError(f"'{match.group(0)}' has no closing line '{closing}'.")
        blocks.append(Block(name, match["command"], bool(match["timing"]), match.end() + 1, end))
    return blocks


def body(table: str) -> str:
    """The text stored between the markers for a results file's content."""
    return table.strip("\n") + "\n"


def sync(readme: str, results: Path) -> tuple[str, list[str]]:
    """``readme`` with every marked block replaced by ``results/<name>.md``, and the names of the
    blocks that changed.

    Raises:
        ValueError: a marked table has no results file, or the markers are malformed (see
            :func:`find_blocks`).
    """
    blocks = find_blocks(readme)
    names = {block.name for block in blocks}
    missing = sorted(name for name in names if not (results / f"{name}.md").is_file())
    if missing:
        raise ValueError(f"marked tables without a results file in {results}: {', '.join(missing)}; "
                         "run the command named in their marker.")
    stale, parts, position = [], [], 0
    for block in blocks:
        new = body((results / f"{block.name}.md").read_text(encoding="utf-8"))
        if readme[block.start:block.end] != new:
            stale.append(block.name)
        parts += [readme[position:block.start], new]
        position = block.end
    parts.append(readme[position:])
    return "".join(parts), stale


def _name(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 if a copied table is stale")
    parser.add_argument("--readme", type=Path, action="append", help=argparse.SUPPRESS)  # pages (tests)
    parser.add_argument("--results", type=Path, default=RESULTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    files = args.readme or pages()
    updated, stale_names, count = {}, [], 0
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
            new, stale = sync(text, args.results)
        except (OSError, ValueError) as error:
            print(f"sync_readme: error: {_name(path)}: {error}", file=sys.stderr)
            return 2
        count += len(find_blocks(text))
        if stale:
            updated[path] = new
            stale_names += [f"{name} ({_name(path)})" for name in stale]
    if args.check:
        if stale_names:
            print(f"sync_readme: stale tables: {', '.join(stale_names)}; run python docs/sync_readme.py",
                  file=sys.stderr)
            return 1
        print(f"sync_readme: all {count} generated tables in {len(files)} pages are up to date")
        return 0
    for path, new in updated.items():
        path.write_text(new, encoding="utf-8")
    print(f"sync_readme: updated {', '.join(stale_names) if stale_names else 'nothing (all up to date)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
