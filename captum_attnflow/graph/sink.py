"""Removing the attention sink from a graph before rollout or flow (:func:`without_sink`)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from captum_attnflow.graph.build import prepare_graph
from captum_attnflow.graph.contributions import ContributionGraph


def without_sink(graph: "ContributionGraph | Sequence[Tensor]", sink: int = 0, *, mask=None) -> ContributionGraph:
    """The graph with the attention sink's column removed: ``M_l[i, sink] = 0`` for every query
    ``i ≠ sink`` in every layer, rows renormalised (before rollout's / flow's residual).

    On decoder LLMs the first token takes most of the weight of most heads while moving little
    (the *attention sink*); rolled out over all layers it absorbs nearly all the mass, and what is
    left is ranked by position. Removing it keeps the graph row-stochastic over the other tokens.
    Whether it helps is measured (``captum-attnflow llm-faithfulness``, the docs' LLM page).

    Args:
        graph: a :class:`ContributionGraph` (``value_norm_graph``, ``alti_graph``, a recording's
            :func:`recorded_graph`) or attention ``L × (batch, heads, n, n)``, which is taken as
            the paper's graph (heads averaged; the residual is added later by rollout / flow).
        sink: the sink's position (default 0, the first token).
        mask: ``(batch, n)`` padding mask, only with attention input (a ContributionGraph
            already has its padded entries at 0).

    Returns:
        :class:`ContributionGraph` named ``"<name>-no-sink"``. A row whose only weight was on the
        sink (the sink's own row, the first query of a causal model) keeps it.
    """
    if not isinstance(graph, ContributionGraph):
        fused, _, _, _ = prepare_graph(graph, residual=False, head_fusion="mean", mask=mask)
        graph = ContributionGraph(fused, residual_included=False, name="attention")
    matrices = graph.matrices
    n = matrices.shape[-1]
    if isinstance(sink, bool) or not isinstance(sink, int) or not -n <= sink < n:
        raise ValueError(f"sink={sink!r} must be a token position in -{n}..{n - 1}.")
    sink %= n
    kept = matrices.clone()
    kept[..., :, sink] = 0
    kept[..., sink, sink] = matrices[..., sink, sink]
    sums = kept.sum(-1, keepdim=True)
    only_sink = sums <= 0  # e.g. the first query of a causal model: nothing else to attend to
    kept = torch.where(only_sink, matrices, kept / sums.clamp_min(torch.finfo(kept.dtype).tiny))
    return ContributionGraph(kept, graph.residual_included, f"{graph.name}-no-sink")
