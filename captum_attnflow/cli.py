"""The ``captum-attnflow`` command line.

Each command lives in its own module, which defines ``HELP`` (one line), ``configure(parser)``
(adds its arguments; imports nothing heavy) and ``run(args) -> int`` (does the work). Register a
new command by adding it to :data:`COMMANDS`.

Conventions: bad input is reported before any work as one line on stderr
(``captum-attnflow COMMAND: error: ...``) with exit status 2 and no traceback — argument types
(:mod:`captum_attnflow.utils.arguments`) reject bad counts while parsing; the commands check files, folders
and checkpoints next.
"""

from __future__ import annotations

import argparse
import importlib
import sys

#: command name -> module implementing it
COMMANDS: dict[str, str] = {
    "demo": "captum_attnflow.studies.demo",
    "reproduce": "captum_attnflow.studies.agreement.reproduce",
    "evaluate": "captum_attnflow.evaluation.command",
    "llm-faithfulness": "captum_attnflow.evaluation.llm_command",
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
