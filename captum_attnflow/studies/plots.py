"""Figures of the studies; every function writes one image with :func:`captum_attnflow.visualize.save_figure`.

Token-level views use :func:`captum_attnflow.visualize.token_heatmap`; these are the per-layer views.

* :func:`plot_layer_correlations` — Table 3 as curves over layers, paper values as markers.
* :func:`plot_referent_layers` — weight on the two candidate referents across layers (Fig. 4).
* :func:`plot_layer_curves` — shares or scores per layer, several curves in one panel.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from captum_attnflow.visualize import save_figure

COLORS = {"raw": "tab:gray", "rollout": "tab:blue", "flow": "tab:orange"}


def plot_layer_correlations(
    records: Sequence[dict],
    num_layers: int,
    path: str | Path,
    *,
    paper: Mapping[str, Mapping[int, tuple[float, float]]] | None = None,
    title: str = "",
) -> Path:
    """Mean ± std Spearman ρ per layer: a row of panels per view, a column per reference.

    Args:
        records: dicts with ``reference``, ``view``, ``method``, ``layer`` (1-based), ``mean``,
            ``std`` (:func:`captum_attnflow.studies.sentiment.summary_records`).
        num_layers: number of layers on the x axis.
        path: the PNG to write.
        paper: ``method -> {layer: (mean, std)}`` drawn as hollow markers in the
            ``("gradient", "max")`` panel.
        title: the figure title.
    """
    references = list(dict.fromkeys(r["reference"] for r in records))
    views = list(dict.fromkeys(r["view"] for r in records))
    figure = Figure(figsize=(3.6 * len(references), 3.0 * len(views)), constrained_layout=True)
    axes = figure.subplots(len(views), len(references), sharey=True, squeeze=False)
    layers = np.arange(1, num_layers + 1)
    for (row, view), (column, reference) in itertools.product(enumerate(views), enumerate(references)):
        axis = axes[row][column]
        for method, color in COLORS.items():
            rows = sorted((r for r in records if (r["reference"], r["view"], r["method"]) == (reference, view, method)),
                          key=lambda r: r["layer"])
            if not rows:
                continue
            mean = np.array([r["mean"] for r in rows])
            std = np.array([r["std"] for r in rows])
            axis.plot(layers[: len(rows)], mean, "-o", color=color, label=method, markersize=4)
            axis.fill_between(layers[: len(rows)], mean - std, mean + std, color=color, alpha=0.12)
            if paper is not None and (reference, view) == ("gradient", "max") and method in paper:
                known = sorted(paper[method])
                axis.plot(known, [paper[method][k][0] for k in known], "D", color=color, fillstyle="none",
                          markersize=7, label=f"{method} (paper)")
        axis.axhline(0, color="black", linewidth=0.5)
        axis.set_title(f"vs {reference}, {view} view", fontsize=9)
        axis.set_xlabel("layer")
        axis.set_xticks(layers)
    for row in range(len(views)):
        axes[row][0].set_ylabel("Spearman ρ")
    axes[0][0].legend(fontsize=7, loc="best")
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, path, dpi=110)


def plot_referent_layers(
    weights: Mapping[str, np.ndarray],
    referents: Sequence[str],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """Fig. 4: attribution of the predicting position to each referent across layers.

    Args:
        weights: method -> ``(L, 2)`` attribution to the two referents at every layer.
        referents: the two referents' labels (legend), e.g. ``["author", "Sara"]``.
        path: the PNG to write.
        title: the figure title (e.g. the sentence and the model's choice).
    """
    figure = Figure(figsize=(3.4 * len(weights), 2.9), constrained_layout=True)
    axes = figure.subplots(1, len(weights), squeeze=False)
    for axis, (method, values) in zip(axes[0], weights.items()):
        values = np.asarray(values, dtype=float)
        layers = np.arange(1, values.shape[0] + 1)
        for column, (label, style) in enumerate(zip(referents, ("-o", "-s"))):
            axis.plot(layers, values[:, column], style, markersize=3, label=label)
        axis.set_title(method, fontsize=9)
        axis.set_xlabel("layer")
        if (values >= 0).all():
            axis.set_ylim(bottom=0)  # every panel starts at 0: heights compare across methods
    axes[0][0].set_ylabel("attribution to referent")
    axes[0][-1].legend(fontsize=8)
    if title:
        figure.suptitle(title, fontsize=9)
    return save_figure(figure, path, dpi=110)


def plot_layer_curves(
    groups: Mapping[str, Mapping[str, np.ndarray]],
    path: str | Path,
    *,
    ylabel: str,
    title: str = "",
    reference: tuple[float, str] | None = (0.5, "chance (0.5)"),
) -> Path:
    """Per-layer curves of several methods and measures in one panel (e.g. shares of sentences).

    Args:
        groups: measure -> {method: ``(L,)`` values}; each measure gets its own line style, each
            method its colour, the legend (right of the panel) reads ``"method: measure"``.
        path: the PNG to write.
        ylabel: the y-axis label (the axis spans [0, 1]).
        title: the figure title.
        reference: ``(value, label)`` of a horizontal reference line, in the legend too
            (default: 0.5, labelled chance); ``None``: no line.
    """
    figure = Figure(figsize=(8.4, 3.4), constrained_layout=True)
    axis = figure.subplots()
    for (measure, curves), style in zip(groups.items(), itertools.cycle(("-", "--", ":"))):
        for method, values in curves.items():
            values = np.asarray(values, dtype=float)
            axis.plot(np.arange(1, values.shape[0] + 1), values, style, color=COLORS.get(method), label=f"{method}: {measure}")
    if reference is not None:
        axis.axhline(reference[0], color="black", linewidth=0.8, linestyle=":", label=reference[1])
    axis.set_xlabel("layer")
    axis.set_ylabel(ylabel)
    axis.set_ylim(0, 1)
    figure.legend(fontsize=7, loc="outside right upper")
    if title:
        axis.set_title(title, fontsize=9)
    return save_figure(figure, path, dpi=110)
