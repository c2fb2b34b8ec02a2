"""Exact max-flow solvers for the layered attention graph.

The graph of a stack of ``l`` layers has nodes ``(k, i)`` for ``k = 0..l`` and ``i = 0..n-1`` and an
arc ``(k, i) -> (k-1, j)`` of capacity ``capacities[k-1, i, j]``. Every solver answers the same
question: the max-flow value from the single source ``(l, source)`` to each input node ``(0, j)``,
one separate single-sink problem per ``j``.

Solvers are pure functions on numpy arrays::

    solver(capacities: float array (l, n, n), source: int) -> float64 array (n,)

``SOLVERS`` maps a name to each solver:

* ``"fast"`` — :func:`fast_max_flows`, an exact compiled (numba) Dinic specialised to the layered
  graph; the default of :func:`captum_attnflow.attention_flow`.
* ``"scipy"`` — :func:`scipy_max_flows`, scipy's Dinic on integer-scaled capacities (baseline).
* ``"networkx"`` — :func:`networkx_max_flows`, the plain reference the others are tested against.
"""

from __future__ import annotations

import argparse
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence

import networkx as nx
import numba
import numba.np.ufunc.parallel as numba_parallel
import numpy as np
import scipy.sparse
import torch
from scipy.sparse.csgraph import maximum_flow

from captum_attnflow.flow import arcs, dinic

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
# "fast": Dinic specialised to the layered attention graph (kernels in captum_attnflow.flow.dinic)
# --------------------------------------------------------------------------------------------

#: The ``"fast"`` solver stops a sink as soon as its flow is within this of a cut's capacity.
CUT_GAP = 1e-12

#: ``FastSolver`` uses several threads only from this much work on, counted as
#: (tasks × arcs) = ``len(tasks)·l·n²`` (~10 ms of solving).
THREADS_MIN_WORK = 4_000_000

#: With several threads the sinks go out in this many interleaved shares per thread, taken one at a
#: time, so that a thread sharing its core with another process does less of the work.
CHUNKS_PER_THREAD = 4

#: Graphs with at most this many arcs keep their flow in a dense float64 array per thread (no
#: hashing; 128 MiB at most); larger ones in a hash table of the arcs carrying flow.
DENSE_ARCS = 2**24

#: With a ``progress`` callback the tasks are solved in about this many blocks (one call each).
PROGRESS_BLOCKS = 100


def check_threads(threads) -> int | None:
    """``None`` (automatic) or a positive integer; anything else is an error naming ``threads``."""
    if threads is None:
        return None
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be a positive integer or None (automatic); got {type(threads).__name__}.")
    if threads < 1:
        raise ValueError(f"threads={threads} must be at least 1 (or None for the automatic choice).")
    return int(threads)


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def busy_cpus() -> float:
    """How many CPUs other runnable tasks occupy right now.

    The number of runnable tasks of ``/proc/loadavg`` (4th field, ``running/total``) minus the
    calling thread: a snapshot, so that this process's own earlier solves (which the 1-minute
    load average still counts for a minute) do not count. Without ``/proc``, the 1-minute load
    average, ``os.getloadavg()[0]``; 0 when neither is available.
    """
    try:
        with open("/proc/loadavg", encoding="ascii") as file:
            return max(0.0, float(file.read().split()[3].split("/")[0]) - 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return max(0.0, os.getloadavg()[0])
    except (OSError, AttributeError):
        return 0.0


def default_threads(work: int) -> int:
    """The ``"fast"`` solver's thread count when none is given, for ``work`` = tasks × arcs.

    More threads must never be slower. The sinks are dealt out to the threads in fixed shares, so
    a thread that has to share its core with another busy process makes the whole solve wait for
    it (``benchmarks/bench_threads.py``, ``docs/results/flow_threads.md``). Hence: 1 thread below
    :data:`THREADS_MIN_WORK` (starting threads costs more than it saves); otherwise the CPUs this
    process may use (:func:`usable_cpus`) that no other runnable task occupies
    (:func:`busy_cpus`), at most ``torch.get_num_threads()`` (the caller's setting) and — when
    numba's own thread pool is already running — ``numba.get_num_threads()``. Nothing global is
    read in a way that changes it: numba's thread count is only read once its threading layer has
    started (starting it resets torch's OpenMP thread count).
    """
    if work < THREADS_MIN_WORK:
        return 1
    limit = min(usable_cpus(), torch.get_num_threads())
    if getattr(numba_parallel, "_is_initialized", False):
        limit = min(limit, numba.get_num_threads())
    free = int(usable_cpus() - busy_cpus() + 0.5)
    return max(1, min(limit, free))


def cut_capacities(capacities: np.ndarray, sources: np.ndarray, leak: np.ndarray) -> np.ndarray:
    """The smallest of three cuts for every source and sink: ``(len(sources), n)`` float64.

    All arcs out of the source ``Σ_m c[l-1][s, m]``, all arcs into the sink ``Σ_i c[0][i, j]``, and
    the suffix cut ``Σ_{m >= j} c[l-1][s, m] + leak[j]`` (:func:`captum_attnflow.arcs.leak_past`).
    """
    top = np.asarray(capacities[-1][sources], dtype=np.float64)
    suffix = np.cumsum(top[:, ::-1], axis=1)[:, ::-1]
    into_sink = capacities[0].sum(axis=0, dtype=np.float64)
    out_of_source = top.sum(axis=1, keepdims=True)
    return np.minimum(np.minimum(out_of_source, into_sink[None, :]), suffix + leak[None, :])


class FastSolver:
    """The ``"fast"`` solver prepared for one graph and its sources (arcs sorted and cuts computed
    once), solving any tasks to any slack.

    Each task (source ``p``, sink ``j``, flat index ``p·n + j``) runs Dinic's algorithm until its
    flow is within ``slack`` of the capacity of a cut (:attr:`cuts`) or no augmenting path is left;
    the result is a feasible flow's value ``lower`` and a cut's capacity ``upper``, so ``lower <=
    maxflow <= upper`` always holds and ``upper - lower <= slack`` (the default :data:`CUT_GAP` is
    the exact solver).

    Args:
        capacities: float32 or float64 ``(l, n, n)``; ``capacities[k-1, i, j]`` is the arc
            ``(k, i) -> (k-1, j)``. float32 is read as is (no float64 copy); arithmetic is float64.
        sources: top-layer nodes.
        threads: threads sharing the tasks (default: :func:`default_threads` of the work
            ``len(tasks)·l·n²``: 1 below :data:`THREADS_MIN_WORK`, e.g. up to ``l = 6``, ``n = 128``
            or ``l = 12``, ``n = 80`` for one source; above, the free CPUs).

    Memory: the capacities, the arc order (int16, arcs above ``1e-13`` only: about ``l·n²/2`` on
    causal attention) and, per thread, one bit per arc and the flow: dense up to
    :data:`DENSE_ARCS` arcs, else a table of the arcs carrying flow (:mod:`captum_attnflow.flow.dinic`).
    """

    def __init__(self, capacities: np.ndarray, sources: Sequence[int], threads: int | None = None) -> None:
        if capacities.dtype not in (np.float32, np.float64):
            capacities = capacities.astype(np.float64)
        self.capacities = np.ascontiguousarray(capacities)
        self.sources = np.asarray(sources, dtype=np.int64)
        self.threads = threads
        self.order, self.row_start, self.num_arcs, self.class_end = arcs.sort_arcs(self.capacities)
        leak = arcs.leak_past(self.capacities)
        #: ``(len(sources), n)`` float64: the early-stop cut of each task (:func:`cut_capacities`).
        self.cuts = cut_capacities(self.capacities, self.sources, leak)
        # Causal (no arc to a later position below the top): nodes at positions below the sink
        # cannot reach it, carry no flow and are never searched.
        self.causal = bool(leak.max() <= 0.0)
        self.into_sink = np.ascontiguousarray(self.capacities[0].T)  # [j] = the arcs into (0, j)

    def bounds(
        self,
        slack: float | np.ndarray = CUT_GAP,
        tasks: np.ndarray | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Solve ``tasks`` (default: all ``len(sources)·n``) to ``slack`` (a number or one per task).

        ``progress`` is called with the number of tasks done after each block of about
        ``len(tasks) / PROGRESS_BLOCKS`` tasks (e.g. ``tqdm.update``). Ctrl-C
        (``KeyboardInterrupt``) stops the solve: the threads finish the sink they are on and the
        exception is raised again here.

        Returns:
            ``(lower, upper)``, float64 ``(len(tasks),)`` each.
        """
        n = self.capacities.shape[-1]
        tasks = np.arange(len(self.sources) * n, dtype=np.int64) if tasks is None else np.asarray(tasks, np.int64)
        slack = np.broadcast_to(np.asarray(slack, dtype=np.float64), tasks.shape).copy()
        lower = np.zeros(len(tasks))
        upper = np.full(len(tasks), np.nan)
        work = len(tasks) * self.capacities.size
        threads = self.threads
        if threads is None:  # threads pay only when the work outweighs starting them (~1 ms)
            threads = default_threads(work)
        threads = max(1, min(threads, len(tasks)))
        block = len(tasks) if progress is None else max(threads, -(-len(tasks) // PROGRESS_BLOCKS))
        stop = np.zeros(1, dtype=np.bool_)
        table_bits = np.zeros(threads, dtype=np.int64)

        # Several threads deal the sinks out in CHUNKS_PER_THREAD interleaved shares per thread, each
        # thread taking the next share when it finishes one: a thread slowed down by another busy
        # process on its core solves fewer shares instead of holding up the whole solve.
        shares = 1 if threads == 1 else CHUNKS_PER_THREAD * threads
        lock = threading.Lock()

        def run(thread: int, part: slice, queue) -> None:
            while True:
                with lock:
                    share = next(queue, None)
                if share is None:
                    return
                picked = slice(part.start + share, part.stop, shares)
                # contiguous copies: one compiled signature whatever the thread count
                part_lower, part_upper = np.ascontiguousarray(lower[picked]), np.ascontiguousarray(upper[picked])
                table_bits[thread] = dinic.solve_sinks(
                    self.capacities, self.order, self.row_start, self.num_arcs, self.class_end, self.into_sink,
                    self.cuts, self.causal, self.sources, np.ascontiguousarray(tasks[picked]),
                    np.ascontiguousarray(slack[picked]), part_lower, part_upper, self.capacities.size <= DENSE_ARCS,
                    table_bits[thread], stop,
                )
                lower[picked], upper[picked] = part_lower, part_upper

        pool = None if threads == 1 and work < THREADS_MIN_WORK else ThreadPoolExecutor(threads)
        try:
            for start in range(0, len(tasks), block):
                part = slice(start, min(start + block, len(tasks)))
                queue = iter(range(min(shares, part.stop - part.start)))
                if pool is None:  # tiny: solve here (Ctrl-C is seen within ~10 ms anyway)
                    run(0, part, queue)
                else:  # in threads, so that this thread can take Ctrl-C while they solve
                    for job in [pool.submit(run, thread, part, queue) for thread in range(threads)]:
                        job.result()
                if progress is not None:
                    progress(part.stop - part.start)
        except BaseException:
            stop[0] = True  # the threads stop after their current sink
            raise
        finally:
            if pool is not None:
                pool.shutdown(wait=True)
        return lower, upper


def fast_max_flows_many(capacities: np.ndarray, sources: Sequence[int], threads: int | None = None) -> np.ndarray:
    """:func:`fast_max_flows` for several sources on the same graph (sorting the arcs once).

    Args:
        capacities: float32 or float64 ``(l, n, n)`` as in :class:`FastSolver`.
        sources: top-layer nodes.
        threads: as in :class:`FastSolver`.

    Returns:
        float64 ``(len(sources), n)``.
    """
    solver = FastSolver(capacities, sources, threads)
    return solver.bounds()[0].reshape(len(solver.sources), capacities.shape[-1])


def fast_max_flows(capacities: np.ndarray, source: int) -> np.ndarray:
    """Exact max-flow values by Dinic's algorithm specialised to the layered attention graph.

    One Dinic run per sink ``(0, j)``, compiled with numba (``nogil``, kernels in
    :mod:`captum_attnflow.flow.dinic`); the sinks are shared out over Python threads when the
    graph is big enough to pay (:func:`default_threads`, see :class:`FastSolver`). What makes it fast on
    this graph:

    * the graph is never built: arcs are read from the dense capacity matrices (float32 read as
      is), each node's arcs ordered once (shared by all sinks and sources) in decreasing capacity
      classes a factor ``√2`` apart, so the depth-first search follows the big arcs first, needs
      fewer augmenting paths and stops scanning a node at its first zero arc;
    * within a class the arcs are ordered by position, so on causal attention, where no node at
      a position below the sink can reach it, the search skips such heads a class at a time;
    * the first phase needs no breadth-first search: with zero flow the level graph *is* the
      layered DAG (every path has ``l`` arcs), and reverse arcs cannot be on it, so they are not
      scanned;
    * after an augmentation the search resumes at the first arc it saturated, with the residuals
      of the current path cached;
    * a sink stops as soon as its flow reaches a cut's capacity, the smallest of all arcs out of
      the source, all arcs into the sink (on random attention almost always the min cut) and the
      suffix cut ``Σ_{m >= j} c[l-1][source, m] + leak[j]`` (the source with every node below it
      at a position ``< j``; on causal attention the min cut of most sinks);
    * the flow of the current sink lives in a small hash table, with one bit per arc saying
      whether to look there, and only its arcs are reset between sinks.

    Measured (``benchmarks/bench_flow.py``, ``benchmarks/bench_llm_flow.py``, ``docs/solver.md``):
    real 6-layer MiniLM attention at ``n = 128`` in ~20 ms of CPU time (scipy's Dinic: ~260 ms);
    real SmolLM2 attention (30 layers), the last position at the last layer, at ``n = 1024`` in a
    few seconds, less than the forward pass that recorded it.

    Why it is exact: Dinic's algorithm stops only when (a) the flow equals the capacity of a cut
    — by weak duality no flow can be larger — or (b) no augmenting path is left in the residual
    graph, the max-flow/min-cut optimality condition. Residual capacities up to
    :data:`captum_attnflow.arcs.RESIDUAL_EPS` (``1e-13``) count as saturated, so the value can be low by at most
    ``1e-13`` per arc of the final cut (``≤ l·n²·1e-13``); in (a) it is within :data:`CUT_GAP`
    (``1e-12``) of the cut. Each phase strictly lengthens the shortest augmenting path, so there
    are at most ``l·n + 1`` phases. On real attention the min cut is usually not the trivial one
    (flow is trapped in a [CLS] chain); there the first blocking flow is usually already maximal
    and the breadth-first search that proves it, confined to the small source side of the min
    cut, is cheap. The first call in a fresh environment compiles for ~10 s; numba caches the
    machine code on disk (``cache=True``) for later processes.

    Args:
        capacities: float32 or float64 ``(l, n, n)``; ``capacities[k-1, i, j]`` is the arc
            ``(k, i) -> (k-1, j)``.
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


def flow_solver(text: str) -> str:
    """argparse type of ``--flow-solver``: ``auto`` or a name in :data:`SOLVERS`."""
    if text != "auto" and text not in SOLVERS:
        raise argparse.ArgumentTypeError(f"{text!r} is unknown; choose one of {', '.join(('auto', *SOLVERS))}")
    return text
