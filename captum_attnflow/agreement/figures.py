"""Figures of the agreement study, after the paper's Figs. 1–3.

* :func:`plot_raw_maps` — Fig. 1: the head-averaged raw attention map of every layer for one
  example.
* :func:`plot_method_maps` — Fig. 2: raw attention, rollout and flow maps (all query positions)
  across layers for one example.
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

from captum_attnflow.agreement.study import METHOD_NAMES, METHODS, PAPER_REFERENCE, PAPER_TABLES, REFERENCES

REFERENCE_TITLES = {
    "blank_out": "vs blank-out (Table 1)",
    "gradient": "vs |Σ_d grad| (Table 2)",
    "gradient_l2": "vs ‖grad‖₂ (Table 2b; paper: Table 2)",
}
COLORS = {"raw": "tab:gray", "rollout": "tab:blue", "flow": "tab:red"}


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


def plot_raw_maps(raw: np.ndarray, tokens: list[str], path: Path) -> Path:
    """Fig. 1. ``raw``: ``(L, n, n)`` head-averaged attention (row = query); ``tokens``: ``n`` labels."""
    num_layers = raw.shape[0]
    fig = Figure(figsize=(3.2 * num_layers, 3.6))
    axes = fig.subplots(1, num_layers)
    for layer, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(raw[layer], cmap="viridis", vmin=0)
        ax.set_title(f"L{layer + 1}")
        ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=6)
        ax.set_yticks(range(len(tokens)), tokens if layer == 0 else [""] * len(tokens), fontsize=6)
    fig.suptitle("Raw attention (mean over heads) per layer; rows = queries, columns = keys")
    return _save(fig, path)


def plot_method_maps(maps: dict[str, np.ndarray], tokens: list[str], path: Path) -> Path:
    """Fig. 2. ``maps``: method -> ``(L, n, n)`` full matrices for one example."""
    num_layers = next(iter(maps.values())).shape[0]
    fig = Figure(figsize=(2.6 * num_layers, 2.8 * len(maps)))
    axes = fig.subplots(len(maps), num_layers, squeeze=False)
    for row, (name, values) in enumerate(maps.items()):
        for layer in range(num_layers):
            ax = axes[row, layer]
            ax.imshow(values[layer], cmap="viridis", vmin=0)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(f"L{layer + 1}")
            if layer == 0:
                ax.set_ylabel(METHOD_NAMES[name])
    fig.suptitle("Raw attention vs rollout vs flow across layers: " + " ".join(tokens), fontsize=9)
    return _save(fig, path)


def plot_cls_scores(
    cls_rows: dict[str, np.ndarray], references: dict[str, np.ndarray], tokens: list[str], layers: list[int], path: Path
) -> Path:
    """Fig. 3. ``cls_rows``: method -> ``(k, n)`` [CLS] rows at ``layers``; ``references``:
    reference name (:data:`~captum_attnflow.agreement.study.REFERENCES`) -> ``(n,)``."""
    fig = Figure(figsize=(0.45 * len(tokens) + 2, 1.6 * (len(cls_rows) + 1) + 1))
    axes = fig.subplots(len(cls_rows) + 1, 1)
    for ax, (name, values) in zip(axes, cls_rows.items()):
        ax.imshow(values, cmap="viridis", aspect="auto", vmin=0)
        ax.set_yticks(range(len(layers)), [f"L{layer}" for layer in layers], fontsize=7)
        ax.set_xticks([])
        ax.set_title(f"{METHOD_NAMES[name]}: [CLS] → tokens", fontsize=9)
    ax = axes[-1]
    stacked = np.stack([values / max(values.max(), 1e-12) for values in references.values()])
    ax.imshow(stacked, cmap="magma", aspect="auto", vmin=0)
    ax.set_yticks(range(len(references)), list(references), fontsize=7)
    ax.set_xticks(range(len(tokens)), tokens, rotation=90, fontsize=8)
    ax.set_title("reference importance (each row scaled to max 1)", fontsize=9)
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
