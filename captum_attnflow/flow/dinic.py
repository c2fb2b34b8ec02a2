"""The compiled kernels of the ``"fast"`` max-flow solver (numba): Dinic's algorithm on the layered
attention graph, read straight from the dense capacity matrices.

The graph of ``l`` layers has nodes ``(k, i)``, ``k = 0..l``, ``i = 0..n-1``, node id ``k·n + i``,
and an arc ``(k, i) -> (k-1, j)`` of capacity ``capacities[k-1, i, j]`` (float32 or float64; all
arithmetic is float64). One problem per task: the max flow from a top node ``(l, source)`` to one
input node ``(0, sink)``. The Python side is :func:`captum_attnflow.flow.maxflow.fast_max_flows_many`;
the arc order is :mod:`~captum_attnflow.flow.arcs`, the flow storage :mod:`~captum_attnflow.flow.storage`;
``docs/solver.md`` records what was tried and measured.

Memory is ``O(l·n²)`` only for the inputs (``capacities`` and the arc order ``order``, int16 up to
``n = 32767``) and one bit per arc per thread: above ``maxflow.DENSE_ARCS`` arcs the flow lives in
a small hash table (:func:`~captum_attnflow.flow.storage.add_flow`) that holds only the arcs carrying flow for the current sink.
"""

from __future__ import annotations

import numba
import numpy as np

from captum_attnflow.flow.arcs import RESIDUAL_EPS
from captum_attnflow.flow.storage import add_flow, clear_flows, flow_of, room


@numba.njit(cache=True, inline="always")
def _end_of_class(class_end, layer, node, arc):
    """The index after the last arc of the capacity class of arc ``arc`` of ``(layer + 1, node)``."""
    b = 0
    while class_end[layer, node, b] <= arc:
        b += 1
    return class_end[layer, node, b]


@numba.njit(cache=True)
def _blocking_flow(num_layers, n, source, sink, sink_cap, capacities, order, row_start, num_arcs, class_end, flows, keys, values,
                   used, count, sink_flow, level, arc_of, path_layer, path_node, path_arc, path_residual, limit,
                   backward, floor, causal):
    """Dinic's blocking flow on the level graph ``level`` by depth-first search.

    The arcs of node ``(k, i)`` are numbered: ``0..n-1`` its arcs down to layer ``k-1`` in
    :func:`sort_arcs` order (for ``k = 1``: arc 0 is the arc into the sink), ``n..2n-1`` the reverse
    of the arcs from ``(k+1, p)``, ``p = 0..n-1`` (residual = their flow; only scanned when
    ``backward``). ``arc_of[u]`` is the current-arc pointer. The current path is kept in ``path_*``
    (layer, node, arc taken, residual of that arc); after an augmentation the search resumes at the
    first arc that it saturated. In the first phase (``backward`` False) a path that reaches layer 2
    is not extended node by node: its bottleneck is spread over the layer-2 node's arcs into live
    layer-1 nodes and from there into the sink (a tree of paths, one update of the path above).
    Heads at positions below ``floor`` are never used (they cannot reach the sink on causal
    attention). Stops once ``limit`` has been pushed, or when the flow table is half full.

    Returns ``(pushed, count, full)``: ``count`` arcs now carry flow; ``full`` means the table
    must grow (the sink is then solved again).
    """
    total = 0.0
    depth = 0
    path_layer[0] = num_layers
    path_node[0] = source
    capacity = room(keys, used)
    while total < limit:
        if count > capacity:
            return total, count, True
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
                arc_of[u] = n + (i if causal else 0)  # its only forward arc is the one into the sink
        elif k == 2 and not backward:
            # Fan out: in the layered level graph every live layer-1 node leads to the sink, so
            # push the path's bottleneck through as many of them as it takes, in one go.
            budget = limit - total
            for d in range(depth):
                budget = min(budget, path_residual[d])
            while arc_of[u] < num_arcs[1, i] and budget - amount > RESIDUAL_EPS:
                arc = arc_of[u]
                head = order[row_start[1, i] + arc]
                if head < floor:  # the rest of this capacity class is below floor too
                    arc_of[u] = _end_of_class(class_end, 1, i, arc)
                    continue
                if level[n + head] == level[u] + 1:
                    key = (n + i) * n + head
                    into_head = capacities[1, i, head] - flow_of(flows, keys, values, key)
                    out_of_head = sink_cap[head] - sink_flow[head]
                    if out_of_head <= RESIDUAL_EPS:
                        level[n + head] = -1
                    elif into_head > RESIDUAL_EPS:
                        pushed = min(budget - amount, into_head, out_of_head)
                        count = add_flow(flows, keys, values, used, count, key, pushed)
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
                    count = add_flow(flows, keys, values, used, count, ((kd - 1) * n + node) * n + path_node[d + 1], amount)
                else:
                    count = add_flow(flows, keys, values, used, count, (kd * n + arc - n) * n + node, -amount)
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
                if arc >= num_arcs[k - 1, i]:  # the remaining forward arcs are empty
                    arc_of[u] = n + (i if causal else 0)  # on causal attention only p >= i lead in
                    continue
                head = order[row_start[k - 1, i] + arc]
                if head < floor:  # the rest of this capacity class is below floor too
                    arc_of[u] = _end_of_class(class_end, k - 1, i, arc)
                    continue
                if level[(k - 1) * n + head] == level[u] + 1:
                    residual = capacities[k - 1, i, head] - flow_of(flows, keys, values, ((k - 1) * n + i) * n + head)
                    if residual > RESIDUAL_EPS:
                        advanced = True
                        head_layer = k - 1
                        break
            elif backward and arc < 2 * n and k < num_layers:
                head = arc - n
                if level[(k + 1) * n + head] == level[u] + 1:
                    residual = flow_of(flows, keys, values, (k * n + head) * n + i)
                    if residual > RESIDUAL_EPS:
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
    return total, count, False


@numba.njit(cache=True)
def _levels(num_layers, n, source, sink, sink_cap, capacities, order, row_start, num_arcs, class_end, flows, keys, values, sink_flow,
            level, queue, floor, causal):
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
                j = order[row_start[k - 1, i] + arc]
                if j < floor:
                    arc = _end_of_class(class_end, k - 1, i, arc)
                    continue
                v = (k - 1) * n + j
                if level[v] < 0 and capacities[k - 1, i, j] - flow_of(flows, keys, values, ((k - 1) * n + i) * n + j) > \
                        RESIDUAL_EPS:
                    level[v] = level[u] + 1
                    queue[tail] = v
                    tail += 1
                arc += 1
        if k < num_layers:
            # reverse arcs: only nodes at positions >= floor carry flow (and >= i on causal attention)
            for p in range(max(floor, i) if causal else floor, n):
                v = (k + 1) * n + p
                if level[v] < 0 and flow_of(flows, keys, values, (k * n + p) * n + i) > RESIDUAL_EPS:
                    level[v] = level[u] + 1
                    queue[tail] = v
                    tail += 1
    return level[sink] >= 0


@numba.njit(cache=True)
def _max_flow_to_sink(num_layers, n, source, sink, sink_cap, capacities, order, row_start, num_arcs, class_end, upper, slack,
                      causal, flows, keys, values, used, sink_flow, level, arc_of, path_layer, path_node, path_arc,
                      path_residual, queue):
    """Max flow from ``(num_layers, source)`` to ``(0, sink)``, stopping within ``slack`` of the cut
    capacity ``upper``.

    Returns ``(lower, bound, ok)``: a feasible flow value ``lower`` and a cut capacity ``bound >=``
    the max flow: ``bound = upper`` when the flow came within ``slack`` of it, else ``bound =
    lower`` (no augmenting path is left: exact). ``ok`` False: the flow table was too small (grow
    it and call again). The table is left empty either way.
    """
    floor = sink if causal else 0
    sink_flow[:] = 0.0
    # Phase 1: the level graph is the layered DAG itself (every source-sink path has num_layers
    # arcs and the flow is zero), so no breadth-first search is needed.
    for k in range(1, num_layers + 1):
        level[k * n : (k + 1) * n] = num_layers - k
    level[:n] = -1
    level[sink] = num_layers
    arc_of[:] = 0
    value = 0.0
    count = 0
    backward = False
    ok = True
    bound = upper
    while True:
        pushed, count, full = _blocking_flow(num_layers, n, source, sink, sink_cap, capacities, order, row_start, num_arcs,
                                             class_end, flows, keys, values, used, count, sink_flow, level, arc_of,
                                             path_layer, path_node, path_arc, path_residual, upper - slack - value,
                                             backward, floor, causal)
        value += pushed
        if full:
            ok = False
            break
        if value >= upper - slack:
            break
        if not _levels(num_layers, n, source, sink, sink_cap, capacities, order, row_start, num_arcs, class_end, flows, keys, values,
                       sink_flow, level, queue, floor, causal):
            bound = value
            break
        arc_of[:] = 0
        backward = True  # later level graphs can use reverse arcs
    clear_flows(flows, keys, values, used, count)
    return value, max(bound, value), ok


@numba.njit(cache=True, nogil=True)
def _solve_tasks(capacities, order, row_start, num_arcs, class_end, into_sink, cuts, causal, sources, tasks, slack,
                 lower, upper, stop, first, flows, keys, values, used, sink_flow, level, arc_of, path_layer, path_node,
                 path_arc, path_residual, queue):
    """Solve ``tasks[first:]`` with one flow storage; returns the index of the first task left
    unsolved: ``len(tasks)`` when done (or stopped), else the task whose flow table filled up."""
    num_layers, n, _ = capacities.shape
    for t in range(first, len(tasks)):
        if stop[0]:
            return len(tasks)
        position = tasks[t] // n
        sink = tasks[t] - position * n
        low, high, ok = _max_flow_to_sink(num_layers, n, sources[position], sink, into_sink[sink], capacities, order,
                                          row_start, num_arcs, class_end, cuts[position, sink], slack[t], causal, flows,
                                          keys, values, used, sink_flow, level, arc_of, path_layer, path_node,
                                          path_arc, path_residual, queue)
        if not ok:
            return t
        lower[t] = low
        upper[t] = high
    return len(tasks)


@numba.njit(cache=True, nogil=True)
def solve_sinks(capacities, order, row_start, num_arcs, class_end, into_sink, cuts, causal, sources, tasks, slack, lower,
                upper, dense, table_bits, stop):
    """Solve the tasks ``tasks`` (flat indices ``p·n + j``: source ``sources[p]``, sink ``j``).

    ``cuts[p, j]`` is a cut capacity for the task (the early stop), ``slack[t]`` how close to it a
    flow may stop. Writes ``lower[t]``/``upper[t]`` (see :func:`_max_flow_to_sink`); a task left
    when ``stop[0]`` turns True is skipped (``upper[t]`` stays NaN). With ``dense`` the flow is kept
    in an ``l·n²`` float64 array, else in a hash table that grows 4× (and solves the sink again)
    when it fills. Runs without the GIL so that threads can share the tasks of one graph.

    Returns the size (``log2``) of the hash table it ended with, to start the next call from.
    """
    num_layers, n, _ = capacities.shape
    nodes = (num_layers + 1) * n
    arcs = num_layers * n * n
    sink_flow = np.zeros(n)
    level = np.empty(nodes, np.int64)
    arc_of = np.empty(nodes, np.int64)
    path_layer = np.empty(nodes + 1, np.int64)
    path_node = np.empty(nodes + 1, np.int64)
    path_arc = np.empty(nodes + 1, np.int64)
    path_residual = np.empty(nodes + 1)
    queue = np.empty(nodes, np.int64)
    flows = np.zeros((arcs + 63) // 64, np.uint64)
    if dense:
        _solve_tasks(capacities, order, row_start, num_arcs, class_end, into_sink, cuts, causal, sources, tasks, slack,
                     lower, upper, stop, 0, flows, None, np.zeros(arcs), np.empty(arcs, np.int64), sink_flow, level,
                     arc_of, path_layer, path_node, path_arc, path_residual, queue)
        return table_bits
    # The table stays at most half full plus one augmentation (<= nodes + n new arcs) above that.
    while 2**table_bits < 4 * (nodes + n):
        table_bits += 1
    first = 0
    while True:
        keys = np.full(2**table_bits, -1, np.int64)
        first = _solve_tasks(capacities, order, row_start, num_arcs, class_end, into_sink, cuts, causal, sources,
                             tasks, slack, lower, upper, stop, first, flows, keys, np.empty(2**table_bits),
                             np.empty(2**table_bits, np.int64), sink_flow, level, arc_of, path_layer, path_node,
                             path_arc, path_residual, queue)
        if first == len(tasks):
            return table_bits
        table_bits += 2
