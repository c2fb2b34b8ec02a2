"""Showing per-token attributions: Captum's text view and matplotlib figures.

* :func:`text_records` turns ``(batch, n)`` scores into Captum
  :class:`~captum.attr.visualization.VisualizationDataRecord` objects for
  :func:`captum.attr.visualization.visualize_text`; :func:`save_text_html` writes that view to
  an HTML file.
* :func:`token_heatmap`: method × token map of one sentence (the paper's Fig. 4/5 view);
  :func:`grouped_token_heatmap`: the same with one colour scale per group of rows that share a
  unit (attention shares, gradients, ...).
* :func:`layer_heatmaps`: layer × token map, one panel per method (the paper's Fig. 2/3 view).
* :func:`patch_overlay`: ViT patch scores upsampled over the image.
* :func:`plot_llm_attribution`: a readable map of Captum's ``LLMAttributionResult`` (generated
  text): decoded token labels, the attention sink on its own scale; :func:`llm_token_labels`,
  :func:`find_sink_columns`.
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
        pred_probs: optional, one per example (shown in Captum's table; default NaN).
        pred_classes: optional, one per example (shown in Captum's table; default empty).
        true_classes: optional, one per example (shown in Captum's table; default empty).
        attr_class: the label of the attribution column, e.g. the method name or the target.
        normalize: divide each example by its largest absolute score, so the strongest token
            gets full colour (Captum clips colours to [-1, 1]; attention scores are ~1/n).

    Returns:
        A list of :class:`~captum.attr.visualization.VisualizationDataRecord` for
        :func:`captum.attr.visualization.visualize_text`; ``attr_score`` is the sum of the
        (unnormalised) scores of the real tokens.
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
            visualization.VisualizationDataRecord(
                torch.as_tensor(_scaled(row) if normalize else row),
                float("nan") if pred_probs is None else float(pred_probs[b]),
                "" if pred_classes is None else pred_classes[b],
                "" if true_classes is None else true_classes[b],
                attr_class,
                float(row.sum()),
                [tokens[b][j] for j in keep],
                float("nan"),
            )
        )
    return records


def save_text_html(records: Sequence[visualization.VisualizationDataRecord], path: str | Path, *, legend: bool = True) -> Path:
    """Write Captum's :func:`~captum.attr.visualization.visualize_text` table to an HTML file.

    Captum inserts tokens and labels into its HTML as they are; here every token and label is
    HTML-escaped first, so a token such as ``<img src=x onerror=...>`` is shown as text and never
    becomes an element. ``visualize_text`` also "displays" the table; outside a notebook that
    would print an object repr, so its standard output is swallowed here.

    Returns:
        The path written.
    """
    escaped = [
        visualization.VisualizationDataRecord(
            record.word_attributions, record.pred_prob, html.escape(str(record.pred_class)),
            html.escape(str(record.true_class)), html.escape(str(record.attr_class)), record.attr_score,
            [html.escape(str(token)) for token in record.raw_input_ids], record.convergence_score,
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
            :func:`captum_attnflow.evaluation.compare.compare_attributions`.
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


def grouped_token_heatmap(
    groups: Mapping[str, Mapping[str, Tensor]],
    tokens: Sequence[str],
    *,
    title: str | None = None,
    annotate: bool = False,
) -> Figure:
    """Method × token maps of one sentence, stacked in panels: one panel per group of rows that
    share a unit, each with ONE colour scale and its own colour bar stating it.

    Unlike :func:`token_heatmap` with ``normalize=True`` (every row scaled to its own maximum, so a
    nearly uniform row looks as saturated as a peaked one), rows in a group keep their values:
    e.g. raw attention, rollout and flow (shares of one unit) on one scale, gradients on another.

    Args:
        groups: ``{group label: {row label: (n,) scores}}``; the group label names the unit and
            goes on the panel's colour bar.
        tokens: the ``n`` token strings (made readable with :func:`readable_tokens`).
        title: figure title.
        annotate: write each value in its cell.

    Returns:
        A :class:`~matplotlib.figure.Figure`: panels top to bottom in the order of ``groups``;
        a panel is sequential from 0 when none of its scores is negative, else diverging and
        symmetric around 0.
    """
    if not groups or any(not rows for rows in groups.values()):
        raise ValueError("groups must map each group label to a non-empty {row label: (n,) scores}.")
    blocks = {}
    for group, rows in groups.items():
        block = np.stack([_as_numpy(value, f"groups[{group!r}][{name!r}]").reshape(-1) for name, value in rows.items()])
        _check_tokens(tokens, block.shape[1])
        blocks[group] = block
    n = len(tokens)
    heights = [block.shape[0] for block in blocks.values()]
    figure = Figure(figsize=(2.8 + 0.55 * n, 1.2 + 0.36 * sum(heights) + 0.35 * len(blocks)), constrained_layout=True)
    axes = figure.subplots(len(blocks), 1, sharex=True, squeeze=False, height_ratios=heights)[:, 0]
    for axis, (group, block) in zip(axes, blocks.items()):
        signed = bool((block < 0).any())
        top = float(np.abs(block).max()) or 1.0
        image = axis.imshow(block, cmap=DIVERGING_CMAP if signed else SEQUENTIAL_CMAP, vmin=-top if signed else 0.0,
                            vmax=top, aspect="auto", interpolation="nearest")
        axis.set_yticks(range(block.shape[0]), list(groups[group]), fontsize=9)
        bar = figure.colorbar(image, ax=axis, pad=0.01, fraction=0.03, aspect=max(3, 4 * block.shape[0]))
        bar.set_label(group, fontsize=8)
        bar.ax.tick_params(labelsize=7)
        if annotate:
            for i in range(block.shape[0]):
                for j in range(n):
                    axis.text(j, i, f"{block[i, j]:.2g}", ha="center", va="center", fontsize=6,
                              color=_text_colour(image.cmap(image.norm(block[i, j]))))
    axes[-1].set_xticks(range(n), readable_tokens(tokens), rotation=45, ha="right")
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def layer_heatmaps(
    per_layer: Mapping[str, Tensor],
    tokens: Sequence[str],
    *,
    example: int = 0,
    mask: Tensor | None = None,
    title: str | None = None,
    log: bool = False,
    note: str | None = None,
) -> Figure:
    """Layer × token maps, one panel per method (the paper's Fig. 2/3 view).

    Args:
        per_layer: ``{method: (batch, L, n) or (L, n)}``, e.g. ``method.attribute(...,
            layer="all")``. Layer ``L1`` is drawn at the bottom, as in the paper.
        tokens: the ``n`` token strings.
        example: the batch row to show.
        mask: optional ``(batch, n)`` padding mask; padded tokens are left out.
        title: figure title.
        log: a log colour scale (non-negative scores only), from the smallest positive score
            to the largest: shows an attention-sink column (~1) and the rest (~1e-6) on one
            scale. Zeros are drawn in the lowest colour.
        note: a line of text under the panels (e.g. what was left out and why).

    Returns:
        A :class:`~matplotlib.figure.Figure` with one panel per method and ONE colour scale
        (and colour bar, which states the scale) for all panels, so that methods and layers
        compare: sequential from 0 when no score is negative, diverging around 0 otherwise.
        Token labels are made readable (:func:`readable_tokens`).

    Raises:
        ValueError: ``log`` with negative scores, or malformed inputs.
    """
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize

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
    if log and signed:
        raise ValueError("log=True needs non-negative scores; these have negative ones.")
    cmap = colormaps[DIVERGING_CMAP if signed else SEQUENTIAL_CMAP]
    if log:
        positive = np.concatenate([panel[panel > 0] for panel in shown])
        low = max(float(positive.min()) if positive.size else high * 1e-6, high * 1e-12)
        norm, scale = LogNorm(vmin=min(low, high / 10), vmax=high), "log scale"
        cmap = cmap.with_extremes(under=cmap(0.0), bad=cmap(0.0))
    else:
        norm, scale = Normalize(vmin=-high if signed else 0.0, vmax=high), "linear"
    labels = readable_tokens([tokens[j] for j in keep])
    figure = Figure(
        figsize=(1.2 + len(panels) * (1.0 + 0.4 * len(keep)), 1.6 + 0.3 * layers + (0.3 if note else 0.0)),
        constrained_layout=True,
    )
    all_axes = figure.subplots(1, len(panels), squeeze=False, sharey=True)[0]
    for axes, name, panel in zip(all_axes, per_layer, shown):
        image = axes.imshow(panel, cmap=cmap, norm=norm, origin="lower", aspect="auto")
        axes.set_xticks(range(len(keep)), labels, rotation=90)
        axes.set_yticks(range(panel.shape[0]), [f"L{l + 1}" for l in range(panel.shape[0])])
        axes.set_title(name)
    figure.colorbar(image, ax=list(all_axes), shrink=0.9, label=f"score ({scale}, one scale for all panels)")
    if title:
        figure.suptitle(title)
    if note:
        figure.supxlabel(note, fontsize=9)
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


# --------------------------------------------------------------------------------------------
# Generated text: Captum's LLMAttributionResult (LLMAttentionAttribution, LLMAttribution, ...)
# --------------------------------------------------------------------------------------------

#: How :func:`plot_llm_attribution` shows a sink column: its own panel and colour bar, a log colour
#: scale for the whole map, or as any other column.
SINK_MODES: tuple[str, ...] = ("separate", "log", "keep")
#: Visible marks for whitespace in token labels.
SPACE_MARK, NEWLINE_MARK, TAB_MARK = "␣", "↵", "⇥"


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE's printable character of each byte, inverted (``"Ġ"`` -> 32)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


BYTE_DECODER: dict[str, int] = _byte_decoder()


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def llm_token_labels(
    tokens: Sequence[str], tokenizer=None, *, max_chars: int = 14, space: str = SPACE_MARK
) -> list[str]:
    """Readable figure labels for LLM tokens, one per token.

    Byte-level BPE pieces (GPT-2, Llama 3, SmolLM2: ``"Ġwas"``, ``"Ċ"``, ``"Ã¨"``) are decoded to
    their text — with ``tokenizer`` by its ``convert_tokens_to_string`` for the tokens of its
    vocabulary, otherwise by the byte-level table when any token carries one of its markers;
    SentencePiece's ``"▁"`` is a space. Then a leading space becomes ``space`` (``"␣was"``), a
    newline ``↵``, a tab ``⇥``; already decoded strings (Captum's ``output_tokens``, ``" Paris"``)
    get the same marks. Special tokens (``<|endoftext|>``, ``<s>``) stay as they are; a piece that
    is an incomplete UTF-8 character shows ``�``; labels longer than ``max_chars`` are cut with
    ``…``.
    """
    tokens = [str(token) for token in tokens]
    vocab = None
    if tokenizer is not None and hasattr(tokenizer, "get_vocab"):
        vocab = tokenizer.get_vocab()
    byte_level = any(
        any(ord(ch) >= 256 and ch in BYTE_DECODER for ch in token) for token in tokens if not is_special_token(token)
    )
    labels = []
    for token in tokens:
        if is_special_token(token):
            labels.append(_shorten(token, max_chars))
            continue
        if vocab is not None and token in vocab:
            text = tokenizer.convert_tokens_to_string([token])
        elif byte_level and all(ch in BYTE_DECODER for ch in token):
            text = bytes(BYTE_DECODER[ch] for ch in token).decode("utf-8", errors="replace")
        else:
            text = token.replace("▁", " ")
        text = text.replace("\r\n", "\n").replace("\n", NEWLINE_MARK).replace("\t", TAB_MARK)
        stripped = text.lstrip(" ")
        text = space * (len(text) - len(stripped)) + stripped
        labels.append(_shorten(text or repr(token), max_chars))
    return labels


def find_sink_columns(scores, tokens: Sequence[str] | None = None, *, dominance: float = 4.0) -> list[int]:
    """Columns of a ``(rows, n)`` score map that would flatten every other column's colours.

    A column is a sink when its mean ``|score|`` is at least ``dominance`` times every other
    column's (rollout on a decoder puts ~all its mass on the first token), and the first column
    is one too when its token is a special token (a BOS / ``<|endoftext|>`` attention sink).
    """
    values = np.abs(_as_numpy(scores, "scores"))
    values = values[None] if values.ndim == 1 else values
    n = values.shape[-1]
    if n < 2:
        return []
    mass = values.mean(0)
    top = int(mass.argmax())
    rest = np.delete(mass, top).max()
    sinks = {top} if mass[top] > 0 and mass[top] >= dominance * rest else set()
    signed = bool((_as_numpy(scores, "scores") < 0).any())
    if not signed and tokens is not None and len(tokens) == n and is_special_token(str(tokens[0])):
        sinks.add(0)
    return sorted(sinks)


def _text_colour(rgba) -> str:
    """Black or white text on a cell of colour ``rgba`` (by its luminance)."""
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def _llm_norm(values: np.ndarray, signed: bool, log: bool):
    """``(norm, cmap, scale label)`` for one block of scores."""
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize, SymLogNorm

    top = float(np.abs(values).max()) if values.size else 0.0
    top = top if top > 0 else 1.0
    cmap = colormaps[DIVERGING_CMAP if signed else SEQUENTIAL_CMAP].copy()
    if log and signed:
        return SymLogNorm(linthresh=top * 1e-3, vmin=-top, vmax=top), cmap, "symmetric log"
    if log:
        positive = values[values > 0]
        low = max(float(positive.min()) if positive.size else top * 1e-6, top * 1e-12)
        cmap = cmap.with_extremes(under=cmap(0.0), bad=cmap(0.0))
        return LogNorm(vmin=min(low, top / 10), vmax=top), cmap, "log scale"
    if signed:
        return Normalize(vmin=-top, vmax=top), cmap, "signed, 0 centred"
    return Normalize(vmin=0.0, vmax=top), cmap, "linear, from 0"


def plot_llm_attribution(
    result,
    *,
    sink: str = "separate",
    sink_columns: Sequence[int] | None = None,
    tokenizer=None,
    output_ids: Sequence[int] | None = None,
    wrap: int | None = None,
    annotate: bool | None = None,
    probs: bool = True,
    title: str | None = None,
    label: str = "attribution",
    max_width: float = 14.0,
    figure=None,
) -> Figure:
    """A readable heat map of Captum's ``LLMAttributionResult``: output tokens down, prompt tokens
    across (as Captum's ``plot_token_attr``), for any result — :class:`LLMAttentionAttribution`'s or
    Captum's ``LLMAttribution`` / ``LLMGradientAttribution``'s.

    * **Labels**: byte-level BPE pieces decoded (:func:`llm_token_labels`: ``"Ġwas"`` ->
      ``"␣was"``, ``"Ċ"`` -> ``"↵"``); each output token with its probability when the result
      has ``output_probs`` (``probs``).
    * **Colours**: a sequential map from 0 (:data:`SEQUENTIAL_CMAP`) when no score is negative —
      attention shares, ablation magnitudes — and a diverging map symmetric around 0
      (:data:`DIVERGING_CMAP`) only when some score is negative (gradients, ablation deltas);
      a colour bar saying which.
    * **Size**: at most ``max_width`` inches wide; a long prompt is wrapped into bands of
      ``wrap`` tokens (default: as many as fit, ~50), one under the other, labels turned upright
      when there are many; each cell's value is written only when there are few cells
      (``annotate=None``: at most 100 cells shown in total).
    * **Sink**: a column that dominates (:func:`find_sink_columns`: mean ``|score|`` ≥ 4× every
      other column, or, for non-negative scores, a special first token such as BOS) would leave every other cell at the
      bottom of the colour scale — rollout on a decoder puts ~all its mass on the first token.
      ``sink="separate"`` (default) draws the sink column(s) in a small panel of their own, left,
      with their own colour bar, and scales the rest to their own maximum; ``"log"`` keeps every
      column in place on a log colour scale (symmetric log for signed scores); ``"keep"``
      draws them as any column. ``sink_columns`` names the sink columns instead of detecting them
      (``[]``: none).

    Args:
        result: a Captum ``LLMAttributionResult`` (``token_attr`` ``(T, n)``; without it the
            ``seq_attr`` row is drawn).
        sink: ``"separate"``, ``"log"`` or ``"keep"``.
        sink_columns: input-token indices to treat as sinks; default: detected.
        tokenizer: optional, the model's tokenizer, to decode the input tokens exactly
            (results of :class:`LLMAttentionAttribution` carry theirs).
        output_ids: optional, the target's token ids, to label the output tokens exactly with
            ``tokenizer`` (Captum's readable ``output_tokens`` drop leading spaces and leave a
            lone space empty); default: the result's ``output_token_ids`` when it has them.
        wrap: prompt tokens per band (default: as many as fit in ``max_width``).
        annotate: write each cell's value; default only when at most 100 cells are shown.
        probs: show each output token's probability next to it (when the result has them).
        title: figure title (default: none).
        label: what the scores are, for the colour bar.
        max_width: the figure's width cap in inches.
        figure: draw into this instead of a new :class:`~matplotlib.figure.Figure`: a figure
            (e.g. a ``pyplot`` one; cleared and resized) or a ``SubFigure`` (several results in
            one figure, e.g. ``Figure(layout="constrained").subfigures(k, 1)``).

    Returns:
        The :class:`~matplotlib.figure.Figure`. Its axes, in order: the bands of the map (labels
        ``"band 0"``, ``"band 1"``, ...; ``figure.axes[0]`` is the first), the sink panel
        (``"sink"``) when there is one, then the colour bars.

    Raises:
        ValueError: an unknown ``sink``, bad ``sink_columns`` or ``wrap``, non-finite scores.
    """
    if sink not in SINK_MODES:
        raise ValueError(f"sink must be one of {SINK_MODES}; got {sink!r}.")
    token_attr = getattr(result, "token_attr", None)
    if token_attr is None:
        scores = _as_numpy(result.seq_attr, "seq_attr")[None]
        row_labels = ["(whole output)"]
    else:
        scores = _as_numpy(token_attr, "token_attr")
        ids = output_ids if output_ids is not None else getattr(result, "output_token_ids", None)
        tokenizer_of_result = tokenizer if tokenizer is not None else getattr(result, "tokenizer", None)
        if ids is not None and len(ids) != len(result.output_tokens):
            raise ValueError(f"output_ids has {len(ids)} ids for {len(result.output_tokens)} output tokens.")
        if ids is not None and tokenizer_of_result is not None:
            raw_output = tokenizer_of_result.convert_ids_to_tokens([int(i) for i in ids])
            row_labels = llm_token_labels(raw_output, tokenizer_of_result, max_chars=16)
        else:
            row_labels = llm_token_labels(result.output_tokens, max_chars=16)
        output_probs = getattr(result, "output_probs", None)
        if probs and output_probs is not None:
            row_labels = [f"{text}  p={float(p):.2g}" for text, p in zip(row_labels, output_probs)]
    if scores.ndim != 2 or scores.shape[1] != len(result.input_tokens):
        raise ValueError(f"scores of shape {scores.shape} do not match {len(result.input_tokens)} input tokens.")
    rows, n = scores.shape
    tokenizer = tokenizer if tokenizer is not None else getattr(result, "tokenizer", None)
    column_labels = llm_token_labels(result.input_tokens, tokenizer)
    signed = bool((scores < 0).any())
    if sink_columns is None:
        sinks = find_sink_columns(scores, result.input_tokens) if sink == "separate" else []
    else:
        sinks = sorted({int(j) % n if -n <= int(j) < n else _bad_column(j, n) for j in sink_columns})
    if sink != "separate" or len(sinks) == n:
        sinks = []
    main = [j for j in range(n) if j not in sinks]
    if wrap is not None and (not isinstance(wrap, int) or wrap < 1):
        raise ValueError(f"wrap must be a positive int (prompt tokens per band); got {wrap!r}.")

    font = 8 if n <= 60 else 7
    label_width = max(len(text) for text in row_labels) * font * 0.55 / 72 + 0.45
    sink_width = 0.0 if not sinks else 1.6 + 0.4 * len(sinks)
    room = max_width - label_width - sink_width - 1.2  # colour bar and margins
    per_band = wrap or max(8, int(room / 0.24))
    per_band = -(-len(main) // -(-len(main) // per_band))  # bands of equal length (the last one may be shorter)
    bands = [main[start:start + per_band] for start in range(0, len(main), per_band)]
    widest = max(len(band) for band in bands)
    cell = float(np.clip(room / widest, 0.16, 0.75))
    upright = cell < 0.45
    tick_height = max(len(column_labels[j]) for j in range(n)) * font * (0.62 if upright else 0.45) / 72 + 0.25
    row_height = 0.3 if rows <= 10 else 0.22
    band_height = rows * row_height + tick_height + 0.15
    width = min(max_width, label_width + sink_width + widest * cell + 1.2)
    height = band_height * len(bands) + (0.45 if title else 0.15) + 0.2
    if figure is None:
        figure = Figure(figsize=(width, height), layout="constrained")
    elif hasattr(figure, "set_size_inches"):  # a Figure; a SubFigure keeps its place in its parent
        figure.clear()
        figure.set_size_inches(width, height)
        figure.set_layout_engine("constrained")
    shown = rows * len(main)
    annotate = (shown <= 100) if annotate is None else annotate

    main_values = scores[:, main]
    norm, cmap, scale = _llm_norm(main_values if sink != "log" else scores, signed, sink == "log")
    grid = figure.add_gridspec(len(bands), 2 if sinks else 1,
                               width_ratios=[sink_width, width - sink_width] if sinks else None)
    column = 1 if sinks else 0
    axes_list = []
    for index, band in enumerate(bands):
        axes = figure.add_subplot(grid[index, column], label=f"band {index}")
        # every band has the same cell width: pad the last one with empty (masked) cells
        block = np.full((rows, widest), np.nan)
        block[:, : len(band)] = scores[:, band]
        image = axes.imshow(np.ma.masked_invalid(block), norm=norm, cmap=cmap, aspect="auto", interpolation="nearest")
        axes.set_xlim(-0.5, widest - 0.5)
        _label_cells(axes, band, column_labels, row_labels, font, upright)
        if annotate:
            _annotate(axes, scores[:, band], image)
        axes_list.append(axes)
    if sinks:
        sink_norm, sink_cmap, _ = _llm_norm(scores[:, sinks], signed, False)
        sink_axes = figure.add_subplot(grid[0, 0], label="sink")
        sink_image = sink_axes.imshow(scores[:, sinks], norm=sink_norm, cmap=sink_cmap, aspect="auto",
                                      interpolation="nearest")
        _label_cells(sink_axes, sinks, column_labels, row_labels, font, upright=False)
        sink_axes.set_title("sink, own scale", fontsize=8)
        if annotate or rows * len(sinks) <= 40:
            _annotate(sink_axes, scores[:, sinks], sink_image)
    bar = figure.colorbar(image, ax=axes_list, location="right", fraction=0.04 if len(bands) > 1 else 0.05,
                          pad=0.01, aspect=max(8, 12 * len(bands)))
    bar.set_label(f"{label}\n{scale}", fontsize=7)
    bar.ax.tick_params(labelsize=7)
    if sinks:
        sink_bar = figure.colorbar(sink_image, ax=sink_axes, location="right", fraction=0.25, pad=0.04)
        sink_bar.ax.tick_params(labelsize=7)
    axes_list[-1].set_xlabel("prompt token" + (" (sink on its own scale, left)" if sinks else ""), fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    return figure


def _bad_column(j, n: int):
    raise ValueError(f"sink_columns has {j!r}, not an input-token index of 0..{n - 1}.")


def _label_cells(axes, columns: Sequence[int], column_labels, row_labels, font: int, upright: bool) -> None:
    """Prompt-token labels under the cells, output-token labels left of them."""
    axes.set_xticks(range(len(columns)), [column_labels[j] for j in columns], fontsize=font,
                    rotation=90 if upright else 45, ha="center" if upright else "right",
                    rotation_mode="default" if upright else "anchor")
    axes.set_yticks(range(len(row_labels)), row_labels, fontsize=font)
    axes.tick_params(length=2, pad=2)


def _annotate(axes, values: np.ndarray, image) -> None:
    """Each cell's value (2 significant digits) in a colour readable on the cell."""
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            rgba = image.cmap(image.norm(values[i, j]))
            axes.text(j, i, f"{values[i, j]:.2g}", ha="center", va="center", fontsize=6.5, color=_text_colour(rgba))
