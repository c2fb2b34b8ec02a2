"""Attention flow against an independent networkx computation.

The reference here builds the graph matrices ``Â_l`` itself in numpy from the raw attention
(mask, head mean, residual, renormalise — docs/design.md, items 1, 2, 7) and solves every single-sink
problem with networkx's Boykov–Kolmogorov algorithm (the package's reference solver uses
preflow-push), so no code is shared with the package.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch
from networkx.algorithms.flow import boykov_kolmogorov

from captum_attnflow.flow import attention_flow, head_flow
from captum_attnflow.flow.maxflow import SOLVERS, fast_max_flows_many

FIXTURE = Path(__file__).parent / "data" / "minilm_attention.npz"
TOL = 1e-5


# --------------------------------------------------------------------------------------------
# Independent reference
# --------------------------------------------------------------------------------------------


def build_capacities(raw: np.ndarray, live: np.ndarray | None, residual: bool) -> np.ndarray:
    """``raw`` ``(L, heads, n, n)`` -> ``Â`` ``(L, n, n)`` in float64, straight from docs/design.md."""
    n = raw.shape[-1]
    keep = np.ones(n) if live is None else live.astype(np.float64)
    heads = raw.astype(np.float64) * keep  # each head restricted to the real keys ...
    heads = heads / np.where(heads.sum(-1, keepdims=True) > 0, heads.sum(-1, keepdims=True), 1.0)  # ... and renormalised
    fused = heads.mean(axis=1) * keep[None, :, None]
    out = np.zeros_like(fused)
    for layer in range(fused.shape[0]):
        for i in range(n):
            if not keep[i]:
                continue
            row = fused[layer, i] / fused[layer, i].sum()
            if residual:
                row = 0.5 * row
                row[i] += 0.5
            out[layer, i] = row
    return out


def reference_values(capacities: np.ndarray, source: int) -> np.ndarray:
    """Unnormalised max-flow from the top node ``source`` to every input node, by networkx."""
    num_layers, n, _ = capacities.shape
    graph = nx.DiGraph()
    for layer in range(num_layers, 0, -1):
        for i in range(n):
            for j in range(n):
                if capacities[layer - 1, i, j] > 0:
                    graph.add_edge(f"{layer}/{i}", f"{layer - 1}/{j}", capacity=capacities[layer - 1, i, j])
    top = f"{num_layers}/{source}"
    values = np.zeros(n)
    for j in range(n):
        sink = f"0/{j}"
        if graph.has_node(top) and graph.has_node(sink):
            values[j] = nx.maximum_flow_value(graph, top, sink, flow_func=boykov_kolmogorov)
    return values


def reference_row(capacities: np.ndarray, source: int) -> np.ndarray:
    values = reference_values(capacities, source)
    return values / values.sum()


def random_attention(rng, batch, num_layers, heads, n, *, sharpness=3.0):
    """Softmax attention with logits ``sharpness * N(0, 1)``: ``L`` arrays ``(batch, heads, n, n)``."""
    logits = sharpness * rng.standard_normal((num_layers, batch, heads, n, n))
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return [w / w.sum(-1, keepdims=True) for w in weights]


def padding_mask(batch: int, n: int, rng) -> np.ndarray:
    """Right padding, a different length per example (the first example is unpadded)."""
    lengths = [n] + list(rng.integers(max(2, n // 2), n, size=batch - 1))
    return (np.arange(n)[None, :] < np.array(lengths)[:, None]).astype(np.int64)


def cls_chain(rng, num_layers: int, n: int, leak: float = 0.02) -> list[np.ndarray]:
    """Planted graph: token 0 keeps ``1 - leak`` of its attention on itself in every layer and
    every other token attends half to token 0, so the flow from ``(L, 0)`` is trapped in the
    [CLS] chain: the min cut is the chain, far below ``min(1, column sum of Â_1)``."""
    layers = random_attention(rng, 1, num_layers, 1, n)
    for attention in layers:
        attention[..., 1:, :] *= 0.5
        attention[..., 1:, 0] += 0.5
        attention[..., 0, :] *= leak
        attention[..., 0, 0] += 1 - leak
    return layers


# --------------------------------------------------------------------------------------------
# Flow against the reference
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, num_layers, batch, residual, masked, dtype",
    [
        (6, 1, 1, True, False, torch.float64),
        (7, 3, 2, True, False, torch.float64),
        (9, 4, 1, False, False, torch.float32),
        (8, 2, 3, True, True, torch.float32),
        (10, 3, 2, False, True, torch.float64),
    ],
)
def test_flow_matches_networkx_on_random_attention(n, num_layers, batch, residual, masked, dtype):
    rng = np.random.default_rng(n * 100 + num_layers)
    raw = random_attention(rng, batch, num_layers, 2, n)
    mask = padding_mask(batch, n, rng) if masked else None
    tensors = [torch.tensor(a, dtype=dtype) for a in raw]
    out = attention_flow(tensors, residual=residual, mask=None if mask is None else torch.tensor(mask))
    assert out.dtype == dtype and out.shape == (batch, num_layers, n, n)
    stacked = np.stack(raw, axis=1)  # (batch, L, heads, n, n)
    for b in range(batch):
        live = None if mask is None else mask[b].astype(bool)
        capacities = build_capacities(stacked[b], live, residual)
        for layer in range(num_layers):
            for i in range(n):
                if live is not None and not live[i]:
                    assert (out[b, layer, i] == 0).all()
                    continue
                expected = reference_row(capacities[: layer + 1], i)
                np.testing.assert_allclose(out[b, layer, i].double().numpy(), expected, atol=TOL, rtol=0)


REAL_CASES = [(0, 5, 0), (2, 2, 2), (1, 2, 0)]  # (example, 0-based layer, output position)


@pytest.fixture(scope="module")
def real_attention():
    data = np.load(FIXTURE)
    return data["attention"], data["mask"]


@pytest.fixture(scope="module")
def real_expected(real_attention):
    """Reference rows for ``REAL_CASES``; padded tokens (not in the graph) get 0."""
    attention, mask = real_attention
    rows = {}
    for b, layer, position in REAL_CASES:
        live = mask[b].astype(bool)
        keep = np.flatnonzero(live)
        capacities = build_capacities(attention[b], live, True)[: layer + 1][:, keep][:, :, keep]
        rows[b, layer, position] = np.zeros(mask.shape[1])
        rows[b, layer, position][keep] = reference_row(capacities, position)
    return rows


@pytest.mark.parametrize("method", ["auto", *SOLVERS])
def test_flow_matches_networkx_on_real_attention(real_attention, real_expected, method):
    """Real MiniLM attention (padded batch): [CLS] at the last layer, [CLS] and a word at layer 3."""
    attention, mask = real_attention
    raw = [attention[:, layer] for layer in range(attention.shape[1])]
    for b, layer, position in REAL_CASES:
        out = attention_flow(raw, mask=mask, output_positions=position, layers=layer, flow_solver=method)
        assert isinstance(out, np.ndarray) and out.dtype == np.float32
        np.testing.assert_allclose(out[b, layer, position], real_expected[b, layer, position], atol=TOL, rtol=0)
        others = np.ones(out.shape[:3], dtype=bool)
        others[:, layer, position] = False
        assert np.isnan(out[others]).all()


def test_real_attention_min_cut_is_not_the_trivial_cut(real_attention):
    """The fixture is a hard case: for most sinks the flow is far below ``min(1, colsum Â_1)``."""
    attention, mask = real_attention
    assert mask[1].all(), "example 1 is the unpadded sentence"
    capacities = build_capacities(attention[1], None, True)
    values = reference_values(capacities, 0)
    trivial = np.minimum(1.0, capacities[0].sum(axis=0))
    assert np.mean(values < trivial - 0.05) > 0.5


@pytest.mark.parametrize("method", list(SOLVERS))
@pytest.mark.parametrize("n, num_layers", [(8, 3), (13, 5)])
def test_solvers_on_planted_cls_chain(method, n, num_layers):
    rng = np.random.default_rng(n)
    raw = cls_chain(rng, num_layers, n)
    capacities = build_capacities(np.stack(raw, axis=1)[0], None, True)
    expected = reference_values(capacities, 0)
    trivial = np.minimum(1.0, capacities[0].sum(axis=0))
    assert (expected[1:] < trivial[1:] - 0.1).all(), "the planted min cut must not be the trivial cut"
    np.testing.assert_allclose(SOLVERS[method](capacities, 0), expected, atol=TOL, rtol=0)
    out = attention_flow(raw, output_positions=0, layers=-1, flow_solver=method)
    np.testing.assert_allclose(out[0, -1, 0], expected / expected.sum(), atol=TOL, rtol=0)


@pytest.mark.parametrize("method", list(SOLVERS))
def test_solvers_on_planted_funnel(method):
    """Without the residual, a middle layer where every token attends to token 3 forces all the
    flow through ``(2, 3)``: the min cut sits in the middle of the graph."""
    rng = np.random.default_rng(7)
    n = 9
    raw = random_attention(rng, 1, 4, 1, n)
    raw[2][...] = 0.0
    raw[2][..., 3] = 0.96
    raw[2][..., 5] = 0.04
    capacities = build_capacities(np.stack(raw, axis=1)[0], None, False)
    expected = reference_values(capacities, 4)
    np.testing.assert_allclose(SOLVERS[method](capacities, 4), expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("method", list(SOLVERS))
def test_solvers_on_sparse_and_disconnected_graphs(method):
    """Zero arcs and unreachable sinks (causal attention without residual): unreachable get 0."""
    rng = np.random.default_rng(3)
    n = 7
    capacities = np.tril(rng.random((3, n, n)))
    capacities[rng.random((3, n, n)) < 0.4] = 0.0
    capacities /= np.maximum(capacities.sum(-1, keepdims=True), 1e-300)
    expected = reference_values(capacities, 2)
    assert (expected[3:] == 0).all()
    np.testing.assert_allclose(SOLVERS[method](capacities, 2), expected, atol=TOL, rtol=0)


def test_fast_matches_scipy_on_every_real_position(real_attention):
    """All output positions of a real example at every depth, one or two threads, vs scipy (exact
    to ~1e-9 after its integer scaling) — many more sinks than networkx can afford."""
    attention, _ = real_attention
    capacities = build_capacities(attention[1], None, True)
    n = capacities.shape[-1]
    for layers in (2, 6):
        expected = np.stack([SOLVERS["scipy"](capacities[:layers], source) for source in range(n)])
        for threads in (1, 2):
            got = fast_max_flows_many(capacities[:layers], range(n), threads)
            np.testing.assert_allclose(got, expected, atol=1e-7, rtol=0)


@pytest.mark.parametrize("residual", [True, False])
def test_fast_matches_scipy_on_larger_random_graphs(residual):
    rng = np.random.default_rng(21)
    raw = random_attention(rng, 1, 6, 1, 48, sharpness=4.0)
    capacities = build_capacities(np.stack(raw, axis=1)[0], None, residual)
    for source in (0, 17):
        np.testing.assert_allclose(
            SOLVERS["fast"](capacities, source), SOLVERS["scipy"](capacities, source), atol=1e-7, rtol=0
        )


def test_workers_and_progress_give_the_same_result(capsys):
    rng = np.random.default_rng(4)
    raw = random_attention(rng, 3, 3, 2, 9)
    mask = padding_mask(3, 9, rng)
    serial = attention_flow(raw, mask=mask, output_positions=[0, 3], flow_solver="scipy")
    parallel = attention_flow(raw, mask=mask, output_positions=[0, 3], flow_solver="scipy", workers=2, progress=True)
    np.testing.assert_array_equal(np.isnan(serial), np.isnan(parallel))
    np.testing.assert_allclose(serial, parallel, atol=0, rtol=0)
    assert "attention flow (scipy)" in capsys.readouterr().err
    heads = head_flow(raw, layer=2, output_positions=0, workers=2)
    np.testing.assert_allclose(heads, head_flow(raw, layer=2, output_positions=0), atol=0, rtol=0)


# --------------------------------------------------------------------------------------------
# Invariants
# --------------------------------------------------------------------------------------------


def test_rows_sum_to_one_masked_tokens_zero_and_unrequested_nan():
    rng = np.random.default_rng(11)
    n, batch = 8, 2
    raw = [torch.tensor(a) for a in random_attention(rng, batch, 3, 2, n)]
    mask = torch.ones(batch, n, dtype=torch.long)
    mask[1, 5:] = 0
    out = attention_flow(raw, mask=mask, output_positions=[0, 6], layers=[0, 2])
    requested = out[:, [0, 2]][:, :, [0, 6]]
    assert torch.isfinite(requested).all()
    np.testing.assert_allclose(requested[0].sum(-1).numpy(), 1.0, atol=1e-12)
    np.testing.assert_allclose(requested[1, :, 0].sum(-1).numpy(), 1.0, atol=1e-12)
    assert (requested[1, :, 1] == 0).all(), "a padded output position gets a zero row"
    assert (out[1, [0, 2]][:, [0, 6]][..., 5:] == 0).all(), "padded tokens get exactly 0"
    assert torch.isnan(out[:, 1]).all() and torch.isnan(out[:, :, [1, 2, 3, 4, 5, 7]]).all()


@pytest.mark.parametrize("residual", [True, False])
def test_one_layer_flow_is_the_augmented_attention_row(residual):
    rng = np.random.default_rng(5)
    raw = random_attention(rng, 2, 1, 3, 6)
    out = attention_flow(raw, residual=residual)
    for b in range(2):
        expected = build_capacities(np.stack(raw, axis=1)[b], None, residual)[0]
        np.testing.assert_allclose(out[b, 0], expected, atol=1e-12, rtol=0)


def test_numpy_in_numpy_out_and_tensor_positions():
    rng = np.random.default_rng(2)
    raw = random_attention(rng, 1, 2, 1, 5)
    out = attention_flow(raw, output_positions=torch.tensor([1]), layers=1)
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    assert np.isfinite(out[0, 1, 1]).all() and np.isnan(out[0, 0]).all()


# --------------------------------------------------------------------------------------------
# Appendix A.1: per-head flow
# --------------------------------------------------------------------------------------------


def test_head_flow_matches_a_direct_construction():
    rng = np.random.default_rng(9)
    n, heads, layer = 6, 3, 2
    raw = random_attention(rng, 1, 3, heads, n)
    out = head_flow(raw, layer=layer, output_positions=[0, 4])
    assert out.shape == (1, heads, n, n)
    stacked = np.stack(raw, axis=1)[0]  # (L, heads, n, n)
    below = build_capacities(stacked[:layer], None, True)
    for h in range(heads):
        top = build_capacities(stacked[layer : layer + 1, h : h + 1], None, True)
        capacities = np.concatenate([below, top])
        for i in [0, 4]:
            np.testing.assert_allclose(out[0, h, i], reference_row(capacities, i), atol=TOL, rtol=0)
        assert np.isnan(out[0, h, [1, 2, 3, 5]]).all()
    single = head_flow(raw, layer=-1, head=1, output_positions=0)
    np.testing.assert_allclose(single[0, 0, 0], out[0, 1, 0], atol=1e-12)


# --------------------------------------------------------------------------------------------
# Error paths
# --------------------------------------------------------------------------------------------


@pytest.fixture
def small():
    return random_attention(np.random.default_rng(1), 1, 2, 1, 4)


def test_unknown_method(small):
    with pytest.raises(ValueError, match="unknown flow_solver 'bogus'.*networkx"):
        attention_flow(small, flow_solver="bogus")


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"output_positions": 4}, ValueError, "output_positions=4 is out of range"),
        ({"output_positions": [0, -5]}, ValueError, "output_positions=-5 is out of range"),
        ({"layers": 2}, ValueError, "layers=2 is out of range"),
        ({"layers": []}, ValueError, "layers is empty"),
        ({"output_positions": 1.5}, TypeError, "output_positions must be None, an integer or a sequence"),
        ({"output_positions": [0.5]}, TypeError, "output_positions must be an integer"),
    ],
)
def test_bad_positions_and_layers(small, kwargs, error, message):
    with pytest.raises(error, match=message):
        attention_flow(small, **kwargs)


@pytest.mark.parametrize(
    "workers, error, message",
    [(0, ValueError, "workers=0 must be at least 1"), (1.5, TypeError, "workers must be a positive integer")],
)
def test_bad_workers(small, workers, error, message):
    with pytest.raises(error, match=message):
        attention_flow(small, workers=workers)


def test_head_flow_bad_layer_and_head(small):
    with pytest.raises(ValueError, match="layer=3 is out of range"):
        head_flow(small, layer=3)
    with pytest.raises(ValueError, match="head=1 is out of range"):
        head_flow(small, layer=0, head=1)


def causal_attention(rng, batch, num_layers, heads, n, *, sink_mass=3.0):
    """Decoder-like softmax attention: lower-triangular, with an attention sink on token 0."""
    logits = 3.0 * rng.standard_normal((num_layers, batch, heads, n, n))
    logits[..., 0] += sink_mass
    logits = np.where(np.tril(np.ones((n, n), bool)), logits, -np.inf)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    return [w / w.sum(-1, keepdims=True) for w in weights]


@pytest.mark.parametrize("n, num_layers, sink_mass", [(9, 3, 0.0), (12, 4, 3.0), (16, 2, 6.0)])
def test_fast_matches_networkx_on_causal_attention_at_every_source(n, num_layers, sink_mass):
    """Causal graphs, every output position (sources below a sink get 0): the suffix cut stop is exact."""
    rng = np.random.default_rng(n + num_layers)
    raw = causal_attention(rng, 2, num_layers, 3, n, sink_mass=sink_mass)
    mask = padding_mask(2, n, rng)
    out = attention_flow(raw, mask=mask)  # numpy in, numpy out; all layers and positions
    stacked = np.stack(raw, axis=1)
    for b in range(2):
        live = mask[b].astype(bool)
        capacities = build_capacities(stacked[b], live, residual=True)
        for layer in range(num_layers):
            for i in np.flatnonzero(live):
                expected = reference_row(capacities[: layer + 1], i)
                np.testing.assert_allclose(out[b, layer, i], expected, atol=1e-9, rtol=0)
                assert (out[b, layer, i, i + 1:] == 0).all()  # nothing flows to later tokens


def test_fast_matches_networkx_on_causal_graphs_with_leaking_arcs():
    """Almost-causal capacities (small arcs above the diagonal): the suffix cut counts the leak."""
    rng = np.random.default_rng(5)
    n = 24
    capacities = np.tril(rng.random((4, n, n))) ** 3 + 1e-3 * rng.random((4, n, n))
    capacities /= capacities.sum(-1, keepdims=True)
    for source in (0, 7, n - 1):
        np.testing.assert_allclose(
            fast_max_flows_many(capacities, [source])[0], reference_values(capacities, source), atol=1e-9, rtol=0
        )
