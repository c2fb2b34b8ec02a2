"""The positional prior of rollout and flow (captum_attnflow.flow.prior) against brute force."""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch

from captum_attnflow.flow.prior import divide_prior, positional_prior, uniform_causal_attention


def test_uniform_causal_attention_rows():
    u = uniform_causal_attention(5)
    for i in range(5):
        assert torch.allclose(u[i, : i + 1], torch.full((i + 1,), 1.0 / (i + 1), dtype=torch.float64))
        assert torch.all(u[i, i + 1 :] == 0)
    with pytest.raises(ValueError, match="n=0"):
        uniform_causal_attention(0)


def brute_rollout_prior(n: int, layers: int) -> np.ndarray:
    a = np.tril(np.ones((n, n)))
    a = a / a.sum(1, keepdims=True)
    hat = (a + np.eye(n)) / (a + np.eye(n)).sum(1, keepdims=True)
    product = np.eye(n)
    for _ in range(layers):
        product = hat @ product
    return product


def brute_flow_prior(n: int, layers: int, position: int) -> np.ndarray:
    a = np.tril(np.ones((n, n)))
    a = a / a.sum(1, keepdims=True)
    hat = (a + np.eye(n)) / (a + np.eye(n)).sum(1, keepdims=True)
    graph = nx.DiGraph()
    for layer in range(layers, 0, -1):
        for i in range(n):
            for j in range(n):
                if hat[i, j] > 0:
                    graph.add_edge((layer, i), (layer - 1, j), capacity=hat[i, j])
    flows = np.array([nx.maximum_flow_value(graph, (layers, position), (0, j)) if graph.has_node((0, j)) else 0.0
                      for j in range(n)])
    return flows / flows.sum()


@pytest.mark.parametrize("n,layers", [(1, 3), (6, 1), (7, 4)])
def test_rollout_prior_is_the_rollout_of_uniform_attention(n, layers):
    expected = brute_rollout_prior(n, layers)
    positions = list(range(n))
    got = positional_prior("rollout", n, layers, positions).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-12)
    assert np.all(np.diff(got[-1][:-1]) <= 1e-15)  # earlier keys never get less: the prior is position alone


@pytest.mark.parametrize("n,layers,position", [(5, 3, 4), (6, 2, 3)])
def test_flow_prior_is_the_flow_of_uniform_attention(n, layers, position):
    got = positional_prior("flow", n, layers, [position]).numpy()[0]
    np.testing.assert_allclose(got, brute_flow_prior(n, layers, position), atol=1e-9)


def test_divide_prior_rows_sum_to_one_and_undo_the_prior():
    prior = positional_prior("rollout", 6, 5, [3, 5])
    assert torch.allclose(divide_prior(prior, prior).sum(-1), torch.ones(2, dtype=torch.float64))
    uniform_over_live = divide_prior(prior, prior)
    assert torch.allclose(uniform_over_live[0, :4], torch.full((4,), 0.25, dtype=torch.float64))
    assert torch.all(uniform_over_live[0, 4:] == 0)  # keys after the query stay 0
    rows = torch.rand(2, 6, dtype=torch.float64) * (prior > 0)
    corrected = divide_prior(rows, prior)
    np.testing.assert_allclose(corrected.numpy(), (rows / prior.clamp_min(1e-300) / (rows / prior.clamp_min(1e-300)).sum(-1, keepdim=True)).numpy())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown prior method"):
        positional_prior("raw", 4, 2, [3])
    with pytest.raises(ValueError, match="num_layers"):
        positional_prior("rollout", 4, 0, [3])
    with pytest.raises(ValueError, match="shape"):
        divide_prior(torch.ones(2, 3), torch.ones(2, 4))
