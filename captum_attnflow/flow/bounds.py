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
import warnings
from typing import Callable

import numpy as np
import torch

from captum_attnflow.flow.maxflow import CUT_GAP, FastSolver


#: Unit roundoff of float64.
UNIT_ROUNDOFF = 2.0**-53

#: The part of the float64 floor of ``tol`` that does not grow with the graph: a task that cannot
#: stop earlier stops at :data:`~captum_attnflow.flow.maxflow.CUT_GAP` (1e-12) from its cut; measured
#: proven errors at ``tol = 1e-12``: 5e-13 (n = 16 and n = 128, 12 layers), at ``tol = 1e-15``:
#: 1.5e-14 to 6e-14 (``docs/guarantees.md``).
SOLVER_FLOOR = 1e-12


def tol_floor(dtype: torch.dtype, num_layers: int = 0, heads: int = 0, n: int = 0) -> float:
    """The smallest ``tol`` bounded flow promises for results in ``dtype`` on a graph of
    ``num_layers`` layers, ``heads`` heads and ``n`` tokens.

    float64: :data:`SOLVER_FLOOR` plus four times :func:`graph_rounding` (the rounding of building
    the graph and of the solver's sums, which the proven error includes): 1e-12 for a tiny graph,
    2.6e-12 at 12 layers × 128 tokens, 2.1e-11 at 30 layers × 1024 tokens. float32, float16 and
    bfloat16: rounding a value in ``[0.5, 1)`` to the dtype can move it by half a unit in the last
    place, ``eps / 4`` (float32: 3e-8), so ``eps / 2`` (float32: 6e-8), or the float64 floor if larger.
    """
    floor = SOLVER_FLOOR + 4 * graph_rounding(num_layers, heads, n)
    if dtype == torch.float64:
        return floor
    return max(float(torch.finfo(dtype).eps) / 2, floor)


def check_tol_floor(tol: float | None, dtype: torch.dtype, num_layers: int = 0, heads: int = 0, n: int = 0) -> None:
    """Refuse a ``tol`` below :func:`tol_floor`, naming the floor."""
    floor = tol_floor(dtype, num_layers, heads, n)
    if tol is None or tol >= floor:
        return
    hint = " or pass float64 attention" if dtype != torch.float64 else ""
    raise ValueError(
        f"tol={tol:g} is below the floor {floor:.1e} of bounded flow for {str(dtype).replace('torch.', '')} results "
        f"on this graph ({num_layers} layers, {n} tokens): the error that rounding and the solver's stopping rule "
        f"can leave, so no solve could prove it. Pass tol >= {floor:.1e}{hint}, or tol=None for the exact flow."
    )


def check_gap(gap: float, tol: float | None) -> None:
    """Warn (:class:`UserWarning`) when the proven error exceeds ``tol`` (above the floor this has
    not been observed; it would mean the solver's stopping rule left more than measured)."""
    if tol is not None and gap > tol:
        warnings.warn(
            f"bounded flow proved an error of {gap:.3g}, above tol={tol:g}: the solver could not reach tol on this "
            f"graph; the values are within their reported error (result.error), not within tol.",
            stacklevel=3,
        )


def graph_rounding(num_layers: int, heads: int, n: int) -> float:
    """Relative error bound of the raw max-flow values computed in float64 from the attention.

    Each capacity ``rownorm(mean_h A[h] + I)`` is computed from the exact attention values with at
    most ``heads + n + 3`` rounded operations, so it is ``c·(1 + e)`` with ``|e| <= (heads + n + 3)·u``
    (``u = 2^-53``); max flow is monotone and positively homogeneous in the capacities, so the max
    flow of the rounded graph is within that factor of the exact one. The solver adds at most
    ``num_layers·n + n`` rounded additions along a flow value or a cut's capacity. Twice the sum
    is returned for margin.
    """
    return 2.0 * (heads + n + 3 + num_layers * n + n) * UNIT_ROUNDOFF


class NotAnArrayError(AttributeError, TypeError):
    """Array code applied to a :class:`BoundedFlow` (a ``TypeError``; also an ``AttributeError`` for
    array attributes such as ``.shape``, so ``hasattr`` stays False)."""


def _refuse(operation: str):
    def refuse(self, *args, **kwargs):
        raise NotAnArrayError(
            f"a BoundedFlow is not an array: {operation} is not defined on it. Use result.values (the flow, "
            f"{self.shape_text()}) and result.error (the proven error of each row) or result.gap (the largest); "
            f"`values, error = result` no longer unpacks: write `result.values, result.error`."
        )

    return refuse


class BoundedFlow:
    """Attention flow with a proven error bound (``attention_flow(..., tol=...)``).

    ``values`` has the shape and type of :func:`attention_flow`'s result; ``error`` drops its last
    axis (one number per row, NaN for rows that were not requested): every entry of a row is
    within ``error`` of the exact flow of the attention passed, ``|values - exact| <= error``,
    proven by a feasible flow (lower bound) and a cut (upper bound) for each single-sink problem,
    widened by the rounding of building the graph in float64 and of rounding the values to the
    result dtype. ``gap`` is the largest error (``<= tol``).

    Deliberately not a tuple or an array: indexing, ``len``, iteration (so tuple unpacking),
    truth value, arithmetic and conversion to numpy/torch raise ``TypeError`` pointing at
    ``.values``, so code written for the plain values array fails loudly instead of computing on
    the pair. Plots and Captum's visualisations take ``result.values`` (they have no error bars).
    """

    __slots__ = ("values", "error")
    __array_ufunc__ = None  # numpy defers binary operators to the reflected methods below

    def __init__(self, values, error) -> None:
        self.values = values
        self.error = error

    @property
    def gap(self) -> float:
        """The largest error bound over the computed rows (``<= tol``)."""
        error = self.error if isinstance(self.error, np.ndarray) else self.error.detach().cpu().numpy()
        return float(np.nanmax(error)) if np.isfinite(error).any() else 0.0

    def shape_text(self) -> str:
        return f"shape {tuple(self.values.shape)}"

    def __repr__(self) -> str:
        return f"BoundedFlow(values: {type(self.values).__name__} of {self.shape_text()}, gap={self.gap:.3g})"

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise NotAnArrayError(
            f"a BoundedFlow has no .{name}: it is not an array. Use result.values.{name} (the flow, "
            f"{self.shape_text()}) and result.error / result.gap (its proven error)."
        )

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise NotAnArrayError(
            f"a BoundedFlow is not a tensor: {getattr(func, '__name__', func)} is not defined on it. Use "
            f"result.values (the flow) and result.error / result.gap (its proven error)."
        )

    __array__ = _refuse("conversion to a numpy array")
    __getitem__ = _refuse("indexing")
    __len__ = _refuse("len()")
    __iter__ = _refuse("iteration (and tuple unpacking)")
    __bool__ = _refuse("truth value")
    __contains__ = _refuse("`in`")
    for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
        locals()[f"__{_name}__"] = _refuse(f"the operator __{_name}__")
        locals()[f"__r{_name}__"] = _refuse(f"the operator __r{_name}__")
    del _name
    __neg__ = _refuse("negation")
    __abs__ = _refuse("abs()")
    __float__ = _refuse("float()")
    __lt__ = _refuse("comparison")
    __le__ = _refuse("comparison")
    __gt__ = _refuse("comparison")
    __ge__ = _refuse("comparison")


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


def bounded_rows(solver: FastSolver, tol: float | None, progress: Callable[[int], None] | None, rounding: float = 0.0):
    """Normalised rows and their error bounds ``((P, n), (P,))`` from a prepared ``"fast"`` solver.

    ``tol=None``: exact. Otherwise a first slack per source is chosen from the cut capacities so
    that the error would be about ``tol`` if every sink stopped at its slack; rows whose proven
    error is still above ``tol`` are solved again with an 8× smaller slack until it holds (at
    the latest when the slack reaches :data:`CUT_GAP`, the exact solver). ``rounding`` is the
    relative error of the raw values from building the graph (:func:`graph_rounding`): the raw
    bounds are widened by it before they are normalised.
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
            low, high = normalised_bounds(*_widened(lower, upper, rounding, num_sources, n))
            unsettled = np.repeat(((high - low).max(axis=1) / 2 > tol), n)
            if not unsettled.any() or slack[unsettled].max() <= CUT_GAP:
                break
            slack[unsettled] = np.maximum(slack[unsettled] / 8, CUT_GAP)
            tasks = np.flatnonzero(unsettled & (upper - lower > slack))
            if len(tasks) == 0:
                continue
            lower[tasks], upper[tasks] = solver.bounds(slack[tasks], tasks)
    low, high = normalised_bounds(*_widened(lower, upper, rounding, num_sources, n))
    return (low + high) / 2, (high - low).max(axis=1) / 2


def _widened(lower: np.ndarray, upper: np.ndarray, rounding: float, sources: int, n: int):
    """Raw bounds ``(sources, n)`` widened by the relative ``rounding`` of the graph (and the sums)."""
    lower = lower.reshape(sources, n)
    upper = upper.reshape(sources, n)
    if rounding == 0.0:
        return lower, upper
    return np.maximum(lower * (1.0 - rounding), 0.0), upper * (1.0 + rounding)
