"""Recorders that overlap: nested on SDPA models, and left attached by another thread (issue 18,
items 6 and 7).

Nested recorders in one thread (a class called inside an open ``AttentionRecorder``, two
recorders, removed in either order) all get the weights on SDPA models — the Hugging Face default
— as on eager ones. A recorder left attached by another thread never blocks forever: a live
holder is waited for up to the timeout, then named; an ended holder is named at once.
"""

from __future__ import annotations

import threading
import time

import pytest
import torch

transformers = pytest.importorskip("transformers")

from captum_attnflow import AttentionRollout, rollout  # noqa: E402
from captum_attnflow.capture import AttentionRecorder, attached_recorders  # noqa: E402


def _model(kind, implementation):
    torch.manual_seed(0)
    if kind == "bert":
        config = transformers.BertConfig(
            vocab_size=40, hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
            max_position_embeddings=32, attn_implementation=implementation,
        )
        return transformers.BertModel(config).eval()
    config = transformers.LlamaConfig(
        vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, attn_implementation=implementation,
    )
    return transformers.LlamaForCausalLM(config).eval()


IDS = torch.randint(3, 40, (2, 7), generator=torch.Generator().manual_seed(3))


def _eager_attention(kind):
    with torch.no_grad():
        return list(_model(kind, "eager")(IDS, output_attentions=True).attentions)


def _assert_attention(recorder, expected):
    assert len(recorder.attentions) == len(expected)
    for got, want in zip(recorder.attentions, expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_nested_recorders_on_sdpa_all_get_the_weights(kind):
    model, expected = _model(kind, "sdpa"), _eager_attention(kind)
    # a class called inside an open recorder
    with torch.no_grad(), AttentionRecorder(model) as outer:
        inside = AttentionRollout(model).attribute(IDS, position=0)
        model(IDS)
    _assert_attention(outer, expected)
    torch.testing.assert_close(inside, rollout(expected)[:, -1, 0], atol=1e-6, rtol=1e-5)
    # two recorders, removed innermost first and outermost first
    for lifo in (True, False):
        first, second = AttentionRecorder(model).attach(), AttentionRecorder(model, head_fusion="mean").attach()
        with torch.no_grad():
            model(IDS)
        (second if lifo else first).remove()
        with torch.no_grad():
            model(IDS)  # the one left attached still records alone
        (first if lifo else second).remove()
        _assert_attention(first, expected)
        for got, want in zip(second.attentions, expected):
            torch.testing.assert_close(got, want.mean(dim=1, keepdim=True), atol=1e-6, rtol=1e-5)
    assert attached_recorders(model) == []
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def test_a_recorder_left_by_an_ended_thread_is_named_at_once_and_can_be_removed():
    model = _model("bert", "sdpa")

    def leak():
        AttentionRecorder(model).attach()  # never removed

    worker = threading.Thread(target=leak, name="leaky-worker")
    worker.start()
    worker.join()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"'leaky-worker'.*ident \d+.*ended.*remove\(\)") as info:
        AttentionRollout(model).attribute(IDS)
    assert time.monotonic() - started < 5
    assert "attached_recorders" in str(info.value)
    for recorder in attached_recorders(model):
        recorder.remove()
    expected = AttentionRollout(_model("bert", "eager")).attribute(IDS)
    torch.testing.assert_close(AttentionRollout(model).attribute(IDS), expected, atol=1e-6, rtol=1e-5)


def test_a_recorder_held_by_a_live_thread_times_out_naming_the_holder(monkeypatch):
    model = _model("bert", "sdpa")
    attached, release = threading.Event(), threading.Event()

    def hold():
        with AttentionRecorder(model):
            attached.set()
            release.wait(timeout=30)

    worker = threading.Thread(target=hold, name="holding-worker")
    worker.start()
    attached.wait(timeout=30)
    try:
        monkeypatch.setattr(AttentionRecorder, "default_timeout", 0.5)
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=r"0\.5 s.*'holding-worker'.*ident \d+.*remove\(\)"):
            AttentionRollout(model).attribute(IDS)
        assert 0.4 < time.monotonic() - started < 5
        with pytest.raises(TimeoutError, match="holding-worker"):
            AttentionRecorder(model, timeout=0.2).attach()
        # a holder that lets go within the timeout is simply waited for
        threading.Timer(0.3, release.set).start()
        monkeypatch.setattr(AttentionRecorder, "default_timeout", 20.0)
        assert AttentionRollout(model).attribute(IDS).shape == (2, 7)
    finally:
        release.set()
        worker.join()
    with pytest.raises(ValueError, match="timeout"):
        AttentionRecorder(model, timeout=-1)
