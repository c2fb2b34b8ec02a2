"""Attention flow (Abnar & Zuidema 2020, §3): max-flow through the layered attention graph.

Nodes ``(l, j)`` for ``l = 0..L`` (layer 0 = the input tokens), arcs ``(l, i) -> (l-1, j)`` with
capacity ``Â_l[i, j]`` (heads fused, residual, row-normalised; see :mod:`captum_attnflow.graph`).
The flow attribution of output node ``(l, i)`` to input token ``j`` is
``maxflow((l, i) -> (0, j))``, one single-sink problem per ``j``, normalised over ``j``.

The work is split into *groups*: one graph (an example, or an example and head for
:func:`head_flow`) cut at one layer, with all its requested output positions, so that the
``"fast"`` solver sorts the arcs of a graph once for all its positions. Groups can run in
``workers`` processes.

Bounded flow (``tol=``) is :mod:`captum_attnflow.flow.bounds`; the cost guard
:mod:`captum_attnflow.flow.cost`.
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from captum_attnflow.flow.bounds import BoundedFlow, bounded_rows, check_gap, check_tol, check_tol_floor, graph_rounding
from captum_attnflow.flow.cost import estimate_seconds, warn_cost
from captum_attnflow.flow.maxflow import SOLVERS, FastSolver, check_threads, default_threads, max_flows
from captum_attnflow.graph import check_index, head_graph, prepare_graph, to_output
from captum_attnflow.utils.attention import attention_layers

#: A group of tasks: ``(graph index, number of layers of the graph to use, output slot, output
#: positions)``; its rows go to ``out[graph index, output slot, positions]``.
Group = tuple[int, int, int, list[int]]


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
    tol: float | None = None,
    progress: Callable[[int], None] | None = None,
    rounding: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised flow from the top nodes ``sources`` of ``capacities`` ``(l, n, n)`` to every input.

    Padded tokens (``live[j] = False``) are removed from the graph before solving and get 0; a
    padded source gets a zero row. ``tol`` (``"fast"`` solver only; the others are exact) bounds
    the error as in :func:`attention_flow`; ``progress`` is called with a number of single-sink
    problems done; ``rounding`` is the relative error of the capacities (:func:`graph_rounding`),
    added to the proven bounds.

    Returns:
        ``(rows, error)``: float64 ``(len(sources), n)`` (live rows sum to 1 up to ``error``) and
        the proven error bound of each row ``(len(sources),)`` (0 when solved exactly).
    """
    n = capacities.shape[-1]
    rows = np.zeros((len(sources), n))
    error = np.zeros(len(sources))
    keep = np.arange(n) if live is None else np.flatnonzero(live)
    solved = [index for index, source in enumerate(sources) if live is None or live[source]]
    if not solved:
        return rows, error
    if len(keep) < n:
        capacities = capacities[:, keep][:, :, keep]
    local = np.searchsorted(keep, [sources[index] for index in solved])
    if method == "fast":
        values, bounds = bounded_rows(FastSolver(capacities, local, threads), tol, progress, rounding)
    else:
        raw = max_flows(method, np.ascontiguousarray(capacities), local, threads)
        totals = raw.sum(axis=1, keepdims=True)
        values = np.divide(raw, totals, out=np.zeros_like(raw), where=totals > 0)
        bounds = np.zeros(len(local))
        if progress is not None:
            progress(len(local) * len(keep))
    rows[np.ix_(solved, keep)] = values
    error[solved] = bounds
    return rows, error


def _solve_group(graphs, live, group: Group, method: str, threads, tol, progress=None, rounding=0.0):
    index, depth, _, positions = group
    example_live = None if live is None else live[index]
    return flow_rows(graphs[index, :depth], positions, example_live, method, threads, tol, progress, rounding)


#: Per-process state of a pool worker (set by ``_init_worker``).
_SHARED: dict = {}


def _init_worker(graphs: np.ndarray, live: np.ndarray | None, method: str, tol: float | None, rounding: float) -> None:
    """Process-pool initialiser: keep the graphs in the worker (sent once, not once per group)."""
    _SHARED.update(graphs=graphs, live=live, method=method, tol=tol, rounding=rounding)


def _solve_group_in_worker(group: Group):
    """One group in a worker process, on one thread: the workers already share the cores (the
    solvers use no BLAS)."""
    return _solve_group(_SHARED["graphs"], _SHARED["live"], group, _SHARED["method"], 1, _SHARED["tol"], None,
                        _SHARED["rounding"])


def _solve(graphs: np.ndarray, live: np.ndarray | None, groups: list[Group], method: str, workers: int,
           progress: bool, tol: float | None, threads: int | None = None, rounding: float = 0.0):
    """Solve every group of ``graphs`` ``(graphs, L, n, n)``: ``workers`` processes, a cost warning
    above :data:`COST_WARNING_SECONDS` and an optional tqdm bar counting single-sink problems.
    ``threads`` is the ``"fast"`` solver's thread count (``None``: :func:`default_threads`)."""
    n = graphs.shape[-1]
    sizes = [n if live is None else int(live[group[0]].sum()) for group in groups]
    problems = [(len(group[3]) * size, group[1] * size * size) for group, size in zip(groups, sizes)]
    processes = min(workers, len(groups))
    if processes > 1:
        estimate_threads = processes
    elif method == "fast":
        estimate_threads = threads or default_threads(max(count * arcs for count, arcs in problems))
    else:
        estimate_threads = 1
    warn_cost(estimate_seconds(problems, method, estimate_threads), sum(count for count, _ in problems),
              (max(group[1] for group in groups), n))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(count for count, _ in problems), desc=f"attention flow ({method})", unit="sink")
    results = []
    try:
        if processes == 1:
            for group in groups:
                update = None if bar is None else bar.update
                results.append(_solve_group(graphs, live, group, method, threads, tol, update, rounding))
        else:
            pool = ProcessPoolExecutor(processes, initializer=_init_worker,
                                       initargs=(graphs, live, method, tol, rounding))
            with pool:
                for (count, _), rows in zip(problems, pool.map(_solve_group_in_worker, groups)):
                    results.append(rows)
                    if bar is not None:
                        bar.update(count)
    finally:
        if bar is not None:
            bar.close()
    return results


def _assemble(shape, groups: list[Group], results, dtype, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Values ``shape`` in ``dtype`` and error bounds ``shape[:-1]`` (float64), NaN where unsolved.

    Rounding the float64 values to ``dtype`` is added to the error bound of each row.
    """
    out = torch.full(shape, float("nan"), dtype=dtype)
    error = torch.full(shape[:-1], float("nan"), dtype=torch.float64)
    for (index, _, slot, positions), (rows, bounds) in zip(groups, results):
        rounded = torch.from_numpy(rows).to(dtype)
        out[index, slot, positions] = rounded
        rounding = (rounded.double() - torch.from_numpy(rows)).abs().amax(dim=-1)
        error[index, slot, positions] = torch.from_numpy(bounds) + rounding
    return out.to(device), error.to(device)


def _graph_arrays(graph: torch.Tensor) -> np.ndarray:
    """A graph tensor as a numpy array the solvers read: float32/float64 shared, others float64."""
    graph = graph.detach().to("cpu")
    if graph.dtype not in (torch.float32, torch.float64):
        graph = graph.to(torch.float64)
    return graph.numpy()


def _bounded_inputs(attentions, tol: float | None):
    """For bounded flow, the attention in float64 (so the graph is built in float64 from the values
    as passed: float32 values are exact in float64) and the caller's output format; the tol floor
    of that format is checked. For exact flow, ``(attentions, None)`` unchanged."""
    if tol is None:
        return attentions, None
    layers, output_format = attention_layers(attentions)
    batch, heads, n, _ = layers[0].shape
    check_tol_floor(tol, output_format.dtype, len(layers), heads, n)
    return [layer.to(torch.float64) for layer in layers], output_format


def _flow_graph(attentions, tol: float | None, *, residual: bool, head_fusion: str, mask, renormalize: bool):
    """:func:`prepare_graph` for flow: ``(augmented, raw_layers, mask, output_format, rounding)``, the
    graph built in float64 for bounded flow (:func:`_bounded_inputs`, the caller's output format
    kept) and ``rounding`` its rounding bound (0 for exact flow)."""
    attentions, bounded_format = _bounded_inputs(attentions, tol)
    augmented, raw_layers, mask, output_format = prepare_graph(
        attentions, residual=residual, head_fusion=head_fusion, mask=mask, renormalize=renormalize
    )
    num_layers, n = augmented.shape[1], augmented.shape[-1]
    rounding = 0.0 if tol is None else graph_rounding(num_layers, raw_layers[0].shape[1], n)
    return augmented, raw_layers, mask, bounded_format or output_format, rounding


def _result(values: torch.Tensor, error: torch.Tensor, tol: float | None, output_format):
    if tol is None:
        return to_output(values, output_format)
    error = error.cpu().numpy() if output_format.numpy else error
    result = BoundedFlow(to_output(values, output_format), error)
    check_gap(result.gap, tol)
    return result


def flow_layers(
    attentions,
    *,
    layers: list[int] | int | None,
    output_positions=None,
    residual: bool = True,
    head_fusion: str = "mean",
    mask=None,
    flow_solver: str = "auto",
    renormalize: bool = False,
    workers: int = 1,
    progress: bool = False,
    tol: float | None = None,
    threads: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[int], int, object]:
    """:func:`attention_flow` for ``layers`` only: ``(values, error, layer_list, L, output_format)``.

    ``values`` is ``(batch, len(layer_list), n, n)`` (torch, the caller's dtype), ``error`` its
    ``(batch, len(layer_list), n)`` float64 error bounds; unrequested rows NaN. The classes use it
    to avoid the ``(batch, L, n, n)`` result of :func:`attention_flow`.
    """
    tol = check_tol(tol)
    threads = check_threads(threads)
    augmented, raw_layers, mask, output_format, rounding = _flow_graph(
        attentions, tol, residual=residual, head_fusion=head_fusion, mask=mask, renormalize=renormalize
    )
    batch, num_layers, n, _ = augmented.shape
    layer_list = _indices(layers, num_layers, "layers", "layers")
    positions = _indices(output_positions, n, "output_positions", "positions")
    method = _method(flow_solver)
    workers = _workers(workers)
    graphs = _graph_arrays(augmented)
    live = None if mask is None else mask.cpu().numpy()
    groups = [(b, layer + 1, slot, positions) for b in range(batch) for slot, layer in enumerate(layer_list)]
    results = _solve(graphs, live, groups, method, workers, progress, tol, threads, rounding)
    values, error = _assemble((batch, len(layer_list), n, n), groups, results, output_format.dtype, augmented.device)
    return values, error, layer_list, num_layers, output_format


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
    tol: float | None = None,
    threads: int | None = None,
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
            :data:`captum_attnflow.flow.maxflow.SOLVERS` (``"networkx"`` is the reference, ``"scipy"``
            a baseline). Every solver is exact; they differ only in speed.
        renormalize: divide attention rows by their sums instead of rejecting rows off 1.
        workers: processes solving ``(example, layer)`` groups in parallel. ``1`` (default) solves
            here; the ``"fast"`` solver then already shares each graph's sinks over all cores
            (numba's thread count), so more workers pay mainly for the single-threaded
            ``"scipy"``/``"networkx"`` solvers and for many small graphs. Each worker uses one
            thread.
        progress: show a tqdm progress bar counting single-sink max-flow problems (``n`` per
            output row), advancing about 100 times per graph with the ``"fast"`` solver.
        tol: ``None`` (default) for exact flow, or the largest error allowed: each returned value
            is then within ``tol`` of the exact normalised flow, proven by a feasible flow and a
            cut per max-flow problem (module docstring), and the result carries the error bound
            reached (a :class:`BoundedFlow`). Values are about ``1/n``; choose ``tol`` well below
            that. Needs the ``"fast"`` solver to save time (the others are exact anyway). The graph
            of bounded flow is built in float64 from the attention as passed and that rounding is
            part of the proven error; a ``tol`` below :func:`~captum_attnflow.flow.bounds.tol_floor`
            of the result dtype (float64: 1e-11; float32: 6e-8, the rounding of the values to
            float32) is refused with a ``ValueError`` naming the floor.
        threads: threads of the ``"fast"`` solver. ``None`` (default):
            :func:`~captum_attnflow.flow.maxflow.default_threads` — 1 for small problems, else at
            most the CPUs this process may use, ``torch.get_num_threads()`` and the CPUs not busy
            with other runnable processes. Neither torch's nor numba's thread setting is changed.

    Returns:
        ``(batch, L, n, n)``: ``out[b, l-1, i, j] = maxflow((l, i) -> (0, j))`` normalised over
        ``j``. Rows that were not requested are NaN (never silently 0). Same dtype and device as
        the input (numpy in, numpy out). Values are computed in float64. With ``tol``: a
        :class:`BoundedFlow` ``(values, error)`` with ``values`` as above and ``error``
        ``(batch, L, n)`` float64, the proven bound on ``|values - exact|`` of each row (rounding
        to the input dtype included); ``.gap`` is its largest value.

    Cost: one max-flow problem per live input token, output position and layer, each on a graph
    of ``l·n²`` arcs; the time is roughly ``SECONDS_PER_ARC · positions · n · l · n²`` over the
    cores (about 4 s for one position at ``n = 1024``, 30 layers, 2 cores). Above
    :data:`COST_WARNING_SECONDS` of estimate a :class:`FlowCostWarning` says so before solving.
    Ctrl-C (``KeyboardInterrupt``) stops the solve cleanly. Memory: the graph (as float32 when
    the attention is float32), an int16 arc order (about ``l·n²/2`` entries on causal attention)
    and the ``(batch, L, n, n)`` result (:class:`~captum_attnflow.AttentionFlow` returns only the
    requested rows).
    """
    values, error, layer_list, num_layers, output_format = flow_layers(
        attentions, layers=layers, output_positions=output_positions, residual=residual, head_fusion=head_fusion,
        mask=mask, flow_solver=flow_solver, renormalize=renormalize, workers=workers, progress=progress, tol=tol,
        threads=threads,
    )
    if len(layer_list) < num_layers:
        batch, _, n, _ = values.shape
        full = values.new_full((batch, num_layers, n, n), float("nan"))
        full_error = error.new_full((batch, num_layers, n), float("nan"))
        full[:, layer_list], full_error[:, layer_list] = values, error
        values, error = full, full_error
    return _result(values, error, tol, output_format)


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
    tol: float | None = None,
    threads: int | None = None,
):
    """Per-head "input attention" by flow (appendix A.1).

    The graph has the layers below ``layer`` fused single-head (with the residual) and head
    ``h``'s own matrix of ``layer`` (with the residual, row-normalised) as the top layer; the flow
    from ``(layer, i)`` to each input token is computed on that graph and normalised.
    ``flow_solver``, ``workers``, ``progress``, ``tol`` and ``threads`` are as in :func:`attention_flow`.

    Returns:
        ``(batch, heads, n, n)`` (``heads = 1`` when ``head`` is given); unrequested rows NaN.
        With ``tol``: a :class:`BoundedFlow` whose ``error`` is ``(batch, heads, n)``.
    """
    tol = check_tol(tol)
    threads = check_threads(threads)
    augmented, raw_layers, mask, output_format, rounding = _flow_graph(
        attentions, tol, residual=residual, head_fusion=head_fusion, mask=mask, renormalize=renormalize
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
    below = _graph_arrays(augmented[:, :layer])
    tops = _graph_arrays(top[:, heads].to(augmented.dtype))
    graphs = np.concatenate([np.repeat(below[:, None], len(heads), axis=1), tops[:, :, None]], axis=2)
    graphs = graphs.reshape(batch * len(heads), layer + 1, n, n)
    live = None if mask is None else np.repeat(mask.cpu().numpy(), len(heads), axis=0)
    groups = [(g, layer + 1, 0, positions) for g in range(batch * len(heads))]
    results = _solve(graphs, live, groups, method, workers, progress, tol, threads, rounding)
    values, error = _assemble((batch * len(heads), 1, n, n), groups, results, output_format.dtype, augmented.device)
    return _result(values.reshape(batch, len(heads), n, n), error.reshape(batch, len(heads), n), tol, output_format)
