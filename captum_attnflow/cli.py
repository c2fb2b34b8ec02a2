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
import difflib
import importlib
import sys

from captum_attnflow.utils.arguments import PROG

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
    """An ``ArgumentParser`` whose errors are one line (no usage block; ``--help`` has it) and that
    never expands an abbreviated flag (``allow_abbrev=False``: ``--ex`` is not ``--examples``)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs["allow_abbrev"] = False
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def flags(self) -> list[str]:
        return [option for action in self._actions for option in action.option_strings]

    def unknown(self, extras: list[str]):
        """Refuse unrecognized arguments, suggesting the nearest flag of this (sub)command."""
        flags = [flag for flag in self.flags() if flag.startswith("--")]
        hints = []
        for extra in extras:
            if extra.startswith("-"):
                name = extra.split("=", 1)[0]
                close = [flag for flag in flags if flag.startswith(name)][:3] or difflib.get_close_matches(
                    name, flags, n=1, cutoff=0.6)
                if close:
                    hints.append(f"did you mean {' or '.join(close)} (not {name})?")
        hint = f"; {' '.join(hints)}" if hints else ""
        self.error(f"unrecognized arguments: {' '.join(extras)}{hint}")

    def check_flags(self, argv: list[str]) -> None:
        """Refuse a ``--flag`` this parser does not know before anything else (a missing required
        argument would otherwise be reported first, hiding the misspelt flag that gave it)."""
        known = set(self.flags())
        unknown = [a for a in argv if a.startswith("--") and a != "--" and a.split("=", 1)[0] not in known]
        if "--" in argv:
            unknown = [a for a in unknown if argv.index(a) < argv.index("--")]
        if unknown:
            self.unknown(unknown)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog=PROG, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
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
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    command = next((a for a in argv if not a.startswith("-")), None)
    if command in commands and not {"-h", "--help"} & set(argv):
        commands[command].check_flags(argv[argv.index(command) + 1:])
    args, extras = parser.parse_known_args(argv)
    if extras:  # reported by the subcommand's own parser, which names its --help and its nearest flag
        (commands[args.command] if args.command else parser).unknown(extras)
    if args.command is None:
        parser.print_help()
        return 0
    return args.handler(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
