"""Checks of plain-number arguments shared by the Python entry points (counts, sizes, seeds)."""

from __future__ import annotations


def check_count(value: object, name: str, *, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` if it is an integer ``>= minimum`` (``None`` too when ``optional``).

    ``minimum=1`` is for counts and sizes, ``minimum=0`` for seeds. Booleans and floats such as
    ``1e9`` are refused: a count must be an exact integer.

    Raises:
        ValueError: naming ``name``, what it must be and the value received.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        if minimum == 0:
            kind = "a non-negative integer"
        raise ValueError(f"{name} must be {kind}{' or None' if optional else ''}; got {value!r}.")
    return value
