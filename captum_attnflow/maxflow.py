"""Exact max-flow solvers for the layered attention graph.

The graph of a stack of ``l`` layers has nodes ``(k, i)`` for ``k = 0..l`` and ``i = 0..n-1`` and an
arc ``(k, i) -> (k-1, j)`` of capacity ``capacities[k-1, i, j]``. Every solver answers the same
question: the max-flow value from the single source ``(l, source)`` to each input node ``(0, j)``,
one separate single-sink problem per ``j``.

Solvers are pure functions on numpy arrays::

    solver(capacities: float64 array (l, n, n), source: int) -> float64 array (n,)
"""

from __future__ import annotations

from typing import Callable

import networkx as nx
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


SOLVERS: dict[str, MaxFlowSolver] = {
    "networkx": networkx_max_flows,
    "scipy": scipy_max_flows,
}
