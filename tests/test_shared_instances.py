"""One attribution instance shared by threads, and global state left as found (issue 18, items 2, 9).

Every class is called from two threads at once with different arguments; the first thread's
forward pass is slowed down so that the second call starts while the first is running (it waits
for its turn on the model, after having set up its own call). Each thread must get what the same
call gives alone — also ``AttentionFlow.gap``, read after both calls have finished.
"""

from __future__ import annotations

import random
import threading
import time

import numba
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from captum_attnflow import (  # noqa: E402
    AttentionFlow,
    AttentionRollout,
    GradientWeightedRollout,
    LLMAttentionAttribution,
    RawAttention,
)
from test_llm_attribution import PROMPT, WORDS, word_tokenizer  # noqa: E402


def _bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
        max_position_embeddings=32, num_labels=2, pad_token_id=0, attn_implementation="sdpa",
    )
    return transformers.BertForSequenceClassification(config).eval()


def _llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(WORDS), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        attn_implementation="sdpa",
    )
    return transformers.LlamaForCausalLM(config).eval()


def _slow_first_thread(model):
    """A forward pre-hook that holds the pass of the thread named "first" for 0.4 s."""

    def hook(module, args):
        if threading.current_thread().name == "first":
            time.sleep(0.4)

    return model.register_forward_pre_hook(hook)


def _race(call_first, call_second, read=lambda: None):
    """Run both calls at once (the second starts 0.1 s after the first); each thread returns its
    result and ``read()`` taken after both calls are done."""
    results, errors, done = {}, [], threading.Barrier(2)

    def run(name, call):
        try:
            value = call()
            done.wait(timeout=30)
            results[name] = (value, read())
        except Exception as error:  # noqa: BLE001 - reported by the assertion
            errors.append(repr(error))
            done.abort()

    threads = [threading.Thread(target=run, args=("first", call_first), name="first"),
               threading.Thread(target=run, args=("second", call_second), name="second")]
    threads[0].start()
    time.sleep(0.1)
    threads[1].start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    return results["first"], results["second"]


def _ids(seed):
    return torch.randint(3, 40, (2, 9), generator=torch.Generator().manual_seed(seed))


CASES = {
    "raw": (RawAttention, {}, dict(layer=0), dict(layer=1, head_fusion="max")),
    "rollout": (AttentionRollout, {}, dict(discard_ratio=0.6, protected_tokens=[0, 1]), dict(discard_ratio=0.0)),
    "rollout-head": (AttentionRollout, {}, dict(head=1), dict(discard_ratio=0.3)),
    "flow": (AttentionFlow, dict(tol=3e-2), dict(position=0), dict(position="all")),
    "gradient": (GradientWeightedRollout, {}, dict(target=0), dict(target=1, layer=0)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_a_shared_instance_gives_each_thread_its_own_result(name):
    cls, init, first_args, second_args = CASES[name]
    model = _bert()
    method = cls(model, **init)
    ids_first, ids_second = _ids(1), _ids(2)
    gap = (lambda: method.gap) if cls is AttentionFlow else (lambda: None)
    expected_first = method.attribute(ids_first, **first_args), gap()
    expected_second = method.attribute(ids_second, **second_args), gap()
    handle = _slow_first_thread(model)
    try:
        first, second = _race(lambda: method.attribute(ids_first, **first_args),
                              lambda: method.attribute(ids_second, **second_args), gap)
    finally:
        handle.remove()
    for got, expected in ((first, expected_first), (second, expected_second)):
        torch.testing.assert_close(got[0], expected[0], atol=0, rtol=0)
        assert got[1] == expected[1]
    if cls is AttentionFlow:
        assert expected_first[1] != expected_second[1], "the two calls must prove different gaps"


@pytest.mark.parametrize("wrapped", ["flow", "rollout"])
def test_a_shared_llm_attribution_gives_each_thread_its_own_rows(wrapped):
    model = _llama()
    tokenizer = word_tokenizer()
    method = AttentionFlow(model, tol=3e-2) if wrapped == "flow" else AttentionRollout(model)
    llm = LLMAttentionAttribution(method, tokenizer)
    gap = (lambda: method.gap) if wrapped == "flow" else (lambda: None)
    first_args = dict(target="it was happy")
    second_args = dict(target="she saw him", head=1, layer=0)
    expected_first = llm.attribute(PROMPT, **first_args).token_attr, gap()
    expected_second = llm.attribute(PROMPT, **second_args).token_attr, gap()
    handle = _slow_first_thread(model)
    try:
        first, second = _race(lambda: llm.attribute(PROMPT, **first_args).token_attr,
                              lambda: llm.attribute(PROMPT, **second_args).token_attr, gap)
    finally:
        handle.remove()
    for got, expected in ((first, expected_first), (second, expected_second)):
        torch.testing.assert_close(got[0], expected[0], atol=0, rtol=0)
        assert got[1] == expected[1]


# --------------------------------------------------------------------------------------------
# Item 9: thread counts and random states are left as found
# --------------------------------------------------------------------------------------------


def _global_state():
    return (torch.get_num_threads(), torch.random.get_rng_state(), np.random.get_state()[1].copy(),
            random.getstate())


def _same_state(before, after):
    assert before[0] == after[0], f"torch threads {before[0]} -> {after[0]}"
    assert torch.equal(before[1], after[1]), "torch RNG state changed"
    assert np.array_equal(before[2], after[2]), "numpy RNG state changed"
    assert before[3] == after[3], "random RNG state changed"


def test_library_calls_leave_thread_counts_and_random_states_as_found():
    """In a fresh process (numba's threading layer not started yet): a process that set one torch
    thread keeps it through every class; numba's own count is not touched either."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import random, numpy as np, torch, numba
        torch.set_num_threads(1)
        import captum_attnflow
        from captum_attnflow import AttentionFlow, AttentionRollout, RawAttention, GradientWeightedRollout
        from captum_attnflow import attention_flow
        import transformers
        torch.manual_seed(0); np.random.seed(0); random.seed(0)
        config = transformers.BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                                         intermediate_size=32, max_position_embeddings=64, num_labels=2)
        model = transformers.BertForSequenceClassification(config).eval()
        ids = torch.randint(3, 40, (1, 40))
        raw = [torch.rand(1, 2, 64, 64).softmax(-1) for _ in range(8)]  # 4.2e6 tasks x arcs: solver threads
        state = (torch.random.get_rng_state(), np.random.get_state()[1].copy(), random.getstate())
        for cls in (RawAttention, AttentionRollout, AttentionFlow, GradientWeightedRollout):
            cls(model).attribute(ids)
        AttentionFlow(model, tol=1e-3).attribute(ids, position="all")
        attention_flow(raw, output_positions=[0, 1], layers=-1)
        assert torch.get_num_threads() == 1, torch.get_num_threads()
        assert torch.equal(state[0], torch.random.get_rng_state()), "torch rng"
        assert np.array_equal(state[1], np.random.get_state()[1]), "numpy rng"
        assert state[2] == random.getstate(), "random rng"
        print("ok", numba.config.NUMBA_NUM_THREADS)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_solver_threads_follow_the_argument_and_the_callers_setting(monkeypatch):
    from captum_attnflow.flow import maxflow

    seen = []
    original = maxflow.FastSolver.bounds

    def spy(self, *args, **kwargs):
        seen.append(self.threads)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(maxflow.FastSolver, "bounds", spy)
    from captum_attnflow import attention_flow

    raw = [torch.rand(1, 2, 8, 8).softmax(-1) for _ in range(2)]
    before = _global_state()
    attention_flow(raw, threads=1, layers=-1)
    attention_flow(raw, threads=2, layers=-1)
    assert seen == [1, 2]
    with pytest.raises(ValueError, match="threads=0"):
        attention_flow(raw, threads=0)
    _same_state(before, _global_state())
    # the automatic choice: 1 below the work threshold; above, never more than the caller allows
    assert maxflow.default_threads(maxflow.THREADS_MIN_WORK - 1) == 1
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert maxflow.default_threads(10**12) == 1
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setattr(maxflow, "busy_cpus", lambda: float(maxflow.usable_cpus()))
    assert maxflow.default_threads(10**12) == 1  # every CPU busy elsewhere: one thread
    monkeypatch.setattr(maxflow, "busy_cpus", lambda: 0.0)
    assert maxflow.default_threads(10**12) == min(maxflow.usable_cpus(), torch.get_num_threads())
    assert numba.config.NUMBA_NUM_THREADS >= 1
