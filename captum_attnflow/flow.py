"""Attention flow (Abnar & Zuidema 2020, §3): max-flow through the layered attention graph.

Nodes ``(l, j)`` for ``l = 0..L`` (layer 0 = the input tokens), arcs ``(l, i) -> (l-1, j)`` with
capacity ``Â_l[i, j]`` (heads fused, residual, row-normalised; see :mod:`captum_attnflow.graph`).
The flow attribution of output node ``(l, i)`` to input token ``j`` is
``maxflow((l, i) -> (0, j))``, one single-sink problem per ``j``, normalised over ``j``.

The work is split into *groups*: one graph (an example, or an example and head for
:func:`head_flow`) cut at one layer, with all its requested output positions, so that the
``"fast"`` solver sorts the arcs of a graph once for all its positions. Groups can run in
``workers`` processes.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Iterable, Sequence

import numpy as np
import torch

from captum_attnflow.graph import check_index, head_graph, prepare_graph, to_output
from captum_attnflow.maxflow import SOLVERS, max_flows

#: A group of tasks: ``(graph index, 0-based layer, output positions)``.
Group = tuple[int, int, list[int]]


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


def _method(method: str) -> str:
    """Resolve ``"auto"`` (the fastest exact solver) and reject unknown names."""
    if method == "auto":
        return "fast" if "fast" in SOLVERS else "networkx"
    if method not in SOLVERS:
        raise ValueError(f"unknown flow_solver {method!r}; choose one of {('auto',) + tuple(SOLVERS)}.")
    return method


def _workers(workers) -> int:
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)):
        raise TypeError(f"workers must be a positive integer (number of processes); got {type(workers).__name__}.")
    if workers < 1:
        raise ValueError(f"workers={workers} must be at least 1 (1 = solve in this process).")
    return int(workers)


def flow_rows(
    capacities: np.ndarray,
    sources: Sequence[int],
    live: np.ndarray | None,
    method: str,
    threads: int | None = None,
) -> np.ndarray:
    """Normalised flow from the top nodes ``sources`` of ``capacities`` ``(l, n, n)`` to every input.

    Padded tokens (``live[j] = False``) are removed from the graph before solving and get 0; a
    padded source gets a zero row.

    Returns:
        float64 ``(len(sources), n)``; live rows sum to 1.
    """
    n = capacities.shape[-1]
    rows = np.zeros((len(sources), n))
    keep = np.arange(n) if live is None else np.flatnonzero(live)
    solved = [index for index, source in enumerate(sources) if live is None or live[source]]
    if not solved:
        return rows
    if len(keep) < n:
        capacities = capacities[:, keep][:, :, keep]
    local = np.searchsorted(keep, [sources[index] for index in solved])
    values = max_flows(method, np.ascontiguousarray(capacities), local, threads)
    totals = values.sum(axis=1, keepdims=True)
    rows[np.ix_(solved, keep)] = np.divide(values, totals, out=np.zeros_like(values), where=totals > 0)
    return rows


def _solve_group(graphs: np.ndarray, live: np.ndarray | None, group: Group, method: str, threads: int | None):
    index, layer, positions = group
    example_live = None if live is None else live[index]
    return flow_rows(graphs[index, : layer + 1], positions, example_live, method, threads)


#: Per-process state of a pool worker (set by ``_init_worker``).
_SHARED: dict = {}


def _init_worker(graphs: np.ndarray, live: np.ndarray | None, method: str) -> None:
    """Process-pool initialiser: keep the graphs in the worker (sent once, not once per group)."""
    _SHARED.update(graphs=graphs, live=live, method=method)


def _solve_group_in_worker(group: Group) -> np.ndarray:
    """One group in a worker process, on one thread: the workers already share the cores (the
    solvers use no BLAS)."""
    return _solve_group(_SHARED["graphs"], _SHARED["live"], group, _SHARED["method"], 1)


def _solve(graphs: np.ndarray, live: np.ndarray | None, groups: list[Group], method: str, workers: int, progress: bool):
    """Solve every group of ``graphs`` ``(graphs, L, n, n)``: ``workers`` processes, optional tqdm bar."""
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(group[2]) for group in groups), desc=f"attention flow ({method})", unit="row")
    results = []
    try:
        if workers == 1 or len(groups) == 1:
            for group in groups:
                results.append(_solve_group(graphs, live, group, method, None))
                if bar is not None:
                    bar.update(len(group[2]))
        else:
            pool = ProcessPoolExecutor(
                min(workers, len(groups)), initializer=_init_worker, initargs=(graphs, live, method)
            )
            with pool:
                for group, rows in zip(groups, pool.map(_solve_group_in_worker, groups)):
                    results.append(rows)
                    if bar is not None:
                        bar.update(len(group[2]))
    finally:
        if bar is not None:
            bar.close()
    return results


def _assemble(shape, groups: list[Group], results, dtype, device) -> torch.Tensor:
    out = np.full(shape, np.nan, dtype=np.float64)
    for (index, layer, positions), rows in zip(groups, results):
        out[index, layer, positions] = rows
    return torch.as_tensor(out, device=device).to(dtype)


def attention_flow(
    attentions,
    *,
    residual: bool = True,
    head_fusion: str = "mean",
    mask=None,
    output_positions=None,
    layers=None,
    flow_solver: str = "auto",
    renormalize: bool = False,
    workers: int = 1,
    progress: bool = False,
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
        flow_solver: max-flow solver, ``"auto"`` (``"fast"``, the exact compiled solver) or a name in
            :data:`captum_attnflow.maxflow.SOLVERS` (``"networkx"`` is the reference, ``"scipy"``
            a baseline). Every solver is exact; they differ only in speed.
        renormalize: divide attention rows by their sums instead of rejecting rows off 1.
        workers: processes solving ``(example, layer)`` groups in parallel. ``1`` (default) solves
            here; the ``"fast"`` solver then already shares each graph's sinks over all cores
            (numba's thread count), so more workers pay mainly for the single-threaded
            ``"scipy"``/``"networkx"`` solvers and for many small graphs. Each worker uses one
            thread.
        progress: show a tqdm progress bar (one step per output row).

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
    method = _method(flow_solver)
    workers = _workers(workers)
    graphs = augmented.detach().to("cpu", torch.float64).numpy()
    live = None if mask is None else mask.cpu().numpy()
    groups = [(b, layer, positions) for b in range(batch) for layer in layer_list]
    results = _solve(graphs, live, groups, method, workers, progress)
    out = _assemble((batch, num_layers, n, n), groups, results, augmented.dtype, augmented.device)
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
    flow_solver: str = "auto",
    renormalize: bool = False,
    workers: int = 1,
    progress: bool = False,
):
    """Per-head "input attention" by flow (appendix A.1).

    The graph has the layers below ``layer`` fused single-head (with the residual) and head
    ``h``'s own matrix of ``layer`` (with the residual, row-normalised) as the top layer; the flow
    from ``(layer, i)`` to each input token is computed on that graph and normalised.
    ``flow_solver``, ``workers`` and ``progress`` are as in :func:`attention_flow`.

    Returns:
        ``(batch, heads, n, n)`` (``heads = 1`` when ``head`` is given); unrequested rows NaN.
    """
    augmented, raw_layers, mask, was_numpy = prepare_graph(
        attentions, residual=residual, head_fusion=head_fusion, mask=mask, renormalize=renormalize
    )
    batch, num_layers, n, _ = augmented.shape
    layer = check_index(layer, num_layers, "layer", "layers")
    top = head_graph(raw_layers, layer, residual=residual, mask=mask)
    heads = list(range(top.shape[1]))
    if head is not None:
        heads = [check_index(head, top.shape[1], "head", "heads")]
    positions = _indices(output_positions, n, "output_positions", "positions")
    method = _method(flow_solver)
    workers = _workers(workers)
    below = augmented[:, :layer].detach().to("cpu", torch.float64).numpy()
    tops = top[:, heads].detach().to("cpu", torch.float64).numpy()
    graphs = np.concatenate([np.repeat(below[:, None], len(heads), axis=1), tops[:, :, None]], axis=2)
    graphs = graphs.reshape(batch * len(heads), layer + 1, n, n)
    live = None if mask is None else np.repeat(mask.cpu().numpy(), len(heads), axis=0)
    groups = [(g, layer, positions) for g in range(batch * len(heads))]  # ``layer`` = the top layer
    results = _solve(graphs, live, groups, method, workers, progress)
    out = _assemble((batch * len(heads), layer + 1, n, n), groups, results, augmented.dtype, augmented.device)
    return to_output(out[:, layer].reshape(batch, len(heads), n, n), was_numpy)
