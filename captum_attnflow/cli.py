"""The ``captum-attnflow`` command line.

Each command lives in its own module, which defines ``HELP`` (one line), ``configure(parser)``
(adds its arguments; imports nothing heavy) and ``run(args) -> int`` (does the work). Register a
new command by adding it to :data:`COMMANDS`.

Conventions: bad input is reported before any work as one line on stderr
(``captum-attnflow COMMAND: error: ...``) with exit status 2 and no traceback — argument types
such as :func:`positive_int` reject bad counts while parsing; the commands check files, folders
and checkpoints next.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: command name -> module implementing it
COMMANDS: dict[str, str] = {
    "demo": "captum_attnflow.demo",
    "reproduce": "captum_attnflow.reproduce",
    "evaluate": "captum_attnflow.evaluation.command",
    "sentiment": "captum_attnflow.studies.sentiment",
    "pronoun": "captum_attnflow.studies.pronoun",
}

DESCRIPTION = """\
Attention rollout and attention flow (Abnar & Zuidema, ACL 2020) for any self-attention model.
Run `captum-attnflow COMMAND --help` for the options of a command.
"""


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block; ``--help`` has it)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a count or a size)."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (a seed, or 0 meaning 'none')."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer; got {value}")
    return value


def flow_solver(text: str) -> str:
    """argparse type: ``auto`` or a name in :data:`captum_attnflow.maxflow.SOLVERS`."""
    from captum_attnflow.maxflow import SOLVERS

    if text != "auto" and text not in SOLVERS:
        raise argparse.ArgumentTypeError(f"{text!r} is unknown; choose one of {', '.join(('auto', *SOLVERS))}")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="captum-attnflow", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        command = sub.add_parser(
            name, help=module.HELP, description=module.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.configure(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
