"""Figures of the agreement study, after the paper's Figs. 1–3.

* :func:`plot_raw_maps` — Fig. 1: the head-averaged raw attention map of every layer for one
  example.
* :func:`plot_method_maps` — Fig. 2: raw attention, rollout and flow maps (all query positions)
  across layers for one example, token labels on the axes.
* :func:`plot_cls_scores` — Fig. 3: the ``[CLS]`` row of raw / rollout / flow at every layer
  (layers × tokens), with the blank-out and gradient scores of the same example underneath.
* :func:`plot_correlations` — mean ± std of Spearman's ρ per layer for the three methods
  against blank-out and against gradients, with the paper's values dashed.

Every function writes one PNG and returns its path. As in :mod:`captum_attnflow.visualize`, the
figures are :class:`matplotlib.figure.Figure` objects built without ``pyplot``: no display, no
backend switch and no global figure state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from captum_attnflow.studies.agreement.study import METHOD_NAMES, METHODS, PAPER_REFERENCE, PAPER_TABLES, REFERENCES
from captum_attnflow.visualize import SEQUENTIAL_CMAP

REFERENCE_TITLES = {
    "blank_out": "vs blank-out (Table 1)",
    "gradient": "vs |Σ_d grad| (Table 2)",
    "gradient_l2": "vs ‖grad‖₂ (Table 2b; paper: Table 2)",
}
COLORS = {"raw": "tab:gray", "rollout": "tab:blue", "flow": "tab:red"}
REFERENCE_LABELS = {"blank_out": "blank-out", "gradient": "|Σ_d grad|", "gradient_l2": "‖grad‖₂"}


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_raw_maps(raw: np.ndarray, tokens: list[str], path: Path) -> Path:
    """Fig. 1. ``raw``: ``(L, n, n)`` head-averaged attention (row = query); ``tokens``: ``n`` labels.

    One colour scale (0 to the largest weight of any layer) and one colour bar for all layers."""
    num_layers = raw.shape[0]
    fig = Figure(figsize=(2.6 * num_layers + 1.2, 3.6), constrained_layout=True)
    axes = np.atleast_1d(fig.subplots(1, num_layers, sharey=True))
    high = float(raw.max()) or 1.0
    for layer, ax in enumerate(axes):
        image = ax.imshow(raw[layer], cmap=SEQUENTIAL_CMAP, vmin=0, vmax=high)
        ax.set_title(f"L{layer + 1}")
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=7)
        ax.set_yticks(range(len(tokens)), tokens, fontsize=7)
    fig.colorbar(image, ax=list(axes), shrink=0.85, label="attention weight")
    fig.suptitle("Raw attention (mean over heads) per layer; rows = queries, columns = keys")
    return _save(fig, path)


#: Fig. 2's log colour scale starts here; smaller weights are drawn in its lowest colour.
LOG_FLOOR = 1e-3


def plot_method_maps(maps: dict[str, np.ndarray], tokens: list[str], path: Path) -> Path:
    """Fig. 2. ``maps``: method -> ``(L, n, n)`` full matrices for one example (row = query).

    ONE colour scale and colour bar for all panels, so raw attention, rollout and flow compare —
    a LOG scale from :data:`LOG_FLOOR` to the largest value: on a linear scale the first layer's
    near-one raw weights leave the deep layers' raw attention (≤ 0.2) invisible. Token labels
    (9 pt) on the left column and the bottom row."""
    from matplotlib.colors import LogNorm
    from matplotlib import colormaps

    num_layers = next(iter(maps.values())).shape[0]
    n = len(tokens)
    side = max(2.2, 0.2 * n)
    fig = Figure(figsize=(side * num_layers + 2.2, side * len(maps) + 1.2), constrained_layout=True)
    axes = fig.subplots(len(maps), num_layers, squeeze=False, sharex=True, sharey=True)
    high = max(float(values.max()) for values in maps.values()) or 1.0
    norm = LogNorm(vmin=LOG_FLOOR, vmax=max(high, 10 * LOG_FLOOR), clip=False)
    cmap = colormaps[SEQUENTIAL_CMAP].with_extremes(under=colormaps[SEQUENTIAL_CMAP](0.0))
    for row, (name, values) in enumerate(maps.items()):
        for layer in range(num_layers):
            ax = axes[row, layer]
            image = ax.imshow(np.maximum(values[layer], LOG_FLOOR * 0.5), cmap=cmap, norm=norm)
            ax.set_xticks(range(n), tokens, rotation=90, fontsize=9)
            ax.set_yticks(range(n), tokens, fontsize=9)
            ax.tick_params(length=2, pad=1.5)
            if row == 0:
                ax.set_title(f"L{layer + 1}", fontsize=12)
            if layer == 0:
                ax.set_ylabel(f"{METHOD_NAMES[name]}\n(rows = queries)", fontsize=12)
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.6, extend="min")
    bar.set_label(f"weight, log scale, one scale for all panels (below {LOG_FLOOR:g}: lowest colour)", fontsize=10)
    fig.suptitle("Raw attention vs rollout vs flow across layers (columns = input tokens)", fontsize=13)
    return _save(fig, path)


def plot_cls_scores(
    cls_rows: dict[str, np.ndarray], references: dict[str, np.ndarray], tokens: list[str], layers: list[int], path: Path
) -> Path:
    """Fig. 3. ``cls_rows``: method -> ``(k, n)`` [CLS] rows at ``layers``; ``references``:
    reference name (:data:`~captum_attnflow.studies.agreement.study.REFERENCES`) -> ``(n,)``.

    The three methods share one colour scale and colour bar; the references (different units)
    are each scaled to their maximum and have their own colour bar."""
    fig = Figure(figsize=(0.5 * len(tokens) + 3, 1.5 * (len(cls_rows) + 1) + 1.2), constrained_layout=True)
    axes = fig.subplots(len(cls_rows) + 1, 1, sharex=True)
    high = max(float(values.max()) for values in cls_rows.values()) or 1.0
    for ax, (name, values) in zip(axes, cls_rows.items()):
        image = ax.imshow(values, cmap=SEQUENTIAL_CMAP, aspect="auto", vmin=0, vmax=high, origin="lower")
        ax.set_yticks(range(len(layers)), [f"L{layer}" for layer in layers], fontsize=7)
        ax.set_title(f"{METHOD_NAMES[name]}: [CLS] → tokens", fontsize=9)
    fig.colorbar(image, ax=list(axes[:-1]), shrink=0.9, label="score (shared scale)")
    ax = axes[-1]
    stacked = np.stack([values / max(values.max(), 1e-12) for values in references.values()])
    image = ax.imshow(stacked, cmap="magma", aspect="auto", vmin=0, vmax=1)
    ax.set_yticks(range(len(references)), [REFERENCE_LABELS.get(r, r) for r in references], fontsize=7)
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
    ax.set_title("reference importance (each row scaled to max 1)", fontsize=9)
    fig.colorbar(image, ax=ax, label="score / max")
    return _save(fig, path)


def plot_correlations(summaries: dict[str, dict[str, dict[str, np.ndarray]]], layers: list[int], path: Path) -> Path:
    """Per-layer ρ. ``summaries``: reference -> method -> ``{"mean": (k,), "std": (k,)}``."""
    fig = Figure(figsize=(5.5 * len(REFERENCES), 4))
    axes = fig.subplots(1, len(REFERENCES), sharey=True)
    for ax, ref in zip(axes, REFERENCES):
        for offset, name in zip((-0.12, 0.0, 0.12), METHODS):
            summary = summaries[ref][name]
            x = np.asarray(layers, dtype=float) + offset
            ax.errorbar(x, summary["mean"], yerr=summary["std"], marker="o", capsize=3, color=COLORS[name],
                        label=f"{METHOD_NAMES[name]} (this run)")
            paper = np.array([PAPER_TABLES[PAPER_REFERENCE[ref]][name][layer - 1][0] for layer in layers])
            ax.plot(layers, paper, linestyle="--", marker="x", color=COLORS[name], alpha=0.6,
                    label=f"{METHOD_NAMES[name]} (paper)")
        ax.axhline(0, color="black", linewidth=0.5)
        ax.set_xticks(layers, [f"L{layer}" for layer in layers])
        ax.set_title(f"Spearman ρ {REFERENCE_TITLES[ref]}")
        ax.set_xlabel("layer")
    axes[0].set_ylabel("mean ± std over examples")
    axes[-1].legend(fontsize=7, loc="lower right")
    return _save(fig, path)
