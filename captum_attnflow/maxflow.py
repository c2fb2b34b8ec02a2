"""Exact max-flow solvers for the layered attention graph.

The graph of a stack of ``l`` layers has nodes ``(k, i)`` for ``k = 0..l`` and ``i = 0..n-1`` and an
arc ``(k, i) -> (k-1, j)`` of capacity ``capacities[k-1, i, j]``. Every solver answers the same
question: the max-flow value from the single source ``(l, source)`` to each input node ``(0, j)``,
one separate single-sink problem per ``j``.

Solvers are pure functions on numpy arrays::

    solver(capacities: float64 array (l, n, n), source: int) -> float64 array (n,)

``SOLVERS`` maps a name to each solver:

* ``"fast"`` — :func:`fast_max_flows`, an exact compiled (numba) Dinic specialised to the layered
  graph; the default of :func:`captum_attnflow.attention_flow`.
* ``"scipy"`` — :func:`scipy_max_flows`, scipy's Dinic on integer-scaled capacities (baseline).
* ``"networkx"`` — :func:`networkx_max_flows`, the plain reference the others are tested against.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import networkx as nx
import numba
import numpy as np
import scipy.sparse
from scipy.sparse.csgraph import maximum_flow

MaxFlowSolver = Callable[[np.ndarray, int], np.ndarray]


def networkx_max_flows(capacities: np.ndarray, source: int) -> np.ndarray:
    """Reference solver: one ``networkx.maximum_flow_value`` per input token.

    Straightforward and slow (minutes at ``n = 64``, 12 layers); it is the independent check
    that every fast solver is tested against. Arcs of zero capacity are left out.
    """
    num_layers, n, _ = capacities.shape
    graph = nx.DiGraph()
    top = (num_layers, source)
    graph.add_node(top)
    for layer in range(num_layers, 0, -1):
        rows, cols = np.nonzero(capacities[layer - 1])
        for i, j in zip(rows.tolist(), cols.tolist()):
            graph.add_edge((layer, i), (layer - 1, j), capacity=float(capacities[layer - 1, i, j]))
    reachable = nx.descendants(graph, top)
    values = np.zeros(n, dtype=np.float64)
    for j in range(n):
        sink = (0, j)
        if sink in reachable:
            values[j] = nx.maximum_flow_value(graph, top, sink, capacity="capacity")
    return values


#: Integer scale of the ``"scipy"`` solver: capacities become ``round(c * SCIPY_SCALE)`` in int32
#: (scipy's ``maximum_flow`` accepts only int32 capacities and silently wraps larger integers).
#: Every flow value is at most 1 here, so ``2**30`` leaves headroom below ``2**31 - 1``.
SCIPY_SCALE = 2**30


def scipy_max_flows(capacities: np.ndarray, source: int) -> np.ndarray:
    """Comparison baseline: ``scipy.sparse.csgraph.maximum_flow`` (Dinic) per input token.

    scipy needs integer capacities, so each capacity ``c`` becomes ``round(c * SCIPY_SCALE)``
    (``SCIPY_SCALE = 2**30``) and each value is divided back. Rounding error: the computed value
    is the min cut of the rounded capacities, and rounding moves the capacity of any cut ``C`` by
    at most ``|C| / (2 * SCIPY_SCALE)``, so the error is at most ``|C| / 2**31`` for the larger
    of the true and the rounded min cut ``C`` — e.g. at most ``5e-10`` when the min cut has ``n``
    arcs with ``n = 1024``, and at most ``l·n² / 2**31`` in the worst case (``1.5e-3`` for
    ``l = 12``, ``n = 512``; never approached in practice because rounding errors cancel).
    Arcs below ``0.5 / SCIPY_SCALE`` (``5e-10``) are dropped by the rounding.
    """
    num_layers, n, _ = capacities.shape
    scaled = np.rint(np.asarray(capacities, dtype=np.float64) * SCIPY_SCALE).astype(np.int32)
    layer, row, col = np.nonzero(scaled)
    tail = (layer + 1) * n + row  # node (k, i) has index k * n + i
    head = layer * n + col
    size = (num_layers + 1) * n
    graph = scipy.sparse.csr_matrix((scaled[layer, row, col], (tail, head)), shape=(size, size))
    top = num_layers * n + source
    values = np.array([maximum_flow(graph, top, j).flow_value for j in range(n)], dtype=np.float64)
    return values / SCIPY_SCALE


# --------------------------------------------------------------------------------------------
# "fast": Dinic specialised to the layered attention graph
# --------------------------------------------------------------------------------------------

#: Residual capacities at or below this are treated as saturated by the ``"fast"`` solver (float
#: round-off would otherwise leave arcs with ~1e-17 of residual that no path can use). Each arc
#: of the final cut can hide at most this much, so values are exact up to ``l·n²·1e-13``
#: (< 1e-6 for ``l = 12``, ``n = 512``; in practice ~1e-15).
RESIDUAL_EPS = 1e-13

#: The ``"fast"`` solver stops a sink as soon as its flow is within this of a cut's capacity.
CUT_GAP = 1e-12

#: ``fast_max_flows_many`` uses several threads only from this much work on, counted as
#: (sources × sinks) × arcs = ``len(sources)·n·l·n²`` (~10 ms of solving).
THREADS_MIN_WORK = 4_000_000


#: Arcs are ordered in capacity classes ``(2^-(b+1)/2, 2^-b/2]`` (a factor ``√2`` each, class ``b =
#: 0..ARC_CLASSES-2``; everything at or below :data:`RESIDUAL_EPS` in the last class), largest first.
ARC_CLASSES = 64


def _sort_arcs(capacities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Arcs of every node in decreasing capacity classes, by decreasing head position within a class.

    The classes (a factor ``√2`` apart, :data:`ARC_CLASSES`) keep the search on big arcs first;
    the position order inside a class lets a search that may only use heads at positions
    ``>= floor`` (causal attention, see :func:`_solve_sinks`) skip the rest of a class at its
    first head below ``floor`` instead of scanning it.

    Returns ``(order, num_arcs, class_end)``: ``order[k, i, r]`` ``(l, n, n)`` is the head of the
    ``r``-th arc out of ``(k+1, i)``, ``num_arcs[k, i]`` ``(l, n)`` the number of arcs above
    :data:`RESIDUAL_EPS` (they come first; the others are never used) and ``class_end[k, i, b]``
    ``(l, n, ARC_CLASSES)`` the index after the last arc of the classes ``<= b``.
    """
    num_layers, n, _ = capacities.shape
    order = np.empty((num_layers, n, n), np.int32)
    class_end = np.empty((num_layers, n, ARC_CLASSES), np.int32)
    _sort_rows(capacities, order, class_end)
    num_arcs = np.ascontiguousarray(class_end[..., ARC_CLASSES - 2])
    return order, num_arcs, class_end


@numba.njit(cache=True, nogil=True)
def _sort_rows(capacities, order, class_end):
    """Counting sort of every row into :func:`_sort_arcs`' order (``O(n)`` per row, no comparisons)."""
    num_layers, n, _ = capacities.shape
    classes = np.empty(n, np.int64)
    start = np.empty(ARC_CLASSES, np.int64)
    for k in range(num_layers):
        for i in range(n):
            start[:] = 0
            for j in range(n):
                c = capacities[k, i, j]
                if c <= RESIDUAL_EPS:
                    b = ARC_CLASSES - 1
                else:
                    b = min(max(int(np.floor(-2.0 * np.log2(c))), 0), ARC_CLASSES - 2)
                classes[j] = b
                start[b] += 1
            total = 0
            for b in range(ARC_CLASSES):
                total += start[b]
                class_end[k, i, b] = total
                start[b] = total - start[b]
            for j in range(n - 1, -1, -1):
                r = start[classes[j]]
                start[classes[j]] = r + 1
                order[k, i, r] = j


@numba.njit(cache=True, inline="always")
def _end_of_class(class_end, layer, node, arc):
    """The index after the last arc of the capacity class of arc ``arc`` of ``(layer + 1, node)``."""
    b = 0
    while class_end[layer, node, b] <= arc:
        b += 1
    return class_end[layer, node, b]


@numba.njit(cache=True)
def _blocking_flow(num_layers, n, source, sink, sink_cap, capacities, order, num_arcs, class_end, flow, sink_flow,
                   level, arc_of, path_layer, path_node, path_arc, path_residual, touched, recorded,
                   num_touched, limit, backward, floor):
    """Dinic's blocking flow on the level graph ``level`` by depth-first search.

    Node ``(k, i)`` has id ``k·n + i``; the sink ``(0, sink)`` has id ``sink``. The arcs of node
    ``(k, i)`` are numbered: ``0..n-1`` its arcs down to layer ``k-1`` in :func:`_sort_arcs` order (for
    ``k = 1``: arc 0 is the arc into the sink), ``n..2n-1`` the reverse of the arcs from
    ``(k+1, p)``, ``p = 0..n-1`` (residual = their flow; only scanned when ``backward``).
    ``arc_of[u]`` is the current-arc pointer. The current path is kept in ``path_*`` (layer,
    node, arc taken, residual of that arc); after an augmentation the search resumes at the
    first arc that it saturated. In the first phase (``backward`` False) a path that reaches
    layer 2 is not extended node by node: its bottleneck is spread over the layer-2 node's arcs
    into live layer-1 nodes and from there into the sink (a tree of paths, one update of the
    path above). ``touched[:num_touched]`` lists (once, flagged in ``recorded``)
    the flat index into ``flow`` of every arc that carried flow, so that only those are reset for
    the next sink. Stops once ``limit`` has been pushed.

    Returns ``(pushed, num_touched)``.
    """
    total = 0.0
    depth = 0
    path_layer[0] = num_layers
    path_node[0] = source
    while total < limit:
        k = path_layer[depth]
        i = path_node[depth]
        u = k * n + i
        amount = 0.0
        if k == 1 and arc_of[u] == 0:
            residual = sink_cap[i] - sink_flow[i]
            if residual > RESIDUAL_EPS and level[sink] == level[u] + 1:
                amount = residual
                for d in range(depth):
                    amount = min(amount, path_residual[d])
                sink_flow[i] += amount
            else:
                arc_of[u] = n  # a layer-1 node's only forward arc is the one into the sink
        elif k == 2 and not backward:
            # Fan out: in the layered level graph every live layer-1 node leads to the sink, so
            # push the path's bottleneck through as many of them as it takes, in one go.
            budget = limit - total
            for d in range(depth):
                budget = min(budget, path_residual[d])
            while arc_of[u] < num_arcs[1, i] and budget - amount > RESIDUAL_EPS:
                arc = arc_of[u]
                head = order[1, i, arc]
                if head < floor:  # the rest of this capacity class is below floor too
                    arc_of[u] = _end_of_class(class_end, 1, i, arc)
                    continue
                if level[n + head] == level[u] + 1:
                    into_head = capacities[1, i, head] - flow[1, i, head]
                    out_of_head = sink_cap[head] - sink_flow[head]
                    if out_of_head <= RESIDUAL_EPS:
                        level[n + head] = -1
                    elif into_head > RESIDUAL_EPS:
                        pushed = min(budget - amount, into_head, out_of_head)
                        index = (n + i) * n + head
                        if not recorded[index]:
                            recorded[index] = True
                            touched[num_touched] = index
                            num_touched += 1
                        flow[1, i, head] += pushed
                        sink_flow[head] += pushed
                        amount += pushed
                        if out_of_head - pushed <= RESIDUAL_EPS:
                            level[n + head] = -1
                        elif into_head - pushed > RESIDUAL_EPS:
                            break  # the budget is used up; this arc can take more later
                arc_of[u] += 1
        if amount > 0.0:  # augment along the path: amount is at most every path residual
            retreat = depth
            for d in range(depth - 1, -1, -1):
                kd = path_layer[d]
                node = path_node[d]
                arc = path_arc[d]
                if arc < n:
                    head = path_node[d + 1]
                    index = ((kd - 1) * n + node) * n + head
                    if not recorded[index]:
                        recorded[index] = True
                        touched[num_touched] = index
                        num_touched += 1
                    flow[kd - 1, node, head] += amount
                else:
                    flow[kd, arc - n, node] -= amount
                path_residual[d] -= amount
                if path_residual[d] <= RESIDUAL_EPS:
                    retreat = d
            total += amount
            depth = retreat
            continue
        advanced = False
        while True:
            arc = arc_of[u]
            if arc < n:
                if arc >= num_arcs[k - 1, i]:  # sorted: the remaining forward arcs are empty
                    arc_of[u] = n
                    continue
                head = order[k - 1, i, arc]
                if head < floor:  # the rest of this capacity class is below floor too
                    arc_of[u] = _end_of_class(class_end, k - 1, i, arc)
                    continue
                if level[(k - 1) * n + head] == level[u] + 1:
                    residual = capacities[k - 1, i, head] - flow[k - 1, i, head]
                    if residual > RESIDUAL_EPS:
                        advanced = True
                        head_layer = k - 1
                        break
            elif backward and arc < 2 * n and k < num_layers:
                head = arc - n
                residual = flow[k, head, i]
                if residual > RESIDUAL_EPS and level[(k + 1) * n + head] == level[u] + 1:
                    advanced = True
                    head_layer = k + 1
                    break
            else:
                break
            arc_of[u] = arc + 1
        if advanced:
            path_arc[depth] = arc
            path_residual[depth] = residual
            depth += 1
            path_layer[depth] = head_layer
            path_node[depth] = head
        else:
            if depth == 0:
                break
            level[u] = -1  # dead end for the rest of this phase
            depth -= 1
            arc_of[path_layer[depth] * n + path_node[depth]] += 1
    return total, num_touched


@numba.njit(cache=True)
def _levels(num_layers, n, source, sink, sink_cap, capacities, order, num_arcs, class_end, flow, sink_flow, level, queue,
            floor):
    """Breadth-first distances from the source in the residual graph; False if the sink is cut off."""
    level[:] = -1
    top = num_layers * n + source
    level[top] = 0
    queue[0] = top
    head = 0
    tail = 1
    while head < tail:
        u = queue[head]
        head += 1
        if level[sink] >= 0 and level[u] >= level[sink]:
            break
        k = u // n
        i = u - k * n
        if k == 1:
            if level[sink] < 0 and sink_cap[i] - sink_flow[i] > RESIDUAL_EPS:
                level[sink] = level[u] + 1
        else:
            arc = 0
            while arc < num_arcs[k - 1, i]:
                if order[k - 1, i, arc] < floor:
                    arc = _end_of_class(class_end, k - 1, i, arc)
                    continue
                head_node = order[k - 1, i, arc]
                v = (k - 1) * n + head_node
                if level[v] < 0 and capacities[k - 1, i, head_node] - flow[k - 1, i, head_node] > RESIDUAL_EPS:
                    level[v] = level[u] + 1
                    queue[tail] = v
                    tail += 1
                arc += 1
        if k < num_layers:
            for p in range(floor, n):  # nodes below floor carry no flow
                v = (k + 1) * n + p
                if level[v] < 0 and flow[k, p, i] > RESIDUAL_EPS:
                    level[v] = level[u] + 1
                    queue[tail] = v
                    tail += 1
    return level[sink] >= 0


@numba.njit(cache=True)
def _max_flow_to_sink(num_layers, n, source, sink, sink_cap, capacities, order, num_arcs, class_end, upper,
                      flow, sink_flow, level, arc_of, path_layer, path_node, path_arc, path_residual, queue, touched,
                      recorded, floor):
    """Exact max-flow value from ``(num_layers, source)`` to ``(0, sink)``; leaves ``flow`` zeroed."""
    sink_flow[:] = 0.0
    # Phase 1: the level graph is the layered DAG itself (every source-sink path has num_layers
    # arcs and the flow is zero), so no breadth-first search is needed.
    for k in range(1, num_layers + 1):
        level[k * n : (k + 1) * n] = num_layers - k
    level[:n] = -1
    level[sink] = num_layers
    arc_of[:] = 0
    value = 0.0
    num_touched = 0
    backward = False
    while True:
        pushed, num_touched = _blocking_flow(num_layers, n, source, sink, sink_cap, capacities, order, num_arcs, class_end,
                                             flow, sink_flow, level, arc_of, path_layer, path_node, path_arc,
                                             path_residual, touched, recorded, num_touched, upper - CUT_GAP - value,
                                             backward, floor)
        value += pushed
        if value >= upper - CUT_GAP:
            break
        if not _levels(num_layers, n, source, sink, sink_cap, capacities, order, num_arcs, class_end, flow, sink_flow,
                       level, queue, floor):
            break
        arc_of[:] = 0
        backward = True  # later level graphs can use reverse arcs
    flat = flow.ravel()
    for t in range(num_touched):
        flat[touched[t]] = 0.0
        recorded[touched[t]] = False
    return value


@numba.njit(cache=True, nogil=True)
def _leak_past(capacities):
    """``leak[j]``: capacity of the arcs from positions ``< j`` to positions ``>= j`` below the top.

    With it, ``Σ_{m >= j} capacities[-1][source, m] + leak[j]`` is the capacity of a cut for sink
    ``(0, j)``: the source side is the source and every node at a position ``< j`` in the layers
    below it (layer 0 included, the sink excepted). On causal (lower-triangular) attention
    ``leak = 0`` and this "suffix cut" is the min cut for almost every sink (``docs/solver.md``),
    so the solver stops as soon as its flow reaches it instead of proving optimality with
    breadth-first searches; a source at a position below the sink gets 0 at once.
    """
    num_layers, n, _ = capacities.shape
    leak = np.zeros(n)
    for k in range(num_layers - 1):  # arcs between the layers below the top
        # crossing[j] = Σ_{i < j} Σ_{m >= j} capacities[k][i, m], updated from j to j + 1
        crossing = 0.0
        for j in range(1, n):
            for m in range(j, n):  # row j - 1 joins the source side
                crossing += capacities[k, j - 1, m]
            for i in range(j - 1):  # column j - 1 leaves the sink side
                crossing -= capacities[k, i, j - 1]
            leak[j] += crossing
    return leak


@numba.njit(cache=True, nogil=True)
def _solve_sinks(capacities, order, num_arcs, class_end, sources, first, step, out):
    """Fill ``out[p, j]`` for the tasks ``first, first + step, ...`` of ``(p, j)`` in row-major order.

    Runs without the GIL so that threads can share the sinks of one graph.
    """
    num_layers, n, _ = capacities.shape
    upper_source = capacities[num_layers - 1].sum(axis=1)
    into_sink = np.ascontiguousarray(capacities[0].T)  # into_sink[j] = capacities of the arcs into (0, j)
    upper_sink = into_sink.sum(axis=1)
    nodes = (num_layers + 1) * n
    flow = np.zeros((num_layers, n, n))
    sink_flow = np.zeros(n)
    level = np.empty(nodes, np.int64)
    arc_of = np.empty(nodes, np.int64)
    path_layer = np.empty(nodes + 1, np.int64)
    path_node = np.empty(nodes + 1, np.int64)
    path_arc = np.empty(nodes + 1, np.int64)
    path_residual = np.empty(nodes + 1)
    queue = np.empty(nodes, np.int64)
    touched = np.empty(num_layers * n * n, np.int64)
    recorded = np.zeros(num_layers * n * n, np.bool_)
    leak = _leak_past(capacities)
    # Causal (no arc to a later position below the top): nodes at positions below the sink cannot
    # reach it, carry no flow and are never searched.
    causal = leak.max() <= 0.0
    for task in range(first, len(sources) * n, step):
        position = task // n
        sink = task - position * n
        source = sources[position]
        suffix = 0.0  # the source's arcs into positions >= sink
        for m in range(sink, n):
            suffix += capacities[num_layers - 1, source, m]
        upper = min(upper_source[source], upper_sink[sink], suffix + leak[sink])
        out[position, sink] = _max_flow_to_sink(num_layers, n, source, sink, into_sink[sink], capacities, order,
                                                num_arcs, class_end, upper, flow, sink_flow, level, arc_of,
                                                path_layer, path_node, path_arc, path_residual, queue, touched,
                                                recorded, sink if causal else 0)


def fast_max_flows_many(capacities: np.ndarray, sources: Sequence[int], threads: int | None = None) -> np.ndarray:
    """:func:`fast_max_flows` for several sources on the same graph (sorting the arcs once).

    Args:
        capacities: float64 ``(l, n, n)`` as in :func:`fast_max_flows`.
        sources: top-layer nodes.
        threads: threads sharing the sinks (default: ``numba.get_num_threads()``, the cores, once
            ``len(sources)·n·l·n² >= THREADS_MIN_WORK``, e.g. from ``l = 6``, ``n = 128`` or
            ``l = 12``, ``n = 80`` for one source; 1 below).

    Returns:
        float64 ``(len(sources), n)``.
    """
    capacities = np.ascontiguousarray(capacities, dtype=np.float64)
    sources = np.asarray(sources, dtype=np.int64)
    n = capacities.shape[-1]
    order, num_arcs, class_end = _sort_arcs(capacities)
    out = np.zeros((len(sources), n))
    if threads is None:  # threads pay only when the work outweighs starting them (~1 ms)
        work = len(sources) * n * capacities.size
        threads = numba.get_num_threads() if work >= THREADS_MIN_WORK else 1
    threads = max(1, min(threads, len(sources) * n))
    if threads == 1:
        _solve_sinks(capacities, order, num_arcs, class_end, sources, 0, 1, out)
        return out
    with ThreadPoolExecutor(threads) as pool:
        jobs = [
            pool.submit(_solve_sinks, capacities, order, num_arcs, class_end, sources, first, threads, out)
            for first in range(threads)
        ]
        for job in jobs:
            job.result()
    return out


def fast_max_flows(capacities: np.ndarray, source: int) -> np.ndarray:
    """Exact max-flow values by Dinic's algorithm specialised to the layered attention graph.

    One Dinic run per sink ``(0, j)``, compiled with numba (``nogil``); the sinks are shared out
    over ``numba.get_num_threads()`` threads when the graph is big enough to pay (see
    :func:`fast_max_flows_many`). What makes it fast on this graph:

    * the graph is never built: arcs are read from the dense capacity matrices, each node's arcs
      sorted once by decreasing capacity (shared by all sinks and sources), so the depth-first
      search follows the big arcs first, needs fewer augmenting paths and stops scanning a node
      at its first zero arc;
    * the first phase needs no breadth-first search: with zero flow the level graph *is* the
      layered DAG (every path has ``l`` arcs), and reverse arcs cannot be on it, so they are not
      scanned;
    * after an augmentation the search resumes at the first arc it saturated, with the residuals
      of the current path cached;
    * a sink stops as soon as its flow reaches a cut's capacity, the smaller of
      ``capacities[l-1, source].sum()`` (all arcs out of the source) and
      ``capacities[0, :, j].sum()`` (all arcs into the sink): on random attention the latter is
      almost always the min cut, so one partial phase finishes;
    * only the arcs that carried flow are reset between sinks.

    Measured (2-core CPU, one thread, one source, all sinks): real 6-layer MiniLM attention at
    ``n = 128`` in ~20 ms of CPU time (scipy's Dinic: ~260 ms), ``n = 512`` in ~1.5 s (scipy:
    minutes); random 12-layer attention at ``n = 128`` in ~23 ms. See ``benchmarks/bench_flow.py``.

    Why it is exact: Dinic's algorithm stops only when (a) the flow equals the capacity of a cut
    — by weak duality no flow can be larger — or (b) no augmenting path is left in the residual
    graph, the max-flow/min-cut optimality condition. Residual capacities up to
    :data:`RESIDUAL_EPS` (``1e-13``) count as saturated, so the value can be low by at most
    ``1e-13`` per arc of the final cut (``≤ l·n²·1e-13``); in (a) it is within :data:`CUT_GAP`
    (``1e-12``) of the cut. Each phase strictly lengthens the shortest augmenting path, so there
    are at most ``l·n + 1`` phases. On real attention the min cut is usually not the trivial one
    (flow is trapped in a [CLS] chain); there the first blocking flow is usually already maximal
    and the breadth-first search that proves it, confined to the small source side of the min
    cut, is cheap. The first call in a fresh environment compiles for ~10 s; numba caches the
    machine code on disk (``cache=True``) for later processes.

    Args:
        capacities: float64 ``(l, n, n)``; ``capacities[k-1, i, j]`` is the arc ``(k, i) -> (k-1, j)``.
        source: the top-layer node ``(l, source)``.

    Returns:
        float64 ``(n,)``: ``out[j] = maxflow((l, source) -> (0, j))``.
    """
    return fast_max_flows_many(capacities, [source])[0]


def max_flows(method: str, capacities: np.ndarray, sources: Sequence[int], threads: int | None = None) -> np.ndarray:
    """Max-flow values from several top-layer nodes of one graph with the solver ``method``.

    ``"fast"`` solves all sources together (sorting the arcs once, ``threads`` threads); the other
    solvers are called once per source.

    Returns:
        float64 ``(len(sources), n)``.
    """
    if method == "fast":
        return fast_max_flows_many(capacities, sources, threads)
    return np.stack([SOLVERS[method](capacities, int(source)) for source in sources])


SOLVERS: dict[str, MaxFlowSolver] = {
    "fast": fast_max_flows,
    "networkx": networkx_max_flows,
    "scipy": scipy_max_flows,
}
