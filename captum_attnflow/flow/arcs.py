"""The arc order of the ``"fast"`` max-flow solver: arcs in capacity classes a factor ``√2`` apart,
by position inside a class (so a causal search meets a head below the sink once per class), and
the capacity that leaks past each position (for the causal suffix cut). Compiled with numba."""

from __future__ import annotations

import numba
import numpy as np

#: Residual capacities at or below this are treated as saturated (float round-off would otherwise
#: leave arcs with ~1e-17 of residual that no path can use). Each arc of the final cut can hide at
#: most this much, so values are exact up to ``l·n²·1e-13`` (< 1e-6 for ``l = 12``, ``n = 512``;
#: in practice ~1e-15).
RESIDUAL_EPS = 1e-13

#: Arcs are ordered in capacity classes ``(2^-(b+1)/2, 2^-b/2]`` (a factor ``√2`` each, class ``b =
#: 0..ARC_CLASSES-2``; everything at or below :data:`RESIDUAL_EPS` in the last class), largest first.
ARC_CLASSES = 64


def sort_arcs(capacities: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Arcs of every node in decreasing capacity classes, by decreasing head position within a class.

    The classes (a factor ``√2`` apart, :data:`ARC_CLASSES`) keep the search on big arcs first;
    the position order inside a class lets a search that may only use heads at positions
    ``>= floor`` (causal attention) skip the rest of a class at its first head below ``floor``
    instead of scanning it. Only arcs above :data:`RESIDUAL_EPS` are listed (about half of them on
    causal attention), and none of layer 0's (the solver reads those from ``capacities``).

    Returns ``(order, row_start, num_arcs, class_end)``: the heads of the arcs out of ``(k+1, i)``
    are ``order[row_start[k, i] : row_start[k, i] + num_arcs[k, i]]`` (int16 when ``n < 2**15``,
    else int32), ``row_start`` and ``num_arcs`` are ``(l, n)`` and ``class_end[k, i, b]``
    ``(l, n, ARC_CLASSES)`` is the index (within the row) after the last arc of the classes
    ``<= b``.
    """
    num_layers, n, _ = capacities.shape
    class_end = np.zeros((num_layers, n, ARC_CLASSES), np.int32)
    num_arcs = _count_arcs(capacities)
    row_start = np.zeros(num_arcs.size, np.int64)
    np.cumsum(num_arcs.ravel()[:-1], out=row_start[1:])
    row_start = row_start.reshape(num_arcs.shape)
    order = np.empty(int(num_arcs.sum()), np.int16 if n < 2**15 else np.int32)
    _sort_rows(capacities, order, row_start, class_end)
    return order, row_start, num_arcs, class_end


@numba.njit(cache=True, inline="always")
def _arc_class(c):
    """The capacity class of an arc (:data:`ARC_CLASSES`)."""
    if c <= RESIDUAL_EPS:
        return ARC_CLASSES - 1
    return min(max(int(np.floor(-2.0 * np.log2(c))), 0), ARC_CLASSES - 2)


@numba.njit(cache=True, nogil=True)
def _count_arcs(capacities):
    """``(l, n)`` int64: arcs above :data:`RESIDUAL_EPS` out of each node (0 for layer 0)."""
    num_layers, n, _ = capacities.shape
    counts = np.zeros((num_layers, n), np.int64)
    for k in range(1, num_layers):
        for i in range(n):
            for j in range(n):
                if np.float64(capacities[k, i, j]) > RESIDUAL_EPS:
                    counts[k, i] += 1
    return counts


@numba.njit(cache=True, nogil=True)
def _sort_rows(capacities, order, row_start, class_end):
    """Counting sort of every row into :func:`sort_arcs`' order (``O(n)`` per row, no comparisons)."""
    num_layers, n, _ = capacities.shape
    classes = np.empty(n, np.int64)
    start = np.empty(ARC_CLASSES, np.int64)
    for k in range(1, num_layers):
        for i in range(n):
            start[:] = 0
            for j in range(n):
                b = _arc_class(np.float64(capacities[k, i, j]))
                classes[j] = b
                start[b] += 1
            total = 0
            for b in range(ARC_CLASSES):
                total += start[b]
                class_end[k, i, b] = total
                start[b] = total - start[b]
            base = row_start[k, i]
            for j in range(n - 1, -1, -1):
                b = classes[j]
                if b < ARC_CLASSES - 1:
                    order[base + start[b]] = j
                    start[b] += 1


@numba.njit(cache=True, nogil=True)
def leak_past(capacities):
    """``leak[j]``: capacity of the arcs from positions ``< j`` to positions ``>= j`` below the top.

    With it, ``Σ_{m >= j} capacities[-1][source, m] + leak[j]`` is the capacity of a cut for sink
    ``(0, j)`` (the "suffix cut"): the source side is the source and every node at a position
    ``< j`` in the layers below it (layer 0 included, the sink excepted). On causal
    (lower-triangular) attention ``leak = 0``. An arc ``i -> m`` with ``i < m`` crosses the cut of
    every ``j`` in ``(i, m]``, so ``leak`` is the running sum of a difference array: ``O(l·n²)``.

    Returns float64 ``(n,)``.
    """
    num_layers, n, _ = capacities.shape
    change = np.zeros(n + 1)
    for k in range(num_layers - 1):  # arcs between the layers below the top
        for i in range(n):
            for m in range(i + 1, n):
                c = np.float64(capacities[k, i, m])
                change[i + 1] += c
                change[m + 1] -= c
    return np.cumsum(change[:n])
