"""The cost guard of attention flow: a time estimate and :class:`FlowCostWarning` before long solves."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Sequence


class FlowCostWarning(UserWarning):
    """A flow call is estimated to take long (:data:`COST_WARNING_SECONDS`)."""


#: ``attention_flow`` warns (:class:`FlowCostWarning`) when its estimate exceeds this many seconds.
COST_WARNING_SECONDS = 60.0

#: Seconds per (single-sink problem × graph arc) of the ``"fast"`` solver on one core, measured on
#: real decoder attention (SmolLM2, n = 1024–2048; ``benchmarks/bench_llm_flow.py``); the other
#: solvers are slower by the factors of :data:`SOLVER_SLOWDOWN` (``benchmarks/bench_flow.py``).
SECONDS_PER_ARC = 2.5e-10
SOLVER_SLOWDOWN = {"fast": 1.0, "scipy": 15.0, "networkx": 1000.0}


def estimate_seconds(problems: Sequence[tuple[int, int]], method: str, threads: int) -> float:
    """Rough time of solving ``problems``: ``(number of single-sink problems, arcs of their graph)``.

    :data:`SECONDS_PER_ARC` per problem and arc, times :data:`SOLVER_SLOWDOWN`, shared by
    ``threads`` cores. Right within a factor of about 2 on attention graphs (real attention
    usually stops early at a cut; random attention can take longer).
    """
    work = sum(count * arcs for count, arcs in problems)
    return work * SECONDS_PER_ARC * SOLVER_SLOWDOWN.get(method, 1.0) / max(1, threads)


def warn_cost(seconds: float, problems: int, shape: tuple[int, int]) -> None:
    if seconds < COST_WARNING_SECONDS:
        return
    layers, n = shape
    warnings.warn(
        FlowCostWarning(
            f"attention flow: {problems:,} max-flow problems on graphs of up to {layers} layers x {n} tokens, "
            f"estimated {seconds / 60:.1f} min. progress=True shows a bar; Ctrl-C stops cleanly; tol= (bounded "
            f"flow) or fewer output_positions/layers make it cheaper."
        ),
        stacklevel=_outside_package(),
    )


def _outside_package() -> int:
    """``stacklevel`` of the first caller outside this package (for a warning raised in it)."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # captum_attnflow/
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level
