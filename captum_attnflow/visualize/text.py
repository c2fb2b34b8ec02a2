"""Captum's text view of per-token scores: readable word pieces, :func:`text_records` and
:func:`save_text_html`."""

from __future__ import annotations

import contextlib
import html
import io
from pathlib import Path
from typing import Sequence

import torch
from captum.attr import visualization
from torch import Tensor

from captum_attnflow.visualize.common import _as_numpy, _live_indices, _scaled


WORD_START_MARKERS: tuple[str, ...] = ("Ġ", "▁")
#: WordPiece's continuation prefix (BERT).
CONTINUATION_PREFIX = "##"


def is_special_token(token: str) -> bool:
    """``[CLS]``-style or ``<|endoftext|>``/``<s>``-style tokenizer special tokens."""
    return len(token) > 2 and ((token[0], token[-1]) in (("[", "]"), ("<", ">")))


def word_pieces(tokens: Sequence[str]) -> list[tuple[str, bool]]:
    """Tokenizer strings as readable text: ``(text, starts_a_word)`` per token.

    Byte-level BPE / SentencePiece tokens (``"Ġthe"``, ``"▁the"``) lose their marker and start a
    word; in such a sequence a token without the marker continues the previous word unless it is
    a special token (``<|endoftext|>``, ``<s>``) or the first token. WordPiece ``"##ing"`` becomes
    ``"ing"`` and continues the previous word. ``Ċ`` (byte-level newline) is shown as ``↵``.
    """
    marked = any(str(token)[:1] in WORD_START_MARKERS for token in tokens)
    out = []
    for index, token in enumerate(map(str, tokens)):
        special = is_special_token(token)
        if token.startswith(CONTINUATION_PREFIX) and len(token) > len(CONTINUATION_PREFIX):
            text, starts = token[len(CONTINUATION_PREFIX):], False
        elif token[:1] in WORD_START_MARKERS:
            text, starts = token[1:], True
        else:
            text, starts = token, index == 0 or special or not marked
        if index > 0 and is_special_token(str(tokens[index - 1])):
            starts = True  # a word after a special token
        out.append((text.replace("Ċ", "↵").replace("Ġ", " ") or token, starts))
    return out


def readable_tokens(tokens: Sequence[str]) -> list[str]:
    """Token labels for figures: :func:`word_pieces` text, continuation pieces prefixed by ``"-"``."""
    return [text if starts else f"-{text}" for text, starts in word_pieces(tokens)]


def _check_tokens(tokens: Sequence[str], n: int, name: str = "tokens") -> None:
    """One token string per score."""
    if len(tokens) != n:
        raise ValueError(f"{name} has {len(tokens)} entries but the scores have n = {n} tokens.")


def text_records(
    attributions: Tensor,
    tokens: Sequence[Sequence[str]],
    *,
    mask: Tensor | None = None,
    pred_probs: Sequence[float] | None = None,
    pred_classes: Sequence | None = None,
    true_classes: Sequence | None = None,
    attr_class="",
    normalize: bool = True,
) -> list[visualization.VisualizationDataRecord]:
    """Captum text-visualisation records, one per example.

    Args:
        attributions: ``(batch, n)`` token scores, e.g. from ``AttentionFlow.attribute``.
        tokens: per example the ``n`` token strings (padding included; it is dropped with
            ``mask``).
        mask: optional ``(batch, n)`` padding mask, 1 for real tokens.
        pred_probs: optional, one per example (shown in Captum's table; default NaN).
        pred_classes: optional, one per example (shown in Captum's table; default empty).
        true_classes: optional, one per example (shown in Captum's table; default empty).
        attr_class: the label of the attribution column, e.g. the method name or the target.
        normalize: divide each example by its largest absolute score, so the strongest token
            gets full colour (Captum clips colours to [-1, 1]; attention scores are ~1/n).

    Returns:
        A list of :class:`~captum.attr.visualization.VisualizationDataRecord` for
        :func:`captum.attr.visualization.visualize_text`; ``attr_score`` is the sum of the
        (unnormalised) scores of the real tokens. Captum puts tokens and labels into its HTML as
        they are, so here every token and the labels (``pred_classes``, ``true_classes``,
        ``attr_class``) are HTML-escaped (``html.escape``): a token such as
        ``<script>alert(1)</script>`` is shown as text by ``visualize_text`` and never runs. The
        records' ``raw_input_ids`` therefore hold the escaped strings.
    """
    values = _as_numpy(attributions, "attributions")
    if values.ndim != 2:
        raise ValueError(f"attributions must have shape (batch, n); got shape {values.shape}.")
    batch, n = values.shape
    if len(tokens) != batch:
        raise ValueError(f"tokens has {len(tokens)} examples but attributions has a batch of {batch}.")
    for name, given in (("pred_probs", pred_probs), ("pred_classes", pred_classes), ("true_classes", true_classes)):
        if given is not None and len(given) != batch:
            raise ValueError(f"{name} has {len(given)} entries for a batch of {batch}.")
    records = []
    for b in range(batch):
        _check_tokens(tokens[b], n, f"tokens[{b}]")
        keep = _live_indices(mask, b, n)
        row = values[b, keep]
        records.append(
            EscapedRecord(
                torch.as_tensor(_scaled(row) if normalize else row),
                float("nan") if pred_probs is None else float(pred_probs[b]),
                _escape("" if pred_classes is None else pred_classes[b]),
                _escape("" if true_classes is None else true_classes[b]),
                _escape(attr_class),
                float(row.sum()),
                [_escape(tokens[b][j]) for j in keep],
                float("nan"),
            )
        )
    return records


class EscapedRecord(visualization.VisualizationDataRecord):
    """A Captum record whose tokens and labels are already HTML-escaped (by :func:`text_records`)."""


def _escape(value) -> str:
    return html.escape(str(value))


def save_text_html(records: Sequence[visualization.VisualizationDataRecord], path: str | Path, *, legend: bool = True) -> Path:
    """Write Captum's :func:`~captum.attr.visualization.visualize_text` table to an HTML file.

    Captum inserts tokens and labels into its HTML as they are; here every token and label is
    HTML-escaped first (records from :func:`text_records` already are, and are not escaped twice),
    so a token such as ``<img src=x onerror=...>`` is shown as text and never becomes an element. ``visualize_text`` also "displays" the table; outside a notebook that
    would print an object repr, so its standard output is swallowed here.

    Returns:
        The path written.
    """
    escaped = [
        record if isinstance(record, EscapedRecord) else EscapedRecord(
            record.word_attributions, record.pred_prob, _escape(record.pred_class),
            _escape(record.true_class), _escape(record.attr_class), record.attr_score,
            [_escape(token) for token in record.raw_input_ids], record.convergence_score,
        )
        for record in records
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        page = visualization.visualize_text(escaped, legend=legend)
    path = Path(path)
    path.write_text("<!doctype html>\n<meta charset=\"utf-8\">\n" + page.data, encoding="utf-8")
    return path
