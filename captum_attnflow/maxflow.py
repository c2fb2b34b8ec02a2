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


SOLVERS: dict[str, MaxFlowSolver] = {
    "networkx": networkx_max_flows,
}
