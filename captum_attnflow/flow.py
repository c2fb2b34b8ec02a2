"""Attention flow (Abnar & Zuidema 2020, §3): max-flow through the layered attention graph.

Nodes ``(l, j)`` for ``l = 0..L`` (layer 0 = the input tokens), arcs ``(l, i) -> (l-1, j)`` with
capacity ``Â_l[i, j]`` (heads fused, residual, row-normalised; see :mod:`captum_attnflow.graph`).
The flow attribution of output node ``(l, i)`` to input token ``j`` is
``maxflow((l, i) -> (0, j))``, one single-sink problem per ``j``, normalised over ``j``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from captum_attnflow.graph import check_index, head_graph, prepare_graph, to_output
from captum_attnflow.maxflow import SOLVERS


def _indices(value, size: int, name: str, what: str) -> list[int]:
    """``None`` -> all, an int -> [it], a sequence -> checked list (negative indices allowed)."""
    if value is None:
        return list(range(size))
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return [check_index(value, size, name, what)]
    if isinstance(value, torch.Tensor):
        value = value.flatten().tolist()
    if not isinstance(value, Iterable):
        raise TypeError(f"{name} must be None, an integer or a sequence of integers; got {type(value).__name__}.")
    out = [check_index(v, size, name, what) for v in value]
    if not out:
        raise ValueError(f"{name} is empty; pass None for all {what}.")
    return sorted(set(out))


def _solver(method: str):
    if method == "auto":
        method = "networkx" if "fast" not in SOLVERS else "fast"
    try:
        return SOLVERS[method]
    except KeyError:
        raise ValueError(f"unknown flow method {method!r}; choose one of {('auto',) + tuple(SOLVERS)}.") from None


def flow_row(capacities: np.ndarray, source: int, live: np.ndarray | None, solver) -> np.ndarray:
    """Normalised flow from the top node ``source`` of ``capacities`` ``(l, n, n)`` to every input.

    Padded tokens (``live[j] = False``) are removed from the graph before solving and get 0.
    """
    n = capacities.shape[-1]
    if live is not None and not live.all():
        keep = np.flatnonzero(live)
        sub = capacities[:, keep][:, :, keep]
        values = np.zeros(n, dtype=np.float64)
        values[keep] = solver(np.ascontiguousarray(sub), int(np.searchsorted(keep, source)))
    else:
        values = solver(np.ascontiguousarray(capacities), source)
    total = values.sum()
    return values / total if total > 0 else values


def _flow(graphs: np.ndarray, live: np.ndarray | None, tasks: Sequence[tuple[int, int, int]], solver) -> dict:
    """Solve every ``(batch, layer, position)`` task on ``graphs`` ``(batch, L, n, n)``."""
    results = {}
    for b, layer, position in tasks:
        example_live = None if live is None else live[b]
        if example_live is not None and not example_live[position]:
            results[(b, layer, position)] = np.zeros(graphs.shape[-1])
            continue
        results[(b, layer, position)] = flow_row(graphs[b, : layer + 1], position, example_live, solver)
    return results


def _assemble(shape, tasks, results, dtype, device) -> torch.Tensor:
    out = np.full(shape, np.nan, dtype=np.float64)
    for b, layer, position in tasks:
        out[b, layer, position] = results[(b, layer, position)]
    return torch.as_tensor(out, device=device).to(dtype)


def attention_flow(
    attentions,
    *,
    residual: bool = True,
    head_fusion: str = "mean",
    mask=None,
    output_positions=None,
    layers=None,
    method: str = "auto",
    renormalize: bool = False,
):
    """Attention flow for the requested output positions and layers.

    Args:
        attentions: ``L`` tensors (or numpy arrays) of shape ``(batch, heads, n, n)``, first layer
            first — Hugging Face's ``output_attentions``.
        residual: model the residual connection (``Â = 0.5·A + 0.5·I``); ``False`` uses ``A``.
        head_fusion: ``"mean"`` (the paper), ``"max"`` or ``"min"`` over heads.
        mask: optional ``(batch, n)`` padding mask, 1/True for real tokens. Padded tokens are
            removed from the graph: their attribution is 0 and their own rows are 0.
        output_positions: query positions ``i`` to trace (int, sequence, or ``None`` for all).
        layers: 0-based layers ``l-1`` to compute (int, sequence, or ``None`` for all).
        method: max-flow solver, ``"auto"`` (the fastest exact one) or a name in
            :data:`captum_attnflow.maxflow.SOLVERS` (``"networkx"`` is the reference).
        renormalize: divide attention rows by their sums instead of rejecting rows off 1.

    Returns:
        ``(batch, L, n, n)``: ``out[b, l-1, i, j] = maxflow((l, i) -> (0, j))`` normalised over
        ``j``. Rows that were not requested are NaN (never silently 0). Same dtype and device as
        the input (numpy in, numpy out). Values are computed in float64.
    """
    augmented, _, mask, was_numpy = prepare_graph(
        attentions, residual=residual, head_fusion=head_fusion, mask=mask, renormalize=renormalize
    )
    batch, num_layers, n, _ = augmented.shape
    layer_list = _indices(layers, num_layers, "layers", "layers")
    positions = _indices(output_positions, n, "output_positions", "positions")
    solver = _solver(method)
    graphs = augmented.detach().to("cpu", torch.float64).numpy()
    live = None if mask is None else mask.cpu().numpy()
    tasks = [(b, l, i) for b in range(batch) for l in layer_list for i in positions]
    results = _flow(graphs, live, tasks, solver)
    out = _assemble((batch, num_layers, n, n), tasks, results, augmented.dtype, augmented.device)
    return to_output(out, was_numpy)


def head_flow(
    attentions,
    *,
    layer: int,
    head: int | None = None,
    residual: bool = True,
    head_fusion: str = "mean",
    mask=None,
    output_positions=None,
    method: str = "auto",
    renormalize: bool = False,
):
    """Per-head "input attention" by flow (appendix A.1).

    The graph has the layers below ``layer`` fused single-head (with the residual) and head
    ``h``'s own matrix of ``layer`` (with the residual, row-normalised) as the top layer; the flow
    from ``(layer, i)`` to each input token is computed on that graph and normalised.

    Returns:
        ``(batch, heads, n, n)`` (``heads = 1`` when ``head`` is given); unrequested rows NaN.
    """
    augmented, stack, mask, was_numpy = prepare_graph(
        attentions, residual=residual, head_fusion=head_fusion, mask=mask, renormalize=renormalize
    )
    batch, num_layers, n, _ = augmented.shape
    layer = check_index(layer, num_layers, "layer", "layers")
    top = head_graph(stack, layer, residual=residual, mask=mask)
    heads = list(range(stack.shape[2]))
    if head is not None:
        heads = [check_index(head, stack.shape[2], "head", "heads")]
    positions = _indices(output_positions, n, "output_positions", "positions")
    solver = _solver(method)
    below = augmented[:, :layer].detach().to("cpu", torch.float64).numpy()
    tops = top[:, heads].detach().to("cpu", torch.float64).numpy()
    graphs = np.concatenate([np.repeat(below[:, None], len(heads), axis=1), tops[:, :, None]], axis=2)
    graphs = graphs.reshape(batch * len(heads), layer + 1, n, n)
    live = None if mask is None else np.repeat(mask.cpu().numpy(), len(heads), axis=0)
    last = layer  # index of the top layer inside each per-head graph
    tasks = [(g, last, i) for g in range(batch * len(heads)) for i in positions]
    results = _flow(graphs, live, tasks, solver)
    out = _assemble((batch * len(heads), layer + 1, n, n), tasks, results, augmented.dtype, augmented.device)
    return to_output(out[:, last].reshape(batch, len(heads), n, n), was_numpy)
