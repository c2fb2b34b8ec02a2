"""Generated text: a readable map of Captum's ``LLMAttributionResult`` (``LLMAttentionAttribution``,
``LLMKeyAblation``, Captum's own ``LLMAttribution``)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from matplotlib.figure import Figure

from captum_attnflow.visualize.common import DIVERGING_CMAP, SEQUENTIAL_CMAP, _as_numpy, _text_colour
from captum_attnflow.visualize.text import is_special_token


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
