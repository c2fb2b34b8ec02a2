"""Tokenising study texts with an explicit policy for texts longer than the model accepts."""

from __future__ import annotations

import warnings
from typing import Literal, Sequence

OverflowPolicy = Literal["warn", "error", "truncate"]
OVERFLOW_POLICIES: tuple[str, ...] = ("warn", "error", "truncate")


def encode_texts(
    tokenizer,
    texts: Sequence[str],
    *,
    max_length: int,
    on_overflow: OverflowPolicy = "warn",
    padding_side: str | None = None,
):
    """Tokenise ``texts`` into one padded batch, truncating texts longer than ``max_length``.

    Args:
        tokenizer: a Hugging Face tokenizer.
        texts: the texts.
        max_length: the most tokens (special tokens included) an encoded text may have.
        on_overflow: what to do when a text is longer than ``max_length`` tokens: ``"warn"``
            (truncate and emit a ``UserWarning`` naming the texts), ``"truncate"`` (truncate
            silently) or ``"error"`` (raise ``ValueError``).
        padding_side: ``"left"`` or ``"right"``; ``None`` keeps the tokenizer's own setting.
            Decoder-only models read the next token at the last position, so they pad left.

    Returns:
        The tokenizer's ``BatchEncoding`` with ``input_ids`` and ``attention_mask`` of shape
        ``(len(texts), n)`` as torch tensors, ``n <= max_length``.

    Raises:
        ValueError: unknown ``on_overflow``, ``max_length < 1``, empty ``texts``, or an
            overflowing text with ``on_overflow="error"``.
    """
    if on_overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"unknown on_overflow {on_overflow!r}; choose one of {OVERFLOW_POLICIES}.")
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"max_length must be a positive integer; got {max_length!r}.")
    if isinstance(texts, str) or len(texts) == 0:
        raise ValueError("texts must be a non-empty sequence of strings (wrap a single text in a list).")
    lengths = [len(ids) for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]]
    too_long = [index for index, length in enumerate(lengths) if length > max_length]
    if too_long and on_overflow != "truncate":
        detail = ", ".join(f"#{index} ({lengths[index]} tokens)" for index in too_long[:5])
        more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
        message = f"{len(too_long)} text(s) longer than max_length={max_length} tokens: {detail}{more}"
        if on_overflow == "error":
            raise ValueError(f"{message}. Raise max_length or pass on_overflow='warn' to truncate them.")
        warnings.warn(f"{message}; truncated to the first {max_length} tokens.", UserWarning, stacklevel=2)
    kwargs = {} if padding_side is None else {"padding_side": padding_side}
    return tokenizer(
        list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt", **kwargs
    )
