"""Bounded flow (``tol=``), the solver's proven bounds, the cost guard and Ctrl-C.

The exact values come from networkx (``test_flow.reference_values``), so a wrong bound, a wrong
normalisation or a stop before the slack is reached fails here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel

from captum_attnflow import AttentionFlow, attention_flow, head_flow
from captum_attnflow.flow import BoundedFlow, FlowCostWarning, normalised_bounds
from captum_attnflow.flow.maxflow import FastSolver
from test_flow import build_capacities, causal_attention, random_attention, reference_values


def graphs(seed: int):
    """A random (encoder-like) and a causal (decoder-like) capacity stack, float64 ``(L, n, n)``."""
    rng = np.random.default_rng(seed)
    dense = build_capacities(np.stack(random_attention(rng, 1, 4, 2, 11, sharpness=3.0), axis=1)[0], None, True)
    causal = build_capacities(np.stack(causal_attention(rng, 1, 5, 2, 13), axis=1)[0], None, True)
    return {"random": dense, "causal": causal}


@pytest.mark.parametrize("kind", ["random", "causal"])
@pytest.mark.parametrize("slack", [1e-12, 1e-3, 0.05, 0.3])
def test_solver_bounds_bracket_the_exact_max_flow(kind, slack):
    capacities = graphs(3)[kind]
    n = capacities.shape[-1]
    sources = [0, n // 2, n - 1]
    lower, upper = FastSolver(capacities, sources).bounds(slack)
    exact = np.concatenate([reference_values(capacities, source) for source in sources])
    assert (lower <= exact + 1e-9).all() and (exact <= upper + 1e-9).all()
    assert (upper - lower <= slack + 1e-12).all()
    if slack > 0.01:  # the slack was used: some problems stopped short of the max flow
        assert (exact - lower > 1e-6).any()


@pytest.mark.parametrize("kind", ["random", "causal"])
def test_hash_table_flow_storage_gives_the_same_values(kind, monkeypatch):
    """Graphs above DENSE_ARCS keep the flow in a hash table (here forced; the table starts small
    and must grow on these graphs): same max flows as networkx."""
    monkeypatch.setattr("captum_attnflow.flow.maxflow.DENSE_ARCS", 0)
    capacities = graphs(5)[kind]
    n = capacities.shape[-1]
    for slack in (1e-12, 0.05):
        lower, upper = FastSolver(capacities, [0, n - 1]).bounds(slack)
        exact = np.concatenate([reference_values(capacities, source) for source in (0, n - 1)])
        assert (lower <= exact + 1e-9).all() and (exact <= upper + 1e-9).all()
        assert (upper - lower <= slack + 1e-12).all()


def test_hash_table_grows_when_the_flow_spreads_over_every_arc(monkeypatch):
    """Source arcs and sink arcs of capacity 1, every middle arc 1/n: the max flow (n) saturates
    all l·n² middle arcs, far more than the table's first size, so it grows and the sink is
    solved again."""
    monkeypatch.setattr("captum_attnflow.flow.maxflow.DENSE_ARCS", 0)
    n, num_layers = 20, 4
    capacities = np.full((num_layers, n, n), 1.0 / n)
    capacities[-1] = capacities[0] = 1.0
    solver = FastSolver(capacities, [0], threads=1)
    lower, upper = solver.bounds()
    np.testing.assert_allclose(lower, reference_values(capacities, 0), atol=1e-9, rtol=0)
    np.testing.assert_allclose(lower, float(n), atol=1e-9, rtol=0)
    assert (upper - lower <= 1e-12).all()


def test_solver_bounds_on_selected_tasks_and_float32():
    capacities = graphs(4)["causal"]
    n = capacities.shape[-1]
    tasks = np.array([2, 5, n + 3])
    solver = FastSolver(capacities.astype(np.float32), [n - 1, 4])
    lower, upper = solver.bounds(1e-12, tasks)
    exact32 = np.concatenate([reference_values(capacities.astype(np.float32).astype(np.float64), s) for s in (n - 1, 4)])
    np.testing.assert_allclose(lower, exact32[tasks], atol=1e-9, rtol=0)
    np.testing.assert_allclose(upper, exact32[tasks], atol=1e-9, rtol=0)


def test_normalised_bounds_contain_every_normalisation_within_the_raw_bounds():
    rng = np.random.default_rng(0)
    lower = rng.random((50, 7))
    upper = lower + rng.random((50, 7)) * rng.choice([0.0, 0.1, 1.0], size=(50, 7))
    low, high = normalised_bounds(lower, upper)
    for _ in range(200):
        values = lower + rng.random(lower.shape) * (upper - lower)
        normalised = values / values.sum(-1, keepdims=True)
        assert (low <= normalised + 1e-12).all() and (normalised <= high + 1e-12).all()
    same_low, same_high = normalised_bounds(lower, lower)
    np.testing.assert_allclose(same_low, lower / lower.sum(-1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(same_high, same_low, rtol=1e-12)


@pytest.mark.parametrize("tol", [3e-2, 3e-3, 1e-4, 1e-7])
def test_tol_values_are_within_the_reported_error_of_the_exact_flow(tol):
    rng = np.random.default_rng(7)
    raw = causal_attention(rng, 2, 4, 3, 14)
    exact = attention_flow(raw, flow_solver="networkx", output_positions=[5, 13], layers=[1, 3])
    bounded = attention_flow(raw, output_positions=[5, 13], layers=[1, 3], tol=tol)
    assert isinstance(bounded, BoundedFlow) and isinstance(bounded.values, np.ndarray)
    assert bounded.error.shape == exact.shape[:-1]
    assert 0 <= bounded.gap <= tol
    solved = np.isfinite(exact)
    np.testing.assert_array_equal(np.isfinite(bounded.values), solved)
    deviation = np.abs(bounded.values - exact)
    assert (deviation[solved] <= np.broadcast_to(bounded.error[..., None], exact.shape)[solved] + 1e-12).all()
    assert np.isnan(bounded.error[:, [0, 2]]).all() and np.isfinite(bounded.error[:, [1, 3]][:, :, [5, 13]]).all()


def test_tol_with_a_loose_tolerance_really_bounds_rather_than_solves():
    """A loose ``tol`` stops short of the exact flow; the reported error covers the difference."""
    rng = np.random.default_rng(8)
    raw = [torch.tensor(a, dtype=torch.float64) for a in random_attention(rng, 1, 6, 2, 24, sharpness=2.0)]
    exact = attention_flow(raw, output_positions=0, layers=-1)[0, -1, 0]
    bounded = attention_flow(raw, output_positions=0, layers=-1, tol=2e-2)
    values = bounded.values[0, -1, 0]
    assert torch.is_tensor(bounded.error) and bounded.error.dtype == torch.float64
    assert (values - exact).abs().max() <= bounded.error[0, -1, 0] + 1e-12
    assert bounded.gap > 1e-6, "with a loose tol some problems stop early and the gap is reported"


def test_head_flow_with_tol():
    rng = np.random.default_rng(9)
    raw = causal_attention(rng, 1, 3, 2, 10)
    exact = head_flow(raw, layer=2, output_positions=9)
    bounded = head_flow(raw, layer=2, output_positions=9, tol=1e-3)
    assert bounded.error.shape == (1, 2, 10) and bounded.gap <= 1e-3
    assert np.nanmax(np.abs(bounded.values - exact)) <= bounded.gap + 1e-12


@pytest.mark.parametrize(
    "tol, error, message",
    [(0, ValueError, "tol=0"), (-1e-3, ValueError, "positive"), (float("nan"), ValueError, "tol=nan"),
     (float("inf"), ValueError, "finite"), ("1e-3", TypeError, "tol must be"), (True, TypeError, "tol must be")],
)
def test_bad_tol_is_named(tol, error, message):
    raw = random_attention(np.random.default_rng(1), 1, 2, 1, 5)
    with pytest.raises(error, match=message):
        attention_flow(raw, tol=tol)
    with pytest.raises(error, match=message):
        head_flow(raw, layer=1, tol=tol)
    with pytest.raises(error, match=message):
        AttentionFlow(torch.nn.Identity(), attention_layers=[torch.nn.Identity()], tol=tol)


def test_attention_flow_class_reports_the_gap():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, attn_implementation="eager")
    model = BertModel(config).eval()
    ids = torch.randint(5, 50, (2, 12))
    exact = AttentionFlow(model).attribute(ids)
    method = AttentionFlow(model, tol=5e-3)
    bounded = method.attribute(ids)
    assert 0 <= method.gap <= 5e-3
    assert (bounded - exact).abs().max() <= method.gap + 1e-6  # + float32 rounding of the exact scores


def test_cost_warning_names_the_estimate_and_the_ways_out(monkeypatch):
    raw = random_attention(np.random.default_rng(2), 1, 3, 1, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        attention_flow(raw)  # far below the threshold: silent
    monkeypatch.setattr("captum_attnflow.flow.cost.COST_WARNING_SECONDS", 0.0)
    with pytest.warns(FlowCostWarning, match=r"192 max-flow problems on graphs of up to 3 layers x 8 tokens, estimated .* min") as caught:
        attention_flow(raw)
    text = str(caught[0].message)
    assert "progress=True" in text and "Ctrl-C" in text and "tol=" in text
    assert caught[0].filename == __file__, "the warning points at the caller's line"


def test_progress_bar_counts_single_sink_problems(capsys):
    raw = causal_attention(np.random.default_rng(3), 1, 3, 1, 40)
    attention_flow([torch.tensor(a) for a in raw], output_positions=[10, 39], layers=[0, 2], progress=True)
    err = capsys.readouterr().err
    assert "attention flow (fast)" in err and "160/160" in err  # 2 positions x 2 layers x 40 sinks


CTRL_C_SCRIPT = textwrap.dedent(
    """
    import sys, threading
    import numpy as np
    from captum_attnflow import attention_flow
    from test_flow import causal_attention
    raw = causal_attention(np.random.default_rng(0), 1, 12, 1, 400)
    attention_flow(raw, progress=True)  # 400 positions x 400 sinks: minutes of work
    print("finished")
    """
)


def test_ctrl_c_stops_a_long_solve_cleanly(tmp_path):
    script = tmp_path / "long_flow.py"
    script.write_text(CTRL_C_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(__file__) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    process = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    seen = b""
    while b"attention flow (fast)" not in seen:  # the bar is drawn: the solve has begun
        chunk = os.read(process.stderr.fileno(), 4096)
        assert chunk, f"the script ended before solving: {seen.decode(errors='replace')}"
        seen += chunk
    time.sleep(0.5)  # inside the solve (threads busy), not at its start
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    err = (seen + err).decode(errors="replace")
    assert "finished" not in out.decode()
    assert process.returncode != 0 and err.rstrip().endswith("KeyboardInterrupt"), err[-2000:]
    assert "Exception in thread" not in err and "Fatal Python error" not in err
