"""Where the ``"fast"`` solver keeps the flow of each arc: dense (one float64 per arc) or, for
graphs above ``maxflow.DENSE_ARCS`` arcs, a small open-addressing hash table holding only the arcs
that carry flow for the current sink, with one bit per arc answering "no flow" without a probe.

The four operations (:func:`flow_of`, :func:`add_flow`, :func:`clear_flows`, :func:`room`) are
compiled only, through numba overloads chosen by the type of ``keys`` (``None`` = dense), so each
storage gets its own compiled solver.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import overload

#: Fibonacci hashing constant ``0x9E3779B97F4A7C15`` as a signed 64-bit integer.
_HASH = -7046029254386353131


@numba.njit(cache=True)
def _slot(keys, key):
    """Index of ``key`` in the open-addressing table ``keys`` (-1 = empty), or of the empty slot
    where it would go (linear probing)."""
    mask = keys.shape[0] - 1
    h = ((key * _HASH) >> 24) & mask
    while keys[h] != key and keys[h] >= 0:
        h = (h + 1) & mask
    return h


def flow_of(flows, keys, values, key):
    """Flow on the arc with flat index ``key`` (``((k-1)·n + i)·n + j`` for ``(k, i) -> (k-1, j)``).

    Compiled only, by the overload below, in one of two storages chosen by the type of ``keys``:
    ``None`` — dense, ``values[key]``; an array — the hash table ``keys``/``values``, where the
    arc's bit in ``flows`` (set once the arc carried flow) answers 0 at once for almost every arc
    a search looks at, without touching the table. Each storage gets its own compiled solver.
    """
    raise NotImplementedError("compiled by numba only")


def add_flow(flows, keys, values, used, count, key, amount):
    """Add ``amount`` to the flow of arc ``key``, list a new arc in ``used``; returns the count of
    listed arcs. Compiled only (storages as in :func:`flow_of`)."""
    raise NotImplementedError("compiled by numba only")


def clear_flows(flows, keys, values, used, count):
    """Reset the ``count`` listed arcs to no flow. Compiled only (storages as in :func:`flow_of`)."""
    raise NotImplementedError("compiled by numba only")


def room(keys, used):
    """How many arcs may be listed before the table must grow. Compiled only."""
    raise NotImplementedError("compiled by numba only")


@overload(flow_of, inline="always")
def _flow_of_compiled(flows, keys, values, key):
    if isinstance(keys, types.NoneType):
        return lambda flows, keys, values, key: values[key]

    def hashed(flows, keys, values, key):
        if (flows[key >> 6] >> np.uint64(key & 63)) & np.uint64(1) == 0:
            return 0.0
        h = _slot(keys, key)
        if keys[h] == key:
            return values[h]
        return 0.0

    return hashed


@overload(add_flow, inline="always")
def _add_flow_compiled(flows, keys, values, used, count, key, amount):
    if isinstance(keys, types.NoneType):

        def dense(flows, keys, values, used, count, key, amount):
            if (flows[key >> 6] >> np.uint64(key & 63)) & np.uint64(1) == 0:
                flows[key >> 6] |= np.uint64(1) << np.uint64(key & 63)
                values[key] = amount
                used[count] = key
                return count + 1
            values[key] += amount
            return count

        return dense

    def hashed(flows, keys, values, used, count, key, amount):
        h = _slot(keys, key)
        if keys[h] == key:
            values[h] += amount
            return count
        flows[key >> 6] |= np.uint64(1) << np.uint64(key & 63)
        keys[h] = key
        values[h] = amount
        used[count] = h
        return count + 1

    return hashed


@overload(clear_flows)
def _clear_flows_compiled(flows, keys, values, used, count):
    if isinstance(keys, types.NoneType):

        def dense(flows, keys, values, used, count):
            for t in range(count):
                values[used[t]] = 0.0
                flows[used[t] >> 6] = 0

        return dense

    def hashed(flows, keys, values, used, count):
        for t in range(count):
            key = keys[used[t]]
            keys[used[t]] = -1
            flows[key >> 6] = 0

    return hashed


@overload(room, inline="always")
def _room_compiled(keys, used):
    if isinstance(keys, types.NoneType):
        return lambda keys, used: used.shape[0]
    return lambda keys, used: keys.shape[0] // 2
