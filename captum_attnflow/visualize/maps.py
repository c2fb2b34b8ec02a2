"""Matplotlib maps of token scores: method × token, layer × token, ViT patches."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from captum_attnflow.visualize.common import DIVERGING_CMAP, SEQUENTIAL_CMAP, _as_numpy, _live_indices, _scaled, _text_colour
from captum_attnflow.visualize.text import _check_tokens, readable_tokens


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
