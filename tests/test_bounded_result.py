"""Bounded flow (``tol=``): the proven error covers the rounding of building the graph, a ``tol``
below the floor is refused, and the result is not a tuple (issue 18, items 3 and 4).

The reference is networkx on the graph built in float64 from the attention as passed (float32
attention is exactly representable in float64), so "exact" means the flow of the attention the
caller gave, not of a float32-rounded graph.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from captum_attnflow import attention_flow, head_flow
from captum_attnflow.flow import BoundedFlow, tol_floor
from captum_attnflow.visualize import text_records
from test_flow import build_capacities, random_attention, reference_values

#: networkx's own float64 rounding on these small graphs (the reference is not exact either).
REFERENCE_ROUNDING = 1e-15


def _graph(raw: np.ndarray, live=None) -> np.ndarray:
    """docs/design.md's graph ``Â = rownorm(mean_h A[h] + I)`` in float64 from ``raw`` as given (a
    float32 row summing to 1 ± 1e-7 is not renormalised first: the graph divides by ``Σ + 1``)."""
    if live is not None:
        return build_capacities(raw.astype(np.float64), live, True)
    fused = raw.astype(np.float64).mean(axis=1) + np.eye(raw.shape[-1])
    return fused / fused.sum(axis=-1, keepdims=True)


def _reference_rows(raw: np.ndarray, positions, live=None) -> np.ndarray:
    """``(len(positions), n)`` exact normalised flow of ``raw`` ``(L, heads, n, n)`` (float64)."""
    capacities = _graph(raw, live)
    rows = []
    for source in positions:
        values = reference_values(capacities, source)
        rows.append(values / values.sum() if values.sum() > 0 else values)
    return np.stack(rows)


def _cases():
    rng = np.random.default_rng(18)
    for case in range(16):
        n = int(rng.integers(5, 9))
        layers = int(rng.integers(2, 4))
        dtype = np.float32 if case % 2 == 0 else np.float64
        tol = float(10.0 ** rng.uniform(-7 if dtype == np.float32 else -11, -1.5))
        tol = max(tol, tol_floor(torch.float32 if dtype == np.float32 else torch.float64, layers, 2, n))
        yield case, n, layers, dtype, tol, int(rng.integers(0, 2**31))


@pytest.mark.parametrize("case, n, layers, dtype, tol, seed", list(_cases()))
def test_every_value_is_within_its_error_of_the_exact_flow_of_the_attention_passed(case, n, layers, dtype, tol, seed):
    rng = np.random.default_rng(seed)
    raw = [a.astype(dtype) for a in random_attention(rng, 1, layers, 2, n, sharpness=float(rng.uniform(0.5, 4)))]
    positions = [0, n - 1]
    bounded = attention_flow(raw, output_positions=positions, layers=-1, tol=tol)
    assert bounded.values.dtype == dtype
    values, error = bounded.values[0, -1, positions].astype(np.float64), bounded.error[0, -1, positions]
    exact = _reference_rows(np.stack(raw, axis=1)[0], positions)
    off = np.abs(values - exact).max(axis=1)
    assert (off <= error + REFERENCE_ROUNDING).all(), (off, error)
    assert bounded.gap <= tol


def test_error_zero_rows_are_exact_and_padded_rows_report_zero():
    rng = np.random.default_rng(4)
    raw = [a.astype(np.float32) for a in random_attention(rng, 1, 3, 2, 7)]
    mask = np.array([[1, 1, 1, 1, 1, 0, 0]])
    bounded = attention_flow(raw, mask=mask, output_positions=[0, 5], layers=-1, tol=1e-3)
    error = bounded.error[0, -1]
    assert error[5] == 0 and (bounded.values[0, -1, 5] == 0).all()  # a padded source: exactly 0
    exact = _reference_rows(np.stack(raw, axis=1)[0], [0], live=mask[0])
    assert np.abs(bounded.values[0, -1, 0] - exact[0]).max() <= error[0] + REFERENCE_ROUNDING
    assert error[0] > 0  # float32 values carry at least their rounding; never a claimed 0


@pytest.mark.parametrize("dtype, floor", [(torch.float32, 6e-8), (torch.float64, 1.1e-12)])
def test_tol_below_the_floor_is_refused_naming_the_floor(dtype, floor):
    floor_here = tol_floor(dtype, 2, 2, 6)
    assert floor_here <= floor
    raw = [torch.rand(1, 2, 6, 6, dtype=dtype).softmax(-1) for _ in range(2)]
    for tol in (floor_here / 10, 1e-300):
        with pytest.raises(ValueError, match=r"tol=.*below the floor %.1e" % floor_here):
            attention_flow(raw, tol=tol)
        with pytest.raises(ValueError, match=r"floor"):
            head_flow(raw, layer=1, tol=tol)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # reaching the floor needs no warning
        assert attention_flow(raw, tol=floor_here).gap <= floor_here


def test_bounded_flow_is_not_a_tuple_and_array_code_fails_loudly():
    raw = [torch.rand(1, 2, 6, 6).softmax(-1) for _ in range(2)]
    bounded = attention_flow(raw, tol=1e-3)
    assert isinstance(bounded, BoundedFlow) and not isinstance(bounded, tuple)
    assert isinstance(bounded.values, torch.Tensor) and bounded.values.shape == (1, 2, 6, 6)
    assert bounded.error.shape == (1, 2, 6) and 0 <= bounded.gap <= 1e-3
    attempts = {
        "index": lambda: bounded[0],
        "len": lambda: len(bounded),
        "iter": lambda: list(bounded),
        "unpack": lambda: tuple(bounded),
        "times": lambda: bounded * 2,
        "rtimes": lambda: 2 * bounded,
        "plus tensor": lambda: torch.zeros(1) + bounded,
        "tensor plus": lambda: bounded + torch.zeros(1),
        "numpy": lambda: np.asarray(bounded),
        "numpy plus": lambda: np.zeros(1) + bounded,
        "torch": lambda: torch.as_tensor(bounded),
        "bool": lambda: bool(bounded),
    }
    for what, attempt in attempts.items():
        with pytest.raises(TypeError, match=r"\.values") as info:
            attempt()
        assert "BoundedFlow" in str(info.value), what
    numpy_result = attention_flow([r.numpy() for r in raw], tol=1e-3)
    assert isinstance(numpy_result.values, np.ndarray) and isinstance(numpy_result.error, np.ndarray)
    assert "gap=" in repr(bounded)


def test_visualisation_refuses_the_bounded_result_and_takes_its_values():
    raw = [torch.rand(1, 2, 6, 6).softmax(-1) for _ in range(2)]
    bounded = attention_flow(raw, tol=1e-3, output_positions=0, layers=-1)
    tokens = [[f"t{i}" for i in range(6)]]
    with pytest.raises(TypeError, match=r"\.values"):
        text_records(bounded, tokens)
    from captum.attr import visualization

    with pytest.raises(TypeError, match=r"\.values"):
        visualization.visualize_image_attr(bounded, method="heat_map", use_pyplot=False)
    records = text_records(bounded.values[:, -1, 0], tokens)
    assert len(records) == 1
