"""Showing per-token attributions: Captum's text view and matplotlib figures.

* :func:`text_records` turns ``(batch, n)`` scores into Captum
  :class:`~captum.attr.visualization.VisualizationDataRecord` objects for
  :func:`captum.attr.visualization.visualize_text`; :func:`save_text_html` writes that view to
  an HTML file.
* :func:`token_heatmap`: method × token map of one sentence (the paper's Fig. 4/5 view).
* :func:`layer_heatmaps`: layer × token map, one panel per method (the paper's Fig. 2/3 view).
* :func:`patch_overlay`: ViT patch scores upsampled over the image.
* :func:`save_figure`: PNG / SVG / PDF by file suffix.

Figures are built with :class:`matplotlib.figure.Figure` directly (no ``pyplot``), so nothing
needs a display and no global figure state is touched. Needs the ``plot`` extra (matplotlib).
"""

from __future__ import annotations

import contextlib
import html
import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch
from captum.attr import visualization
from matplotlib.figure import Figure
from torch import Tensor

#: Colour maps: sequential for non-negative scores, diverging (centred on 0) for signed ones.
SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "RdBu_r"
#: File suffixes :func:`save_figure` writes.
FIGURE_FORMATS: tuple[str, ...] = (".png", ".svg", ".pdf")


def _as_numpy(values, name: str) -> np.ndarray:
    """``values`` as a finite float64 array (NaN/inf rejected with a message naming ``name``)."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().to(torch.float64).numpy()
    array = np.asarray(values, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or inf; compute every row you plot (attention_flow leaves unrequested rows NaN).")
    return array


def _live_indices(mask, example: int, n: int) -> list[int]:
    """Positions of the real tokens of ``example`` (all ``n`` without a mask)."""
    if mask is None:
        return list(range(n))
    row = np.asarray(mask[example].detach().cpu() if isinstance(mask, Tensor) else mask[example]).astype(bool)
    if row.shape != (n,):
        raise ValueError(f"mask rows must have n = {n} entries; got shape {row.shape}.")
    return np.flatnonzero(row).tolist()


def _scaled(values: np.ndarray) -> np.ndarray:
    """Divide by the maximum absolute value (all-zero stays zero)."""
    top = np.abs(values).max() if values.size else 0.0
    return values / top if top > 0 else values


#: Tokenizer markers of a word start: byte-level BPE (GPT-2, Llama 3, SmolLM2) and SentencePiece.
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
        pred_probs, pred_classes, true_classes: optional, one per example (shown in Captum's
            table; default NaN / empty).
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


def token_heatmap(
    scores: Mapping[str, Tensor],
    tokens: Sequence[str],
    *,
    example: int = 0,
    mask: Tensor | None = None,
    normalize: bool = True,
    title: str | None = None,
    annotate: bool = True,
) -> Figure:
    """Method × token heat-map of one sentence (the paper's Fig. 4/5 view).

    Args:
        scores: ``{method: (batch, n) or (n,)}`` token scores, e.g. from
            :func:`captum_attnflow.compare.compare_attributions`.
        tokens: the sentence's ``n`` token strings.
        example: the batch row to show.
        mask: optional ``(batch, n)`` padding mask; padded tokens are left out.
        normalize: scale each method's row by its largest absolute value, so methods with
            different units (probabilities, gradients) share one colour scale: [0, 1] with a
            sequential map when no score is negative, else [-1, 1] with a diverging map.
        title: figure title.
        annotate: write each (unnormalised) value in its cell.

    Returns:
        A matplotlib :class:`~matplotlib.figure.Figure` (save with :func:`save_figure`).
    """
    if not scores:
        raise ValueError("scores is empty; pass {method: (batch, n) tensor}.")
    rows = []
    for name, value in scores.items():
        array = _as_numpy(value, f"scores[{name!r}]")
        array = array[None] if array.ndim == 1 else array
        if array.ndim != 2:
            raise ValueError(f"scores[{name!r}] must have shape (batch, n) or (n,); got {array.shape}.")
        rows.append(array[example])
    n = rows[0].shape[0]
    if any(row.shape != (n,) for row in rows):
        raise ValueError(f"every method needs the same number of tokens; got {[row.shape[0] for row in rows]}.")
    _check_tokens(tokens, n)
    keep = _live_indices(mask, example, n)
    raw = np.stack([row[keep] for row in rows])
    shown = np.stack([_scaled(row) for row in raw]) if normalize else raw
    figure = Figure(figsize=(1.0 + 0.75 * len(keep), 0.9 + 0.5 * len(rows)), constrained_layout=True)
    axes = figure.add_subplot()
    limit = 1.0 if normalize else max(np.abs(shown).max(), 1e-12)
    signed = bool((raw < 0).any())
    cmap, low = (DIVERGING_CMAP, -limit) if signed else (SEQUENTIAL_CMAP, 0.0)
    image = axes.imshow(shown, cmap=cmap, vmin=low, vmax=limit, aspect="auto")
    axes.set_xticks(range(len(keep)), readable_tokens([tokens[j] for j in keep]), rotation=45, ha="right")
    axes.set_yticks(range(len(rows)), list(scores))
    if annotate:
        for i in range(raw.shape[0]):
            for j in range(raw.shape[1]):
                dark = abs(shown[i, j]) > 0.6 * limit if signed else shown[i, j] < 0.55 * limit
                axes.text(j, i, f"{raw[i, j]:.2g}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
    unit = ("score / max |score|" if signed else "score / max score") if normalize else "score"
    figure.colorbar(image, ax=axes, label=unit)
    if title:
        axes.set_title(title)
    return figure


def layer_heatmaps(
    per_layer: Mapping[str, Tensor],
    tokens: Sequence[str],
    *,
    example: int = 0,
    mask: Tensor | None = None,
    title: str | None = None,
) -> Figure:
    """Layer × token maps, one panel per method (the paper's Fig. 2/3 view).

    Args:
        per_layer: ``{method: (batch, L, n) or (L, n)}``, e.g. ``method.attribute(...,
            layer="all")``. Layer ``L1`` is drawn at the bottom, as in the paper.
        tokens: the ``n`` token strings.
        example: the batch row to show.
        mask: optional ``(batch, n)`` padding mask; padded tokens are left out.
        title: figure title.

    Returns:
        A :class:`~matplotlib.figure.Figure` with one panel per method and ONE colour scale
        (and colour bar) for all panels, so that methods and layers compare: sequential from 0
        when no score is negative, diverging around 0 otherwise. Token labels are made readable
        (:func:`readable_tokens`).
    """
    if not per_layer:
        raise ValueError("per_layer is empty; pass {method: (batch, L, n) tensor}.")
    panels = []
    for name, value in per_layer.items():
        array = _as_numpy(value, f"per_layer[{name!r}]")
        array = array[None] if array.ndim == 2 else array
        if array.ndim != 3:
            raise ValueError(f"per_layer[{name!r}] must have shape (batch, L, n) or (L, n); got {array.shape}.")
        panels.append(array[example])
    n = panels[0].shape[-1]
    if any(panel.shape[-1] != n for panel in panels):
        raise ValueError("every method needs the same number of tokens.")
    _check_tokens(tokens, n)
    keep = _live_indices(mask, example, n)
    layers = max(panel.shape[0] for panel in panels)
    shown = [panel[:, keep] for panel in panels]
    high = max(float(np.abs(panel).max()) for panel in shown) or 1.0
    signed = any(bool((panel < 0).any()) for panel in shown)
    cmap, low = (DIVERGING_CMAP, -high) if signed else (SEQUENTIAL_CMAP, 0.0)
    labels = readable_tokens([tokens[j] for j in keep])
    figure = Figure(
        figsize=(1.2 + len(panels) * (1.0 + 0.4 * len(keep)), 1.6 + 0.3 * layers), constrained_layout=True
    )
    all_axes = figure.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for axes, name, panel in zip(all_axes, per_layer, shown):
        image = axes.imshow(panel, cmap=cmap, vmin=low, vmax=high, origin="lower", aspect="auto")
        axes.set_xticks(range(len(keep)), labels, rotation=90)
        axes.set_yticks(range(panel.shape[0]), [f"L{l + 1}" for l in range(panel.shape[0])])
        axes.set_title(name)
    figure.colorbar(image, ax=list(all_axes), shrink=0.9, label="score (one scale for all panels)")
    if title:
        figure.suptitle(title)
    return figure


def patch_overlay(
    image,
    patch_scores,
    *,
    alpha: float = 0.55,
    cmap: str = "inferno",
    title: str | None = None,
) -> Figure:
    """ViT patch scores upsampled (bilinear) and drawn over the image in grey.

    The image is shown in grey (luminance) so that the perceptual colour map of the scores,
    drawn with opacity ``alpha``, does not blend with the image's own colours.

    Args:
        image: ``(3, H, W)`` or ``(H, W, 3)`` (or ``(H, W)`` grey) tensor or array, floats in
            ``[0, 1]`` or uint8 in ``[0, 255]``.
        patch_scores: ``(h, w)`` scores of one image, e.g. ``patch_grid(scores)[0]``.
        alpha: opacity of the heat-map.
        cmap: matplotlib colour map of the heat-map (a perceptual sequential map).
        title: figure title.

    Returns:
        A :class:`~matplotlib.figure.Figure` with the image, the overlay and a colour bar
        (scores min–max scaled to [0, 1]).
    """
    picture = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if picture.ndim == 3 and picture.shape[0] in (1, 3) and picture.shape[-1] not in (1, 3):
        picture = np.moveaxis(picture, 0, -1)
    if picture.ndim == 3 and picture.shape[-1] == 1:
        picture = picture[..., 0]
    if picture.ndim not in (2, 3) or (picture.ndim == 3 and picture.shape[-1] != 3):
        raise ValueError(f"image must be (3, H, W), (H, W, 3) or (H, W); got shape {tuple(np.shape(image))}.")
    if picture.dtype == np.uint8:
        picture = picture / 255.0
    scores = _as_numpy(patch_scores, "patch_scores")
    if scores.ndim != 2:
        raise ValueError(f"patch_scores must have shape (h, w) (see patch_grid); got shape {scores.shape}.")
    height, width = picture.shape[:2]
    upsampled = torch.nn.functional.interpolate(
        torch.as_tensor(scores)[None, None], size=(height, width), mode="bilinear", align_corners=False
    )[0, 0].numpy()
    low, high = upsampled.min(), upsampled.max()
    upsampled = (upsampled - low) / (high - low) if high > low else np.zeros_like(upsampled)
    grey = picture if picture.ndim == 2 else picture[..., :3] @ np.array([0.299, 0.587, 0.114])
    figure = Figure(figsize=(4.4, 4), constrained_layout=True)
    axes = figure.add_subplot()
    axes.imshow(np.clip(grey, 0, 1), cmap="gray", vmin=0, vmax=1)
    overlay = axes.imshow(upsampled, cmap=cmap, alpha=alpha, vmin=0, vmax=1)
    axes.axis("off")
    figure.colorbar(overlay, ax=axes, shrink=0.8, label="relative score")
    if title:
        axes.set_title(title)
    return figure


def save_figure(figure: Figure, path: str | Path, *, dpi: int = 150) -> Path:
    """Save ``figure`` as PNG, SVG or PDF (chosen by the suffix of ``path``).

    Returns:
        The path written.

    Raises:
        ValueError: an unsupported suffix.
    """
    path = Path(path)
    if path.suffix.lower() not in FIGURE_FORMATS:
        raise ValueError(f"cannot save {path.name!r}: use one of the suffixes {FIGURE_FORMATS}.")
    figure.savefig(path, dpi=dpi)
    return path
