"""argparse types of the commands: counts, sizes and seeds checked while parsing (one-line errors)."""

from __future__ import annotations

import argparse
import sys

#: the command's name in every error line
PROG = "captum-attnflow"


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


def fail(command: str, message: object) -> int:
    """Report a refused input of ``command`` as the CLI does everywhere: one line on stderr, exit status 2."""
    text = " ".join(str(message).split()) or type(message).__name__
    print(f"{PROG} {command}: error: {text}", file=sys.stderr)
    return 2


def bounded_int(low: int, high: int):
    """argparse type: an integer in ``[low, high]``."""

    def check(text: str) -> int:
        value = _integer(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {high}; got {value}")
        return value

    check.__name__ = f"integer {low}..{high}"
    return check
