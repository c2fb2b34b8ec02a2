"""Bounded flow (``tol=``): proven bounds on each normalised flow value.

The ``"fast"`` solver stops each single-sink problem once its flow is close to a cut's capacity, so
every raw value ``v_j`` is known to lie in ``[lo_j, hi_j]``; the normalised value ``v_j / Σ_k v_k``
then lies in ``[lo_j / (lo_j + Σ_{k≠j} hi_k), hi_j / (hi_j + Σ_{k≠j} lo_k)]``
(:func:`normalised_bounds`). The result is the middle of that interval and its half-width the
proven error; problems are solved tighter until every row's error is ``<= tol``.
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import numpy as np
import torch

from captum_attnflow.flow.maxflow import CUT_GAP, FastSolver


class BoundedFlow(NamedTuple):
    """Attention flow with a proven error bound (``attention_flow(..., tol=...)``).

    ``values`` has the shape and type of :func:`attention_flow`'s result; ``error`` drops its last
    axis (one number per row, NaN for rows that were not requested): every entry of a row is
    within ``error`` of the exact flow, ``|values - exact| <= error``, proven by a feasible flow
    (lower bound) and a cut (upper bound) for each single-sink problem.
    """

    values: torch.Tensor | np.ndarray
    error: torch.Tensor | np.ndarray

    @property
    def gap(self) -> float:
        """The largest error bound over the computed rows (``<= tol``)."""
        error = self.error if isinstance(self.error, np.ndarray) else self.error.detach().cpu().numpy()
        return float(np.nanmax(error)) if np.isfinite(error).any() else 0.0


def check_tol(tol) -> float | None:
    """``None`` (exact) or a positive finite number; anything else is an error naming ``tol``."""
    if tol is None:
        return None
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"tol must be a positive number (the largest error allowed) or None for exact flow; got {type(tol).__name__}.")
    if not math.isfinite(tol) or tol <= 0:
        raise ValueError(f"tol={tol} must be a positive finite number (e.g. 1e-4), or None for exact flow.")
    return float(tol)


def normalised_bounds(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on ``v_j / Σ_k v_k`` from bounds ``lower <= v <= upper`` (rows ``(..., n)``).

    ``v_j / (v_j + R)`` grows with ``v_j`` and falls with ``R = Σ_{k≠j} v_k``, so it lies between
    ``lo_j / (lo_j + Σ_{k≠j} hi_k)`` and ``hi_j / (hi_j + Σ_{k≠j} lo_k)`` (0 where the denominator
    is 0). Equal bounds give the plain normalisation.
    """
    rest_upper = upper.sum(axis=-1, keepdims=True) - upper
    rest_lower = lower.sum(axis=-1, keepdims=True) - lower
    low_total = lower + rest_upper
    high_total = upper + rest_lower
    low = np.divide(lower, low_total, out=np.zeros_like(lower), where=low_total > 0)
    high = np.divide(upper, high_total, out=np.zeros_like(upper), where=high_total > 0)
    return low, np.minimum(np.maximum(high, low), 1.0)


def bounded_rows(solver: FastSolver, tol: float | None, progress: Callable[[int], None] | None):
    """Normalised rows and their error bounds ``((P, n), (P,))`` from a prepared ``"fast"`` solver.

    ``tol=None``: exact. Otherwise a first slack per source is chosen from the cut capacities so
    that the error would be about ``tol`` if every sink stopped at its slack; rows whose proven
    error is still above ``tol`` are solved again with an 8× smaller slack until it holds (at
    the latest when the slack reaches :data:`CUT_GAP`, the exact solver).
    """
    num_sources, n = solver.cuts.shape
    if tol is None:
        lower, upper = solver.bounds(progress=progress)
    else:
        total = solver.cuts.sum(axis=1)  # >= Σ_j v_j
        slack = np.maximum(tol * total / (1.0 + n * solver.cuts.max(axis=1) / np.maximum(total, 1e-300)), CUT_GAP)
        slack = np.repeat(slack, n)
        lower, upper = solver.bounds(slack, progress=progress)
        while True:
            low, high = normalised_bounds(lower.reshape(num_sources, n), upper.reshape(num_sources, n))
            unsettled = np.repeat(((high - low).max(axis=1) / 2 > tol), n)
            if not unsettled.any() or slack[unsettled].max() <= CUT_GAP:
                break
            slack[unsettled] = np.maximum(slack[unsettled] / 8, CUT_GAP)
            tasks = np.flatnonzero(unsettled & (upper - lower > slack))
            if len(tasks) == 0:
                continue
            lower[tasks], upper[tasks] = solver.bounds(slack[tasks], tasks)
    low, high = normalised_bounds(lower.reshape(num_sources, n), upper.reshape(num_sources, n))
    return (low + high) / 2, (high - low).max(axis=1) / 2
